/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Control operations on one bitmap of the set (see dirty.c's notes):
 * the checks before a change, clear, enable/disable, merge, and the
 * save/restore that lets a transaction undo them.
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "cleanup.h"
#include "dirty.h"
#include "dirty-set.h"
#include "minmax.h"

struct dirty_saved {
  struct dirty_bitmap *b;
  bool recording;
  struct bitmap bits;
};

int
dirty_check_changeable (struct dirty_bitmap *b, const char *verb,
                        struct control_error *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  if (b->inconsistent)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "bitmap '%s' is inconsistent (%s): it cannot be "
                         "%s, only removed", b->name,
                         b->reason ? b->reason : "the reason is unknown",
                         verb);
  if (b->in_backup || b->readers > 0)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "bitmap '%s' is busy (%s): it cannot be %s",
                         b->name, b->in_backup ? "an incremental backup "
                         "is using it" : "a dirty export is open on it",
                         verb);
  return 0;
}

int
dirty_copy_bits (struct bitmap *dst, const struct bitmap *src)
{
  bitmap_init (dst, src->blksize, 1);
  if (src->nr_blocks == 0)
    return 0;
  if (bitmap_resize (dst, (uint64_t) src->nr_blocks << src->blkbits) == -1)
    return -1;
  memcpy (dst->bitmap, src->bitmap, src->size);
  return 0;
}

struct dirty_saved *
dirty_save (struct dirty_bitmap *b)
{
  struct dirty_saved *s = calloc (1, sizeof *s);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  if (s == NULL)
    return NULL;
  s->b = b;
  s->recording = b->recording;
  if (dirty_copy_bits (&s->bits, &b->bits) == -1) {
    free (s);
    return NULL;
  }
  return s;
}

void
dirty_restore (struct dirty_saved *s)
{
  if (s == NULL)
    return;
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);
    struct bitmap old = s->b->bits;

    s->b->bits = s->bits;
    s->b->recording = s->recording;
    s->bits = old;
    dirty_mirror_refresh_locked (s->b);
  }
  dirty_saved_free (s);
}

void
dirty_saved_free (struct dirty_saved *s)
{
  if (s == NULL)
    return;
  bitmap_free (&s->bits);
  free (s);
}

void
dirty_clear (struct dirty_bitmap *b)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  bitmap_set_range (&b->bits, 0, b->bits.nr_blocks, 0);
  dirty_mirror_refresh_locked (b);
}

void
dirty_set_recording (struct dirty_bitmap *b, bool on)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  b->recording = on;
}

/* Every granule of dst that overlaps a dirty granule of src becomes
 * dirty.
 */
void
dirty_merge_bits (struct bitmap *dst, const struct bitmap *src)
{
  uint64_t g = 0;

  if (dst->nr_blocks == 0 || src->nr_blocks == 0)
    return;
  if (dst->blksize == src->blksize && dst->nr_blocks == src->nr_blocks) {
    size_t i;
    for (i = 0; i < src->size; ++i)
      dst->bitmap[i] |= src->bitmap[i];
    return;
  }
  while (g < src->nr_blocks) {
    uint64_t a = bitmap_find (src, g, src->nr_blocks, 1);
    uint64_t e, first, last;

    if (a >= src->nr_blocks)
      break;
    e = bitmap_find (src, a, src->nr_blocks, 0);
    /* Bytes [a << sbits, e << sbits), as dst granules. */
    first = (a << src->blkbits) >> dst->blkbits;
    last = (((e << src->blkbits) - 1) >> dst->blkbits) + 1;
    bitmap_set_range (dst, first, last, 1);
    g = e;
  }
}

void
dirty_merge (struct dirty_bitmap *target, struct dirty_bitmap *const *sources,
             size_t n)
{
  size_t i;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  for (i = 0; i < n; ++i) {
    if (sources[i] == target || sources[i]->inconsistent)
      continue;
    dirty_merge_bits (&target->bits, &sources[i]->bits);
    if (sources[i]->in_backup)
      dirty_merge_bits (&target->bits, &sources[i]->successor);
  }
  dirty_mirror_refresh_locked (target);
}
