/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup init REPO --uri=NBD-URI --control=SOCKET
 *                [--chunk-size=SIZE] [--snapshot-export=NAME]
 * nbdbackup init REPO --disk NAME=NBD-URI,SOCKET --disk ... [OPTIONS]
 *
 * Make a repository for one disk, or a group repository for several
 * (group-repo.h: REPO/group.json and one disk repository REPO/NAME/
 * each).  The server is checked first (it
 * answers on SOCKET, loads the dirtybitmap and fleece filters, serves
 * NBD-URI), so that a repository is only made for a disk that can be
 * backed up; nothing is created if any check fails.
 */

#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "ispowerof2.h"
#include "nbd-uri.h"
#include "nbdkit-stubs.h"
#include "parse.h"
#include "control.h"
#include "nbdbackup.h"
#include "repo.h"
#include "group-repo.h"
#include "repo-server.h"

#define DEFAULT_CHUNK_SIZE (64 * 1024)

static void
init_usage (const char *cmd)
{
  printf ("Usage: %s REPO --uri=NBD-URI --control=SOCKET [OPTIONS]\n"
          "       %s REPO --disk NAME=NBD-URI,SOCKET --disk ... [OPTIONS]\n"
          "\n"
          "Make REPO, a new directory (or an empty one), the backup "
          "repository of\n"
          "the disk that NBD-URI serves.  Its nbdkit server must load the "
          "dirtybitmap\n"
          "and fleece filters (fleece-snapshot=on-command) and listen "
          "for control\n"
          "commands on SOCKET.  Then `nbdbackup backup REPO` takes each "
          "backup.\n"
          "\n"
          "      --disk NAME=NBD-URI,SOCKET  a disk of a group repository "
          "(one\n"
          "                            each; NAME: 1 to 32 of A-Z a-z 0-9 "
          "_ -):\n"
          "                            `nbdbackup backup REPO` backs them "
          "all up at\n"
          "                            one instant\n"
          "      --uri=NBD-URI         the live disk "
          "(nbd+unix:///?socket=PATH)\n"
          "      --control=SOCKET      the server's control socket\n"
          "      --chunk-size=SIZE     bytes per digest chunk and bitmap "
          "granule, a\n"
          "                            power of 2 from 4K to 16M (default "
          "64K)\n"
          "      --snapshot-export=NAME  the fleece filter's snapshot export "
          "(default\n"
          "                            snapshot)\n"
          HELP_VERBOSE_HELP
          "\n"
          "Exit status: 0 success, 1 failure, 2 usage error, 3 the server "
          "cannot be\n"
          "used, 5 the repository is busy.  See nbdbackup(1).\n",
          cmd, cmd);
}

/* One --disk of a group. */
struct group_disk {
  char name[GROUP_MAX_NAME + 1];
  char *uri;                    /* points into the argument */
  char *control;                /* absolute, malloc'd */
  uint64_t size;
};

/* --disk NAME=NBD-URI,SOCKET (the socket after the last comma).
 * Returns -1 if good, or an exit status.
 */
static int
parse_disk (const char *cmd, char *arg, struct group_disk *disks, size_t n)
{
  struct group_disk *d = &disks[n];
  char *eq = strchr (arg, '='), *comma = strrchr (arg, ',');
  size_t i;

  if (eq == NULL || comma == NULL || comma < eq)
    return usage_error (cmd, "--disk: expected NAME=NBD-URI,SOCKET, got "
                        "'%s'", arg);
  *eq = *comma = '\0';
  if (!group_name_ok (arg))
    return usage_error (cmd, "--disk: '%s' is not a disk name (1 to %d of "
                        "A-Z a-z 0-9 _ -)", arg, GROUP_MAX_NAME);
  for (i = 0; i < n; ++i)
    if (strcmp (disks[i].name, arg) == 0)
      return usage_error (cmd, "--disk: the name '%s' is given twice", arg);
  if (!is_nbd_uri (eq + 1))
    return usage_error (cmd, "--disk %s: '%s' is not an NBD URI", arg,
                        eq + 1);
  if (comma[1] == '\0')
    return usage_error (cmd, "--disk %s: empty socket path", arg);
  strcpy (d->name, arg);
  d->uri = eq + 1;
  d->control = nbdkit_absolute_path (comma + 1);
  if (d->control == NULL)
    return NBDBACKUP_EXIT_FAILED;
  return -1;
}

/* The server behind p can be backed up: it answers on the control
 * socket with the filters we need and serves the URI.  Exit status.
 */
static int
check_disk (const struct repo_params *p, uint64_t *size)
{
  struct control *c;
  int e;

  c = control_connect (p->control);
  if (c == NULL)
    return NBDBACKUP_EXIT_FAILED;
  e = server_check (c);
  control_close (c);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  if (server_disk_size (p->uri, size) == -1)
    return NBDBACKUP_EXIT_FAILED;
  return NBDBACKUP_EXIT_OK;
}

/* init of a group repository: every server checked first, then
 * REPO, each disk's repository REPO/NAME, and group.json last (what
 * makes REPO a group repository).
 */
static int
init_group (const char *cmd, const char *path, struct repo_params *p,
            struct group_disk *disks, size_t n)
{
  struct group_repo *g = NULL;
  char *names[GROUP_MAX_DISKS];
  char chunk[32];
  size_t i;
  int e = NBDBACKUP_EXIT_OK;

  stub_program_name = cmd;
  catch_signals ();
  for (i = 0; i < n; ++i) {
    p->uri = disks[i].uri;
    p->control = disks[i].control;
    e = check_disk (p, &disks[i].size);
    if (e != NBDBACKUP_EXIT_OK) {
      nbdkit_error ("disk %s: cannot be backed up (see above)",
                    disks[i].name);
      goto out;
    }
    names[i] = disks[i].name;
  }
  e = group_repo_create (path, names, n, cmd, &g);
  if (e != NBDBACKUP_EXIT_OK)
    goto out;
  for (i = 0; i < n; ++i) {
    CLEANUP_FREE char *sub = group_disk_path (g, disks[i].name);
    struct repo *r;

    p->uri = disks[i].uri;
    p->control = disks[i].control;
    if (sub == NULL) {
      e = NBDBACKUP_EXIT_FAILED;
      goto out;
    }
    e = repo_create (sub, p, cmd, &r);
    if (e != NBDBACKUP_EXIT_OK)
      goto out;
    repo_close (r);
  }
  if (group_repo_save (g) == -1) {
    e = NBDBACKUP_EXIT_FAILED;
    goto out;
  }
  format_size (chunk, sizeof chunk, p->chunk_size);
  printf ("initialized group repository %s for %zu disks, chunk size %s\n",
          path, n, chunk);
  for (i = 0; i < n; ++i)
    printf ("  disk %s: %s (%" PRIu64 " bytes), control %s\n",
            disks[i].name, disks[i].uri, disks[i].size, disks[i].control);

 out:
  group_repo_close (g);
  for (i = 0; i < n; ++i)
    free (disks[i].control);
  return e;
}

int
init_main (int argc, char *argv[])
{
  enum { OPT_URI = 256, OPT_CONTROL, OPT_CHUNK_SIZE, OPT_SNAPSHOT_EXPORT,
         OPT_GROUP_DISK };
  static const struct option long_options[] = {
    { "chunk-size",      required_argument, NULL, OPT_CHUNK_SIZE },
    { "control",         required_argument, NULL, OPT_CONTROL },
    { "disk",            required_argument, NULL, OPT_GROUP_DISK },
    { "help",            no_argument,       NULL, 'h' },
    { "snapshot-export", required_argument, NULL, OPT_SNAPSHOT_EXPORT },
    { "uri",             required_argument, NULL, OPT_URI },
    { "verbose",         no_argument,       NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  const char *cmd = argv[0];
  struct repo_params p = {
    .snapshot_export = "snapshot", .chunk_size = DEFAULT_CHUNK_SIZE,
  };
  CLEANUP_FREE char *control_abs = NULL;
  struct group_disk disks[GROUP_MAX_DISKS];
  size_t nr_disks = 0;
  struct repo *r = NULL;
  uint64_t v, size;
  char chunk[32];
  int opt, e;

  while ((opt = getopt_long (argc, argv, "hv", long_options, NULL)) != -1) {
    switch (opt) {
    case OPT_URI:
      if (!is_nbd_uri (optarg))
        return usage_error (cmd, "--uri: '%s' is not an NBD URI "
                            "(nbd://..., nbd+unix://...)", optarg);
      p.uri = optarg;
      break;
    case OPT_GROUP_DISK:
      if (nr_disks == GROUP_MAX_DISKS)
        return usage_error (cmd, "--disk: at most %d disks",
                            GROUP_MAX_DISKS);
      e = parse_disk (cmd, optarg, disks, nr_disks);
      if (e != -1)
        return e;
      nr_disks++;
      break;
    case OPT_CONTROL:
      if (*optarg == '\0')
        return usage_error (cmd, "--control: empty socket path");
      p.control = optarg;
      break;
    case OPT_CHUNK_SIZE:
      if (!parse_size (optarg, &v) || v < DIGEST_MIN_CHUNK ||
          v > DIGEST_MAX_CHUNK || !is_power_of_2 (v))
        return usage_error (cmd, "--chunk-size: expected a power of 2 "
                            "from 4K to 16M, got '%s'", optarg);
      p.chunk_size = v;
      break;
    case OPT_SNAPSHOT_EXPORT:
      if (*optarg == '\0')
        return usage_error (cmd, "--snapshot-export: empty export name "
                            "(the snapshot is a named export)");
      p.snapshot_export = optarg;
      break;
    default:
      e = common_option (opt, cmd, init_usage);
      if (e != -1)
        return e;
    }
  }
  if (argc - optind < 1)
    return usage_error (cmd, "missing REPO");
  if (argc - optind > 1)
    return usage_error (cmd, "unexpected argument '%s' after REPO",
                        argv[optind + 1]);
  if (*argv[optind] == '\0')
    return usage_error (cmd, "REPO is empty");
  if (nr_disks && (p.uri || p.control))
    return usage_error (cmd, "--disk makes a group repository: give each "
                        "disk's URI and socket there, not --uri/--control");
  if (nr_disks)
    return init_group (cmd, argv[optind], &p, disks, nr_disks);
  if (p.uri == NULL)
    return usage_error (cmd, "--uri=NBD-URI is required (the live disk)");
  if (p.control == NULL)
    return usage_error (cmd, "--control=SOCKET is required (the server's "
                        "control socket)");
  stub_program_name = cmd;

  /* The catalog keeps an absolute path: cron runs elsewhere. */
  control_abs = nbdkit_absolute_path (p.control);
  if (control_abs == NULL)
    return NBDBACKUP_EXIT_FAILED;
  p.control = control_abs;

  catch_signals ();
  e = check_disk (&p, &size);
  if (e != NBDBACKUP_EXIT_OK)
    return e;

  e = repo_create (argv[optind], &p, cmd, &r);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  format_size (chunk, sizeof chunk, p.chunk_size);
  printf ("initialized repository %s for %s (%" PRIu64 " bytes), chunk "
          "size %s\n", argv[optind], p.uri, size, chunk);
  repo_close (r);
  return NBDBACKUP_EXIT_OK;
}
