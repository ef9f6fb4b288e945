/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Holes cost nothing: clusters that read as zero at the snapshot
 * instant.
 *
 * At the instant (engine_skip_zeros: protection set, no write in
 * flight) the source's extents say which protected clusters read as
 * zero.  Nothing can change a protected cluster before it leaves
 * PENDING, so what the extents said then stays true for as long as
 * the cluster is PENDING or COPYING.  Then:
 *
 *  - on a target known to read zeros (a new file, a new qcow2 image
 *    without backing, the fleece store) such a cluster is already
 *    right there: it becomes COPIED at once, so neither a writer nor
 *    the job ever touches it again, and a snapshot reader reads the
 *    target's zeros;
 *  - on any other target (an existing file, an NBD URI, a qcow2 image
 *    with a backing file) it stays PENDING, flagged in e->zero, and
 *    whoever claims it fills its buffer with zeros instead of reading
 *    the source (engine_read_source), so engine_store writes it as a
 *    zero request, merged with its neighbours.
 *
 * Only whole clusters are skipped; a cluster that is partly data is
 * copied as before.  If the extents cannot be had, nothing is
 * skipped: every cluster is copied as data, as it always was.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "engine.h"
#include "engine-impl.h"
#include "minmax.h"

/* Clusters [ca, cb) read as zero at the instant.  Lock held. */
static int
zero_run_locked (struct engine *e, uint64_t ca, uint64_t cb)
{
  while (ca < cb) {
    uint64_t a = bitmap_find (&e->state, ca, cb, CLUSTER_PENDING);
    uint64_t b = bitmap_find_not (&e->state, a, cb, CLUSTER_PENDING);
    uint64_t bytes;

    if (a >= cb)
      break;
    if (e->target->known_zero) {
      bitmap_set_range (&e->state, a, b, CLUSTER_COPIED);
      engine_settle (e, a, b, true);
      e->pending -= b - a;
      bytes = MIN (b << e->cluster_bits, e->size) - (a << e->cluster_bits);
      e->stats.bytes_zero += bytes;
      e->zero_skipped += bytes;
    }
    else {
      if (!e->have_zero) {
        bitmap_init (&e->zero, e->cluster_size, 1);
        if (bitmap_resize (&e->zero, e->size) == -1)
          return -1;
        e->have_zero = true;
      }
      bitmap_set_range (&e->zero, a, b, 1);
    }
    ca = b;
  }
  return 0;
}

int
engine_skip_zeros (struct engine *e, nbdkit_next *next)
{
  const uint64_t chunk = UINT64_C (1) << 30;
  uint64_t offset = 0;
  int r, err = 0;

  r = next->can_extents (next);
  if (r <= 0)
    return r;
  while (offset < e->size) {
    uint32_t count = MIN (chunk, e->size - offset);
    struct nbdkit_extents *exts;
    size_t i, n;

    exts = nbdkit_extents_full (next, count, offset, 0, &err);
    if (exts == NULL) {
      nbdkit_debug ("%s: extents failed: copying holes as data", e->name);
      return -1;
    }
    n = nbdkit_extents_count (exts);
    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);

      for (i = 0; i < n; ++i) {
        struct nbdkit_extent x = nbdkit_get_extent (exts, i);
        uint64_t a = MAX (x.offset, offset);
        uint64_t b = MIN (x.offset + x.length, offset + count);
        uint64_t ca, cb;

        if (a >= b || !(x.type & NBDKIT_EXTENT_ZERO))
          continue;
        /* Whole clusters only (the last one may end at the disk's end). */
        ca = (a + e->cluster_size - 1) >> e->cluster_bits;
        cb = b == e->size ? e->nr_clusters : b >> e->cluster_bits;
        if (ca < cb && zero_run_locked (e, ca, cb) == -1) {
          nbdkit_extents_free (exts);
          return -1;
        }
      }
    }
    nbdkit_extents_free (exts);
    offset += count;
  }
  if (backup_debug_engine || e->zero_skipped)
    nbdkit_debug ("%s: %" PRIu64 " bytes read as zero at the snapshot "
                  "instant: done without a copy", e->name, e->zero_skipped);
  return 0;
}

int
engine_read_source (struct engine *e, nbdkit_next *next, char *buf,
                    uint64_t offset, uint64_t len, uint64_t *read_bytes,
                    int *err, uint64_t *fail_offset)
{
  uint64_t pos = 0;

  while (pos < len) {
    uint64_t c = (offset + pos) >> e->cluster_bits;
    uint64_t c1 = ((offset + len - 1) >> e->cluster_bits) + 1;
    bool z = e->have_zero && bitmap_get_blk (&e->zero, c, 0);
    uint64_t ce, run;

    /* The flags are set at the instant and never change afterwards:
     * no lock needed.
     */
    if (!e->have_zero)
      ce = c1;
    else if (z)
      ce = bitmap_find_not (&e->zero, c, c1, 1);
    else
      ce = bitmap_find (&e->zero, c, c1, 1);
    run = MIN (ce << e->cluster_bits, offset + len) - (offset + pos);
    if (z)
      memset (buf + pos, 0, run);
    else {
      if (next->pread (next, buf + pos, run, offset + pos, 0, err) == -1) {
        if (*err == 0)
          *err = EIO;
        *fail_offset = offset + pos;
        return -1;
      }
      *read_bytes += run;
    }
    pos += run;
  }
  return 0;
}
