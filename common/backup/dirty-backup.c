/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* What backups and dirty exports do with a bitmap of the set (see
 * dirty.c's notes): read its dirty ranges, freeze it for an
 * incremental backup and release it, count its readers.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "cleanup.h"
#include "dirty.h"
#include "dirty-set.h"
#include "minmax.h"

/* Lock order: see lock-order.h. */

bool
dirty_next_range (struct dirty_bitmap *b, uint64_t offset, uint64_t end,
                  uint64_t *start, uint64_t *len)
{
  const struct bitmap *bm = &b->bits;
  uint64_t g, a, e, s, t;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  end = MIN (end, dirty_size);
  if (b->inconsistent || offset >= end || bm->nr_blocks == 0)
    return false;
  g = offset >> bm->blkbits;
  a = bitmap_find (bm, g, bm->nr_blocks, 1);
  if (a >= bm->nr_blocks)
    return false;
  s = MAX (a << bm->blkbits, offset);
  if (s >= end)
    return false;
  e = bitmap_find (bm, a, bm->nr_blocks, 0);
  t = MIN (e << bm->blkbits, end);
  *start = s;
  *len = t - s;
  return true;
}

/* The refusals common to dirty_backup_check and _begin.  Lock held. */
static int
backup_check_locked (struct dirty_bitmap *b, struct control_error *err)
{
  if (b->inconsistent)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "bitmap '%s' is inconsistent (%s), so it may have "
                         "missed writes: an incremental backup from it is "
                         "refused; a full backup is needed (then remove the "
                         "bitmap and add a new one with the full backup)",
                         b->name,
                         b->reason ? b->reason : "the reason is unknown");
  if (b->in_backup || b->readers > 0)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "bitmap '%s' is busy (%s)", b->name,
                         b->in_backup ? "another backup is using it"
                         : "a dirty export is open on it");
  return 0;
}

int
dirty_backup_check (const char *name, struct control_error *err)
{
  struct dirty_bitmap *b;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  b = dirty_find_locked (name);
  if (b)
    return backup_check_locked (b, err);
  if (dirty_expected_locked (name))
    return 0;                   /* dirtybitmap-add makes it at start. */
  return dirty_not_found_locked (name, err);
}

struct dirty_bitmap *
dirty_backup_begin (const char *name, uint64_t size,
                    struct control_error *err)
{
  struct dirty_bitmap *b;

  /* Beginning changes no bit, so it does not mark the file in use:
   * the saved bits stay right until dirty_backup_end takes some away
   * (or a write adds some).  So a server whose start fails after this
   * (nbdkit 1.32 then runs no .unload to save the file) leaves the
   * file as it was, not every bitmap inconsistent.
   */
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

    b = dirty_find_locked (name);
    if (b == NULL) {
      dirty_not_found_locked (name, err);
      return NULL;
    }
    if (backup_check_locked (b, err) == -1)
      return NULL;
    if (dirty_size != size) {
      control_fail (err, CONTROL_GENERIC_ERROR,
                    "bitmap '%s' covers %" PRIu64 " bytes but the disk has "
                    "%" PRIu64 ": a full backup is needed", name,
                    dirty_size, size);
      return NULL;
    }
    bitmap_init (&b->successor, b->granularity, 1);
    if (bitmap_resize (&b->successor, size) == -1) {
      control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
      return NULL;
    }
    b->in_backup = true;
  }
  nbdkit_debug ("dirtybitmap: bitmap %s frozen for an incremental backup",
                name);
  return b;
}

void
dirty_backup_end (struct dirty_bitmap *b, bool success, enum dirty_mode mode,
                  bool (*copied) (void *opaque, uint64_t offset, uint64_t len),
                  void *opaque)
{
  struct bitmap *bm = &b->bits;

  /* Mark the file in use only if bits go away (writes recorded
   * meanwhile marked it already).  A backup only takes bits away: if
   * the in-use flag cannot be set, the file's older bits are a
   * superset and still safe, so go on.
   */
  if ((success && mode != DIRTY_MODE_NEVER) ||
      (!success && mode == DIRTY_MODE_ALWAYS && copied))
    dirty_before_change ();

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);
  if (!b->inconsistent) {
    if (success && mode != DIRTY_MODE_NEVER)
      bitmap_set_range (bm, 0, bm->nr_blocks, 0);
    else if (!success && mode == DIRTY_MODE_ALWAYS && copied) {
      uint64_t g = 0;

      while ((g = bitmap_find (bm, g, bm->nr_blocks, 1)) < bm->nr_blocks) {
        uint64_t off = g << bm->blkbits;
        uint64_t len = MIN ((uint64_t) bm->blksize, dirty_size - off);

        if (copied (opaque, off, len))
          bitmap_set_blk (bm, g, 0);
        g++;
      }
    }
    dirty_merge_bits (bm, &b->successor);
  }
  bitmap_free (&b->successor);
  b->in_backup = false;
  dirty_mirror_refresh_locked (b);
  nbdkit_debug ("dirtybitmap: bitmap %s released by a %s backup "
                "(mode %s)", b->name, success ? "successful" : "failed",
                dirty_mode_name (mode));
}

/* The refusals of a dirty export.  Lock held.  0 or -1. */
static int
reader_check_locked (const char *name, struct dirty_bitmap **bp,
                     struct control_error *err)
{
  struct dirty_bitmap *b = dirty_find_locked (name);

  *bp = b;
  if (b == NULL)
    return dirty_not_found_locked (name, err);
  if (b->inconsistent)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "bitmap '%s' is inconsistent (%s): a full backup "
                         "is needed", name,
                         b->reason ? b->reason : "the reason is unknown");
  if (b->recording)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "bitmap '%s' is recording: disable it at the "
                         "snapshot instant (block-dirty-bitmap-disable in "
                         "the snapshot-start transaction) before reading "
                         "its dirty ranges", name);
  if (b->in_backup)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "bitmap '%s' is busy (an incremental backup is "
                         "using it)", name);
  return 0;
}

int
dirty_reader_check (const char *name, struct control_error *err)
{
  struct dirty_bitmap *b;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  return reader_check_locked (name, &b, err);
}

struct dirty_bitmap *
dirty_reader_begin (const char *name, struct control_error *err)
{
  struct dirty_bitmap *b;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  if (reader_check_locked (name, &b, err) == -1)
    return NULL;
  b->readers++;
  return b;
}

void
dirty_reader_end (struct dirty_bitmap *b)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  if (b->readers > 0)
    b->readers--;
}
