/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* A group repository: several disks backed up at one instant
 * (nbdbackup(1), REPOSITORY, "Group repositories").  REPO/group.json
 * names the disks and the group backups; each disk NAME is an
 * ordinary one-disk repository in REPO/NAME/.  See group-repo.c.
 */

#ifndef NBDBACKUP_GROUP_REPO_H
#define NBDBACKUP_GROUP_REPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "repo.h"

#define GROUP_CATALOG "group.json"
#define GROUP_FORMAT "nbdkit-backup-group"
#define GROUP_VERSION 1
#define GROUP_MAX_DISKS 64
#define GROUP_MAX_NAME 32

/* One group backup: every disk has a backup with this id, taken at
 * one instant.
 */
struct group_backup {
  char *id;
  char *instant;
  int64_t closed_p50_us, closed_max_us;   /* the gates, -1: unknown */
};

struct group_repo {
  struct repo *dir;             /* the directory and its lock only */
  char *created;
  char **disks;
  size_t nr_disks;
  struct group_backup *backups; /* oldest first */
  size_t nr_backups;
};

/* The disk chosen with --disk=NAME (NULL: none).  repo_open of a
 * group repository opens that disk's repository.
 */
extern const char *repo_disk;

/* The long option --disk=NAME for a command's table; common_option
 * handles it.
 */
#define OPT_DISK 0x4000
#define DISK_OPTION { "disk", required_argument, NULL, OPT_DISK }

/* path holds a group.json (and so is a group repository). */
extern bool group_repo_is (const char *path);

/* A well-formed disk name: 1 to GROUP_MAX_NAME of [A-Za-z0-9_-]. */
extern bool group_name_ok (const char *name);

/* Open the group repository at path, taking its lock in mode for cmd
 * (the lock of REPO itself; each disk's repository has its own), and
 * read group.json in full.  Returns an exit status; *ret on success.
 */
extern int group_repo_open (const char *path, enum repo_lock_mode mode,
                            const char *cmd, struct group_repo **ret);

/* Make the directory path (new or empty), locked for cmd, with a
 * group.json naming disks and no backup yet (the disks' repositories
 * are made by the caller, before group_repo_save).  Exit status.
 */
extern int group_repo_create (const char *path, char **disks, size_t n,
                              const char *cmd, struct group_repo **ret);

/* Write group.json atomically.  0 or -1 (reported). */
extern int group_repo_save (const struct group_repo *g);

extern void group_repo_close (struct group_repo *g);

/* "REPO/NAME", malloc'd, or NULL (reported). */
extern char *group_disk_path (const struct group_repo *g, const char *name);

/* The group backup with this id, or NULL. */
extern const struct group_backup *group_find (const struct group_repo *g,
                                              const char *id);

/* Append a group backup (copies the strings).  0 or -1 (reported). */
extern int group_add_backup (struct group_repo *g, const char *id,
                             const char *instant, int64_t p50_us,
                             int64_t max_us);

/* After a prune of every disk: drop from group.json the group
 * backups that some disk no longer has (under REPO's exclusive lock).
 * Returns an exit status.
 */
extern int group_forget_missing (const char *path, const char *cmd);

/* Run fn on each disk's repository path REPO/NAME in turn (for the
 * commands that work on every disk of a group when no --disk is
 * given), printing "disk NAME:" before each unless quiet.  Returns
 * the first failing exit status, or NBDBACKUP_EXIT_OK.
 */
extern int group_each_disk (const char *path, bool quiet,
                            int (*fn) (const char *disk_path,
                                       const char *name, void *opaque),
                            void *opaque);

#endif /* NBDBACKUP_GROUP_REPO_H */
