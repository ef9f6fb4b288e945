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
 * The code is split by concern: this file keeps the set (add, remove,
 * mark, query, records for the sidecar); dirty-ops.c the control
 * operations on one bitmap (clear, enable, merge, save/restore);
 * dirty-backup.c what backups and dirty exports use (freeze, release,
 * readers, dirty ranges).  dirty-set.h is their private header.
 *
 * Deliberately not done: sparse bitmaps (64K granularity costs 2 MiB
 * per TiB of disk, 4K costs 32 MiB) and per-bitmap locks.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "cleanup.h"
#include "dirty.h"
#include "dirty-set.h"
#include "ispowerof2.h"
#include "minmax.h"
#include "registry.h"

pthread_mutex_t dirty_lock = PTHREAD_MUTEX_INITIALIZER;
uint64_t dirty_size;
/* The set's list, protected by dirty_lock. */
static struct dirty_bitmap *bitmaps;
/* Names to be added at start (dirty_set_expected), protected by
 * dirty_lock.
 */
static const char *const *expected;
static size_t nr_expected;
/* Read on every write without the lock (an atomic load): set once by
 * the dirtybitmap filter before any client, cleared at unload.
 */
static dirty_change_hook *change_hook;
/* Set when a mirrored bitmap becomes inconsistent (atomic). */
static bool rewrite_wanted;
/* The number of the last change to a mirror: written under dirty_lock,
 * read atomically.
 */
static uint64_t mirror_seq;
/* The sidecar's identity (dirty_set_sidecar), protected by dirty_lock. */
static char sidecar_uuid[40];
static uint64_t sidecar_generation;

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
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);
  return dirty_size;
}

void
dirty_invalidate_locked (struct dirty_bitmap *b, const char *why)
{
  if (!b->inconsistent) {
    nbdkit_debug ("dirtybitmap: bitmap %s is now inconsistent: %s",
                  b->name, why);
    free (b->reason);
    b->reason = strdup (why);   /* NULL on failure: "unknown". */
  }
  b->inconsistent = true;
  bitmap_free (&b->bits);
  bitmap_free (&b->successor);
  if (b->mirror) {
    /* The file still says consistent: it must be rewritten. */
    b->mirror = NULL;
    b->mirror_len = 0;
    __atomic_store_n (&rewrite_wanted, true, __ATOMIC_RELEASE);
  }
}

unsigned
dirty_set_disk_size (uint64_t size)
{
  struct dirty_bitmap *b;
  unsigned n = 0;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  if (dirty_size != 0 && dirty_size != size) {
    char why[128];

    snprintf (why, sizeof why, "it was made for a disk of %" PRIu64
              " bytes, but the disk has %" PRIu64, dirty_size, size);
    for (b = bitmaps; b; b = b->next) {
      if (!b->inconsistent) {
        dirty_invalidate_locked (b, why);
        n++;
      }
    }
  }
  dirty_size = size;
  return n;
}

void
dirty_set_expected (const char *const *names, size_t n)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  expected = names;
  nr_expected = n;
}

bool
dirty_expected_locked (const char *name)
{
  size_t i;

  for (i = 0; i < nr_expected; ++i)
    if (strcmp (expected[i], name) == 0)
      return true;
  return false;
}

int
dirty_not_found_locked (const char *name, struct control_error *err)
{
  char list[256] = "";
  size_t len = 0;
  struct dirty_bitmap *b;

  for (b = bitmaps; b; b = b->next) {
    if (b->removing)
      continue;
    if (len + strlen (b->name) + 8 >= sizeof list) {
      snprintf (list + len, sizeof list - len, ", ...");
      break;
    }
    len += snprintf (list + len, sizeof list - len, "%s'%s'",
                     len ? ", " : "", b->name);
  }
  return control_fail (err, CONTROL_NOT_FOUND,
                       "bitmap '%s' not found (%s%s)", name,
                       len ? "the bitmaps are: " : "there are no bitmaps",
                       list);
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

/* Set granules [first, end) in a mirror; true if any was clear. */
static bool
mirror_set (uint8_t *m, uint64_t first, uint64_t end)
{
  bool changed = false;

  while (first < end) {
    unsigned bit = first & 7;
    unsigned n = MIN (8 - bit, end - first);
    uint8_t mask = ((1u << n) - 1) << bit;
    uint8_t *p = &m[first >> 3];

    if ((*p & mask) != mask) {
      *p |= mask;
      changed = true;
    }
    first += n;
  }
  return changed;
}

int
dirty_mark (uint64_t offset, uint64_t count)
{
  uint64_t seq;

  return dirty_mark_seq (offset, count, &seq);
}

int
dirty_mark_seq (uint64_t offset, uint64_t count, uint64_t *seq)
{
  struct dirty_bitmap *b;
  bool changed = false;

  *seq = 0;
  if (count == 0)
    return 0;
  if (dirty_before_change () == -1)
    return -1;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);
  /* A write past the size the bitmaps cover (the disk grew) cannot be
   * recorded: no bitmap may claim to know what changed.
   */
  if (offset + count > dirty_size || offset + count < offset) {
    for (b = bitmaps; b; b = b->next)
      dirty_invalidate_locked (b, "a write went past the end of the disk "
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
    if (b->mirror && mirror_set (b->mirror, first, end))
      changed = true;
  }
  if (changed) {
    *seq = mirror_seq + 1;
    __atomic_store_n (&mirror_seq, *seq, __ATOMIC_RELEASE);
  }
  return 0;
}

uint64_t
dirty_mirror_seq (void)
{
  return __atomic_load_n (&mirror_seq, __ATOMIC_ACQUIRE);
}

bool
dirty_take_rewrite_request (void)
{
  /* A load first: every write asks, and an exchange would make them
   * all fight over the cache line.
   */
  if (!__atomic_load_n (&rewrite_wanted, __ATOMIC_ACQUIRE))
    return false;
  return __atomic_exchange_n (&rewrite_wanted, false, __ATOMIC_ACQ_REL);
}

void
dirty_mirror_refresh_locked (struct dirty_bitmap *b)
{
  size_t n, i;

  if (b->mirror == NULL)
    return;
  n = MIN (b->mirror_len, b->bits.size);
  memcpy (b->mirror, b->bits.bitmap, n);
  if (b->in_backup)
    for (i = 0; i < MIN (n, b->successor.size); ++i)
      b->mirror[i] |= b->successor.bitmap[i];
  /* A change the caller makes durable counts as a change. */
  __atomic_store_n (&mirror_seq, mirror_seq + 1, __ATOMIC_RELEASE);
}

void
dirty_install_mirrors (uint8_t *(*lookup) (const char *name, size_t *len,
                                           void *opaque),
                       void *opaque)
{
  struct dirty_bitmap *b;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  for (b = bitmaps; b; b = b->next) {
    size_t len = 0;
    uint8_t *m = NULL;

    if (lookup && b->persistent && !b->inconsistent && !b->removing)
      m = lookup (b->name, &len, opaque);
    if (m && len < b->bits.size) {
      nbdkit_debug ("dirtybitmap: bitmap %s: no room in the file", b->name);
      m = NULL;
    }
    b->mirror = m;
    b->mirror_len = m ? len : 0;
    dirty_mirror_refresh_locked (b);
  }
}

void
dirty_set_sidecar (const char *uuid, uint64_t generation)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  snprintf (sidecar_uuid, sizeof sidecar_uuid, "%s", uuid ? uuid : "");
  sidecar_generation = generation;
}

struct dirty_bitmap *
dirty_find_locked (const char *name)
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
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);
  return dirty_find_locked (name);
}

size_t
dirty_count_bitmaps (void)
{
  struct dirty_bitmap *b;
  size_t n = 0;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

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
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  info->count = b->inconsistent ? 0 : count_bytes (&b->bits, dirty_size);
  info->granularity = b->granularity;
  info->recording = b->recording;
  info->persistent = b->persistent;
  info->inconsistent = b->inconsistent;
  info->busy = b->in_backup || b->readers > 0;
  info->in_backup = b->in_backup;
  info->readers = b->readers;
  info->reason = b->inconsistent ?
    (b->reason ? b->reason : "the reason is unknown") : NULL;
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
  if (i.inconsistent)
    json_object_object_add (o, "inconsistent-reason",
                            json_object_new_string (i.reason));
  if (i.persistent) {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

    if (sidecar_uuid[0]) {
      json_object_object_add (o, "sidecar-uuid",
                              json_object_new_string (sidecar_uuid));
      json_object_object_add (o, "generation",
                              json_object_new_int64 (sidecar_generation));
    }
  }
  return o;
}

static void
free_bitmap (struct dirty_bitmap *b)
{
  if (b == NULL)
    return;
  bitmap_free (&b->bits);
  bitmap_free (&b->successor);
  free (b->reason);
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
  if (n->inconsistent && n->reason &&
      (b->reason = strdup (n->reason)) == NULL) {
    free (b->name);
    free (b);
    control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
    return NULL;
  }
  bitmap_init (&b->bits, n->granularity, 1);
  bitmap_init (&b->successor, n->granularity, 1);

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

    if (dirty_find_locked (n->name)) {
      control_fail (err, CONTROL_GENERIC_ERROR,
                    "bitmap '%s' already exists", n->name);
      free_bitmap (b);
      return NULL;
    }
    if (!b->inconsistent) {
      if (dirty_size == 0) {
        control_fail (err, CONTROL_GENERIC_ERROR,
                      "the disk's size is not known yet");
        free_bitmap (b);
        return NULL;
      }
      if (bitmap_resize (&b->bits, dirty_size) == -1) {
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
                "%s%s%s%s", b->name, b->granularity,
                b->recording ? ", recording" : ", disabled",
                b->persistent ? ", persistent" : "",
                b->inconsistent ? ", inconsistent: " : "",
                b->inconsistent && b->reason ? b->reason : "");
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
  pthread_mutex_lock (&dirty_lock);
  unlink_locked (b);
  pthread_mutex_unlock (&dirty_lock);
  free_bitmap (b);
}

int
dirty_remove_prepare (struct dirty_bitmap *b, struct control_error *err)
{
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

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
  pthread_mutex_lock (&dirty_lock);
  unlink_locked (b);
  pthread_mutex_unlock (&dirty_lock);
  free_bitmap (b);
}

void
dirty_remove_abort (struct dirty_bitmap *b)
{
  pthread_mutex_lock (&dirty_lock);
  b->removing = false;
  pthread_mutex_unlock (&dirty_lock);
  registry_add_object ("bitmap", b->name, b, describe);
}

int
dirty_foreach_record (int (*fn) (const struct dirty_record *r, void *opaque),
                      void *opaque)
{
  struct dirty_bitmap *b;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  for (b = bitmaps; b; b = b->next) {
    struct dirty_record r = {
      .name = b->name,
      .granularity = b->granularity,
      .recording = b->recording,
      .persistent = b->persistent,
      .inconsistent = b->inconsistent,
      .reason = b->inconsistent ?
        (b->reason ? b->reason : "the reason is unknown") : NULL,
    };
    struct bitmap merged;
    int ret;

    if (b->removing)
      continue;
    bitmap_init (&merged, b->granularity, 1);
    if (!b->inconsistent) {
      const struct bitmap *bm = &b->bits;

      if (b->in_backup) {
        if (dirty_copy_bits (&merged, &b->bits) == -1)
          return -1;
        dirty_merge_bits (&merged, &b->successor);
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
dirty_invalidate_persistent (const char *why)
{
  struct dirty_bitmap *b;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&dirty_lock);

  for (b = bitmaps; b; b = b->next)
    if (b->persistent)
      dirty_invalidate_locked (b, why);
}

void
dirty_free_all (void)
{
  struct dirty_bitmap *b;

  for (;;) {
    pthread_mutex_lock (&dirty_lock);
    b = bitmaps;
    pthread_mutex_unlock (&dirty_lock);
    if (b == NULL)
      break;
    dirty_discard (b);
  }
  pthread_mutex_lock (&dirty_lock);
  dirty_size = 0;
  sidecar_uuid[0] = '\0';
  expected = NULL;
  nr_expected = 0;
  pthread_mutex_unlock (&dirty_lock);
  dirty_set_change_hook (NULL);
}
