/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup backup REPO, where REPO is a group repository
 * (group-repo.h): every disk backed up at one instant.
 *
 * Under REPO's exclusive lock and every disk repository's:
 *
 *   0. each disk: complete or roll back what a crash left pending,
 *      remove stale bitmaps (repo-backup.c);
 *   1. each disk: choose its level; with --level=auto, if any disk
 *      needs a full backup, every disk takes one (said, with why), so
 *      that a group backup is one kind of backup;
 *   2. one id, free in every disk; each disk writes its pending record
 *      and builds its transaction (bitmap rotation + snapshot-start);
 *   3. ONE group transaction over every server (group.c):
 *      group-prepare closes every write gate, group-commit applies
 *      every disk's transaction.  If it fails before any commit,
 *      nothing was applied anywhere: the pending records are simply
 *      cleared (each catalog is as before);
 *   4. every disk copied, at most --parallel at a time;
 *   5. if any disk failed: every disk rolled back as for one disk
 *      (bitmaps merged back, files removed).  Else each disk's catalog
 *      names its backup, then group.json names the group backup (the
 *      group backup exists from this write on), then each snapshot is
 *      stopped and the old bitmaps removed.
 *
 * A crash leaves each disk's pending record for the next run (step 0);
 * a crash between the disks' catalog writes leaves some disks with a
 * backup that group.json does not name: a good backup of that disk,
 * never listed as a group backup.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <json.h>

#include "cleanup.h"
#include "files.h"
#include "minmax.h"
#include "nbdkit-stubs.h"
#include "nbdbackup.h"
#include "group.h"
#include "group-backup.h"
#include "group-repo.h"
#include "repo-backup.h"

struct gbackup {
  const struct backup *opts;    /* the command's options */
  const struct group_options_cli *cli;
  struct group_repo *g;
  struct backup *d;             /* one per disk */
  struct server_bitmaps *bm;
  size_t n;
  char *id;
  struct group_result res;
  bool transacted;              /* the transaction was applied */

  /* Step 4. */
  pthread_mutex_t lock;
  size_t next;                  /* the next disk to copy */
  bool copy_failed;
};

/* An id for instant t free in every disk (catalog and files). */
static char *
group_new_id (struct gbackup *gb, time_t t)
{
  struct tm tm;
  char base[32], *id;
  unsigned n;
  size_t i;

  gmtime_r (&t, &tm);
  strftime (base, sizeof base, "%Y%m%d-%H%M%S", &tm);
  for (n = 1; n < 100000; ++n) {
    bool free_everywhere = true;

    if (n == 1)
      id = strdup (base);
    else if (asprintf (&id, "%s.%u", base, n) == -1)
      id = NULL;
    if (id == NULL) {
      nbdkit_error ("malloc: %m");
      return NULL;
    }
    free_everywhere = group_find (gb->g, id) == NULL;
    for (i = 0; free_everywhere && i < gb->n; ++i) {
      CLEANUP_FREE char *file = NULL;
      struct stat st;

      if (asprintf (&file, "%s/%s.qcow2", gb->d[i].r->path, id) == -1) {
        free (id);
        nbdkit_error ("malloc: %m");
        return NULL;
      }
      free_everywhere = repo_find (gb->d[i].r, id) == NULL &&
        lstat (file, &st) == -1 && errno == ENOENT;
    }
    if (free_everywhere)
      return id;
    free (id);
  }
  nbdkit_error ("repository %s: no free backup id for %s",
                gb->g->dir->path, base);
  return NULL;
}

/* Steps 0 and 1 for every disk. */
static int
open_and_choose (struct gbackup *gb)
{
  size_t i, full = gb->n;
  int e;

  for (i = 0; i < gb->n; ++i) {
    struct backup *b = &gb->d[i];
    CLEANUP_FREE char *sub = group_disk_path (gb->g, gb->g->disks[i]);

    if (sub == NULL)
      return NBDBACKUP_EXIT_FAILED;
    e = repo_open (sub, REPO_LOCK_EXCLUSIVE, b->cmd, &b->r);
    if (e != NBDBACKUP_EXIT_OK)
      return e;
    b->c = control_connect (b->r->control);
    if (b->c == NULL) {
      nbdkit_error ("disk %s: its server cannot be reached: no disk was "
                    "backed up", gb->g->disks[i]);
      return NBDBACKUP_EXIT_FAILED;
    }
    e = backup_recover (b);
    if (e == NBDBACKUP_EXIT_OK)
      e = backup_choose (b, &gb->bm[i]);
    if (e != NBDBACKUP_EXIT_OK) {
      nbdkit_error ("disk %s: no disk was backed up", gb->g->disks[i]);
      return e;
    }
    if (b->ch.level == REPO_FULL && full == gb->n)
      full = i;
  }

  /* auto: one full makes them all full. */
  if (gb->opts->requested == LEVEL_AUTO && full < gb->n) {
    for (i = 0; i < gb->n; ++i) {
      struct backup *b = &gb->d[i];
      char *why;

      if (b->ch.level == REPO_FULL)
        continue;
      if (asprintf (&why, "disk %s of the group needs a full backup: %s",
                    gb->g->disks[full], gb->d[full].ch.reason) == -1) {
        nbdkit_error ("asprintf: %m");
        return NBDBACKUP_EXIT_FAILED;
      }
      free (b->ch.reason);
      b->ch.reason = why;
      b->ch.level = REPO_FULL;
      b->ch.parent = NULL;
    }
  }
  for (i = 0; i < gb->n; ++i) {
    struct backup *b = &gb->d[i];

    fprintf (stderr, "%s: disk %s: level %s: %s\n", b->cmd,
             gb->g->disks[i], repo_level_name (b->ch.level), b->ch.reason);
    if (b->ch.parent &&
        repo_set_string (&b->parent_id, b->ch.parent->id) == -1)
      return NBDBACKUP_EXIT_FAILED;
  }
  return NBDBACKUP_EXIT_OK;
}

static int
before_commit (void *opaque)
{
  fflush (stdout);
  fflush (stderr);
  test_hook ("NBDBACKUP_TEST_BEFORE_COMMIT");
  return 0;
}

/* Steps 2 and 3. */
static int
transact (struct gbackup *gb)
{
  struct group_member *m;
  struct group_options go = {
    .deadline_ms = gb->cli->deadline_ms, .before_commit = before_commit,
  };
  struct timespec now;
  size_t i, committed = 0;
  int e = NBDBACKUP_EXIT_OK;

  clock_gettime (CLOCK_REALTIME, &now);
  gb->id = group_new_id (gb, now.tv_sec);
  m = calloc (gb->n, sizeof *m);
  if (gb->id == NULL || m == NULL) {
    free (m);
    nbdkit_error ("calloc: %m");
    return NBDBACKUP_EXIT_FAILED;
  }
  for (i = 0; i < gb->n && e == NBDBACKUP_EXIT_OK; ++i) {
    struct backup *b = &gb->d[i];

    m[i].socket = b->r->control;
    if (repo_set_string (&b->id, gb->id) == -1)
      e = NBDBACKUP_EXIT_FAILED;
    else
      e = backup_prepare (b, &gb->bm[i], &m[i].actions);
  }
  if (e == NBDBACKUP_EXIT_OK)
    e = group_transaction (m, gb->n, &go, &gb->res);
  for (i = 0; i < gb->n; ++i) {
    committed += m[i].committed;
    json_object_put (m[i].actions);
  }
  free (m);
  if (e == NBDBACKUP_EXIT_OK) {
    gb->transacted = true;
    for (i = 0; i < gb->n; ++i)
      backup_set_instant (&gb->d[i], &gb->res.instant);
    return e;
  }
  if (committed == 0) {
    /* Applied nowhere: each catalog goes back to what it was. */
    for (i = 0; i < gb->n; ++i)
      backup_forget_pending (&gb->d[i]);
    fprintf (stderr, "%s: the group backup failed before the commit: "
             "nothing was applied on any server, and the repository is "
             "as it was\n", gb->opts->cmd);
  }
  else
    gb->transacted = true;      /* some servers applied: roll back */
  return e;
}

/* Step 4: a worker copying disks until none is left. */
static void *
copy_worker (void *opaque)
{
  struct gbackup *gb = opaque;

  for (;;) {
    size_t i;

    pthread_mutex_lock (&gb->lock);
    i = gb->copy_failed ? gb->n : gb->next++;
    pthread_mutex_unlock (&gb->lock);
    if (i >= gb->n)
      return NULL;
    if (backup_copy (&gb->d[i]) == -1) {
      nbdkit_error ("disk %s: the copy failed", gb->g->disks[i]);
      pthread_mutex_lock (&gb->lock);
      gb->copy_failed = true;
      pthread_mutex_unlock (&gb->lock);
    }
  }
}

static int
copy_all (struct gbackup *gb)
{
  pthread_t th[GROUP_MAX_DISKS];
  size_t i, n = MIN ((size_t) gb->cli->parallel, gb->n);
  int err;

  for (i = 0; i < n; ++i) {
    err = pthread_create (&th[i], NULL, copy_worker, gb);
    if (err != 0) {
      errno = err;
      nbdkit_error ("pthread_create: %m");
      pthread_mutex_lock (&gb->lock);
      gb->copy_failed = true;
      pthread_mutex_unlock (&gb->lock);
      break;
    }
  }
  while (i > 0)
    pthread_join (th[--i], NULL);
  return gb->copy_failed ? -1 : 0;
}

/* Step 5, the good way. */
static int
record_all (struct gbackup *gb)
{
  size_t i;

  for (i = 0; i < gb->n; ++i)
    if (backup_record (&gb->d[i]) != NBDBACKUP_EXIT_OK) {
      nbdkit_error ("disk %s: the catalog could not be written",
                    gb->g->disks[i]);
      return -1;
    }
  if (group_add_backup (gb->g, gb->id, gb->d[0].instant,
                        gb->res.closed_p50_us, gb->res.closed_max_us) == -1 ||
      group_repo_save (gb->g) == -1) {
    nbdkit_error ("the group catalog could not be written: backup %s is in "
                  "every disk's catalog but not a group backup", gb->id);
    return -1;
  }
  for (i = 0; i < gb->n; ++i)
    backup_finish (&gb->d[i]);
  return 0;
}

static json_object *
str_or_null (const char *s)
{
  return s ? json_object_new_string (s) : NULL;
}

static void
print_json (const struct gbackup *gb, bool ok)
{
  json_object *o = json_object_new_object ();
  json_object *disks = json_object_new_array ();
  const char *err = log_first_error ();
  char secs[32];
  size_t i;

  if (o == NULL || disks == NULL) {
    json_object_put (o);
    json_object_put (disks);
    return;
  }
  snprintf (secs, sizeof secs, "%.3f",
            monotonic_seconds () - gb->opts->start);
  json_object_object_add (o, "command", json_object_new_string ("backup"));
  json_object_object_add (o, "repository",
                          json_object_new_string (gb->opts->path));
  json_object_object_add (o, "group", json_object_new_boolean (1));
  json_object_object_add (o, "id", str_or_null (ok ? gb->id : NULL));
  json_object_object_add (o, "instant",
                          str_or_null (gb->transacted && gb->n ?
                                       gb->d[0].instant : NULL));
  json_object_object_add (o, "gate_closed_p50_us",
                          gb->transacted ?
                          json_object_new_int64 (gb->res.closed_p50_us) :
                          NULL);
  json_object_object_add (o, "gate_closed_max_us",
                          gb->transacted ?
                          json_object_new_int64 (gb->res.closed_max_us) :
                          NULL);
  for (i = 0; gb->g && i < gb->n; ++i) {
    const struct backup *b = &gb->d[i];
    json_object *d = json_object_new_object ();

    if (d == NULL)
      break;
    json_object_object_add (d, "disk",
                            json_object_new_string (gb->g->disks[i]));
    backup_json_fields (b, d);
    json_object_array_add (disks, d);
  }
  json_object_object_add (o, "disks", disks);
  json_object_object_add (o, "seconds", json_object_new_double_s (0, secs));
  json_object_object_add (o, "result",
                          json_object_new_string (ok ? "ok" : "error"));
  json_object_object_add (o, "error",
                          ok ? NULL :
                          json_object_new_string (err ? err : "failed"));
  printf ("%s\n", json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN |
                                                  JSON_C_TO_STRING_NOSLASHESCAPE));
  json_object_put (o);
}

int
group_backup_main (const struct backup *opts,
                   const struct group_options_cli *cli)
{
  struct gbackup gb = { .opts = opts, .cli = cli };
  uint64_t copied = 0;
  size_t i;
  int e;

  pthread_mutex_init (&gb.lock, NULL);
  e = group_repo_open (opts->path, REPO_LOCK_EXCLUSIVE, opts->cmd, &gb.g);
  if (e != NBDBACKUP_EXIT_OK)
    goto out;
  gb.n = gb.g->nr_disks;
  gb.d = calloc (gb.n, sizeof *gb.d);
  gb.bm = calloc (gb.n, sizeof *gb.bm);
  if (gb.d == NULL || gb.bm == NULL) {
    nbdkit_error ("calloc: %m");
    e = NBDBACKUP_EXIT_FAILED;
    goto out;
  }
  for (i = 0; i < gb.n; ++i) {
    gb.d[i] = *opts;
    gb.d[i].path = gb.g->disks[i];
    gb.d[i].disk = gb.g->disks[i];
    gb.d[i].progress = 0;
    gb.d[i].json = false;
  }

  e = open_and_choose (&gb);
  if (e == NBDBACKUP_EXIT_OK)
    e = transact (&gb);
  if (e == NBDBACKUP_EXIT_OK)
    test_hook ("NBDBACKUP_TEST_AFTER_COMMIT");
  if (e == NBDBACKUP_EXIT_OK &&
      (copy_all (&gb) == -1 || record_all (&gb) == -1))
    e = NBDBACKUP_EXIT_FAILED;
  if (e != NBDBACKUP_EXIT_OK && gb.transacted) {
    for (i = 0; i < gb.n; ++i)
      backup_fail (&gb.d[i]);
  }

  if (e == NBDBACKUP_EXIT_OK && !opts->json) {
    char s[32];

    for (i = 0; i < gb.n; ++i)
      copied += gb.d[i].stats.copied;
    format_size (s, sizeof s, copied);
    printf ("group backup %s of %s: %zu disks at %s, %s copied in %.1f s; "
            "write gates closed p50 %.3f ms, max %.3f ms\n",
            gb.id, opts->path, gb.n, gb.d[0].instant, s,
            monotonic_seconds () - opts->start,
            gb.res.closed_p50_us / 1000.0, gb.res.closed_max_us / 1000.0);
    for (i = 0; i < gb.n; ++i) {
      format_size (s, sizeof s, gb.d[i].stats.copied);
      printf ("  disk %s: %s, %s copied\n", gb.g->disks[i],
              repo_level_name (gb.d[i].ch.level), s);
    }
  }
  if (opts->json)
    print_json (&gb, e == NBDBACKUP_EXIT_OK);

 out:
  for (i = 0; gb.d && i < gb.n; ++i) {
    gb.d[i].path = NULL;
    backup_free (&gb.d[i]);
    server_bitmaps_free (&gb.bm[i]);
  }
  free (gb.d);
  free (gb.bm);
  free (gb.id);
  group_repo_close (gb.g);
  pthread_mutex_destroy (&gb.lock);
  return e;
}
