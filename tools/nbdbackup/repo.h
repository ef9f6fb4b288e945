/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* A backup repository: a directory of qcow2 files, their digest
 * lists and a catalog (nbdbackup(1), REPOSITORY).  repo.c opens,
 * creates and locks it; catalog.c reads and writes catalog.json.
 */

#ifndef NBDBACKUP_REPO_H
#define NBDBACKUP_REPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "digest.h"

#define REPO_CATALOG "catalog.json"
#define REPO_LOCK "lock"
#define REPO_FORMAT "nbdkit-backup-repository"
#define REPO_VERSION 1

enum repo_level { REPO_FULL, REPO_INC, REPO_DIFF };

/* "full", "inc", "diff". */
extern const char *repo_level_name (enum repo_level l);

/* The reverse; 0, or -1 if s is none of them. */
extern int repo_parse_level (const char *s, enum repo_level *l);

/* One backup of the catalog. */
struct repo_entry {
  char *id;                     /* YYYYMMDD-HHMMSS[.N] */
  enum repo_level level;
  char *parent;                 /* NULL for a full */
  char *reason;                 /* why this level */
  char *instant;                /* ISO 8601 UTC, milliseconds */
  uint64_t size;                /* the disk's size at the instant */
  char *bitmap;                 /* the bitmap it copied, NULL for full */
  char *file;                   /* ID.qcow2 */
  char *digests;                /* ID.digests */
  char digest[DIGEST_HEX_LEN + 1]; /* SHA-256 of the digest list */
  uint64_t bytes_copied, bytes_zero, bytes_skipped;
  double seconds;
};

/* An operation that was under way when its command died: the next
 * command that takes the exclusive lock rolls it back.
 */
struct repo_pending {
  char *op;                     /* "backup", "finish" or "prune" */
  /* op "prune" (prune.c): only these two are set. */
  char **fold;                  /* ids made standalone full backups */
  size_t nr_fold;
  char **drop;                  /* ids removed */
  size_t nr_drop;
  /* op "finish" (a backup in the catalog whose snapshot-stop and
   * bitmap removals are still to do): id, added (the bitmaps to
   * remove, "remove" in the catalog) and snapshot.
   */
  /* op "backup": */
  char *id;
  enum repo_level level;
  char *file;                   /* ID.qcow2 (being written .incomplete) */
  char **added;                 /* bitmaps created; the new inc first */
  size_t nr_added;
  char *disabled;               /* the inc bitmap disabled, or NULL */
  bool snapshot;                /* a snapshot was (being) started */
};

enum repo_lock_mode { REPO_LOCK_SHARED, REPO_LOCK_EXCLUSIVE };

struct repo {
  char *path;                   /* the directory, as given */
  int lock_fd;
  enum repo_lock_mode lock_mode;

  /* The catalog. */
  char *uuid;
  char *created;
  uint32_t chunk_size;
  char *uri;                    /* the live export */
  char *control;                /* the control socket (absolute) */
  char *snapshot_export;
  char *bitmap_prefix;
  uint64_t next_bitmap;
  char *tracking_inc;           /* bitmaps we own on the server, or NULL */
  char *tracking_diff;
  struct repo_pending *pending; /* NULL: none */
  struct repo_entry *entries;   /* oldest first */
  size_t nr_entries;
};

/* What init records. */
struct repo_params {
  const char *uri;
  const char *control;          /* absolute */
  const char *snapshot_export;
  uint32_t chunk_size;
};

/* Create the repository directory path (it must not exist, or be an
 * empty directory; a symlink or another kind of file is refused),
 * mode 0700, with a new catalog, and hold its exclusive lock for cmd
 * ("nbdbackup init").  Returns an exit status; *ret on success.
 */
extern int repo_create (const char *path, const struct repo_params *p,
                        const char *cmd, struct repo **ret);

/* Open the repository at path: a real directory (not a symlink) with
 * our catalog.  Takes the lock in mode for cmd (refused at once if
 * another command holds it: NBDBACKUP_EXIT_BUSY, naming the holder),
 * then reads and checks the whole catalog.  A group repository
 * (group-repo.h) opens the repository of the disk chosen with --disk
 * (repo_disk), and is refused without one.  Returns an exit status;
 * *ret on success.
 */
extern int repo_open (const char *path, enum repo_lock_mode mode,
                      const char *cmd, struct repo **ret);

/* Only the directory and its lock: check that path is a real
 * directory (with create: make it, or take an empty one, mode 0700)
 * and take REPO/lock in mode for cmd.  For group repositories
 * (group-repo.c).  Returns an exit status; *ret on success.
 */
extern int repo_lock_dir (const char *path, bool create,
                          enum repo_lock_mode mode, const char *cmd,
                          struct repo **ret);

/* Write the catalog atomically.  0, or -1 (reported). */
extern int repo_save (struct repo *r);

/* Release the lock and free everything (NULL is fine). */
extern void repo_close (struct repo *r);

/* "PATH/name", malloc'd, or NULL (reported). */
extern char *repo_file (const struct repo *r, const char *name);

/* The entry with this id, or NULL. */
extern const struct repo_entry *repo_find (const struct repo *r,
                                           const char *id);

/* The newest backup, or the newest full one; NULL if none. */
extern const struct repo_entry *repo_last (const struct repo *r);
extern const struct repo_entry *repo_last_full (const struct repo *r);

/* The chain of backup id, from its full backup to itself: *chain (a
 * malloc'd array of pointers into r->entries) and *n.  0, or -1
 * (reported: no such backup).
 */
extern int repo_chain (const struct repo *r, const char *id,
                       const struct repo_entry ***chain, size_t *n);

/* A new backup id for instant t, not yet in the catalog (nor on the
 * disk).  malloc'd, or NULL (reported).
 */
extern char *repo_new_id (const struct repo *r, time_t t);

/* A new bitmap name "<prefix><N>" (advances next_bitmap; the caller
 * saves the catalog).  malloc'd, or NULL (reported).
 */
extern char *repo_new_bitmap (struct repo *r);

/* Append e to the catalog (taking over its strings). 0 or -1. */
extern int repo_add_entry (struct repo *r, struct repo_entry *e);

/* Free the strings of an entry, of a pending record (and it). */
extern void repo_entry_clear (struct repo_entry *e);
extern void repo_pending_free (struct repo_pending *p);

/* Set a string member: free *p, copy s (NULL is fine).  0 or -1. */
extern int repo_set_string (char **p, const char *s);

/* Well-formed id: YYYYMMDD-HHMMSS with an optional .N (N >= 2). */
extern bool repo_id_ok (const char *id);

/* catalog.c: the catalog file of r->path, read into r (checked in
 * full: every member's type, ids, parents, file names) or written
 * from it.  0, or -1 (reported as "REPO/catalog.json: WHAT").
 */
extern int catalog_load (struct repo *r);
extern int catalog_save (const struct repo *r);

/* The catalog as JSON (what catalog_save writes), a new reference,
 * or NULL (reported).
 */
struct json_object;
extern struct json_object *catalog_to_json (const struct repo *r);

#endif /* NBDBACKUP_REPO_H */
