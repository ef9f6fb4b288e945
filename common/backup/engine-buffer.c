/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Writers wait for memory, not for the target: the copy-before-write
 * buffer.
 *
 * Without it, a write that is the first to touch a cluster waits for
 * the cluster's old data to be read from the source *and* written to
 * the target.  With a buffer (engine_set_buffer), the writer only
 * reads the old data into memory; the claimed clusters become COPIED
 * at once (their point-in-time data is safe in the buffer, so the
 * write may go down), and drainer threads write the buffer to the
 * target in the background.
 *
 *  - Bounded: at most buffer_limit bytes are buffered.  A writer that
 *    finds no room copies the cluster itself, straight to the target,
 *    as without a buffer: backpressure, never loss.
 *  - The job completes only once the buffer is empty: a buffered copy
 *    stays counted in in_flight until it is on the target, and
 *    engine_quiesce (which the job calls before finishing the target)
 *    waits for in_flight to reach zero.
 *  - A failed target write breaks the snapshot (the write it protected
 *    has long been acknowledged).  So the buffer is used only under
 *    break-snapshot: under fail-write a target failure must still fail
 *    the write, which then waits for the target as before.
 *  - Crashes: a buffered copy lost in a crash only ever belongs to a
 *    target that was not finished, so it is never mistaken for whole.
 *  - Snapshot readers read COPIED clusters from the target, so an
 *    engine with snapshot readers (fleece) has no buffer.
 *  - Memory: a first write's copy is one cluster, and a fresh 64K
 *    malloc costs a writer sixteen page faults (glibc gives the pages
 *    back to the kernel as the drainers free them), about as much as
 *    the read itself.  So single-cluster copies take a slot of a pool
 *    that engine_set_buffer maps and touches once, up to POOL_MAX;
 *    bigger copies, and those that find no free slot, use malloc.
 *
 * Lock order: see lock-order.h (only the engine's lock is taken here).
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "engine.h"
#include "engine-impl.h"
#include "minmax.h"

/* The pool never holds more than this: a bigger buffer's excess
 * uses malloc, so a large cbw-buffer-size is not all resident from
 * the start.
 */
#define POOL_MAX (UINT64_C (256) * 1024 * 1024)

/* One buffered copy: claimed clusters [first, first+n), their data. */
struct buffered_copy {
  struct buffered_copy *next;
  uint64_t first, n, offset, len;
  char *buf;
  bool pooled;                  /* buf is a slot of e->pool. */
};

void
engine_set_buffer (struct engine *e, uint64_t bytes)
{
  uint64_t slots = MIN (bytes, POOL_MAX) >> e->cluster_bits;
  void *p;
  uint32_t i;

  e->buffer_limit = bytes;
  if (slots == 0 || e->pool != NULL)
    return;
  e->pool_free = malloc (slots * sizeof *e->pool_free);
  if (e->pool_free == NULL)
    return;                     /* Only slower: malloc for every copy. */
  p = mmap (NULL, slots << e->cluster_bits, PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) {
    nbdkit_debug ("%s: buffer pool: mmap: %m (using malloc)", e->name);
    free (e->pool_free);
    e->pool_free = NULL;
    return;
  }
  e->pool = p;
  e->pool_bytes = slots << e->cluster_bits;
  e->pool_slots = slots;
  for (i = 0; i < slots; ++i)
    e->pool_free[i] = slots - 1 - i;
  e->pool_nfree = slots;
}

/* Give back b's memory and b.  Lock held. */
static void
release_copy_locked (struct engine *e, struct buffered_copy *b)
{
  if (b->pooled)
    e->pool_free[e->pool_nfree++] =
      (uint32_t) ((b->buf - e->pool) >> e->cluster_bits);
  else
    free (b->buf);
  free (b);
}

/* Drainer thread: write buffered copies to the target until told to
 * stop with the queue empty.
 */
static void *
drainer (void *vp)
{
  struct engine *e = vp;

  pthread_mutex_lock (&e->lock);
  for (;;) {
    struct buffered_copy *b = e->buf_head;
    uint64_t data = 0, zero = 0;
    char failure[256] = "";
    bool ok = true, skip;

    if (b == NULL) {
      if (e->drain_stop)
        break;
      pthread_cond_wait (&e->drain_cond, &e->lock);
      continue;
    }
    e->buf_head = b->next;
    if (e->buf_head == NULL)
      e->buf_tail = NULL;
    /* A broken snapshot is never published: don't bother. */
    skip = e->broken;
    pthread_mutex_unlock (&e->lock);

    if (!skip &&
        engine_store (e, b->buf, b->offset, b->len, &data, &zero) == -1) {
      ok = false;
      snprintf (failure, sizeof failure,
                "writing %s at offset %" PRIu64 " failed: %s",
                engine_target_noun (e), b->offset, strerror (errno));
      nbdkit_error ("%s: %s", e->name, failure);
    }

    pthread_mutex_lock (&e->lock);
    e->in_flight--;
    e->buffered -= b->len;
    if (ok) {
      e->stats.bytes_copied += data;
      e->stats.bytes_zero += zero;
      e->stats.bytes_by_writes += data + zero;
    }
    else
      engine_break_locked (e, failure);
    pthread_cond_broadcast (&e->cond);
    release_copy_locked (e, b);
  }
  pthread_mutex_unlock (&e->lock);
  return NULL;
}

/* Start the drainers, once.  Lock held.  False if none could start. */
static bool
start_drainers_locked (struct engine *e)
{
  unsigned i;

  if (e->nr_drainers > 0)
    return true;
  for (i = 0; i < ENGINE_DRAINERS; ++i) {
    int r = pthread_create (&e->drainers[i], NULL, drainer, e);
    if (r != 0) {
      nbdkit_debug ("%s: cannot start a buffer drainer: %s",
                    e->name, strerror (r));
      break;
    }
    e->nr_drainers++;
  }
  return e->nr_drainers > 0;
}

int
engine_buffer_copy (struct engine *e, nbdkit_next *next,
                    uint64_t first, uint64_t n)
{
  struct buffered_copy *b;
  uint64_t offset = first << e->cluster_bits;
  uint64_t len = MIN (n << e->cluster_bits, e->size - offset);
  uint64_t read_bytes = 0, at;
  char failure[256];
  int err = 0;

  if (e->buffer_limit == 0 || e->on_error != CBW_BREAK_SNAPSHOT)
    return 1;
  b = malloc (sizeof *b);
  if (b == NULL)
    return 1;
  b->buf = NULL;
  b->pooled = false;
  /* Reserve room (a slot of the pool if one fits), or let the caller
   * copy to the target itself.
   */
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);

    if (e->buffered + len > e->buffer_limit) {
      e->stats.buffer_full++;
      free (b);
      return 1;
    }
    e->buffered += len;
    if (len <= e->cluster_size && e->pool_nfree > 0) {
      uint64_t slot = e->pool_free[--e->pool_nfree];
      b->buf = e->pool + (slot << e->cluster_bits);
      b->pooled = true;
    }
  }
  if (!b->pooled && (b->buf = malloc (len)) == NULL) {
    free (b);
    pthread_mutex_lock (&e->lock);
    e->buffered -= len;
    pthread_mutex_unlock (&e->lock);
    return 1;
  }
  b->next = NULL;
  b->first = first;
  b->n = n;
  b->offset = offset;
  b->len = len;

  if (backup_debug_engine)
    nbdkit_debug ("%s: copy clusters %" PRIu64 "+%" PRIu64
                  " (before write, buffered)", e->name, first, n);
  if (engine_read_source (e, next, b->buf, offset, len, &read_bytes,
                          &err, &at) == -1) {
    snprintf (failure, sizeof failure,
              "reading the source at offset %" PRIu64 " failed: %s",
              at, strerror (err));
    nbdkit_error ("%s: %s", e->name, failure);
    pthread_mutex_lock (&e->lock);
    e->buffered -= len;
    release_copy_locked (e, b);
    pthread_mutex_unlock (&e->lock);
    engine_finish_claim (e, first, n, false, 0, 0, true, failure);
    return -1;
  }

  pthread_mutex_lock (&e->lock);
  if (!start_drainers_locked (e)) {
    /* No thread to drain it: write it ourselves (the claim stays). */
    uint64_t data = 0, zero = 0;
    bool ok;

    e->buffered -= len;
    pthread_mutex_unlock (&e->lock);
    ok = engine_store (e, b->buf, offset, len, &data, &zero) == 0;
    if (!ok)
      snprintf (failure, sizeof failure,
                "writing %s at offset %" PRIu64 " failed: %s",
                engine_target_noun (e), offset, strerror (errno));
    engine_finish_claim (e, first, n, ok, data, zero, true, failure);
    pthread_mutex_lock (&e->lock);
    release_copy_locked (e, b);
    pthread_mutex_unlock (&e->lock);
    return ok ? 0 : -1;
  }
  /* The old data is safe: the clusters are done for writers, and the
   * claim (in_flight) ends when a drainer has written them.
   */
  bitmap_set_range (&e->state, first, first + n, CLUSTER_COPIED);
  engine_settle (e, first, first + n, true);
  e->pending -= n;
  e->stats.bytes_buffered += len;
  if (e->buf_tail)
    e->buf_tail->next = b;
  else
    e->buf_head = b;
  e->buf_tail = b;
  pthread_cond_signal (&e->drain_cond);
  pthread_cond_broadcast (&e->cond);
  pthread_mutex_unlock (&e->lock);
  return 0;
}

void
engine_buffer_stop (struct engine *e)
{
  unsigned i, n;

  pthread_mutex_lock (&e->lock);
  e->drain_stop = true;
  pthread_cond_broadcast (&e->drain_cond);
  n = e->nr_drainers;
  pthread_mutex_unlock (&e->lock);
  for (i = 0; i < n; ++i)
    pthread_join (e->drainers[i], NULL);
  pthread_mutex_lock (&e->lock);
  e->nr_drainers = 0;
  pthread_mutex_unlock (&e->lock);
  /* Nothing is queued any more: every slot is free. */
  if (e->pool) {
    munmap (e->pool, e->pool_bytes);
    e->pool = NULL;
    e->pool_slots = e->pool_nfree = 0;
  }
  free (e->pool_free);
  e->pool_free = NULL;
}
