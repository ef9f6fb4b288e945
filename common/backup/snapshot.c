/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The read side of image fleecing.
 *
 * A snapshot read walks its range cluster run by cluster run.  A run
 * already COPIED is read from the store, whose copy never changes.  A
 * run still PENDING or COPYING holds point-in-time data on the source,
 * and stays that way while the reader is registered on it: a writer
 * first has the cluster copied (engine_before_write), then waits in
 * engine_wait_readers until no registered reader overlaps it, and only
 * then writes.  New readers of that cluster find it COPIED and read
 * the store, so writers are never starved.
 *
 * If the snapshot breaks (the store failed or filled up) or stops
 * while a read is under way, writers no longer wait; so every source
 * read checks afterwards that the snapshot is still whole and fails
 * with EIO otherwise.  A reader never returns data that is not from
 * the snapshot instant.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "minmax.h"
#include "snapshot.h"

/* Lock held.  Unlink r and wake writers waiting for it. */
static void
unregister_locked (struct engine *e, struct engine_reader *r)
{
  struct engine_reader **pp;

  for (pp = &e->readers; *pp; pp = &(*pp)->next)
    if (*pp == r) {
      *pp = r->next;
      break;
    }
  pthread_cond_broadcast (&e->cond);
}

static int
snapshot_gone (struct engine *e, int *err)
{
  *err = EIO;
  nbdkit_error ("%s: the snapshot is %s", e->name,
                e->broken ? "broken" : "not active");
  return -1;
}

/* Lock held: is cluster c's data on the source (PENDING, COPYING)? */
static inline bool
on_source (struct engine *e, uint64_t c)
{
  unsigned s = bitmap_get_blk (&e->state, c, CLUSTER_CLEAN);

  return s == CLUSTER_PENDING || s == CLUSTER_COPYING;
}

/* Lock held: the end of the run of clusters from c (below c1) that
 * are on the source, or not, alike.
 */
static uint64_t
run_end (struct engine *e, uint64_t c, uint64_t c1)
{
  bool src = on_source (e, c);

  for (++c; c < c1 && on_source (e, c) == src; ++c)
    ;
  return c;
}

int
engine_snapshot_pread (struct engine *e, nbdkit_next *next, void *buf,
                       uint32_t count, uint64_t offset, int *err)
{
  char *p = buf;
  uint64_t end = offset + count;

  pthread_mutex_lock (&e->lock);
  while (offset < end) {
    uint64_t c = offset >> e->cluster_bits;
    uint64_t c1 = ((end - 1) >> e->cluster_bits) + 1;
    uint64_t ce, run_stop, n;
    bool src;
    int r;

    if (!atomic_load (&e->active) || e->broken) {
      pthread_mutex_unlock (&e->lock);
      return snapshot_gone (e, err);
    }
    src = on_source (e, c);
    ce = run_end (e, c, c1);
    run_stop = MIN (end, ce << e->cluster_bits);
    n = run_stop - offset;

    if (src) {
      struct engine_reader me = { .next = e->readers, .c0 = c, .c1 = ce };
      e->readers = &me;
      pthread_mutex_unlock (&e->lock);
      r = next->pread (next, p, n, offset, 0, err);
      pthread_mutex_lock (&e->lock);
      unregister_locked (e, &me);
      if (r == -1) {
        pthread_mutex_unlock (&e->lock);
        return -1;
      }
      /* Writers stop waiting for readers once the snapshot is gone:
       * then what we read may be new data.
       */
      if (!atomic_load (&e->active) || e->broken) {
        pthread_mutex_unlock (&e->lock);
        return snapshot_gone (e, err);
      }
    }
    else {
      pthread_mutex_unlock (&e->lock);
      r = e->target->ops->pread (e->target, p, n, offset);
      pthread_mutex_lock (&e->lock);
      if (r == -1) {
        *err = errno ? errno : EIO;
        pthread_mutex_unlock (&e->lock);
        return -1;
      }
    }
    p += n;
    offset += n;
  }
  pthread_mutex_unlock (&e->lock);
  return 0;
}

int
engine_snapshot_extents (struct engine *e, nbdkit_next *next,
                         uint32_t count, uint64_t offset, uint32_t flags,
                         struct nbdkit_extents *extents,
                         bool (*stored_zero) (void *, uint64_t, uint64_t),
                         void *opaque, int *err)
{
  uint64_t end = offset + count;
  bool req_one = flags & NBDKIT_FLAG_REQ_ONE;

  pthread_mutex_lock (&e->lock);
  while (offset < end) {
    uint64_t c = offset >> e->cluster_bits;
    uint64_t c1 = ((end - 1) >> e->cluster_bits) + 1;
    uint64_t ce, n;
    bool src;

    if (!atomic_load (&e->active) || e->broken) {
      pthread_mutex_unlock (&e->lock);
      return snapshot_gone (e, err);
    }
    src = on_source (e, c);
    ce = run_end (e, c, c1);
    n = MIN (end, ce << e->cluster_bits) - offset;

    if (src) {
      struct engine_reader me = { .next = e->readers, .c0 = c, .c1 = ce };
      struct nbdkit_extents *x;
      size_t i;

      e->readers = &me;
      pthread_mutex_unlock (&e->lock);
      x = nbdkit_extents_full (next, n, offset, 0, err);
      pthread_mutex_lock (&e->lock);
      unregister_locked (e, &me);
      if (x == NULL) {
        pthread_mutex_unlock (&e->lock);
        return -1;
      }
      if (!atomic_load (&e->active) || e->broken) {
        nbdkit_extents_free (x);
        pthread_mutex_unlock (&e->lock);
        return snapshot_gone (e, err);
      }
      for (i = 0; i < nbdkit_extents_count (x); ++i) {
        struct nbdkit_extent ex = nbdkit_get_extent (x, i);
        if (nbdkit_add_extent (extents, ex.offset, ex.length, ex.type) == -1) {
          *err = errno;
          nbdkit_extents_free (x);
          pthread_mutex_unlock (&e->lock);
          return -1;
        }
      }
      nbdkit_extents_free (x);
    }
    else {
      /* Copied clusters: split into zero and data by the store.  Their
       * state cannot change any more, so ask without the lock.
       */
      uint64_t pos = offset, stop = offset + n;
      int r = 0;

      pthread_mutex_unlock (&e->lock);
      while (pos < stop) {
        uint64_t cend = MIN (stop, ((pos >> e->cluster_bits) + 1)
                             << e->cluster_bits);
        bool z = stored_zero && stored_zero (opaque, pos, cend - pos);
        uint64_t q = cend;
        while (q < stop) {
          uint64_t qe = MIN (stop, q + e->cluster_size);
          if ((stored_zero && stored_zero (opaque, q, qe - q)) != z)
            break;
          q = qe;
        }
        r = nbdkit_add_extent (extents, pos, q - pos,
                               z ? NBDKIT_EXTENT_ZERO | NBDKIT_EXTENT_HOLE
                               : 0);
        if (r == -1) {
          *err = errno;
          return -1;
        }
        pos = q;
      }
      pthread_mutex_lock (&e->lock);
    }
    offset += n;
    if (req_one)
      break;
  }
  pthread_mutex_unlock (&e->lock);
  return 0;
}

void
engine_wait_readers (struct engine *e, uint64_t offset, uint64_t count)
{
  uint64_t c0, c1;
  struct engine_reader *r;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);

  if (count == 0)
    return;
  c0 = offset >> e->cluster_bits;
  c1 = ((offset + count - 1) >> e->cluster_bits) + 1;
 again:
  if (!atomic_load (&e->active) || e->broken)
    return;
  for (r = e->readers; r; r = r->next)
    if (r->c0 < c1 && c0 < r->c1) {
      pthread_cond_wait (&e->cond, &e->lock);
      goto again;
    }
}
