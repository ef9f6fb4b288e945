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
 *  - Partial copies (with a drain context, engine_set_buffer): a write
 *    inside one cluster reads only the blocks it touches (a block is
 *    1/64 of a cluster, at least 512 bytes) into a pool slot, and goes
 *    down.  The cluster stays COPYING, "held": its other blocks are
 *    still protected, and the table e->held finds the slot by cluster.
 *    A later write to the held cluster goes down at once if its blocks
 *    are in the slot, or else copies its blocks into the slot first.
 *    The drainer that takes the slot reads the blocks still missing
 *    from the source (nobody may write them: the cluster is COPYING)
 *    and writes the whole cluster, so the target only ever gets whole
 *    clusters, and the cluster becomes COPIED then.  One reader of a
 *    slot at a time (busy); writers whose blocks are already in the
 *    slot never wait.  A 4K write to a 64K cluster then reads 4K
 *    before it goes down instead of 64K.  engine_deactivate waits
 *    until no cluster is held: the rest of a held cluster is still
 *    only on the source, and writes must not reach it before the
 *    drainer has read it.
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
  /* A partial copy of cluster first (n = 1): only the blocks in mask
   * are in buf; the cluster stays COPYING until a drainer has read
   * the rest and written it.  busy: somebody is reading into buf
   * without the lock.
   */
  bool partial, busy;
  uint64_t mask;
};

/* The held table: cluster -> its partial copy.  Lock held. */
static uint64_t
held_slot (const struct engine *e, uint64_t c)
{
  return (c * UINT64_C (0x9E3779B97F4A7C15)) >> 32 & e->held_mask;
}

static struct buffered_copy *
held_find (const struct engine *e, uint64_t c)
{
  uint64_t i;

  if (e->held == NULL)
    return NULL;
  for (i = held_slot (e, c); e->held[i]; i = (i + 1) & e->held_mask)
    if (e->held[i]->first == c)
      return e->held[i];
  return NULL;
}

static void
held_add (struct engine *e, struct buffered_copy *b)
{
  uint64_t i = held_slot (e, b->first);

  while (e->held[i])
    i = (i + 1) & e->held_mask;
  e->held[i] = b;
  e->nr_held++;
}

/* Remove b, moving later entries of its probe run back (no
 * tombstones).
 */
static void
held_remove (struct engine *e, struct buffered_copy *b)
{
  uint64_t i = held_slot (e, b->first), j;

  while (e->held[i] != b)
    i = (i + 1) & e->held_mask;
  e->held[i] = NULL;
  e->nr_held--;
  for (j = (i + 1) & e->held_mask; e->held[j]; j = (j + 1) & e->held_mask) {
    uint64_t h = held_slot (e, e->held[j]->first);

    /* Can the entry at j stay, with a hole at i?  Only if its home h
     * lies cyclically in (i, j].
     */
    if (i <= j ? (i < h && h <= j) : (i < h || h <= j))
      continue;
    e->held[i] = e->held[j];
    e->held[j] = NULL;
    i = j;
  }
}

/* The blocks of cluster c that bytes [offset, offset+count) touch. */
static uint64_t
blocks_of (const struct engine *e, uint64_t c, uint64_t offset,
           uint64_t count)
{
  uint64_t base = c << e->cluster_bits;
  unsigned b0 = (offset - base) >> e->blk_bits;
  unsigned b1 = (offset + count - 1 - base) >> e->blk_bits;
  uint64_t hi = b1 >= 63 ? UINT64_MAX : (UINT64_C (1) << (b1 + 1)) - 1;

  return hi & ~((UINT64_C (1) << b0) - 1);
}

/* Every block of a cluster. */
static uint64_t
all_blocks (const struct engine *e)
{
  return e->nr_blks >= 64 ? UINT64_MAX : (UINT64_C (1) << e->nr_blks) - 1;
}

/* Read the blocks in want of b's cluster from the source into b->buf,
 * a run of blocks per read.  0, or -1 with *err and *at set.
 */
static int
read_blocks (struct engine *e, nbdkit_next *next, struct buffered_copy *b,
             uint64_t want, uint64_t *read_bytes, int *err, uint64_t *at)
{
  unsigned i = 0;

  while (i < e->nr_blks) {
    unsigned j;
    uint64_t pos, len;

    if (!(want >> i & 1)) {
      i++;
      continue;
    }
    for (j = i; j < e->nr_blks && (want >> j & 1); ++j)
      ;
    pos = (uint64_t) i << e->blk_bits;
    if (pos < b->len) {
      len = MIN ((uint64_t) j << e->blk_bits, b->len) - pos;
      if (engine_read_source (e, next, b->buf + pos, b->offset + pos, len,
                              read_bytes, err, at) == -1)
        return -1;
    }
    i = j;
  }
  return 0;
}

void
engine_set_buffer (struct engine *e, uint64_t bytes, nbdkit_next *drain_next)
{
  uint64_t slots = MIN (bytes, POOL_MAX) >> e->cluster_bits;
  void *p;
  uint32_t i;

  e->buffer_limit = bytes;
  if (slots == 0 || e->pool != NULL)
    return;
  /* Partial copies need a pool slot per held cluster, a context to
   * read the rest with, and blocks smaller than a cluster.
   */
  e->blk_bits = e->cluster_bits > 15 ? e->cluster_bits - 6 : 9;
  e->nr_blks = e->cluster_bits > e->blk_bits
    ? 1u << (e->cluster_bits - e->blk_bits) : 1;
  if (drain_next && e->nr_blks > 1) {
    uint64_t cap = 1;

    while (cap < 2 * slots)
      cap <<= 1;
    e->held = calloc (cap, sizeof *e->held);
    if (e->held) {
      e->held_mask = cap - 1;
      e->drain_next = drain_next;
    }
  }
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
    /* A held cluster: wait for a writer still reading into the slot,
     * then keep writers that need more of it out while the rest is
     * read (those whose blocks are in the slot go on writing).
     */
    if (b->partial) {
      while (b->busy)
        pthread_cond_wait (&e->cond, &e->lock);
      b->busy = true;
    }
    /* A broken snapshot is never published: don't bother. */
    skip = e->broken;
    pthread_mutex_unlock (&e->lock);

    if (!skip && b->partial) {
      uint64_t read_bytes = 0, at = 0;
      int err = 0;

      if (read_blocks (e, e->drain_next, b, all_blocks (e) & ~b->mask,
                       &read_bytes, &err, &at) == -1) {
        ok = false;
        snprintf (failure, sizeof failure,
                  "reading the source at offset %" PRIu64 " failed: %s",
                  at, strerror (err));
        nbdkit_error ("%s: %s", e->name, failure);
      }
    }
    if (!skip && ok &&
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
    if (b->partial) {
      /* The claim ends here: COPIED, or PENDING in a broken snapshot. */
      held_remove (e, b);
      if (ok && !skip) {
        bitmap_set_blk (&e->state, b->first, CLUSTER_COPIED);
        engine_settle (e, b->first, b->first + 1, true);
        e->pending--;
      }
      else
        bitmap_set_blk (&e->state, b->first, CLUSTER_PENDING);
    }
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

/* Queue b for the drainers.  Lock held. */
static void
enqueue_locked (struct engine *e, struct buffered_copy *b)
{
  if (e->buf_tail)
    e->buf_tail->next = b;
  else
    e->buf_head = b;
  e->buf_tail = b;
  pthread_cond_signal (&e->drain_cond);
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
  b->partial = b->busy = false;
  b->mask = 0;
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
  enqueue_locked (e, b);
  pthread_cond_broadcast (&e->cond);
  pthread_mutex_unlock (&e->lock);
  return 0;
}

int
engine_buffer_partial_locked (struct engine *e, nbdkit_next *next,
                              uint64_t c, uint64_t offset, uint64_t count)
{
  struct buffered_copy *b;
  uint64_t want, read_bytes = 0, at = 0;
  char failure[256];
  bool fresh = false;
  int err = 0, r;

  if (e->drain_next == NULL || e->on_error != CBW_BREAK_SNAPSHOT ||
      e->copy_timeout > 0)
    return 1;
  switch (bitmap_get_blk (&e->state, c, CLUSTER_CLEAN)) {
  case CLUSTER_PENDING: {
    uint64_t len = MIN ((uint64_t) e->cluster_size,
                        e->size - (c << e->cluster_bits));

    if (e->held_closed)
      return 1;                 /* Deactivating: whole copies only. */
    /* A write of the whole cluster needs it all anyway; so does one
     * that finds no room (the usual path then copies to the target).
     */
    if (offset <= c << e->cluster_bits &&
        offset + count >= (c << e->cluster_bits) + len)
      return 1;
    if (e->buffered + len > e->buffer_limit || e->pool_nfree == 0 ||
        !start_drainers_locked (e))
      return 1;
    b = malloc (sizeof *b);
    if (b == NULL)
      return 1;
    b->next = NULL;
    b->first = c;
    b->n = 1;
    b->offset = c << e->cluster_bits;
    b->len = len;
    b->buf = e->pool + ((uint64_t) e->pool_free[--e->pool_nfree]
                        << e->cluster_bits);
    b->pooled = b->partial = b->busy = true;
    /* Blocks past the end of the disk count as there. */
    b->mask = all_blocks (e) & ~blocks_of (e, c, b->offset, len);
    bitmap_set_blk (&e->state, c, CLUSTER_COPYING);
    e->in_flight++;
    e->buffered += len;
    e->stats.bytes_buffered += len;
    e->stats.partial_copies++;
    held_add (e, b);
    fresh = true;
    want = blocks_of (e, c, offset, count);
    break;
  }
  case CLUSTER_COPYING:
    b = held_find (e, c);
    if (b == NULL)
      return 2;                 /* A whole-cluster copy: wait for it. */
    want = blocks_of (e, c, offset, count) & ~b->mask;
    if (want == 0)
      return 0;                 /* Its old data is in the slot already. */
    if (b->busy)
      return 2;
    b->busy = true;
    break;
  default:
    return 1;                   /* Settled: nothing to do. */
  }

  if (backup_debug_engine)
    nbdkit_debug ("%s: copy cluster %" PRIu64 " blocks 0x%" PRIx64
                  " (before write, partial)", e->name, c, want);
  pthread_mutex_unlock (&e->lock);
  r = read_blocks (e, next, b, want, &read_bytes, &err, &at);
  pthread_mutex_lock (&e->lock);
  b->busy = false;
  if (r == 0)
    b->mask |= want;
  else {
    snprintf (failure, sizeof failure,
              "reading the source at offset %" PRIu64 " failed: %s",
              at, strerror (err));
    nbdkit_error ("%s: %s", e->name, failure);
    engine_break_locked (e, failure);
  }
  /* A new slot goes to the drainers either way: they end the claim
   * (a broken snapshot's is just let go).
   */
  if (fresh)
    enqueue_locked (e, b);
  pthread_cond_broadcast (&e->cond);
  return r;
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
  free (e->held);
  e->held = NULL;
  e->drain_next = NULL;
}
