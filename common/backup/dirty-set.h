/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Private to dirty.c, dirty-ops.c and dirty-backup.c: the bitmap set's
 * lock and the bitmap structure.  Nothing else includes this; other
 * code uses the locked calls of dirty.h.
 */

#ifndef NBDKIT_BACKUP_DIRTY_SET_H
#define NBDKIT_BACKUP_DIRTY_SET_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "bitmap.h"

struct control_error;

struct dirty_bitmap {
  struct dirty_bitmap *next;
  /* Set by dirty_add and never changed. */
  char *name;
  uint32_t granularity;
  bool persistent;

  /* Protected by dirty_lock. */
  bool recording;
  bool inconsistent;
  bool removing;                /* Remove prepared, not committed. */
  bool in_backup;               /* Frozen by dirty_backup_begin. */
  unsigned readers;             /* Open dirty exports. */
  struct bitmap bits;           /* Empty when inconsistent. */
  struct bitmap successor;      /* New writes while in_backup. */
  char *reason;                 /* Why inconsistent, or NULL. */
  /* The bits in the sidecar file's shared mapping (persistent,
   * consistent bitmaps once the file is in use), or NULL: always
   * bits | successor or more.
   */
  uint8_t *mirror;
  size_t mirror_len;
};

/* This lock protects the set: the list, every bitmap's fields marked
 * "Protected by dirty_lock", and dirty_size.
 */
extern pthread_mutex_t dirty_lock;

/* The disk size the bitmaps cover (0 until known).  dirty_lock held. */
extern uint64_t dirty_size;

/* The bitmap named name, not being removed, or NULL.  dirty_lock held. */
extern struct dirty_bitmap *dirty_find_locked (const char *name);

/* Fill err with "bitmap 'name' not found", naming the bitmaps that
 * exist.  dirty_lock held.  Returns -1.
 */
extern int dirty_not_found_locked (const char *name,
                                   struct control_error *err);

/* True if name is among the expected names.  dirty_lock held. */
extern bool dirty_expected_locked (const char *name);

/* Copy src's bits into a new bitmap dst.  dirty_lock held.  0 or -1. */
extern int dirty_copy_bits (struct bitmap *dst, const struct bitmap *src);

/* dst |= src, granularities may differ.  dirty_lock held. */
extern void dirty_merge_bits (struct bitmap *dst, const struct bitmap *src);

/* Copy b's bits (and successor) into its mirror after bits were taken
 * away or added by a command.  dirty_lock held.
 */
extern void dirty_mirror_refresh_locked (struct dirty_bitmap *b);

/* Make b inconsistent for reason why (copied): drop its bits and its
 * mirror.  dirty_lock held.
 */
extern void dirty_invalidate_locked (struct dirty_bitmap *b, const char *why);

#endif /* NBDKIT_BACKUP_DIRTY_SET_H */
