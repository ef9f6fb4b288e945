/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Notes on the design of the copy-before-write engine:
 *
 * Each cluster has a two-bit state (engine.h).  At the snapshot
 * instant the protected clusters become PENDING; everything else is
 * CLEAN.  A cluster leaves PENDING exactly once, when somebody claims
 * it (PENDING -> COPYING) under the lock.  The claimant then copies it
 * without the lock, and marks it COPIED, or PENDING again if the copy
 * failed and the snapshot survives.  So:
 *
 *  - two writers touching the same cluster copy it once: the second
 *    finds it COPYING and waits on the condition variable;
 *  - the job and writers never copy the same cluster twice;
 *  - no lock is held across I/O: the lock only guards state changes;
 *  - while a cluster is COPYING, nobody writes it, so the copier reads
 *    the point-in-time data from the source.
 *
 * A write goes down only once every protected cluster it touches is
 * COPIED (or protection has ended), so the target gets the old data.
 * Waiters are woken by one broadcast per state change; that is cheap
 * because waits are rare (only same-cluster races).
 *
 * The copy timeout (engine_set_copy_timeout, cbw-copy-timeout): a
 * write waits at most that long in copy-before-write, counting both
 * its own copies and waits for other people's copies of its clusters.
 * A writer with a deadline reads the source itself (its next context
 * is only valid during its request), then hands the buffer to a
 * detached helper thread that writes the target and finishes the
 * claim; the writer waits for it on the condition variable with the
 * deadline.  If the deadline passes:
 *
 *  - break-snapshot: the snapshot is broken under the lock (active
 *    becomes false, the job fails) and the write goes on.  The
 *    helper may still finish later and mark its clusters COPIED; that
 *    is harmless, because a broken snapshot is never published and
 *    nothing reads it.
 *  - fail-write: the write fails with EIO and nothing else changes.
 *    The clusters stay COPYING while the helper's target write is in
 *    flight, so no later write can reach them either (it too waits,
 *    and times out); when the helper ends they become COPIED (its
 *    data was read before any write could go down, so it is the
 *    point-in-time data) or PENDING again (a failed write, retried by
 *    whoever claims them next).  The snapshot stays exact.
 *
 * The helper owns its buffer; the task is freed by whichever of the
 * writer and the helper lets go of it last.  Helpers are capped
 * (MAX_HELPERS): with all of them stuck on a hung target, a new
 * timed copy fails at once, under the policy.  Every claimed run is
 * counted in in_flight until finished, so the job can wait for all
 * of them (engine_quiesce) before it finishes or closes the target.
 *
 * Discard (engine_discard, fleece's discard-source): a snapshot reader
 * that is done with whole clusters drops them from the snapshot.  They
 * become CLEAN, which for a reader means "not in the snapshot" (its
 * reads of them fail), and a writer copies nothing for them.  A
 * cluster being copied is waited for first; then the discard waits
 * for every reader registered on those clusters (readers of the
 * target register too, unlike what writers wait for), so that the
 * caller can free the target's copy with nobody reading it.
 *
 * The timed copy lives in engine-timed.c; engine-impl.h, private to
 * the two files, holds struct engine.  Everyone else goes through the
 * locked calls of engine.h.
 *
 * Partial-cluster copies exist only with the buffer (engine-buffer.c):
 * without one, a write of one byte copies the whole cluster, as QEMU
 * does.  Deliberately not done: per-cluster wait queues (one condition
 * variable is simpler and waits are rare).
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "engine.h"
#include "engine-impl.h"
#include "ispowerof2.h"
#include "iszero.h"
#include "minmax.h"


/* Extra debugging: each filter sets it from its own -D flag. */
int backup_debug_engine = 0;

struct engine *
engine_new (const char *name, uint64_t size, unsigned cluster_size,
            struct target *target, enum cbw_on_error on_error)
{
  struct engine *e = calloc (1, sizeof *e);

  if (e == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  e->name = name;
  e->size = size;
  e->cluster_size = cluster_size;
  e->cluster_bits = log_2_bits (cluster_size);
  e->nr_clusters = (size + cluster_size - 1) >> e->cluster_bits;
  e->target = target;
  e->on_error = on_error;
  atomic_init (&e->active, false);
  pthread_mutex_init (&e->lock, NULL);
  {
    /* Timed waits (the copy timeout) measure monotonic time. */
    pthread_condattr_t attr;
    pthread_condattr_init (&attr);
    pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
    pthread_cond_init (&e->cond, &attr);
    pthread_condattr_destroy (&attr);
  }
  pthread_cond_init (&e->drain_cond, NULL);
  /* Every cluster starts CLEAN: settled. */
  e->settled = malloc (e->nr_clusters / 8 + 1);
  if (e->settled == NULL) {
    nbdkit_error ("malloc: %m");
    engine_free (e);
    return NULL;
  }
  memset (e->settled, 0xff, e->nr_clusters / 8 + 1);
  bitmap_init (&e->state, cluster_size, 2);
  if (bitmap_resize (&e->state, size) == -1) {
    engine_free (e);
    return NULL;
  }
  return e;
}

void
engine_free (struct engine *e)
{
  if (e == NULL)
    return;
  engine_buffer_stop (e);
  /* Timed copy helpers may outlive their writers: wait for them. */
  pthread_mutex_lock (&e->lock);
  while (e->helpers > 0)
    pthread_cond_wait (&e->cond, &e->lock);
  pthread_mutex_unlock (&e->lock);
  bitmap_free (&e->state);
  if (e->have_zero)
    bitmap_free (&e->zero);
  pthread_mutex_destroy (&e->lock);
  pthread_cond_destroy (&e->cond);
  pthread_cond_destroy (&e->drain_cond);
  free (e->error);
  free (e->settled);
  free (e);
}

void
engine_set_copy_timeout (struct engine *e, double seconds)
{
  e->copy_timeout = seconds > 0 ? seconds : 0;
}

void
engine_quiesce (struct engine *e)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);

  while (e->in_flight > 0)
    pthread_cond_wait (&e->cond, &e->lock);
}

void
engine_protect (struct engine *e, uint64_t first, uint64_t end)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);

  end = MIN (end, e->nr_clusters);
  if (first >= end)
    return;
  /* Only CLEAN clusters become PENDING; the rest already count. */
  e->pending += bitmap_count (&e->state, first, end, CLUSTER_CLEAN);
  /* Walk runs so COPIED/COPYING are kept. */
  while (first < end) {
    uint64_t a = bitmap_find (&e->state, first, end, CLUSTER_CLEAN);
    uint64_t b = bitmap_find_not (&e->state, a, end, CLUSTER_CLEAN);
    bitmap_set_range (&e->state, a, b, CLUSTER_PENDING);
    engine_settle (e, a, b, false);
    first = b;
  }
}

void
engine_activate (struct engine *e)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);
  e->held_closed = false;
  atomic_store (&e->active, true);
}

void
engine_deactivate (struct engine *e)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);
  /* Partly copied clusters (engine-buffer.c) still have old data
   * only on the source: protect them until the drainers have read
   * it.  No new ones meanwhile.
   */
  e->held_closed = true;
  while (e->nr_held > 0 && !e->broken)
    pthread_cond_wait (&e->cond, &e->lock);
  atomic_store (&e->active, false);
  pthread_cond_broadcast (&e->cond);
}

void
engine_break_locked (struct engine *e, const char *msg)
{
  if (!e->broken) {
    e->broken = true;
    e->error = strdup (msg);
    nbdkit_debug ("%s: snapshot broken: %s", e->name, msg);
  }
  atomic_store (&e->active, false);
  pthread_cond_broadcast (&e->cond);
}

void
engine_break (struct engine *e, const char *msg)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);
  engine_break_locked (e, msg);
}

/* Claim the first run of PENDING clusters in [c0, c1), at most max
 * long.  Lock held.  Returns the run length (0 if none); *first set.
 */
static uint64_t
claim_run_locked (struct engine *e, uint64_t c0, uint64_t c1, uint64_t max,
                  uint64_t *first)
{
  uint64_t a = bitmap_find (&e->state, c0, c1, CLUSTER_PENDING);
  uint64_t b;

  if (a >= c1)
    return 0;
  b = bitmap_find_not (&e->state, a, MIN (c1, a + max), CLUSTER_PENDING);
  bitmap_set_range (&e->state, a, b, CLUSTER_COPYING);
  e->in_flight++;
  *first = a;
  return b - a;
}

/* A write's copy-before-write ran out of time.  Lock held.  Returns
 * true if the write must fail (fail-write), after breaking the
 * snapshot otherwise.
 */
static bool
timed_out_locked (struct engine *e)
{
  char msg[128];

  e->stats.copy_timeouts++;
  if (e->on_error == CBW_FAIL_WRITE && !e->broken) {
    e->stats.writes_failed++;
    nbdkit_error ("%s: copy-before-write took longer than %g s: "
                  "failing the write", e->name, e->copy_timeout);
    return true;
  }
  snprintf (msg, sizeof msg,
            "copy-before-write took longer than %g s", e->copy_timeout);
  engine_break_locked (e, msg);
  return false;
}

/* The settled bits (engine-impl.h): one per cluster, set when it is
 * CLEAN or COPIED.  Every access is atomic: they are read without the
 * engine lock by writes on their fast path.
 */
void
engine_settle (struct engine *e, uint64_t a, uint64_t b, bool settled)
{
  for (; a < b; ++a) {
    uint8_t bit = 1u << (a & 7);

    /* Release: what the copy wrote is done before the bit is seen. */
    if (settled)
      __atomic_fetch_or (&e->settled[a >> 3], bit, __ATOMIC_RELEASE);
    else
      __atomic_fetch_and (&e->settled[a >> 3], (uint8_t) ~bit,
                          __ATOMIC_RELEASE);
  }
}

/* Are clusters [c0, c1) all settled, looking without the lock?  A
 * settled cluster never becomes PENDING or COPYING again while a
 * write is in flight (only engine_protect makes clusters PENDING,
 * and it runs with the write gate closed or before activation), so a
 * write that sees them so may go down at once.  A cluster is settled
 * as COPIED only after its copy has returned, so seeing the bit (with
 * acquire ordering, before our own request goes down) means the old
 * data is safe.  A stale read only sends us the slow way.
 */
static bool
settled_unlocked (struct engine *e, uint64_t c0, uint64_t c1)
{
  uint64_t c;

  for (c = c0; c < c1; ++c)
    if (!(__atomic_load_n (&e->settled[c >> 3], __ATOMIC_ACQUIRE) &
          (1u << (c & 7))))
      return false;
  return true;
}

int
engine_before_write (struct engine *e, nbdkit_next *next,
                     uint64_t offset, uint64_t count, int *err)
{
  uint64_t c0, c1, first, n;
  /* Copy at most this many clusters per claim, so a huge write does
   * not hold a huge buffer.
   */
  const uint64_t max_run = MAX (1, (4 * 1024 * 1024) >> e->cluster_bits);

  struct timespec deadline;
  bool timed, waited = false;

  if (!atomic_load (&e->active) || count == 0)
    return 0;
  c0 = offset >> e->cluster_bits;
  c1 = MIN (((offset + count - 1) >> e->cluster_bits) + 1, e->nr_clusters);
  /* Most writes in a long backup window hit clusters already copied:
   * let them go down without the lock (up to a few clusters; bigger
   * writes take the lock anyway).
   */
  if (c1 - c0 <= 16 && settled_unlocked (e, c0, c1))
    return 0;

  timed = e->copy_timeout > 0;
  if (timed) {
    time_t whole = (time_t) e->copy_timeout;

    clock_gettime (CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += whole;
    deadline.tv_nsec += (long) ((e->copy_timeout - whole) * 1e9);
    if (deadline.tv_nsec >= 1000000000) {
      deadline.tv_sec++;
      deadline.tv_nsec -= 1000000000;
    }
  }

  pthread_mutex_lock (&e->lock);
  for (;;) {
    if (!atomic_load (&e->active))
      break;
    /* Inside one cluster, with a buffer: copy only what it touches.
     * Not done (1) or asked to wait (2): the usual way below does
     * both.
     */
    if (c1 - c0 == 1 && e->drain_next) {
      int r = engine_buffer_partial_locked (e, next, c0, offset, count);

      if (r == 0)
        break;
      if (r == -1)
        continue;               /* Broken: the write goes on. */
    }
    n = claim_run_locked (e, c0, c1, max_run, &first);
    if (n > 0) {
      int r;

      pthread_mutex_unlock (&e->lock);
      r = engine_buffer_copy (e, next, first, n);
      if (r == 1 && timed)
        r = engine_timed_copy (e, next, first, n, &deadline);
      else if (r == 1)
        r = engine_copy (e, next, first, n, false, true);
      /* The usual first write: one claim covered the whole write and
       * its copy is done, so every cluster is COPIED; nothing to look
       * at again under the lock.
       */
      if (r == 0 && first == c0 && first + n == c1)
        return 0;
      pthread_mutex_lock (&e->lock);
      if (r == COPY_TIMED_OUT) {
        if (timed_out_locked (e))
          goto fail;
        continue;               /* Broken: the write goes on. */
      }
      if (r == -1 && e->on_error == CBW_FAIL_WRITE && !e->broken) {
        e->stats.writes_failed++;
        goto fail;
      }
      continue;
    }
    /* Nothing left to claim; wait for other people's copies. */
    if (bitmap_find (&e->state, c0, c1, CLUSTER_COPYING) < c1) {
      if (!waited) {
        waited = true;
        e->stats.write_waits++;
      }
      if (!timed)
        pthread_cond_wait (&e->cond, &e->lock);
      else if (pthread_cond_timedwait (&e->cond, &e->lock,
                                       &deadline) == ETIMEDOUT &&
               atomic_load (&e->active) &&
               bitmap_find (&e->state, c0, c1, CLUSTER_COPYING) < c1) {
        if (timed_out_locked (e))
          goto fail;
      }
      continue;
    }
    break;
  }
  pthread_mutex_unlock (&e->lock);
  return 0;

 fail:
  pthread_mutex_unlock (&e->lock);
  *err = EIO;
  return -1;
}

uint64_t
engine_claim (struct engine *e, uint64_t *cursor, uint64_t max_clusters,
              uint64_t *first, bool wait)
{
  uint64_t n;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);

  for (;;) {
    if (!atomic_load (&e->active))
      return 0;
    n = claim_run_locked (e, *cursor, e->nr_clusters, max_clusters, first);
    if (n == 0 && *cursor > 0)  /* Failed copies may be PENDING again. */
      n = claim_run_locked (e, 0, *cursor, max_clusters, first);
    if (n > 0) {
      *cursor = *first + n;
      return n;
    }
    if (!wait || e->pending == 0)
      return 0;
    pthread_cond_wait (&e->cond, &e->lock);
  }
}

void
engine_finish_claim (struct engine *e, uint64_t first, uint64_t n, bool ok,
              uint64_t data_bytes, uint64_t zero_bytes, bool by_write,
              const char *failure)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);

  e->in_flight--;
  if (ok) {
    bitmap_set_range (&e->state, first, first + n, CLUSTER_COPIED);
    engine_settle (e, first, first + n, true);
    e->pending -= n;
    e->stats.bytes_copied += data_bytes;
    e->stats.bytes_zero += zero_bytes;
    if (by_write)
      e->stats.bytes_by_writes += data_bytes + zero_bytes;
  }
  else {
    bitmap_set_range (&e->state, first, first + n, CLUSTER_PENDING);
    if (e->on_error == CBW_BREAK_SNAPSHOT || !by_write)
      engine_break_locked (e, failure);
  }
  pthread_cond_broadcast (&e->cond);
}

const char *
engine_target_noun (const struct engine *e)
{
  return strcmp (e->target->ops->kind, "store") == 0
    ? "the fleece store" : "the target";
}

int
engine_store (struct engine *e, const char *buf, uint64_t offset, uint64_t len,
       uint64_t *data, uint64_t *zero)
{
  struct target *t = e->target;
  uint64_t pos = 0;

  while (pos < len) {
    uint64_t end = pos;
    bool z = is_zero (buf + pos, MIN ((uint64_t) e->cluster_size, len - pos));

    do
      end = MIN (end + e->cluster_size, len);
    while (end < len &&
           is_zero (buf + end, MIN ((uint64_t) e->cluster_size,
                                    len - end)) == z);
    if (z) {
      if (!t->known_zero &&
          t->ops->zero (t, end - pos, offset + pos) == -1)
        return -1;
      *zero += end - pos;
    }
    else {
      if (t->ops->pwrite (t, buf + pos, end - pos, offset + pos) == -1)
        return -1;
      *data += end - pos;
    }
    pos = end;
  }
  return 0;
}

int
engine_copy (struct engine *e, nbdkit_next *next, uint64_t first,
             uint64_t n, bool use_extents, bool by_write)
{
  uint64_t read_bytes = 0;

  return engine_copy_counted (e, next, first, n, use_extents, by_write,
                              &read_bytes);
}

int
engine_copy_counted (struct engine *e, nbdkit_next *next, uint64_t first,
                     uint64_t n, bool use_extents, bool by_write,
                     uint64_t *read_bytes)
{
  uint64_t offset = first << e->cluster_bits;
  uint64_t len = MIN (n << e->cluster_bits, e->size - offset);
  uint64_t data = 0, zero = 0, pos = 0;
  CLEANUP_FREE char *buf = NULL;
  struct nbdkit_extents *exts = NULL;
  char failure[256] = "";
  int err = 0;
  bool ok = false;

  if (backup_debug_engine)
    nbdkit_debug ("%s: copy clusters %" PRIu64 "+%" PRIu64 " (%s)",
                  e->name, first, n, by_write ? "before write" : "job");

  buf = malloc (len);
  if (buf == NULL) {
    snprintf (failure, sizeof failure, "malloc: %s", strerror (errno));
    nbdkit_error ("%s", failure);
    goto out;
  }

  /* Skip what the source says reads as zero, without reading it. */
  if (use_extents) {
    exts = nbdkit_extents_full (next, len, offset, 0, &err);
    if (exts == NULL)
      nbdkit_debug ("%s: extents failed, reading everything", e->name);
  }

  while (pos < len) {
    uint64_t run = len - pos;
    bool zero_run = false;

    if (exts) {
      size_t i, count = nbdkit_extents_count (exts);
      for (i = 0; i < count; ++i) {
        struct nbdkit_extent x = nbdkit_get_extent (exts, i);
        if (x.offset <= offset + pos && offset + pos < x.offset + x.length) {
          run = MIN (run, x.offset + x.length - (offset + pos));
          zero_run = (x.type & NBDKIT_EXTENT_ZERO) != 0;
          break;
        }
      }
    }
    if (zero_run) {
      if (!e->target->known_zero &&
          e->target->ops->zero (e->target, run, offset + pos) == -1) {
        snprintf (failure, sizeof failure,
                  "writing %s at offset %" PRIu64 " failed: %s",
                  engine_target_noun (e), offset + pos, strerror (errno));
        goto out;
      }
      zero += run;
    }
    else {
      uint64_t at;

      run = MIN (run, len - pos);
      if (engine_read_source (e, next, buf + pos, offset + pos, run,
                              read_bytes, &err, &at) == -1) {
        snprintf (failure, sizeof failure,
                  "reading the source at offset %" PRIu64 " failed: %s",
                  at, strerror (err));
        goto out;
      }
      if (engine_store (e, buf + pos, offset + pos, run, &data, &zero) == -1) {
        snprintf (failure, sizeof failure,
                  "writing %s at offset %" PRIu64 " failed: %s",
                  engine_target_noun (e), offset + pos, strerror (errno));
        goto out;
      }
    }
    pos += run;
  }
  ok = true;

 out:
  if (exts)
    nbdkit_extents_free (exts);
  if (!ok)
    nbdkit_error ("%s: %s", e->name, failure);
  engine_finish_claim (e, first, n, ok, data, zero, by_write, failure);
  return ok ? 0 : -1;
}

void
engine_get_stats (struct engine *e, struct engine_stats *stats,
                  uint64_t *pending, bool *broken, char **error)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);

  if (stats)
    *stats = e->stats;
  if (pending)
    *pending = e->pending;
  if (broken)
    *broken = e->broken;
  if (error)
    *error = e->error ? strdup (e->error) : NULL;
}

void
engine_protect_bytes (struct engine *e, uint64_t offset, uint64_t count)
{
  if (count == 0)
    return;
  engine_protect (e, offset >> e->cluster_bits,
                  ((offset + count - 1) >> e->cluster_bits) + 1);
}

const char *
engine_name (const struct engine *e)
{
  return e->name;
}

uint64_t
engine_size (const struct engine *e)
{
  return e->size;
}

unsigned
engine_cluster_size (const struct engine *e)
{
  return e->cluster_size;
}

struct target *
engine_target (const struct engine *e)
{
  return e->target;
}

enum cbw_on_error
engine_on_error (const struct engine *e)
{
  return e->on_error;
}

bool
engine_is_active (struct engine *e)
{
  return atomic_load (&e->active);
}

bool
engine_range_copied (struct engine *e, uint64_t offset, uint64_t len)
{
  uint64_t c0 = offset >> e->cluster_bits;
  uint64_t c1 = ((offset + len - 1) >> e->cluster_bits) + 1;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);

  if (len == 0)
    return true;
  c1 = MIN (c1, e->nr_clusters);
  return bitmap_find_not (&e->state, c0, c1, CLUSTER_COPIED) >= c1;
}

/* Snapshot readers (the read side is in snapshot.c). */

/* Lock held: the snapshot is broken or stopped; report it. */
static int
snapshot_gone_locked (struct engine *e, int *err)
{
  *err = EIO;
  nbdkit_error ("%s: the snapshot is %s", e->name,
                e->broken ? "broken" : "not active");
  return -1;
}

/* Where cluster c's point-in-time data is, for readers. */
enum where { ON_SOURCE = 1, ON_TARGET = 0, GONE = 2 };

/* Lock held. */
static inline enum where
where_locked (struct engine *e, uint64_t c)
{
  switch (bitmap_get_blk (&e->state, c, CLUSTER_CLEAN)) {
  case CLUSTER_PENDING:
  case CLUSTER_COPYING:
    return ON_SOURCE;
  case CLUSTER_COPIED:
    return ON_TARGET;
  default:
    return GONE;              /* Not protected: nobody kept it. */
  }
}

int
engine_reader_begin (struct engine *e, struct engine_reader *r,
                     uint64_t offset, uint64_t end, uint64_t *stop,
                     int *err)
{
  uint64_t c = offset >> e->cluster_bits;
  uint64_t c1 = ((end - 1) >> e->cluster_bits) + 1;
  uint64_t ce;
  enum where w;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);

  if (!atomic_load (&e->active) || e->broken)
    return snapshot_gone_locked (e, err);
  w = where_locked (e, c);
  for (ce = c + 1; ce < c1 && where_locked (e, ce) == w; ++ce)
    ;
  *stop = MIN (end, ce << e->cluster_bits);
  if (w == GONE)
    return w;
  r->c0 = c;
  r->c1 = ce;
  r->on_source = w == ON_SOURCE;
  r->next = e->readers;
  e->readers = r;
  return w;
}

int
engine_reader_end (struct engine *e, struct engine_reader *r, int *err)
{
  struct engine_reader **pp;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);

  for (pp = &e->readers; *pp; pp = &(*pp)->next)
    if (*pp == r) {
      *pp = r->next;
      break;
    }
  pthread_cond_broadcast (&e->cond);
  /* Writers stop waiting for readers once the snapshot is gone: then
   * what r read may be new data.
   */
  if (err && (!atomic_load (&e->active) || e->broken))
    return snapshot_gone_locked (e, err);
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
    if (r->on_source && r->c0 < c1 && c0 < r->c1) {
      pthread_cond_wait (&e->cond, &e->lock);
      goto again;
    }
}

bool
engine_discard (struct engine *e, uint64_t offset, uint64_t count,
                uint64_t *start, uint64_t *len)
{
  /* Only whole clusters: the rest of a partly covered one may still
   * be read.  The last cluster may be short.
   */
  uint64_t c0 = (offset + e->cluster_size - 1) >> e->cluster_bits;
  uint64_t c1 = offset + count >= e->size ? e->nr_clusters
    : (offset + count) >> e->cluster_bits;
  uint64_t kept, bytes;
  struct engine_reader *r;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);

  if (count == 0 || c0 >= c1)
    return false;
  /* A copy in flight still writes the target: let it end. */
  while (bitmap_find (&e->state, c0, c1, CLUSTER_COPYING) < c1)
    pthread_cond_wait (&e->cond, &e->lock);
  kept = c1 - c0 - bitmap_count (&e->state, c0, c1, CLUSTER_CLEAN);
  bytes = kept << e->cluster_bits;
  if (c1 == e->nr_clusters &&
      bitmap_get_blk (&e->state, c1 - 1, CLUSTER_CLEAN) != CLUSTER_CLEAN)
    bytes -= (c1 << e->cluster_bits) - e->size;   /* A short last one. */
  e->stats.bytes_discarded += bytes;
  e->pending -= bitmap_count (&e->state, c0, c1, CLUSTER_PENDING);
  bitmap_set_range (&e->state, c0, c1, CLUSTER_CLEAN);
  engine_settle (e, c0, c1, true);    /* Writes there take the fast path. */
  pthread_cond_broadcast (&e->cond);
  /* New readers find them gone; wait for those already reading. */
 again:
  for (r = e->readers; r; r = r->next)
    if (r->c0 < c1 && c0 < r->c1) {
      pthread_cond_wait (&e->cond, &e->lock);
      goto again;
    }
  *start = c0 << e->cluster_bits;
  *len = MIN (c1 << e->cluster_bits, e->size) - *start;
  return true;
}
