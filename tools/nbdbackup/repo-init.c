/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup init REPO --uri=NBD-URI --control=SOCKET
 *                [--chunk-size=SIZE] [--snapshot-export=NAME]
 *
 * Make a repository for one disk.  The server is checked first (it
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
#include "repo-server.h"

#define DEFAULT_CHUNK_SIZE (64 * 1024)

static void
init_usage (const char *cmd)
{
  printf ("Usage: %s REPO --uri=NBD-URI --control=SOCKET [OPTIONS]\n"
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
          cmd);
}

int
init_main (int argc, char *argv[])
{
  enum { OPT_URI = 256, OPT_CONTROL, OPT_CHUNK_SIZE, OPT_SNAPSHOT_EXPORT };
  static const struct option long_options[] = {
    { "chunk-size",      required_argument, NULL, OPT_CHUNK_SIZE },
    { "control",         required_argument, NULL, OPT_CONTROL },
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
  struct control *c;
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
  c = control_connect (p.control);
  if (c == NULL)
    return NBDBACKUP_EXIT_FAILED;
  e = server_check (c);
  control_close (c);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  if (server_disk_size (p.uri, &size) == -1)
    return NBDBACKUP_EXIT_FAILED;

  e = repo_create (argv[optind], &p, cmd, &r);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  format_size (chunk, sizeof chunk, p.chunk_size);
  printf ("initialized repository %s for %s (%" PRIu64 " bytes), chunk "
          "size %s\n", argv[optind], p.uri, size, chunk);
  repo_close (r);
  return NBDBACKUP_EXIT_OK;
}
