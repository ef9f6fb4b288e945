/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Private to engine.c and engine-timed.c: the engine's state.  Every
 * other file uses the calls of engine.h.
 */

#ifndef NBDKIT_BACKUP_ENGINE_IMPL_H
#define NBDKIT_BACKUP_ENGINE_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "engine.h"
#include "target.h"

/* Threads writing the copy-before-write buffer to the target. */
#define ENGINE_DRAINERS 4

struct buffered_copy;

struct engine {
  /* Fields set by engine_new and never changed. */
  uint64_t size;
  unsigned cluster_size;
  unsigned cluster_bits;
  uint64_t nr_clusters;
  struct target *target;
  enum cbw_on_error on_error;
  const char *name;             /* For messages: "cbw", "fleece". */
  /* Longest a write waits for copy-before-write, in seconds (0: no
   * limit).  Set by engine_set_copy_timeout before activating.
   */
  double copy_timeout;
  /* Clusters that read as zero at the snapshot instant, on a target
   * that does not read zeros (engine-zero.c): one bit each.  Set by
   * engine_skip_zeros, before protection starts or with the write
   * gate closed, and never changed afterwards (no lock needed).
   */
  bool have_zero;
  struct bitmap zero;
  /* The copy-before-write buffer's size in bytes (0: none), set by
   * engine_set_buffer before activating (engine-buffer.c).
   */
  uint64_t buffer_limit;
  /* Memory for single-cluster buffered copies (engine-buffer.c),
   * mapped and touched once by engine_set_buffer so that a writer
   * never waits for page faults: pool_slots slots of cluster_size
   * bytes (NULL, 0: none; bigger copies use malloc).
   */
  char *pool;
  size_t pool_bytes;
  uint32_t pool_slots;
  /* Partial copies (engine-buffer.c): the source context the drainers
   * read the rest of a cluster with (NULL: no partial copies), the
   * size of a block (1 << blk_bits bytes, nr_blks to a cluster, at
   * most 64), and the table of partly copied clusters (held_mask + 1
   * entries, a power of two, linear probing; lock held).
   */
  nbdkit_next *drain_next;
  unsigned blk_bits, nr_blks;
  struct buffered_copy **held;
  uint64_t held_mask;
  uint64_t nr_held;             /* Entries in held (lock held). */
  bool held_closed;             /* No new held clusters (lock held). */

  /* One bit per cluster, set while it is CLEAN or COPIED: the write
   * fast path reads it without the lock.  Changed (atomically) only
   * with the lock held, next to the state bitmap; allocated by
   * engine_new.
   */
  uint8_t *settled;

  /* True while clusters are protected.  Read without the lock on the
   * write fast path; it only becomes true while no write is in flight
   * (server start, or a transaction with the write gate closed).
   */
  atomic_bool active;

  /* This lock protects the fields below. */
  pthread_mutex_t lock;
  pthread_cond_t cond;          /* Broadcast when any cluster changes. */
  struct bitmap state;          /* enum cluster_state per cluster. */
  uint64_t pending;             /* Clusters PENDING or COPYING. */
  bool broken;                  /* A copy failed under break-snapshot. */
  char *error;                  /* First error message, if broken. */
  struct engine_stats stats;
  struct engine_reader *readers; /* Snapshot readers on the source. */
  unsigned in_flight;           /* Claimed runs not yet finished. */
  unsigned helpers;             /* Timed copy threads running. */
  uint64_t zero_skipped;        /* Bytes done at the instant as zero. */
  /* The buffer (engine-buffer.c): copies read, not yet on the target. */
  uint64_t buffered;            /* Bytes in it (or reserved). */
  uint32_t *pool_free;          /* Stack of free slots of the pool. */
  uint32_t pool_nfree;
  struct buffered_copy *buf_head, *buf_tail;  /* FIFO. */
  pthread_cond_t drain_cond;    /* Signalled when a copy is queued. */
  bool drain_stop;              /* Drainers: exit once it is empty. */
  unsigned nr_drainers;
  pthread_t drainers[ENGINE_DRAINERS];
};

/* What the engine writes to, for messages: "the fleece store" for
 * fleece's local store (not a backup target: a user must be told
 * which one failed), else "the target".
 */
extern const char *engine_target_noun (const struct engine *e);

/* Write buf (the source's data for [offset, offset+len)) to the
 * target one cluster at a time, leaving zero clusters unwritten on a
 * known-zero target and unmapping them otherwise.  Runs of the same
 * kind go in one call.  Adds to *data and *zero.  0 or -1 (errno).
 */
extern int engine_store (struct engine *e, const char *buf, uint64_t offset,
                         uint64_t len, uint64_t *data, uint64_t *zero);

/* Read the point-in-time data of [offset, offset+len) (claimed
 * clusters, offset cluster-aligned) into buf: zeros for clusters
 * flagged as zero at the instant, the source for the rest.  Adds to
 * *read_bytes what it read.  0, or -1 with *err and *fail_offset set.
 */
extern int engine_read_source (struct engine *e, nbdkit_next *next,
                               char *buf, uint64_t offset, uint64_t len,
                               uint64_t *read_bytes, int *err,
                               uint64_t *fail_offset);

/* Mark claimed [first, first+n) as copied or, after a failure, pending
 * again; account and wake waiters.  Takes the lock.
 */
extern void engine_finish_claim (struct engine *e, uint64_t first,
                                 uint64_t n, bool ok, uint64_t data_bytes,
                                 uint64_t zero_bytes, bool by_write,
                                 const char *failure);

/* Mark clusters [a, b) as settled (CLEAN or COPIED) or not.  Lock
 * held, beside the change to the state bitmap.
 */
extern void engine_settle (struct engine *e, uint64_t a, uint64_t b,
                           bool settled);

/* Break the snapshot (engine_break with the lock held). */
extern void engine_break_locked (struct engine *e, const char *msg);

/* Copy claimed clusters [first, first+n) before a write through the
 * buffer: read the source into memory, mark them COPIED and queue the
 * data for the drainers.  0 done; -1 failed (claim finished as
 * engine_copy does); 1 not done (no buffer, under fail-write, or
 * full): the caller still holds the claim and copies it itself.
 */
extern int engine_buffer_copy (struct engine *e, nbdkit_next *next,
                               uint64_t first, uint64_t n);

/* Copy-before-write for a write of [offset, offset+count) inside the
 * one cluster c, copying only the blocks the write touches (a partial
 * copy: the rest of the cluster stays protected, and a drainer reads
 * it when it writes the cluster out).  Lock held; it may be dropped
 * and taken again.  Returns 0: the write may go down; -1: the read
 * failed (the snapshot is broken); 1: not done this way (the caller
 * copies the cluster as usual); 2: wait (e->cond) and ask again.
 */
extern int engine_buffer_partial_locked (struct engine *e, nbdkit_next *next,
                                         uint64_t c, uint64_t offset,
                                         uint64_t count);

/* Let the drainers write what is queued, then end them, and give
 * back the pool.
 */
extern void engine_buffer_stop (struct engine *e);

/* An outcome of engine_timed_copy. */
#define COPY_TIMED_OUT (-2)

/* Copy claimed clusters [first, first+n) before a write, giving up at
 * deadline.  0, -1 (failed: finished as engine_copy does), or
 * COPY_TIMED_OUT (the copy may still be in flight: its helper will
 * finish the claim).  Called without the lock.
 */
extern int engine_timed_copy (struct engine *e, nbdkit_next *next,
                              uint64_t first, uint64_t n,
                              const struct timespec *deadline);

#endif /* NBDKIT_BACKUP_ENGINE_IMPL_H */
