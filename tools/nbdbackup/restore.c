/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup restore [OPTIONS] REPO TARGET
 *
 * Write a point in time of a repository to a raw file, a new qcow2
 * image or an NBD URI.  The point is served by nbdkit and copied with
 * pull's engine (point-read.c): sparse, several requests in flight, a
 * progress bar, and every chunk checked against the backup's digest
 * list as it is read, before it is written (--no-verify skips that).
 *
 * Like pull: TARGET is checked before anything starts, a file is
 * written as TARGET.incomplete and renamed only when complete,
 * flushed and verified; an existing file is replaced only with
 * --force.  A digest mismatch fails the restore and leaves the
 * target incomplete.  The repository is only read, under its shared
 * lock.
 */

#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <json.h>

#include "files.h"
#include "nbd-uri.h"
#include "nbdkit-stubs.h"
#include "parse.h"
#include "cleanup.h"
#include "chain.h"
#include "copy.h"
#include "digest.h"
#include "nbdbackup.h"
#include "point.h"
#include "repo.h"
#include "group-repo.h"
#include "target.h"

#define DEFAULT_REQUESTS 16
#define MAX_REQUESTS 1024
#define MAX_CONNECTIONS 16
#define CHUNK (1024 * 1024)

struct restore {
  const char *repo;
  const char *id;
  const char *target;
  struct target_options topts;
  bool force;
  bool verify;
  bool json;
  unsigned connections;
  struct copy_options copy;
};

static void
restore_usage (const char *cmd)
{
  printf ("Usage: %s [OPTIONS] REPO TARGET\n"
          "\n"
          "Write a backup of the repository REPO to TARGET: a raw file, a "
          "new\n"
          "qcow2 image or an NBD URI, checking every chunk against the "
          "backup's\n"
          "digests as it is written.  A file TARGET is written as\n"
          "TARGET.incomplete and renamed to TARGET only when complete.\n"
          "\n"
          "Options:\n"
          "      --id=ID               the backup to restore (default: the "
          "newest)\n"
          "      --disk=NAME           the disk of a group repository; "
          "without it,\n"
          "                            every disk is restored into the "
          "directory\n"
          "                            TARGET as NAME.img (NAME.qcow2 with "
          "-f qcow2)\n"
          "  -f, --format=raw|qcow2    format of a file TARGET (default: "
          "qcow2 if\n"
          "                            TARGET ends in .qcow2 or .qcow, else "
          "raw)\n"
          "      --force               replace an existing TARGET\n"
          "      --no-verify           do not check the digests\n"
          "  -C, --connections=N       connections to the served backup "
          "(default 1)\n"
          "  -R, --requests=N          requests in flight per connection "
          "(default %d)\n"
          "      --progress            show the progress bar even if stderr "
          "is not\n"
          "                            a terminal\n"
          "      --no-progress         never show the progress bar\n"
          "      --json                print a JSON summary on stdout at "
          "the end\n"
          HELP_VERBOSE_HELP
          "\n"
          "Exit status: 0 success, 1 failed (a digest mismatch among "
          "others),\n"
          "2 usage error, 5 the repository is busy.  See nbdbackup(1).\n",
          cmd, DEFAULT_REQUESTS);
}

static int
parse_options (int argc, char *argv[], struct restore *rs)
{
  enum {
    OPT_ID = 256, OPT_FORCE, OPT_NO_VERIFY, OPT_PROGRESS, OPT_NO_PROGRESS,
    OPT_JSON,
  };
  static const struct option long_options[] = {
    { "connections", required_argument, NULL, 'C' },
    { "force",       no_argument,       NULL, OPT_FORCE },
    { "format",      required_argument, NULL, 'f' },
    DISK_OPTION,
    { "help",        no_argument,       NULL, 'h' },
    { "id",          required_argument, NULL, OPT_ID },
    { "json",        no_argument,       NULL, OPT_JSON },
    { "no-progress", no_argument,       NULL, OPT_NO_PROGRESS },
    { "no-verify",   no_argument,       NULL, OPT_NO_VERIFY },
    { "progress",    no_argument,       NULL, OPT_PROGRESS },
    { "requests",    required_argument, NULL, 'R' },
    { "verbose",     no_argument,       NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  const char *cmd = argv[0];
  enum target_format format = TARGET_AUTO;
  int progress = -1, c, r;

  while ((c = getopt_long (argc, argv, "C:f:hR:v", long_options,
                           NULL)) != -1) {
    switch (c) {
    case OPT_ID:
      rs->id = optarg;
      break;
    case 'f':
      if (strcmp (optarg, "raw") != 0 && strcmp (optarg, "qcow2") != 0)
        return usage_error (cmd, "--format: expected raw or qcow2, got '%s'",
                            optarg);
      target_parse_format (optarg, &format);
      break;
    case OPT_FORCE:
      rs->force = true;
      break;
    case OPT_NO_VERIFY:
      rs->verify = false;
      break;
    case 'C':
      if (!parse_unsigned (optarg, 1, MAX_CONNECTIONS, &rs->connections))
        return usage_error (cmd, "--connections: expected an integer from "
                            "1 to %d, got '%s'", MAX_CONNECTIONS, optarg);
      break;
    case 'R':
      if (!parse_unsigned (optarg, 1, MAX_REQUESTS, &rs->copy.requests))
        return usage_error (cmd, "--requests: expected an integer from "
                            "1 to %d, got '%s'", MAX_REQUESTS, optarg);
      break;
    case OPT_PROGRESS:
      progress = 1;
      break;
    case OPT_NO_PROGRESS:
      progress = 0;
      break;
    case OPT_JSON:
      rs->json = true;
      break;
    default:
      r = common_option (c, cmd, restore_usage);
      if (r != -1)
        return r;
    }
  }
  if (argc - optind < 2)
    return usage_error (cmd, "missing %s",
                        argc == optind ? "REPO and TARGET" : "TARGET");
  if (argc - optind > 2)
    return usage_error (cmd, "unexpected argument '%s' after TARGET",
                        argv[optind + 2]);
  rs->repo = argv[optind];
  rs->target = argv[optind + 1];

  if (is_nbd_uri (rs->target)) {
    if (format)
      return usage_error (cmd, "--format applies only to a file TARGET, "
                          "and '%s' is an NBD URI", rs->target);
    if (rs->force)
      return usage_error (cmd, "--force applies only to a file TARGET, "
                          "and '%s' is an NBD URI", rs->target);
    rs->topts.format = TARGET_NBD;
  }
  else {
    if (*rs->target == '\0')
      return usage_error (cmd, "TARGET is empty");
    rs->topts.format = target_format_of (format, rs->target);
  }
  rs->topts.replace = true;
  rs->copy.progress = progress == -1 ? isatty (STDERR_FILENO) : progress;
  return -1;
}

/* Before anything else: TARGET may be written.  0 or -1 (reported). */
static int
check_target (const struct restore *rs)
{
  char msg[512];
  struct stat st;

  if (rs->topts.format == TARGET_NBD)
    return 0;
  if (target_check ("target", rs->target, &rs->topts, msg,
                    sizeof msg) == -1) {
    nbdkit_error ("%s", msg);
    return -1;
  }
  if (!rs->force && lstat (rs->target, &st) == 0) {
    nbdkit_error ("target: %s: already exists (use --force to replace it)",
                  rs->target);
    return -1;
  }
  if (rs->force && chain_check_replace (rs->target) == -1)
    return -1;
  return 0;
}

static struct target *
open_target (void *opaque, uint64_t size)
{
  struct restore *rs = opaque;

  rs->topts.connections = rs->connections;
  return target_open ("target", rs->target, size, &rs->topts);
}

/* A double with a fixed number of decimals, as JSON. */
static json_object *
json_fixed (double v, int decimals)
{
  char buf[64];

  snprintf (buf, sizeof buf, "%.*f", decimals, v);
  return json_object_new_double_s (v, buf);
}

static int
print_summary (const struct restore *rs, const char *id,
               const struct copy_stats *st, const struct point_read *pr,
               double seconds, bool ok)
{
  json_object *o = json_object_new_object ();
  const char *err = log_first_error ();
  int r = 0;

  if (o == NULL) {
    nbdkit_error ("json_object_new_object: out of memory");
    return -1;
  }
  json_object_object_add (o, "command", json_object_new_string ("restore"));
  json_object_object_add (o, "repository", json_object_new_string (rs->repo));
  json_object_object_add (o, "id", id ? json_object_new_string (id) : NULL);
  json_object_object_add (o, "target", json_object_new_string (rs->target));
  json_object_object_add (o, "format",
                          json_object_new_string
                          (target_format_name (rs->topts.format)));
  json_object_object_add (o, "bytes_total", json_object_new_int64 (st->total));
  json_object_object_add (o, "bytes_copied",
                          json_object_new_int64 (st->copied));
  json_object_object_add (o, "bytes_zero", json_object_new_int64 (st->zero));
  json_object_object_add (o, "verified", json_object_new_boolean (rs->verify));
  json_object_object_add (o, "bytes_verified",
                          json_object_new_int64 (pr->checked));
  json_object_object_add (o, "mismatches",
                          json_object_new_int64 (pr->mismatches));
  json_object_object_add (o, "seconds", json_fixed (seconds, 3));
  json_object_object_add (o, "result",
                          json_object_new_string (ok ? "ok" : "error"));
  json_object_object_add (o, "error",
                          ok ? NULL :
                          json_object_new_string (err ? err : "failed"));
  if (printf ("%s\n",
              json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN |
                                              JSON_C_TO_STRING_NOSLASHESCAPE))
      < 0)
    r = -1;
  json_object_put (o);
  return r;
}

static int restore_run (struct restore *rs);

/* A group repository without --disk: backup rs->id of every disk
 * (default: the newest group backup) into the directory rs->target,
 * as NAME.img (raw) or NAME.qcow2 (--format=qcow2).
 */
static int
restore_group (struct restore *rs)
{
  struct group_repo *g = NULL;
  const char *id = rs->id;
  struct stat st;
  size_t i;
  int e;

  if (rs->topts.format == TARGET_NBD) {
    nbdkit_error ("repository %s is a group of disks: restore one disk to "
                  "an NBD URI with --disk=NAME, or every disk into a "
                  "directory", rs->repo);
    return NBDBACKUP_EXIT_FAILED;
  }
  e = group_repo_open (rs->repo, REPO_LOCK_SHARED, "nbdbackup restore", &g);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  e = NBDBACKUP_EXIT_FAILED;
  if (id == NULL && g->nr_backups == 0) {
    nbdkit_error ("repository %s: no group backup yet", rs->repo);
    goto out;
  }
  if (id == NULL)
    id = g->backups[g->nr_backups - 1].id;
  else if (group_find (g, id) == NULL) {
    nbdkit_error ("repository %s: no group backup with id '%s'", rs->repo,
                  id);
    goto out;
  }
  if (mkdir (rs->target, 0700) == -1 && errno != EEXIST) {
    nbdkit_error ("target directory %s: %m", rs->target);
    goto out;
  }
  if (lstat (rs->target, &st) == -1 || !S_ISDIR (st.st_mode)) {
    nbdkit_error ("target %s: is not a directory (a group repository is "
                  "restored into a directory, one file per disk; or choose "
                  "one disk with --disk=NAME)", rs->target);
    goto out;
  }
  e = NBDBACKUP_EXIT_OK;
  for (i = 0; i < g->nr_disks && e == NBDBACKUP_EXIT_OK; ++i) {
    CLEANUP_FREE char *sub = group_disk_path (g, g->disks[i]);
    CLEANUP_FREE char *target = NULL;
    struct restore one = *rs;

    if (sub == NULL ||
        asprintf (&target, "%s/%s.%s", rs->target, g->disks[i],
                  rs->topts.format == TARGET_QCOW2 ? "qcow2" : "img") == -1) {
      nbdkit_error ("malloc: %m");
      e = NBDBACKUP_EXIT_FAILED;
      break;
    }
    one.repo = sub;
    one.id = id;
    one.target = target;
    e = restore_run (&one);
    if (e == NBDBACKUP_EXIT_OK && !rs->json)
      printf ("restored disk %s of backup %s to %s\n", g->disks[i], id,
              target);
  }
 out:
  group_repo_close (g);
  return e;
}

int
restore_main (int argc, char *argv[])
{
  struct restore rs = {
    .verify = true,
    .connections = 1,
    .copy = { .requests = DEFAULT_REQUESTS, .chunk = CHUNK },
  };
  int r;

  r = parse_options (argc, argv, &rs);
  if (r != -1)
    return r;
  catch_signals ();
  if (repo_disk == NULL && group_repo_is (rs.repo))
    return restore_group (&rs);
  return restore_run (&rs);
}

/* Restore rs->id (or the newest) of the repository rs->repo into
 * rs->target.  Returns an exit status.
 */
static int
restore_run (struct restore *rsp)
{
  struct restore rs = *rsp;
  struct repo *repo = NULL;
  const struct repo_entry *e = NULL;
  struct point p = { 0 };
  struct digests d = { 0 };
  struct point_read pr = { 0 };
  struct copy_stats stats = { 0 };
  double start;
  int r, ret = NBDBACKUP_EXIT_FAILED;

  start = monotonic_seconds ();

  if (check_target (&rs) == -1)
    goto out;
  r = repo_open (rs.repo, REPO_LOCK_SHARED, "nbdbackup restore", &repo);
  if (r != NBDBACKUP_EXIT_OK) {
    ret = r;
    goto out;
  }
  e = point_find (repo, rs.id);
  if (e == NULL || point_open (repo, e, &p) == -1)
    goto out;
  if (rs.verify && point_load_digests (&p, &d) == -1)
    goto out;

  pr.connections = rs.connections;
  pr.check = rs.verify ? &d : NULL;
  pr.max_report = 1;
  pr.stop_at_mismatch = true;
  pr.open_target = open_target;
  pr.opaque = &rs;
  if (point_read (&p, &pr, &rs.copy, &stats) == 0)
    ret = NBDBACKUP_EXIT_OK;
  else if (pr.mismatches > 0 && rs.topts.format != TARGET_NBD)
    nbdkit_error ("target %s: not restored; %s.incomplete is left as it "
                  "is", rs.target, rs.target);

 out:
  if (rs.json &&
      print_summary (&rs, e ? e->id : NULL, &stats, &pr,
                     monotonic_seconds () - start,
                     ret == NBDBACKUP_EXIT_OK) == -1) {
    perror ("stdout");
    ret = NBDBACKUP_EXIT_FAILED;
  }
  digests_free (&d);
  point_close (&p);
  repo_close (repo);
  return ret;
}
