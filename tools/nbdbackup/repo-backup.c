/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup backup [--level=full|inc|diff|auto] REPO
 *
 * Notes on the design (nbdbackup(1), REPOSITORY, "The backup
 * protocol"):
 *
 * Under the repository's exclusive lock: roll back a backup left
 * pending by a crash (repo-rollback.c), remove stale bitmaps, choose
 * the level (repo-level.c), then
 *
 *   1. write "pending" into the catalog: what the transaction will
 *      add and disable, and the file it will write;
 *   2. one transaction at the snapshot instant:
 *        full: add new-inc, add new-diff, disable old-inc (if it can
 *              be), snapshot-start;
 *        inc:  add new-inc, disable old-inc, snapshot-start;
 *        diff: add new-inc, disable old-inc, add frozen (disabled),
 *              merge old-diff into frozen, snapshot-start;
 *   3. copy the snapshot export (full) or the dirty:old-inc or
 *      dirty:frozen export (only the changes, into a qcow2 overlay of
 *      the parent) to ID.qcow2.incomplete, recording the digest of
 *      every chunk (copy.c); publish ID.qcow2 and ID.digests;
 *   4. one catalog write appends the entry, moves the tracking to the
 *      new bitmaps and clears pending; then snapshot-stop, and the old
 *      bitmaps are removed (a failure there is only a warning: the
 *      next backup removes stale bitmaps).
 *
 * Any failure after step 1 (an error, SIGINT/SIGTERM) rolls back at
 * once; a kill -9 leaves pending for the next command.  The catalog
 * names a backup only once its files are complete and durable.
 */

#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <json.h>

#include "cleanup.h"
#include "files.h"
#include "nbdkit-stubs.h"
#include "parse.h"
#include "control.h"
#include "copy.h"
#include "digest.h"
#include "disconnect.h"
#include "nbdbackup.h"
#include "repo.h"
#include "repo-backup.h"
#include "group-backup.h"
#include "group-repo.h"
#include "repo-level.h"
#include "repo-rollback.h"
#include "repo-server.h"
#include "source.h"
#include "target.h"

#define DEFAULT_REQUESTS 16
#define MAX_REQUESTS 1024
#define DEFAULT_CONNECTIONS 1
#define MAX_CONNECTIONS 16
#define COPY_CHUNK (1024 * 1024)
#define QCOW2_CLUSTER (64 * 1024)


static void
backup_usage (const char *cmd)
{
  printf ("Usage: %s [OPTIONS] REPO\n"
          "\n"
          "Back up the disk of repository REPO (see nbdbackup init): "
          "take a\n"
          "point-in-time snapshot and copy it, whole or only what "
          "changed, into\n"
          "REPO as a qcow2 file, recording a SHA-256 per chunk.  The "
          "server's dirty\n"
          "bitmaps are rotated at the snapshot instant; if the backup "
          "fails they\n"
          "are restored, so no change is lost from tracking.\n"
          "\n"
          "  -l, --level=LEVEL         full, inc (changes since the last "
          "backup),\n"
          "                            diff (changes since the last full) "
          "or auto:\n"
          "                            inc unless a full is needed "
          "(default)\n"
          "  -C, --connections=N       connections to the server "
          "(default %d)\n"
          "  -R, --requests=N          requests in flight per connection "
          "(default %d)\n"
          "      --progress            show the progress bar even if stderr "
          "is not\n"
          "                            a terminal\n"
          "      --no-progress         never show the progress bar\n"
          "      --json                print a JSON summary on stdout\n"
          "\n"
          "For a group repository (nbdbackup init --disk ...), every disk "
          "is backed\n"
          "up at one instant (one group transaction over every server):\n"
          "      --deadline=MS         servers abort the transaction by "
          "themselves\n"
          "                            after MS ms without a commit "
          "(default %d)\n"
          "      --parallel=N          disks copied at once (default %d)\n"
          HELP_VERBOSE_HELP
          "\n"
          "Exit status: 0 success, 1 the backup failed (rolled back), 2 "
          "usage error,\n"
          "3 the server refused or the level cannot be taken, 5 the "
          "repository is\n"
          "busy.  See nbdbackup(1).\n",
          cmd, DEFAULT_CONNECTIONS, DEFAULT_REQUESTS,
          GROUP_DEFAULT_DEADLINE_MS, GROUP_DEFAULT_PARALLEL);
}

/* The old `nbdbackup backup SOCKET --target=...` started a push job:
 * point there instead of at an unknown option.
 */
static bool
old_syntax (int argc, char *argv[])
{
  int i;

  for (i = 1; i < argc; ++i)
    if (strncmp (argv[i], "--target", 8) == 0 ||
        strncmp (argv[i], "--sync", 6) == 0)
      return true;
  return false;
}

static int
parse_options (int argc, char *argv[], struct backup *b,
               struct group_options_cli *cli, bool *group_opts)
{
  enum { OPT_PROGRESS = 256, OPT_NO_PROGRESS, OPT_JSON, OPT_DEADLINE,
         OPT_PARALLEL };
  static const struct option long_options[] = {
    { "connections", required_argument, NULL, 'C' },
    { "deadline",    required_argument, NULL, OPT_DEADLINE },
    { "parallel",    required_argument, NULL, OPT_PARALLEL },
    { "help",        no_argument,       NULL, 'h' },
    { "json",        no_argument,       NULL, OPT_JSON },
    { "level",       required_argument, NULL, 'l' },
    { "no-progress", no_argument,       NULL, OPT_NO_PROGRESS },
    { "progress",    no_argument,       NULL, OPT_PROGRESS },
    { "requests",    required_argument, NULL, 'R' },
    { "verbose",     no_argument,       NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  const char *cmd = argv[0];
  enum repo_level l;
  int opt, e;

  if (old_syntax (argc, argv))
    return usage_error (cmd, "backup now backs up into a repository "
                        "(nbdbackup backup REPO); to start a push backup "
                        "job on the server, use nbdbackup push SOCKET "
                        "--target=...");
  while ((opt = getopt_long (argc, argv, "C:hl:R:v", long_options,
                             NULL)) != -1) {
    switch (opt) {
    case 'l':
      if (strcmp (optarg, "auto") == 0)
        b->requested = LEVEL_AUTO;
      else if (repo_parse_level (optarg, &l) == 0)
        b->requested = l;
      else
        return usage_error (cmd, "--level: expected full, inc, diff or "
                            "auto, got '%s'", optarg);
      break;
    case 'C':
      if (!parse_unsigned (optarg, 1, MAX_CONNECTIONS, &b->connections))
        return usage_error (cmd, "--connections: expected an integer from "
                            "1 to %d, got '%s'", MAX_CONNECTIONS, optarg);
      break;
    case 'R':
      if (!parse_unsigned (optarg, 1, MAX_REQUESTS, &b->requests))
        return usage_error (cmd, "--requests: expected an integer from "
                            "1 to %d, got '%s'", MAX_REQUESTS, optarg);
      break;
    case OPT_PROGRESS:
      b->progress = 1;
      break;
    case OPT_NO_PROGRESS:
      b->progress = 0;
      break;
    case OPT_JSON:
      b->json = true;
      break;
    case OPT_DEADLINE:
      if (!parse_unsigned (optarg, 1, 600000, &cli->deadline_ms))
        return usage_error (cmd, "--deadline: expected a number of "
                            "milliseconds from 1 to 600000, got '%s'",
                            optarg);
      *group_opts = true;
      break;
    case OPT_PARALLEL:
      if (!parse_unsigned (optarg, 1, GROUP_MAX_DISKS, &cli->parallel))
        return usage_error (cmd, "--parallel: expected an integer from 1 "
                            "to %d, got '%s'", GROUP_MAX_DISKS, optarg);
      *group_opts = true;
      break;
    default:
      e = common_option (opt, cmd, backup_usage);
      if (e != -1)
        return e;
    }
  }
  if (argc - optind < 1)
    return usage_error (cmd, "missing REPO");
  if (argc - optind > 1)
    return usage_error (cmd, "unexpected argument '%s' after REPO",
                        argv[optind + 1]);
  b->path = argv[optind];
  if (b->progress == -1)
    b->progress = isatty (STDERR_FILENO);
  return -1;
}

/* The instant's ISO 8601 time in b->instant, from tv. */
void
backup_set_instant (struct backup *b, const struct timespec *ts)
{
  struct tm tm;
  char s[32];

  gmtime_r (&ts->tv_sec, &tm);
  strftime (s, sizeof s, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf (b->instant, sizeof b->instant, "%s.%03dZ", s,
            (int) (ts->tv_nsec / 1000000));
}

/* The instant's id and ISO 8601 time, from the clock now. */
static int
set_instant (struct backup *b)
{
  struct timespec ts;

  clock_gettime (CLOCK_REALTIME, &ts);
  backup_set_instant (b, &ts);
  b->id = repo_new_id (b->r, ts.tv_sec);
  return b->id ? 0 : -1;
}

int
backup_prepare (struct backup *b, const struct server_bitmaps *bm,
                json_object **ret)
{
  struct repo *r = b->r;
  struct repo_pending *pd;
  const struct server_bitmap *old;
  json_object *actions = NULL, *args;

  b->old_next_bitmap = r->next_bitmap;
  if ((b->new_inc = repo_new_bitmap (r)) == NULL ||
      (b->ch.level != REPO_INC &&
       (b->new_extra = repo_new_bitmap (r)) == NULL))
    return NBDBACKUP_EXIT_FAILED;
  old = server_bitmap_find (bm, r->tracking_inc);
  if (old && !old->inconsistent && repo_set_string (&b->old_inc,
                                                    old->name) == -1)
    return NBDBACKUP_EXIT_FAILED;
  if (b->ch.level == REPO_FULL &&
      repo_set_string (&b->old_diff, r->tracking_diff) == -1)
    return NBDBACKUP_EXIT_FAILED;
  b->copied_bitmap = b->ch.level == REPO_INC ? b->old_inc :
    b->ch.level == REPO_DIFF ? b->new_extra : NULL;

  pd = calloc (1, sizeof *pd);
  if (pd == NULL || (pd->added = calloc (2, sizeof *pd->added)) == NULL) {
    free (pd);
    nbdkit_error ("calloc: %m");
    return NBDBACKUP_EXIT_FAILED;
  }
  r->pending = pd;
  pd->level = b->ch.level;
  pd->snapshot = true;
  if (repo_set_string (&pd->op, "backup") == -1 ||
      repo_set_string (&pd->id, b->id) == -1 ||
      asprintf (&pd->file, "%s.qcow2", b->id) == -1 ||
      repo_set_string (&pd->added[pd->nr_added++], b->new_inc) == -1 ||
      (b->new_extra &&
       repo_set_string (&pd->added[pd->nr_added++], b->new_extra) == -1) ||
      repo_set_string (&pd->disabled, b->old_inc) == -1)
    return NBDBACKUP_EXIT_FAILED;
  if (repo_save (r) == -1)
    return NBDBACKUP_EXIT_FAILED;

  actions = json_object_new_array ();
  if (actions == NULL)
    goto nomem;
  args = name_arg (b->new_inc);
  if (args == NULL)
    goto nomem;
  json_object_object_add (args, "granularity",
                          json_object_new_int64 (r->chunk_size));
  json_object_object_add (args, "persistent", json_object_new_boolean (1));
  if (action_add (actions, "block-dirty-bitmap-add", args) == -1)
    goto nomem;
  if (b->new_extra) {
    args = name_arg (b->new_extra);
    if (args == NULL)
      goto nomem;
    json_object_object_add (args, "granularity",
                            json_object_new_int64 (r->chunk_size));
    json_object_object_add (args, "persistent", json_object_new_boolean (1));
    if (b->ch.level == REPO_DIFF)
      json_object_object_add (args, "disabled", json_object_new_boolean (1));
    if (action_add (actions, "block-dirty-bitmap-add", args) == -1)
      goto nomem;
  }
  if (b->old_inc &&
      action_add (actions, "block-dirty-bitmap-disable",
                  name_arg (b->old_inc)) == -1)
    goto nomem;
  if (b->ch.level == REPO_DIFF) {
    json_object *srcs = json_object_new_array ();

    args = json_object_new_object ();
    if (srcs == NULL || args == NULL)
      goto nomem;
    json_object_array_add (srcs, json_object_new_string (r->tracking_diff));
    json_object_object_add (args, "target",
                            json_object_new_string (b->new_extra));
    json_object_object_add (args, "bitmaps", srcs);
    if (action_add (actions, "block-dirty-bitmap-merge", args) == -1)
      goto nomem;
  }
  if (action_add (actions, "snapshot-start", NULL) == -1)
    goto nomem;
  *ret = actions;
  return NBDBACKUP_EXIT_OK;

 nomem:
  json_object_put (actions);
  nbdkit_error ("json: out of memory");
  return NBDBACKUP_EXIT_FAILED;
}

/* Steps 1 and 2: the pending record, then the transaction. */
static int
start_backup (struct backup *b, const struct server_bitmaps *bm)
{
  json_object *actions;
  int e;

  if (set_instant (b) == -1)
    return NBDBACKUP_EXIT_FAILED;
  e = backup_prepare (b, bm, &actions);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  return server_transaction (b->c, actions, "starting the backup");
}

void
backup_forget_pending (struct backup *b)
{
  struct repo *r = b->r;
  struct repo_pending *pd = r->pending;

  if (pd == NULL)
    return;
  r->pending = NULL;
  r->next_bitmap = b->old_next_bitmap;
  if (repo_save (r) == -1) {
    r->pending = pd;
    return;
  }
  repo_pending_free (pd);
}

/* The digest list the copy starts from: zeros (full) or the parent's
 * (checked against the catalog's digest of it).
 */
static int
initial_digests (struct backup *b, struct digests *d, struct digests *parent)
{
  CLEANUP_FREE char *path = NULL;

  if (b->ch.level == REPO_FULL)
    return digests_init (d, b->r->chunk_size, b->disk_size);
  path = repo_file (b->r, b->ch.parent->digests);
  if (path == NULL ||
      digests_load (path, parent, b->ch.parent->digest) == -1)
    return -1;
  if (parent->size != b->disk_size || parent->chunk != b->r->chunk_size) {
    nbdkit_error ("digest list %s: of %" PRIu64 " bytes in chunks of %"
                  PRIu32 ", the disk has %" PRIu64 " in chunks of %" PRIu32,
                  path, parent->size, parent->chunk, b->disk_size,
                  b->r->chunk_size);
    return -1;
  }
  return digests_copy (d, parent);
}

/* The catalog entry of the backup whose files are complete. */
static int
make_entry (struct backup *b, const char *hex, const char *dname)
{
  struct repo_entry *e = &b->entry;

  e->level = b->ch.level;
  e->size = b->disk_size;
  e->bytes_copied = b->stats.copied;
  e->bytes_zero = b->stats.zero;
  e->bytes_skipped = b->stats.skipped;
  e->seconds = monotonic_seconds () - b->start;
  strcpy (e->digest, hex);
  if (repo_set_string (&e->id, b->id) == -1 ||
      repo_set_string (&e->parent, b->parent_id) == -1 ||
      repo_set_string (&e->reason, b->ch.reason) == -1 ||
      repo_set_string (&e->instant, b->instant) == -1 ||
      repo_set_string (&e->bitmap, b->copied_bitmap) == -1 ||
      repo_set_string (&e->file, b->r->pending->file) == -1 ||
      repo_set_string (&e->digests, dname) == -1)
    return -1;
  return 0;
}

int
backup_copy (struct backup *b)
{
  struct repo *r = b->r;
  struct source src = { 0 };
  struct target *tgt = NULL;
  struct copy *c = NULL;
  struct digests d = { 0 }, parent = { 0 };
  struct target_options topts = {
    .format = TARGET_QCOW2, .cluster_size = QCOW2_CLUSTER,
    .replace = true, .connections = 1,
  };
  struct copy_options copts = {
    .requests = b->requests, .chunk = COPY_CHUNK,
    .progress = b->progress,
  };
  CLEANUP_FREE char *uri = NULL, *export = NULL, *file = NULL;
  CLEANUP_FREE char *dfile = NULL, *dname = NULL;
  char hex[DIGEST_HEX_LEN + 1];
  int ret = -1;

  if (b->copied_bitmap) {
    if (asprintf (&export, "dirty:%s", b->copied_bitmap) == -1)
      export = NULL;
  }
  else
    export = strdup (r->snapshot_export);
  if (export == NULL || (uri = uri_with_export (r->uri, export)) == NULL ||
      (file = repo_file (r, r->pending->file)) == NULL ||
      asprintf (&dname, "%s.digests", b->id) == -1 ||
      (dfile = repo_file (r, dname)) == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  if (source_open (&src, uri, b->connections) == -1) {
    source_explain_refusal (uri, r->control);
    goto out;
  }
  b->disk_size = b->stats.total = src.size;
  if (initial_digests (b, &d, &parent) == -1)
    goto out;
  copts.record = &d;
  if (b->ch.level != REPO_FULL) {
    copts.skip_holes = true;
    copts.parent = &parent;
    topts.backing = b->ch.parent->file;
    topts.backing_format = "qcow2";
    topts.partial = true;
  }
  if (copts.chunk > src.max_request)
    copts.chunk = r->chunk_size;
  tgt = target_open ("backup", file, src.size, &topts);
  if (tgt == NULL)
    goto out;
  c = copy_new (&src, tgt, &copts);
  if (c == NULL || copy_run (c, &b->stats) == -1 ||
      tgt->ops->flush (tgt) == -1)
    goto out;
  if (interrupted_by != 0) {
    nbdkit_error ("interrupted by signal %d", (int) interrupted_by);
    goto out;
  }
  if (tgt->ops->finish (tgt, true) == -1 ||
      digests_save (dfile, &d, hex) == -1)
    goto out;
  ret = make_entry (b, hex, dname);

 out:
  if (tgt)
    disconnect_all (tgt->nbd, tgt->nr_nbd, "target");
  disconnect_all (src.nbd, src.nr_nbd, "source");
  if (tgt)
    tgt->ops->close (tgt);
  source_close (&src);
  copy_free (c);
  digests_free (&d);
  digests_free (&parent);
  return ret;
}

/* A test-only hook: run the shell command in the environment
 * variable name, if set (the suite uses it to kill us at an exact
 * step).  Not documented for users.
 */
void
test_hook (const char *name)
{
  const char *cmd = getenv (name);

  if (cmd && *cmd && system (cmd) == -1)
    nbdkit_debug ("%s: system: %m", name);
}

/* The pending "finish" record that step 4's catalog write leaves:
 * the snapshot and the old bitmaps are still to go.  NULL (reported)
 * if out of memory.
 */
static struct repo_pending *
finish_record (const struct backup *b, const char *old_tinc,
               const char *old_tdiff)
{
  struct repo_pending *fin = calloc (1, sizeof *fin);
  const char *rm[2] = {
    old_tinc, b->ch.level == REPO_FULL ? old_tdiff :
    b->ch.level == REPO_DIFF ? b->new_extra : NULL
  };
  size_t i;

  if (fin == NULL || (fin->added = calloc (2, sizeof *fin->added)) == NULL) {
    free (fin);
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  fin->snapshot = true;
  if (repo_set_string (&fin->op, "finish") == -1 ||
      repo_set_string (&fin->id, b->id) == -1)
    goto err;
  for (i = 0; i < 2; ++i)
    if (rm[i] && repo_set_string (&fin->added[fin->nr_added++], rm[i]) == -1)
      goto err;
  return fin;

 err:
  repo_pending_free (fin);
  return NULL;
}

/* Step 4: one catalog write names the backup, moves the tracking and
 * replaces pending by a "finish" record; then the snapshot and the old
 * bitmaps go, and pending is cleared.  Returns an exit status; only a
 * failed catalog write fails (and rolls back).  If we die after that
 * write, the next command completes the finish (repo_finish_pending).
 */
int
backup_record (struct backup *b)
{
  struct repo *r = b->r;
  struct repo_pending *pd = r->pending, *fin;
  char *old_tinc = r->tracking_inc, *old_tdiff = r->tracking_diff;
  char *new_tdiff = b->ch.level == REPO_FULL ? b->new_extra : old_tdiff;

  fin = finish_record (b, old_tinc, old_tdiff);
  if (fin == NULL)
    return NBDBACKUP_EXIT_FAILED;
  if (repo_add_entry (r, &b->entry) == -1) {
    repo_pending_free (fin);
    return NBDBACKUP_EXIT_FAILED;
  }
  r->tracking_inc = b->new_inc;
  r->tracking_diff = new_tdiff;
  r->pending = fin;
  if (repo_save (r) == -1) {
    /* Back to what the catalog on disk says, then roll back. */
    r->nr_entries--;
    repo_entry_clear (&r->entries[r->nr_entries]);
    r->tracking_inc = old_tinc;
    r->tracking_diff = old_tdiff;
    r->pending = pd;
    repo_pending_free (fin);
    return NBDBACKUP_EXIT_FAILED;
  }
  /* The catalog owns the new names now; the old ones go. */
  b->new_inc = NULL;
  if (b->ch.level == REPO_FULL)
    b->new_extra = NULL;
  repo_pending_free (pd);
  free (old_tinc);
  if (b->ch.level == REPO_FULL)
    free (old_tdiff);

  return NBDBACKUP_EXIT_OK;
}

void
backup_finish (struct backup *b)
{
  test_hook ("NBDBACKUP_TEST_BEFORE_FINISH");
  if (repo_finish_pending (b->r, b->c) != NBDBACKUP_EXIT_OK)
    warning ("backup %s is complete, but stopping its snapshot or "
             "removing the old bitmaps failed: the next backup does it",
             b->id);
}

int
backup_recover (struct backup *b)
{
  struct repo *r = b->r;
  char *pending_id;
  int e;

  if (r->pending && strcmp (r->pending->op, "finish") == 0) {
    pending_id = strdup (r->pending->id);
    if (pending_id == NULL) {
      nbdkit_error ("strdup: %m");
      return NBDBACKUP_EXIT_FAILED;
    }
    e = repo_finish_pending (r, b->c);
    if (e != NBDBACKUP_EXIT_OK) {
      free (pending_id);
      return e;
    }
    fprintf (stderr, "%s: finished backup %s, interrupted after it was "
             "recorded: its snapshot was stopped and the old bitmaps "
             "removed\n", b->cmd, pending_id);
    free (pending_id);
  }
  if (r->pending) {
    pending_id = strdup (r->pending->id);
    if (pending_id == NULL) {
      nbdkit_error ("strdup: %m");
      return NBDBACKUP_EXIT_FAILED;
    }
    e = repo_rollback (r, b->c);
    if (e != NBDBACKUP_EXIT_OK) {
      free (pending_id);
      return e;
    }
    fprintf (stderr, "%s: rolled back the interrupted backup %s: its "
             "bitmaps were merged back and its files removed\n",
             b->cmd, pending_id);
    b->rolled_back = pending_id;
  }
  repo_remove_stale_bitmaps (r, b->c);
  return NBDBACKUP_EXIT_OK;
}

int
backup_choose (struct backup *b, struct server_bitmaps *bm)
{
  int e;

  if (server_disk_size (b->r->uri, &b->disk_size) == -1)
    return NBDBACKUP_EXIT_FAILED;
  e = server_get_bitmaps (b->c, bm);
  if (e == NBDBACKUP_EXIT_OK)
    e = repo_choose_level (b->r, bm, b->disk_size, b->requested, &b->ch);
  return e;
}

void
backup_fail (struct backup *b)
{
  if (b->r->pending == NULL)
    return;
  control_cleanup_mode (b->c);
  if (repo_rollback (b->r, b->c) == NBDBACKUP_EXIT_OK)
    fprintf (stderr, "%s: %s%s%sthe backup failed and was rolled back: the "
             "repository and the server's bitmaps are as they were\n",
             b->cmd, b->disk ? "disk " : "", b->disk ? b->disk : "",
             b->disk ? ": " : "");
  else
    nbdkit_error ("%s%s%sthe failed backup %s could not be rolled back: "
                  "it stays pending, and the next backup rolls it back",
                  b->disk ? "disk " : "", b->disk ? b->disk : "",
                  b->disk ? ": " : "", b->id);
}

/* Steps 0 to 4 under the lock.  Returns an exit status. */
static int
run_backup (struct backup *b)
{
  struct repo *r = b->r;
  struct server_bitmaps bm = { 0 };
  int e;

  e = backup_recover (b);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  e = backup_choose (b, &bm);
  if (e != NBDBACKUP_EXIT_OK) {
    server_bitmaps_free (&bm);
    return e;
  }
  fprintf (stderr, "%s: level %s: %s\n", b->cmd,
           repo_level_name (b->ch.level), b->ch.reason);
  if (b->ch.parent &&
      repo_set_string (&b->parent_id, b->ch.parent->id) == -1)
    return NBDBACKUP_EXIT_FAILED;

  e = start_backup (b, &bm);
  server_bitmaps_free (&bm);
  if (e == NBDBACKUP_EXIT_OK) {
    e = backup_copy (b) == 0 ? backup_record (b) : NBDBACKUP_EXIT_FAILED;
    if (e == NBDBACKUP_EXIT_OK)
      backup_finish (b);
  }
  if (e != NBDBACKUP_EXIT_OK && r->pending)
    backup_fail (b);
  return e;
}

static json_object *
str_or_null (const char *s)
{
  return s ? json_object_new_string (s) : NULL;
}

void
backup_json_fields (const struct backup *b, json_object *o)
{
  json_object_object_add (o, "level",
                          str_or_null (b->ch.reason ?
                                       repo_level_name (b->ch.level) : NULL));
  json_object_object_add (o, "reason", str_or_null (b->ch.reason));
  json_object_object_add (o, "parent", str_or_null (b->parent_id));
  json_object_object_add (o, "rolled_back", str_or_null (b->rolled_back));
  json_object_object_add (o, "bytes_total",
                          json_object_new_int64 (b->stats.total));
  json_object_object_add (o, "bytes_copied",
                          json_object_new_int64 (b->stats.copied));
  json_object_object_add (o, "bytes_zero",
                          json_object_new_int64 (b->stats.zero));
  json_object_object_add (o, "bytes_skipped",
                          json_object_new_int64 (b->stats.skipped));
}

static void
print_json (const struct backup *b, bool ok)
{
  json_object *o = json_object_new_object ();
  const char *err = log_first_error ();
  char secs[32];

  if (o == NULL)
    return;
  snprintf (secs, sizeof secs, "%.3f", monotonic_seconds () - b->start);
  json_object_object_add (o, "command", json_object_new_string ("backup"));
  json_object_object_add (o, "repository", json_object_new_string (b->path));
  json_object_object_add (o, "id", str_or_null (ok ? b->id : NULL));
  backup_json_fields (b, o);
  json_object_object_add (o, "seconds",
                          json_object_new_double_s (0, secs));
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
backup_main (int argc, char *argv[])
{
  struct backup b = {
    .cmd = argv[0], .requested = LEVEL_AUTO, .progress = -1,
    .connections = DEFAULT_CONNECTIONS, .requests = DEFAULT_REQUESTS,
  };
  struct group_options_cli cli = {
    .deadline_ms = GROUP_DEFAULT_DEADLINE_MS,
    .parallel = GROUP_DEFAULT_PARALLEL,
  };
  bool group_opts = false;
  char copied[32];
  int e;

  e = parse_options (argc, argv, &b, &cli, &group_opts);
  if (e != -1)
    return e;
  stub_program_name = b.cmd;
  catch_signals ();
  b.start = monotonic_seconds ();
  if (group_repo_is (b.path))
    return group_backup_main (&b, &cli);
  if (group_opts)
    return usage_error (b.cmd, "--deadline and --parallel are for a group "
                        "repository (nbdbackup init --disk), and %s is "
                        "not one", b.path);

  e = repo_open (b.path, REPO_LOCK_EXCLUSIVE, b.cmd, &b.r);
  if (e == NBDBACKUP_EXIT_OK) {
    b.c = control_connect (b.r->control);
    if (b.c == NULL)
      e = NBDBACKUP_EXIT_FAILED;
    else
      e = run_backup (&b);
  }
  if (e == NBDBACKUP_EXIT_OK && !b.json) {
    format_size (copied, sizeof copied, b.stats.copied);
    printf ("backup %s (%s) of %s: %s copied in %.1f s\n", b.id,
            repo_level_name (b.ch.level), b.path, copied,
            monotonic_seconds () - b.start);
  }
  if (b.json)
    print_json (&b, e == NBDBACKUP_EXIT_OK);

  backup_free (&b);
  return e;
}

void
backup_free (struct backup *b)
{
  control_close (b->c);
  repo_close (b->r);
  repo_entry_clear (&b->entry);
  free (b->ch.reason);
  free (b->rolled_back);
  free (b->parent_id);
  free (b->id);
  free (b->new_inc);
  free (b->new_extra);
  free (b->old_inc);
  free (b->old_diff);
}
