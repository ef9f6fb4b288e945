/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Notes on the design of the dirty bitmap set (see dirty.h):
 *
 * One mutex guards the whole set: the list, every bitmap's flags and
 * bits.  Writers hold it only to set a few bits (no I/O under it), so
 * one lock is cheaper than per-bitmap locks would be to get right.
 * The change hook (the sidecar's in-use flag, which does I/O) is
 * always run before taking it.
 *
 * A backup freezes its bitmap (QEMU's "successor"): while busy, new
 * writes go to a second bitmap of the same shape, so the backup reads
 * exactly the bits of its start.  At the end, depending on the mode
 * and the outcome, the frozen bits are kept, dropped or thinned (what
 * was copied), and the successor is merged back in.
 *
 *   mode        success               failure or cancel
 *   on-success  new writes            frozen | new writes
 *   never       frozen | new writes   frozen | new writes
 *   always      new writes            (frozen - copied) | new writes
 *
 * Inconsistent bitmaps have no bits at all: nothing can read a stale
 * bit from them by mistake.
 *
 * Deliberately not done: sparse bitmaps (64K granularity costs 2 MiB
 * per TiB of disk, 4K costs 32 MiB) and per-bitmap locks.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "cleanup.h"
#include "dirty.h"
#include "ispowerof2.h"
#include "minmax.h"
#include "registry.h"

struct dirty_bitmap {
  struct dirty_bitmap *next;
  /* Set by dirty_add and never changed. */
  char *name;
  uint32_t granularity;
  bool persistent;

  /* Protected by lock. */
  bool recording;
  bool inconsistent;
  bool removing;                /* Remove prepared, not committed. */
  bool in_backup;               /* Frozen by dirty_backup_begin. */
  unsigned readers;             /* Open dirty exports. */
  struct bitmap bits;           /* Empty when inconsistent. */
  struct bitmap successor;      /* New writes while in_backup. */
};

struct dirty_saved {
  struct dirty_bitmap *b;
  bool recording;
  struct bitmap bits;
};

/* This lock protects the set: the list, and every bitmap's fields
 * marked "Protected by lock".
 */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct dirty_bitmap *bitmaps;
static uint64_t disk_size;
/* Read on every write without the lock (an atomic load): set once by
 * the dirtybitmap filter before any client, cleared at unload.
 */
static dirty_change_hook *change_hook;

const char *
dirty_mode_name (enum dirty_mode m)
{
  switch (m) {
  case DIRTY_MODE_ON_SUCCESS: return "on-success";
  case DIRTY_MODE_NEVER:      return "never";
  case DIRTY_MODE_ALWAYS:     return "always";
  }
  return "unknown";
}

int
dirty_check_name (const char *name, struct control_error *err)
{
  return control_check_name ("a bitmap name", name, DIRTY_MAX_NAME, err);
}

uint64_t
dirty_disk_size (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  return disk_size;
}

/* Make b inconsistent: drop its bits.  Lock held. */
static void
invalidate_locked (struct dirty_bitmap *b, const char *why)
{
  if (!b->inconsistent)
    nbdkit_debug ("dirtybitmap: bitmap %s is now inconsistent: %s",
                  b->name, why);
  b->inconsistent = true;
  bitmap_free (&b->bits);
  bitmap_free (&b->successor);
}

unsigned
dirty_set_disk_size (uint64_t size)
{
  struct dirty_bitmap *b;
  unsigned n = 0;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (disk_size != 0 && disk_size != size) {
    for (b = bitmaps; b; b = b->next) {
      if (!b->inconsistent) {
        invalidate_locked (b, "it was made for a disk of another size");
        n++;
      }
    }
  }
  disk_size = size;
  return n;
}

void
dirty_set_change_hook (dirty_change_hook *hook)
{
  __atomic_store_n (&change_hook, hook, __ATOMIC_RELEASE);
}

int
dirty_before_change (void)
{
  dirty_change_hook *hook = __atomic_load_n (&change_hook, __ATOMIC_ACQUIRE);

  return hook ? hook () : 0;
}

int
dirty_mark (uint64_t offset, uint64_t count)
{
  struct dirty_bitmap *b;

  if (count == 0)
    return 0;
  if (dirty_before_change () == -1)
    return -1;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  /* A write past the size the bitmaps cover (the disk grew) cannot be
   * recorded: no bitmap may claim to know what changed.
   */
  if (offset + count > disk_size || offset + count < offset) {
    for (b = bitmaps; b; b = b->next)
      invalidate_locked (b, "a write went past the end of the disk "
                         "it tracks");
    return 0;
  }
  for (b = bitmaps; b; b = b->next) {
    struct bitmap *bm;
    uint64_t first, end;

    if (!b->recording || b->inconsistent)
      continue;
    bm = b->in_backup ? &b->successor : &b->bits;
    first = offset >> bm->blkbits;
    end = ((offset + count - 1) >> bm->blkbits) + 1;
    bitmap_set_range (bm, first, end, 1);
  }
  return 0;
}

/* Lock held. */
static struct dirty_bitmap *
find_locked (const char *name)
{
  struct dirty_bitmap *b;

  for (b = bitmaps; b; b = b->next)
    if (!b->removing && strcmp (b->name, name) == 0)
      return b;
  return NULL;
}

struct dirty_bitmap *
dirty_find (const char *name)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  return find_locked (name);
}

size_t
dirty_count_bitmaps (void)
{
  struct dirty_bitmap *b;
  size_t n = 0;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  for (b = bitmaps; b; b = b->next)
    if (!b->removing)
      n++;
  return n;
}

const char *
dirty_name (const struct dirty_bitmap *b)
{
  return b->name;
}

/* Dirty bytes of bm, the last granule clipped to the disk. */
static uint64_t
count_bytes (const struct bitmap *bm, uint64_t size)
{
  uint64_t n;

  if (bm->nr_blocks == 0)
    return 0;
  n = bitmap_count (bm, 0, bm->nr_blocks, 1) << bm->blkbits;
  if (bitmap_get_blk (bm, bm->nr_blocks - 1, 0) &&
      (size & (bm->blksize - 1)) != 0)
    n -= bm->blksize - (size & (bm->blksize - 1));
  return n;
}

void
dirty_get_info (struct dirty_bitmap *b, struct dirty_info *info)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  info->count = b->inconsistent ? 0 : count_bytes (&b->bits, disk_size);
  info->granularity = b->granularity;
  info->recording = b->recording;
  info->persistent = b->persistent;
  info->inconsistent = b->inconsistent;
  info->busy = b->in_backup || b->readers > 0;
  info->in_backup = b->in_backup;
  info->readers = b->readers;
}

/* For query-bitmaps (QMP's BlockDirtyInfo, with "inconsistent"
 * always present).
 */
static json_object *
describe (void *obj)
{
  struct dirty_bitmap *b = obj;
  struct dirty_info i;
  json_object *o = json_object_new_object ();

  dirty_get_info (b, &i);
  json_object_object_add (o, "name", json_object_new_string (b->name));
  json_object_object_add (o, "count", json_object_new_int64 (i.count));
  json_object_object_add (o, "granularity",
                          json_object_new_int64 (i.granularity));
  json_object_object_add (o, "recording", json_object_new_boolean (i.recording));
  json_object_object_add (o, "busy", json_object_new_boolean (i.busy));
  json_object_object_add (o, "persistent",
                          json_object_new_boolean (i.persistent));
  json_object_object_add (o, "inconsistent",
                          json_object_new_boolean (i.inconsistent));
  return o;
}

static void
free_bitmap (struct dirty_bitmap *b)
{
  if (b == NULL)
    return;
  bitmap_free (&b->bits);
  bitmap_free (&b->successor);
  free (b->name);
  free (b);
}

struct dirty_bitmap *
dirty_add (const struct dirty_new *n, struct control_error *err)
{
  struct dirty_bitmap *b, **pp;

  if (dirty_check_name (n->name, err) == -1)
    return NULL;
  if (n->granularity < DIRTY_MIN_GRANULARITY ||
      n->granularity > DIRTY_MAX_GRANULARITY ||
      !is_power_of_2 (n->granularity)) {
    control_fail (err, CONTROL_GENERIC_ERROR,
                  "granularity %" PRIu32 " must be a power of two from "
                  "512 to 2G", n->granularity);
    return NULL;
  }
  b = calloc (1, sizeof *b);
  if (b == NULL || (b->name = strdup (n->name)) == NULL) {
    free (b);
    control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
    return NULL;
  }
  b->granularity = n->granularity;
  b->persistent = n->persistent;
  b->recording = n->recording;
  b->inconsistent = n->inconsistent;
  bitmap_init (&b->bits, n->granularity, 1);
  bitmap_init (&b->successor, n->granularity, 1);

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

    if (find_locked (n->name)) {
      control_fail (err, CONTROL_GENERIC_ERROR,
                    "bitmap '%s' already exists", n->name);
      free_bitmap (b);
      return NULL;
    }
    if (!b->inconsistent) {
      if (disk_size == 0) {
        control_fail (err, CONTROL_GENERIC_ERROR,
                      "the disk's size is not known yet");
        free_bitmap (b);
        return NULL;
      }
      if (bitmap_resize (&b->bits, disk_size) == -1) {
        control_fail (err, CONTROL_GENERIC_ERROR,
                      "out of memory for bitmap '%s'", n->name);
        free_bitmap (b);
        return NULL;
      }
      if (n->data) {
        memcpy (b->bits.bitmap, n->data, MIN (n->data_len, b->bits.size));
        /* Bits past the last granule must stay zero. */
        if (b->bits.nr_blocks % 8) {
          uint8_t *last = &b->bits.bitmap[b->bits.size - 1];
          *last &= (1u << (b->bits.nr_blocks % 8)) - 1;
        }
      }
    }
    for (pp = &bitmaps; *pp; pp = &(*pp)->next)
      ;
    *pp = b;
  }
  if (registry_add_object ("bitmap", b->name, b, describe) == -1) {
    dirty_discard (b);
    control_fail (err, CONTROL_GENERIC_ERROR,
                  "cannot register bitmap '%s'", n->name);
    return NULL;
  }
  nbdkit_debug ("dirtybitmap: bitmap %s added: granularity %" PRIu32
                "%s%s%s", b->name, b->granularity,
                b->recording ? ", recording" : ", disabled",
                b->persistent ? ", persistent" : "",
                b->inconsistent ? ", inconsistent" : "");
  return b;
}

/* Unlink b from the list.  Lock held. */
static void
unlink_locked (struct dirty_bitmap *b)
{
  struct dirty_bitmap **pp;

  for (pp = &bitmaps; *pp; pp = &(*pp)->next)
    if (*pp == b) {
      *pp = b->next;
      return;
    }
}

void
dirty_discard (struct dirty_bitmap *b)
{
  if (!b->removing)
    registry_remove_object ("bitmap", b->name);
  pthread_mutex_lock (&lock);
  unlink_locked (b);
  pthread_mutex_unlock (&lock);
  free_bitmap (b);
}

int
dirty_remove_prepare (struct dirty_bitmap *b, struct control_error *err)
{
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

    if (b->in_backup || b->readers > 0)
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "bitmap '%s' is busy (%s): it cannot be removed",
                           b->name, b->in_backup ? "an incremental backup "
                           "is using it" : "a dirty export is open on it");
    b->removing = true;
  }
  /* Out of the registry now, so the same transaction may add a new
   * bitmap of this name.
   */
  registry_remove_object ("bitmap", b->name);
  return 0;
}

void
dirty_remove_commit (struct dirty_bitmap *b)
{
  nbdkit_debug ("dirtybitmap: bitmap %s removed", b->name);
  pthread_mutex_lock (&lock);
  unlink_locked (b);
  pthread_mutex_unlock (&lock);
  free_bitmap (b);
}

void
dirty_remove_abort (struct dirty_bitmap *b)
{
  pthread_mutex_lock (&lock);
  b->removing = false;
  pthread_mutex_unlock (&lock);
  registry_add_object ("bitmap", b->name, b, describe);
}

int
dirty_check_changeable (struct dirty_bitmap *b, const char *verb,
                        struct control_error *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (b->inconsistent)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "bitmap '%s' is inconsistent (the server did not "
                         "stop cleanly while it was in use): it cannot be "
                         "%s, only removed", b->name, verb);
  if (b->in_backup || b->readers > 0)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "bitmap '%s' is busy (%s): it cannot be %s",
                         b->name, b->in_backup ? "an incremental backup "
                         "is using it" : "a dirty export is open on it",
                         verb);
  return 0;
}

/* Copy src's bits into a new bitmap dst.  Lock held.  0 or -1. */
static int
copy_bits (struct bitmap *dst, const struct bitmap *src)
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
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (s == NULL)
    return NULL;
  s->b = b;
  s->recording = b->recording;
  if (copy_bits (&s->bits, &b->bits) == -1) {
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
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    struct bitmap old = s->b->bits;

    s->b->bits = s->bits;
    s->b->recording = s->recording;
    s->bits = old;
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
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  bitmap_set_range (&b->bits, 0, b->bits.nr_blocks, 0);
}

void
dirty_set_recording (struct dirty_bitmap *b, bool on)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  b->recording = on;
}

/* dst |= src, where the granularities may differ: every granule of
 * dst that overlaps a dirty granule of src becomes dirty.  Lock held.
 */
static void
merge_bits (struct bitmap *dst, const struct bitmap *src)
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
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  for (i = 0; i < n; ++i) {
    if (sources[i] == target || sources[i]->inconsistent)
      continue;
    merge_bits (&target->bits, &sources[i]->bits);
    if (sources[i]->in_backup)
      merge_bits (&target->bits, &sources[i]->successor);
  }
}

bool
dirty_next_range (struct dirty_bitmap *b, uint64_t offset, uint64_t end,
                  uint64_t *start, uint64_t *len)
{
  const struct bitmap *bm = &b->bits;
  uint64_t g, a, e, s, t;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  end = MIN (end, disk_size);
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
                         "bitmap '%s' is inconsistent (the server did not "
                         "stop cleanly while it was in use), so it may have "
                         "missed writes: an incremental backup from it is "
                         "refused; a full backup is needed (then remove the "
                         "bitmap and add a new one with the full backup)",
                         b->name);
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
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  b = find_locked (name);
  return b ? backup_check_locked (b, err) : 0;
}

struct dirty_bitmap *
dirty_backup_begin (const char *name, uint64_t size,
                    struct control_error *err)
{
  struct dirty_bitmap *b;

  if (dirty_before_change () == -1) {
    control_fail (err, CONTROL_GENERIC_ERROR,
                  "cannot mark the bitmap file in use: %s", strerror (errno));
    return NULL;
  }
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

    b = find_locked (name);
    if (b == NULL) {
      control_fail (err, CONTROL_NOT_FOUND,
                    "bitmap '%s' not found", name);
      return NULL;
    }
    if (backup_check_locked (b, err) == -1)
      return NULL;
    if (disk_size != size) {
      control_fail (err, CONTROL_GENERIC_ERROR,
                    "bitmap '%s' covers %" PRIu64 " bytes but the disk has "
                    "%" PRIu64 ": a full backup is needed", name,
                    disk_size, size);
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

  /* A backup only takes bits away: if the in-use flag cannot be set,
   * the file's older bits are a superset and still safe, so go on.
   */
  dirty_before_change ();

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  if (!b->inconsistent) {
    if (success && mode != DIRTY_MODE_NEVER)
      bitmap_set_range (bm, 0, bm->nr_blocks, 0);
    else if (!success && mode == DIRTY_MODE_ALWAYS && copied) {
      uint64_t g = 0;

      while ((g = bitmap_find (bm, g, bm->nr_blocks, 1)) < bm->nr_blocks) {
        uint64_t off = g << bm->blkbits;
        uint64_t len = MIN ((uint64_t) bm->blksize, disk_size - off);

        if (copied (opaque, off, len))
          bitmap_set_blk (bm, g, 0);
        g++;
      }
    }
    merge_bits (bm, &b->successor);
  }
  bitmap_free (&b->successor);
  b->in_backup = false;
  nbdkit_debug ("dirtybitmap: bitmap %s released by a %s backup "
                "(mode %s)", b->name, success ? "successful" : "failed",
                dirty_mode_name (mode));
}

struct dirty_bitmap *
dirty_reader_begin (const char *name, struct control_error *err)
{
  struct dirty_bitmap *b;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  b = find_locked (name);
  if (b == NULL) {
    control_fail (err, CONTROL_NOT_FOUND, "bitmap '%s' not found", name);
    return NULL;
  }
  if (b->inconsistent) {
    control_fail (err, CONTROL_GENERIC_ERROR,
                  "bitmap '%s' is inconsistent (the server did not stop "
                  "cleanly while it was in use): a full backup is needed",
                  name);
    return NULL;
  }
  if (b->recording) {
    control_fail (err, CONTROL_GENERIC_ERROR,
                  "bitmap '%s' is recording: disable it at the snapshot "
                  "instant (block-dirty-bitmap-disable in the "
                  "snapshot-start transaction) before reading its dirty "
                  "ranges", name);
    return NULL;
  }
  if (b->in_backup) {
    control_fail (err, CONTROL_GENERIC_ERROR,
                  "bitmap '%s' is busy (an incremental backup is using it)",
                  name);
    return NULL;
  }
  b->readers++;
  return b;
}

void
dirty_reader_end (struct dirty_bitmap *b)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (b->readers > 0)
    b->readers--;
}

int
dirty_foreach_record (int (*fn) (const struct dirty_record *r, void *opaque),
                      void *opaque)
{
  struct dirty_bitmap *b;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  for (b = bitmaps; b; b = b->next) {
    struct dirty_record r = {
      .name = b->name,
      .granularity = b->granularity,
      .recording = b->recording,
      .persistent = b->persistent,
      .inconsistent = b->inconsistent,
    };
    struct bitmap merged;
    int ret;

    if (b->removing)
      continue;
    bitmap_init (&merged, b->granularity, 1);
    if (!b->inconsistent) {
      const struct bitmap *bm = &b->bits;

      if (b->in_backup) {
        if (copy_bits (&merged, &b->bits) == -1)
          return -1;
        merge_bits (&merged, &b->successor);
        bm = &merged;
      }
      r.nr_granules = bm->nr_blocks;
      r.bits = bm->bitmap;
      r.bits_len = bm->size;
    }
    ret = fn (&r, opaque);
    bitmap_free (&merged);
    if (ret == -1)
      return -1;
  }
  return 0;
}

void
dirty_invalidate_all (const char *why)
{
  struct dirty_bitmap *b;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  for (b = bitmaps; b; b = b->next)
    invalidate_locked (b, why);
}

void
dirty_free_all (void)
{
  struct dirty_bitmap *b;

  for (;;) {
    pthread_mutex_lock (&lock);
    b = bitmaps;
    pthread_mutex_unlock (&lock);
    if (b == NULL)
      break;
    dirty_discard (b);
  }
  pthread_mutex_lock (&lock);
  disk_size = 0;
  pthread_mutex_unlock (&lock);
  dirty_set_change_hook (NULL);
}
