/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup prune REPO --keep-last=N
 *
 * Notes on the design: keep the newest N backups, each restorable,
 * and remove the others.  A kept backup whose parent is removed is
 * "folded": its point in time becomes a standalone full backup under
 * the same name, so the kept backups built on it (whose backing file
 * is named "ID.qcow2") stay valid without being touched.  The order
 * makes every step safe to interrupt:
 *
 *   1. For each backup X to fold: write its served chain to
 *      X.qcow2.new (a qcow2 image without backing; written as
 *      X.qcow2.new.incomplete and renamed when complete), checking
 *      every chunk against X.digests as it is read, then serve the
 *      new file alone and check every chunk of it again.  Any failure
 *      removes the new files: the repository is as it was.
 *   2. Record {"op": "prune", "fold": [...], "drop": [...]} as the
 *      catalog's pending operation.
 *   3. Rename each X.qcow2.new over X.qcow2 (same content, now
 *      standalone), mark X full with no parent in the catalog, remove
 *      the dropped entries, save; delete the dropped backups' files;
 *      clear pending, save.
 *
 * A crash before 2 leaves only stray .new files (the next prune
 * replaces them).  A crash after 2 leaves pending: every new file was
 * complete and checked before it was recorded, so step 3 can always
 * be finished forward, and is, by the next command that takes the
 * exclusive lock (repo_open calls prune_finish_interrupted); step 3
 * is idempotent.  Until then commands under the shared lock refuse
 * the repository, whose files may be half renamed.
 *
 * The server's bitmaps are not touched: the diff bitmap then counts
 * changes since the first full backup that was dropped, a superset
 * of the changes since the folded one, which a diff may copy.
 */

#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "nbdkit-stubs.h"
#include "parse.h"
#include "publish.h"
#include "copy.h"
#include "digest.h"
#include "nbdbackup.h"
#include "point.h"
#include "prune.h"
#include "repo.h"
#include "group-repo.h"
#include "target.h"

struct prune {
  const char *repo;
  unsigned keep;
  bool progress;
};

static void
prune_usage (const char *cmd)
{
  printf ("Usage: %s --keep-last=N [OPTIONS] REPO\n"
          "\n"
          "Keep the newest N backups of the repository REPO, each "
          "restorable, and\n"
          "remove the others.  A kept backup built on a removed one "
          "becomes a\n"
          "standalone full backup first, checked against its digests "
          "before it\n"
          "replaces anything.\n"
          "\n"
          "Options:\n"
          "      --keep-last=N         the number of backups to keep (at "
          "least 1)\n"
          "      --progress            show the progress bar even if stderr "
          "is not\n"
          "                            a terminal\n"
          "      --no-progress         never show the progress bar\n"
          "      --disk=NAME           one disk of a group repository "
          "(default:\n"
          "                            every disk in turn)\n"
          HELP_VERBOSE_HELP
          "\n"
          "Exit status: 0 success, 1 failed (the repository is as it was), "
          "2 usage\n"
          "error, 5 the repository is busy.  See nbdbackup(1).\n",
          cmd);
}

static int
parse_options (int argc, char *argv[], struct prune *pr)
{
  enum { OPT_KEEP_LAST = 256, OPT_PROGRESS, OPT_NO_PROGRESS };
  static const struct option long_options[] = {
    DISK_OPTION,
    { "help",        no_argument,       NULL, 'h' },
    { "keep-last",   required_argument, NULL, OPT_KEEP_LAST },
    { "no-progress", no_argument,       NULL, OPT_NO_PROGRESS },
    { "progress",    no_argument,       NULL, OPT_PROGRESS },
    { "verbose",     no_argument,       NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  const char *cmd = argv[0];
  int progress = -1, c, r;

  while ((c = getopt_long (argc, argv, "hv", long_options, NULL)) != -1) {
    switch (c) {
    case OPT_KEEP_LAST:
      if (!parse_unsigned (optarg, 1, 1000000, &pr->keep))
        return usage_error (cmd, "--keep-last: expected an integer from 1 "
                            "to 1000000, got '%s'", optarg);
      break;
    case OPT_PROGRESS:
      progress = 1;
      break;
    case OPT_NO_PROGRESS:
      progress = 0;
      break;
    default:
      r = common_option (c, cmd, prune_usage);
      if (r != -1)
        return r;
    }
  }
  if (argc - optind < 1)
    return usage_error (cmd, "missing REPO");
  if (argc - optind > 1)
    return usage_error (cmd, "unexpected argument '%s' after REPO",
                        argv[optind + 1]);
  if (pr->keep == 0)
    return usage_error (cmd, "missing --keep-last=N");
  pr->repo = argv[optind];
  pr->progress = progress == -1 ? isatty (STDERR_FILENO) : progress;
  return -1;
}

/* "REPO/ID.qcow2.new", malloc'd, or NULL (reported). */
static char *
new_file (const struct repo *r, const struct repo_entry *e)
{
  char *name, *path;

  if (asprintf (&name, "%s.new", e->file) == -1) {
    nbdkit_error ("asprintf: %m");
    return NULL;
  }
  path = repo_file (r, name);
  free (name);
  return path;
}

/* Remove path and path.incomplete (if there). */
static void
remove_new (const char *path)
{
  char *inc = incomplete_name (path);

  if (unlink (path) == -1 && errno != ENOENT)
    warning ("%s: %m", path);
  if (inc && unlink (inc) == -1 && errno != ENOENT)
    warning ("%s: %m", inc);
  free (inc);
}

struct new_target {
  const char *path;
  struct target_options topts;
};

static struct target *
open_new (void *opaque, uint64_t size)
{
  struct new_target *nt = opaque;

  return target_open ("prune", nt->path, size, &nt->topts);
}

/* Step 1 for backup e: X.qcow2.new, its point in time standalone,
 * checked twice.  0 or -1 (reported; nothing left behind).
 */
static int
make_standalone (const struct prune *pr, struct repo *r,
                 const struct repo_entry *e)
{
  struct point p = { 0 }, q;
  struct digests d = { 0 };
  struct new_target nt = {
    .topts = { .format = TARGET_QCOW2, .replace = true, .connections = 1 },
  };
  struct point_read rd = {
    .connections = 1, .check = &d, .max_report = 1,
    .stop_at_mismatch = true, .open_target = open_new, .opaque = &nt,
  };
  struct point_read rd2 = {
    .connections = 1, .check = &d, .max_report = 1,
    .stop_at_mismatch = true,
  };
  struct copy_options opts = {
    .requests = 16, .chunk = 1024 * 1024, .progress = pr->progress,
  };
  struct copy_stats stats = { 0 };
  char *path = NULL, msg[512];
  int ret = -1;

  path = new_file (r, e);
  if (path == NULL)
    return -1;
  nt.path = path;
  if (point_open (r, e, &p) == -1 || point_load_digests (&p, &d) == -1)
    goto out;
  if (target_check ("prune", path, &nt.topts, msg, sizeof msg) == -1) {
    nbdkit_error ("%s", msg);
    goto out;
  }
  if (point_read (&p, &rd, &opts, &stats) == -1)
    goto out;
  /* The result alone, as it will be served once renamed. */
  q = p;
  q.file = path;
  opts = (struct copy_options) {
    .requests = 16, .chunk = 1024 * 1024, .progress = pr->progress,
  };
  if (point_read (&q, &rd2, &opts, &stats) == -1) {
    nbdkit_error ("backup %s: the standalone copy %s does not read back "
                  "as the backup", e->id, path);
    goto out;
  }
  ret = 0;
 out:
  if (ret == -1)
    remove_new (path);
  digests_free (&d);
  point_close (&p);
  free (path);
  return ret;
}

static bool
in_list (char **list, size_t n, const char *id)
{
  size_t i;

  for (i = 0; i < n; ++i)
    if (strcmp (list[i], id) == 0)
      return true;
  return false;
}

/* Unlink REPO/name, if it is there.  Failures are warnings. */
static void
remove_file (const struct repo *r, const char *id, const char *suffix)
{
  char *name = NULL, *path = NULL;

  if (asprintf (&name, "%s%s", id, suffix) == -1 ||
      (path = repo_file (r, name)) == NULL) {
    warning ("cannot remove %s%s: out of memory", id, suffix);
    free (name);
    return;
  }
  if (unlink (path) == -1 && errno != ENOENT)
    warning ("%s: %m", path);
  free (name);
  free (path);
}

/* Step 3, from r->pending (a prune): idempotent.  0 or -1
 * (reported; pending stays for the next try).
 */
static int
finish_prune (struct repo *r)
{
  struct repo_pending *pd = r->pending;
  struct stat st;
  size_t i, j;

  for (i = 0; i < r->nr_entries; ++i) {
    struct repo_entry *e = &r->entries[i];
    char *path, *newp, *reason;

    if (!in_list (pd->fold, pd->nr_fold, e->id))
      continue;
    newp = new_file (r, e);
    path = repo_file (r, e->file);
    if (newp == NULL || path == NULL ||
        (lstat (newp, &st) == 0 &&
         rename_durably ("prune", newp, path) == -1)) {
      free (newp);
      free (path);
      return -1;
    }
    free (newp);
    free (path);
    if (e->level == REPO_FULL)
      continue;                 /* already done */
    if (asprintf (&reason, "made a full backup by prune (it was %s on "
                  "%s)", repo_level_name (e->level), e->parent) == -1) {
      nbdkit_error ("asprintf: %m");
      return -1;
    }
    free (e->reason);
    e->reason = reason;
    e->level = REPO_FULL;
    free (e->parent);
    e->parent = NULL;
    free (e->bitmap);
    e->bitmap = NULL;
  }
  for (i = j = 0; i < r->nr_entries; ++i) {
    if (in_list (pd->drop, pd->nr_drop, r->entries[i].id))
      repo_entry_clear (&r->entries[i]);
    else
      r->entries[j++] = r->entries[i];
  }
  r->nr_entries = j;
  if (repo_save (r) == -1)
    return -1;

  for (i = 0; i < pd->nr_drop; ++i) {
    remove_file (r, pd->drop[i], ".qcow2");
    remove_file (r, pd->drop[i], ".digests");
  }
  r->pending = NULL;
  if (repo_save (r) == -1) {
    r->pending = pd;
    return -1;
  }
  repo_pending_free (pd);
  return 0;
}

int
prune_finish_interrupted (struct repo *r, enum repo_lock_mode mode,
                          const char *cmd)
{
  if (mode != REPO_LOCK_EXCLUSIVE) {
    nbdkit_error ("repository %s: a prune was interrupted and its files "
                  "may be half renamed: run 'nbdbackup prune' (or any "
                  "command that writes the repository) to finish it",
                  r->path);
    return -1;
  }
  if (finish_prune (r) == -1) {
    nbdkit_error ("repository %s: cannot finish the interrupted prune",
                  r->path);
    return -1;
  }
  fprintf (stderr, "%s: finished the interrupted prune of %s\n", cmd,
           r->path);
  return 0;
}

/* Steps 1 to 3 for a repository with more than pr->keep backups. */
static int
do_prune (const struct prune *pr, struct repo *r)
{
  size_t n = r->nr_entries, first = n - pr->keep, i, k;
  struct repo_pending *pd;

  pd = calloc (1, sizeof *pd);
  if (pd == NULL ||
      (pd->fold = calloc (pr->keep, sizeof *pd->fold)) == NULL ||
      (pd->drop = calloc (first, sizeof *pd->drop)) == NULL ||
      (pd->op = strdup ("prune")) == NULL) {
    nbdkit_error ("calloc: %m");
    repo_pending_free (pd);
    return -1;
  }
  for (i = 0; i < first; ++i)
    if ((pd->drop[pd->nr_drop++] = strdup (r->entries[i].id)) == NULL)
      goto nomem;
  /* The kept backups whose parent goes. */
  for (i = first; i < n; ++i) {
    const struct repo_entry *e = &r->entries[i];

    if (e->parent == NULL)
      continue;
    for (k = first; k < i; ++k)
      if (strcmp (r->entries[k].id, e->parent) == 0)
        break;
    if (k < i)
      continue;
    if ((pd->fold[pd->nr_fold++] = strdup (e->id)) == NULL)
      goto nomem;
  }

  /* Step 1. */
  for (i = 0; i < pd->nr_fold; ++i) {
    if (make_standalone (pr, r, repo_find (r, pd->fold[i])) == -1) {
      for (k = 0; k < i; ++k) {
        char *path = new_file (r, repo_find (r, pd->fold[k]));

        if (path)
          remove_new (path);
        free (path);
      }
      nbdkit_error ("prune stopped: the repository is as it was");
      repo_pending_free (pd);
      return -1;
    }
  }

  /* Steps 2 and 3. */
  r->pending = pd;
  if (repo_save (r) == -1) {
    r->pending = NULL;
    repo_pending_free (pd);
    return -1;
  }
  /* Recorded: from here on the prune happens, now or (if this fails)
   * at the next command that takes the exclusive lock.
   */
  for (i = 0; i < pd->nr_fold; ++i)
    printf ("backup %s: now a full backup\n", pd->fold[i]);
  for (i = 0; i < pd->nr_drop; ++i)
    printf ("backup %s: removed\n", pd->drop[i]);
  return finish_prune (r);

 nomem:
  nbdkit_error ("strdup: %m");
  repo_pending_free (pd);
  return -1;
}

static int prune_run (struct prune *prp);

static int
prune_disk (const char *path, const char *name, void *opaque)
{
  struct prune one = *(struct prune *) opaque;

  one.repo = path;
  return prune_run (&one);
}

int
prune_main (int argc, char *argv[])
{
  struct prune pr = { 0 };
  int ret;

  ret = parse_options (argc, argv, &pr);
  if (ret != -1)
    return ret;
  catch_signals ();
  if (repo_disk == NULL && group_repo_is (pr.repo)) {
    ret = group_each_disk (pr.repo, false, prune_disk, &pr);
    if (ret == NBDBACKUP_EXIT_OK)
      ret = group_forget_missing (pr.repo, "nbdbackup prune");
    return ret;
  }
  if (repo_disk && group_repo_is (pr.repo)) {
    ret = prune_run (&pr);
    if (ret == NBDBACKUP_EXIT_OK)
      ret = group_forget_missing (pr.repo, "nbdbackup prune");
    return ret;
  }
  return prune_run (&pr);
}

/* The command on one disk's repository.  Returns an exit status. */
static int
prune_run (struct prune *prp)
{
  struct prune pr = *prp;
  struct repo *r = NULL;
  int ret;

  ret = repo_open (pr.repo, REPO_LOCK_EXCLUSIVE, "nbdbackup prune", &r);
  if (ret != NBDBACKUP_EXIT_OK)
    return ret;
  ret = NBDBACKUP_EXIT_FAILED;
  /* A pending "finish" only concerns the server, not the files. */
  if (r->pending && strcmp (r->pending->op, "finish") != 0) {
    nbdkit_error ("repository %s: backup %s was interrupted: run "
                  "'nbdbackup backup' to roll it back first", pr.repo,
                  r->pending->id);
    goto out;
  }
  if (r->nr_entries <= pr.keep) {
    printf ("nothing to prune: %zu backup%s, keeping the last %u\n",
            r->nr_entries, r->nr_entries == 1 ? "" : "s", pr.keep);
    ret = NBDBACKUP_EXIT_OK;
    goto out;
  }
  if (do_prune (&pr, r) == 0) {
    printf ("kept the last %u backups of %s\n", pr.keep, pr.repo);
    ret = NBDBACKUP_EXIT_OK;
  }
 out:
  repo_close (r);
  return ret;
}
