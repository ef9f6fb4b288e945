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
 * the store, so writers are never starved.  The engine keeps the
 * readers under its lock (engine_reader_begin/_end); this file only
 * walks the runs.
 *
 * A run of clusters no longer in the snapshot (a reader discarded
 * them: engine_discard) fails a read with EPERM; extents stop before
 * it.  Readers of the store register too, so that a discard never
 * frees store space under them.
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

#include "minmax.h"
#include "snapshot.h"

/* Report a read of clusters that a reader discarded. */
static int
discarded (struct engine *e, uint64_t offset, uint64_t stop, int *err)
{
  nbdkit_error ("%s: the snapshot's data at offset %" PRIu64 " (%" PRIu64
                " bytes) was discarded by a reader (discard-source): "
                "it can no longer be read", engine_name (e), offset,
                stop - offset);
  *err = EPERM;
  return -1;
}

int
engine_snapshot_pread (struct engine *e, nbdkit_next *next, void *buf,
                       uint32_t count, uint64_t offset, int *err)
{
  char *p = buf;
  uint64_t end = offset + count;

  while (offset < end) {
    struct engine_reader me;
    uint64_t stop, n;
    int src, r;

    src = engine_reader_begin (e, &me, offset, end, &stop, err);
    if (src == -1)
      return -1;
    if (src == 2)
      return discarded (e, offset, stop, err);
    n = stop - offset;
    if (src) {
      r = next->pread (next, p, n, offset, 0, err);
      if (r == -1) {
        engine_reader_end (e, &me, NULL);
        return -1;
      }
      if (engine_reader_end (e, &me, err) == -1)
        return -1;
    }
    else {
      struct target *t = engine_target (e);

      r = t->ops->pread (t, p, n, offset);
      if (r == -1)
        *err = errno ? errno : EIO;
      engine_reader_end (e, &me, NULL);
      if (r == -1)
        return -1;
    }
    p += n;
    offset += n;
  }
  return 0;
}

/* Add the extents of copied clusters [offset, stop): data and holes
 * as the store has them, a pair of seeks per run of data rather than
 * one per cluster.  The caller is registered as their reader, so no
 * discard changes them meanwhile.
 */
static int
add_stored_extents (uint64_t offset, uint64_t stop,
                    struct nbdkit_extents *extents,
                    uint64_t (*next_data) (void *, uint64_t, uint64_t,
                                           uint64_t *),
                    void *opaque, int *err)
{
  uint64_t pos = offset;

  while (pos < stop) {
    uint64_t d = pos, de = stop;

    if (next_data)
      d = next_data (opaque, pos, stop, &de);
    if (de <= d)
      de = stop;                /* Never stuck: the rest is data. */
    if (d > pos &&
        nbdkit_add_extent (extents, pos, d - pos,
                           NBDKIT_EXTENT_ZERO | NBDKIT_EXTENT_HOLE) == -1)
      goto fail;
    if (d < stop && nbdkit_add_extent (extents, d, de - d, 0) == -1)
      goto fail;
    pos = d < stop ? de : stop;
  }
  return 0;

 fail:
  *err = errno;
  return -1;
}

int
engine_snapshot_extents (struct engine *e, nbdkit_next *next,
                         uint32_t count, uint64_t offset, uint32_t flags,
                         struct nbdkit_extents *extents,
                         uint64_t (*next_data) (void *, uint64_t, uint64_t,
                                                uint64_t *),
                         void *opaque, int *err)
{
  uint64_t start = offset, end = offset + count;
  bool req_one = flags & NBDKIT_FLAG_REQ_ONE;

  while (offset < end) {
    struct engine_reader me;
    uint64_t stop, n;
    int src;

    src = engine_reader_begin (e, &me, offset, end, &stop, err);
    if (src == -1)
      return -1;
    if (src == 2) {
      if (offset == start)
        return discarded (e, offset, stop, err);
      break;                    /* Extents up to there. */
    }
    n = stop - offset;
    if (src) {
      struct nbdkit_extents *x;
      size_t i;

      x = nbdkit_extents_full (next, n, offset, 0, err);
      if (x == NULL) {
        engine_reader_end (e, &me, NULL);
        return -1;
      }
      if (engine_reader_end (e, &me, err) == -1) {
        nbdkit_extents_free (x);
        return -1;
      }
      for (i = 0; i < nbdkit_extents_count (x); ++i) {
        struct nbdkit_extent ex = nbdkit_get_extent (x, i);
        if (nbdkit_add_extent (extents, ex.offset, ex.length, ex.type) == -1) {
          *err = errno;
          nbdkit_extents_free (x);
          return -1;
        }
      }
      nbdkit_extents_free (x);
    }
    else {
      /* Registered while looking at the store's holes: a discard
       * must not punch new ones meanwhile.
       */
      int r = add_stored_extents (offset, stop, extents, next_data,
                                  opaque, err);

      engine_reader_end (e, &me, NULL);
      if (r == -1)
        return -1;
    }
    offset += n;
    if (req_one)
      break;
  }
  return 0;
}
