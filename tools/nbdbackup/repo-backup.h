/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The steps of one disk's backup (repo-backup.c), for `nbdbackup
 * backup` of one disk and of a group (group-backup.c).
 */

#ifndef NBDBACKUP_REPO_BACKUP_H
#define NBDBACKUP_REPO_BACKUP_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <json.h>

#include "control.h"
#include "copy.h"
#include "repo.h"
#include "repo-level.h"
#include "repo-server.h"

struct backup {
  /* Options. */
  const char *cmd;
  const char *path;
  const char *disk;             /* a group's disk name, or NULL */
  int requested;                /* enum repo_level or LEVEL_AUTO */
  bool json;
  int progress;                 /* -1: if stderr is a terminal */
  unsigned connections;
  unsigned requests;

  /* State. */
  struct repo *r;
  struct control *c;
  char *rolled_back;            /* id of a backup this run rolled back */
  struct level_choice ch;
  char *parent_id;              /* ch.parent's id (ch.parent moves) */
  uint64_t disk_size;
  char *id;
  char instant[40];
  char *new_inc, *new_extra;    /* new-diff (full) or frozen (diff) */
  char *old_inc;                /* disabled by the transaction, or NULL */
  char *old_diff;               /* removed after a full, or NULL */
  const char *copied_bitmap;    /* inc: old_inc, diff: frozen */
  struct copy_stats stats;
  double start;
  struct repo_entry entry;      /* made when the files are complete */
  uint64_t old_next_bitmap;     /* the catalog's, before prepare */
};

/* Step 0: complete a pending finish or roll back a pending backup
 * (saying so), remove stale bitmaps.  Exit status.
 */
extern int backup_recover (struct backup *b);

/* The disk's size and bitmaps (*bm, freed by the caller) and the
 * level in b->ch (not printed).  Exit status.
 */
extern int backup_choose (struct backup *b, struct server_bitmaps *bm);

/* b->instant from ts. */
extern void backup_set_instant (struct backup *b, const struct timespec *ts);

/* Step 1 (b->id set): the new bitmap names, the pending record
 * (saved), and *actions: the transaction to run at the instant (a
 * new reference).  Exit status.
 */
extern int backup_prepare (struct backup *b, const struct server_bitmaps *bm,
                           json_object **actions);

/* Undo backup_prepare when its transaction was applied nowhere:
 * clear pending and the bitmap counter, save (best effort).
 */
extern void backup_forget_pending (struct backup *b);

/* Step 3: copy into ID.qcow2 and ID.digests, b->entry made.  0 or
 * -1 (reported).
 */
extern int backup_copy (struct backup *b);

/* Step 4a: the catalog write that names the backup (pending becomes
 * "finish").  Exit status; on failure pending is still the backup.
 */
extern int backup_record (struct backup *b);

/* Step 4b: stop the snapshot, remove the old bitmaps, clear pending
 * (a failure is a warning: the next backup does it).
 */
extern void backup_finish (struct backup *b);

/* A failed backup: roll back what its pending record says. */
extern void backup_fail (struct backup *b);

/* Free b's state, close its control connection and repository. */
extern void backup_free (struct backup *b);

/* Add b's level, reason, parent, rolled_back and byte counts to the
 * JSON object o (--json of a backup, and of each disk of a group's).
 */
struct json_object;
extern void backup_json_fields (const struct backup *b,
                                struct json_object *o);

/* A test-only hook: run the shell command in environment variable
 * name, if set.
 */
extern void test_hook (const char *name);

#endif /* NBDBACKUP_REPO_BACKUP_H */
