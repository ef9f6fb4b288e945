/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Choosing a backup's level.  See repo-level.c. */

#ifndef NBDBACKUP_REPO_LEVEL_H
#define NBDBACKUP_REPO_LEVEL_H

#include <stdbool.h>
#include <stdint.h>

#include "repo.h"
#include "repo-server.h"

#define LEVEL_AUTO (-1)         /* a requested level: let us choose */

struct level_choice {
  enum repo_level level;
  char *reason;                 /* malloc'd: why this level */
  /* inc: the last backup; diff: the last full; full: NULL.  Points
   * into the catalog: valid until an entry is added.
   */
  const struct repo_entry *parent;
};

/* The level of the next backup of r, requested (an enum repo_level
 * or LEVEL_AUTO), with the server's bitmaps bm and the disk's size
 * now.  Returns an exit status: NBDBACKUP_EXIT_REFUSED (reported,
 * with the reason) for an inc or diff that cannot be taken.
 */
extern int repo_choose_level (const struct repo *r,
                              const struct server_bitmaps *bm,
                              uint64_t disk_size, int requested,
                              struct level_choice *ch);

/* Why an inc (diff: a diff) backup cannot be taken now: *why
 * (malloc'd), or NULL if it can.  0, or -1 out of memory (reported).
 */
extern int repo_level_problem (const struct repo *r,
                               const struct server_bitmaps *bm,
                               uint64_t disk_size, bool diff, char **why);

#endif /* NBDBACKUP_REPO_LEVEL_H */
