/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup verify [OPTIONS] REPO
 *
 * Check every backup of a repository (or one, --id): the catalog
 * (read and checked in full by repo_open), each backup's chain of
 * files (point.c: regular files, qcow2 images the library opens, each
 * backing exactly its parent's file, the recorded size), its digest
 * list (its SHA-256 is the catalog's "digest"), and every chunk of the
 * disk as the chain serves it against the list (point-read.c).
 *
 * Every problem is reported, naming the backup and, for data, the
 * disk offset (the first POINT_MAX_REPORT per backup; the rest are
 * counted).  A flipped byte in a full backup's data is found in the
 * full and in every backup built on it that still reads that chunk
 * from it, so the report says which points in time are damaged.
 * verify goes on after a bad backup: the exit status is 1 if any was.
 */

#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json.h>

#include "nbdkit-stubs.h"
#include "copy.h"
#include "digest.h"
#include "nbdbackup.h"
#include "point.h"
#include "repo.h"
#include "group-repo.h"

struct verify {
  const char *repo;
  const char *id;               /* NULL: every backup */
  bool json;
  bool progress;
};

/* The outcome for one backup. */
struct result {
  const char *id;
  const char *level;
  bool ok;
  const char *problem;          /* NULL, or what failed before the data */
  struct point_read pr;
};

static void
verify_usage (const char *cmd)
{
  printf ("Usage: %s [OPTIONS] REPO\n"
          "\n"
          "Check every backup of the repository REPO (or one): the "
          "catalog, each\n"
          "backup's chain of qcow2 files, its digest list, and every "
          "chunk of\n"
          "the disk it serves against the recorded digests.\n"
          "\n"
          "Options:\n"
          "      --id=ID               check only this backup (and the "
          "files it is\n"
          "                            built on)\n"
          "      --progress            show a progress bar per backup even "
          "if stderr\n"
          "                            is not a terminal\n"
          "      --no-progress         never show the progress bar\n"
          "      --json                print the results as JSON on "
          "stdout\n"
          "      --disk=NAME           one disk of a group repository "
          "(default:\n"
          "                            every disk in turn)\n"
          HELP_VERBOSE_HELP
          "\n"
          "Exit status: 0 no errors, 1 errors found (or verify failed), 2 "
          "usage\n"
          "error, 5 the repository is busy.  See nbdbackup(1).\n",
          cmd);
}

static int
parse_options (int argc, char *argv[], struct verify *v)
{
  enum { OPT_ID = 256, OPT_JSON, OPT_PROGRESS, OPT_NO_PROGRESS };
  static const struct option long_options[] = {
    DISK_OPTION,
    { "help",        no_argument,       NULL, 'h' },
    { "id",          required_argument, NULL, OPT_ID },
    { "json",        no_argument,       NULL, OPT_JSON },
    { "no-progress", no_argument,       NULL, OPT_NO_PROGRESS },
    { "progress",    no_argument,       NULL, OPT_PROGRESS },
    { "verbose",     no_argument,       NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  const char *cmd = argv[0];
  int progress = -1, c, r;

  while ((c = getopt_long (argc, argv, "hv", long_options, NULL)) != -1) {
    switch (c) {
    case OPT_ID:
      v->id = optarg;
      break;
    case OPT_JSON:
      v->json = true;
      break;
    case OPT_PROGRESS:
      progress = 1;
      break;
    case OPT_NO_PROGRESS:
      progress = 0;
      break;
    default:
      r = common_option (c, cmd, verify_usage);
      if (r != -1)
        return r;
    }
  }
  if (argc - optind < 1)
    return usage_error (cmd, "missing REPO");
  if (argc - optind > 1)
    return usage_error (cmd, "unexpected argument '%s' after REPO",
                        argv[optind + 1]);
  v->repo = argv[optind];
  v->progress = progress == -1 ? isatty (STDERR_FILENO) : progress;
  return -1;
}

/* Check one backup into *res.  -1 only if verify must stop (a
 * signal).
 */
static int
verify_one (const struct verify *v, struct repo *r,
            const struct repo_entry *e, struct result *res)
{
  struct point p = { 0 };
  struct digests d = { 0 };
  struct copy_options opts = {
    .requests = 16, .chunk = 1024 * 1024, .progress = v->progress,
  };
  struct copy_stats stats = { 0 };

  res->id = e->id;
  res->level = repo_level_name (e->level);
  res->ok = false;
  if (point_open (r, e, &p) == -1) {
    res->problem = "its chain of files is damaged";
    goto out;
  }
  if (point_load_digests (&p, &d) == -1) {
    res->problem = "its digest list is damaged";
    goto out;
  }
  res->pr.connections = 1;
  res->pr.check = &d;
  res->pr.max_report = POINT_MAX_REPORT;
  if (point_read (&p, &res->pr, &opts, &stats) == 0)
    res->ok = true;
  else if (res->pr.mismatches == 0)
    res->problem = "it cannot be read";
  else if (res->pr.mismatches > res->pr.nr_offsets)
    nbdkit_error ("backup %s: %" PRIu64 " more chunks differ from the "
                  "recorded digests", e->id,
                  res->pr.mismatches - res->pr.nr_offsets);
 out:
  if (!res->ok && res->problem)
    nbdkit_error ("backup %s: %s", e->id, res->problem);
  digests_free (&d);
  point_close (&p);
  return interrupted_by != 0 ? -1 : 0;
}

static int
print_json (const struct verify *v, const struct result *res, size_t n,
            uint64_t bytes, unsigned bad)
{
  json_object *o = json_object_new_object (), *a = json_object_new_array ();
  size_t i;
  unsigned j;
  int r = 0;

  if (o == NULL || a == NULL) {
    nbdkit_error ("json: out of memory");
    json_object_put (o);
    json_object_put (a);
    return -1;
  }
  for (i = 0; i < n; ++i) {
    json_object *b = json_object_new_object ();
    json_object *offs = json_object_new_array ();

    json_object_object_add (b, "id", json_object_new_string (res[i].id));
    json_object_object_add (b, "level", json_object_new_string (res[i].level));
    json_object_object_add (b, "result",
                            json_object_new_string (res[i].ok ? "ok"
                                                    : "error"));
    json_object_object_add (b, "problem", res[i].problem ?
                            json_object_new_string (res[i].problem) : NULL);
    json_object_object_add (b, "bytes_verified",
                            json_object_new_int64 (res[i].pr.checked));
    json_object_object_add (b, "mismatches",
                            json_object_new_int64 (res[i].pr.mismatches));
    for (j = 0; j < res[i].pr.nr_offsets; ++j)
      json_object_array_add (offs,
                             json_object_new_int64 (res[i].pr.offsets[j]));
    json_object_object_add (b, "mismatch_offsets", offs);
    json_object_array_add (a, b);
  }
  json_object_object_add (o, "command", json_object_new_string ("verify"));
  json_object_object_add (o, "repository", json_object_new_string (v->repo));
  json_object_object_add (o, "backups", a);
  json_object_object_add (o, "bytes_verified", json_object_new_int64 (bytes));
  json_object_object_add (o, "backups_with_errors",
                          json_object_new_int (bad));
  json_object_object_add (o, "result",
                          json_object_new_string (bad ? "error" : "ok"));
  if (printf ("%s\n",
              json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN |
                                              JSON_C_TO_STRING_NOSLASHESCAPE))
      < 0)
    r = -1;
  json_object_put (o);
  return r;
}

static int verify_run (struct verify *vp);

static int
verify_disk (const char *path, const char *name, void *opaque)
{
  struct verify one = *(struct verify *) opaque;

  one.repo = path;
  return verify_run (&one);
}

int
verify_main (int argc, char *argv[])
{
  struct verify v = { 0 };
  int ret;

  ret = parse_options (argc, argv, &v);
  if (ret != -1)
    return ret;
  catch_signals ();
  if (repo_disk == NULL && group_repo_is (v.repo))
    return group_each_disk (v.repo, v.json, verify_disk, &v);
  return verify_run (&v);
}

/* The command on one disk's repository.  Returns an exit status. */
static int
verify_run (struct verify *vp)
{
  struct verify v = *vp;
  struct repo *r = NULL;
  struct result *res = NULL;
  const struct repo_entry *one = NULL;
  size_t n = 0, i;
  uint64_t bytes = 0;
  unsigned bad = 0;
  int ret;

  ret = repo_open (v.repo, REPO_LOCK_SHARED, "nbdbackup verify", &r);
  if (ret != NBDBACKUP_EXIT_OK)
    return ret;
  ret = NBDBACKUP_EXIT_FAILED;
  if (v.id && (one = point_find (r, v.id)) == NULL)
    goto out;
  res = calloc (r->nr_entries ? r->nr_entries : 1, sizeof *res);
  if (res == NULL) {
    nbdkit_error ("calloc: %m");
    goto out;
  }
  for (i = 0; i < r->nr_entries; ++i) {
    const struct repo_entry *e = &r->entries[i];

    if (one && e != one)
      continue;
    if (verify_one (&v, r, e, &res[n]) == -1)
      goto out;
    bytes += res[n].pr.checked;
    if (!res[n].ok)
      bad++;
    if (!v.json) {
      /* Flushed, so that it follows the backup's error messages. */
      printf ("backup %s (%s): %s\n", res[n].id, res[n].level,
              res[n].ok ? "ok" : "ERRORS");
      fflush (stdout);
    }
    n++;
  }

  if (v.json) {
    if (print_json (&v, res, n, bytes, bad) == -1) {
      perror ("stdout");
      goto out;
    }
  }
  else if (bad == 0) {
    char size[32];

    format_size (size, sizeof size, bytes);
    printf ("verified %zu backup%s, %" PRIu64 " bytes (%s), no errors\n",
            n, n == 1 ? "" : "s", bytes, size);
  }
  else
    nbdkit_error ("%u of %zu backup%s ha%s errors", bad, n,
                  n == 1 ? "" : "s", bad == 1 ? "s" : "ve");
  ret = bad ? NBDBACKUP_EXIT_FAILED : NBDBACKUP_EXIT_OK;
 out:
  free (res);
  repo_close (r);
  return ret;
}
