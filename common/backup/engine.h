/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The copy-before-write engine, shared by the cbw and fleece filters.
 *
 * It keeps the state of every cluster of the snapshot and copies a
 * cluster's old contents to a target before anything overwrites it.
 * The background job (job.h) and writers claim clusters through the
 * same calls, so each cluster is copied exactly once, and nobody
 * holds the engine lock across I/O.
 */

#ifndef NBDKIT_BACKUP_ENGINE_H
#define NBDKIT_BACKUP_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "target.h"

/* Cluster states, two bits each. */
enum cluster_state {
  CLUSTER_CLEAN   = 0,  /* Not protected: writes pass straight down. */
  CLUSTER_PENDING = 1,  /* Protected, old data not yet on the target. */
  CLUSTER_COPYING = 2,  /* Claimed: a copy is in flight; others wait. */
  CLUSTER_COPIED  = 3,  /* Old data is on the target. */
};

/* What to do when copying fails (the target or the source failed). */
enum cbw_on_error {
  CBW_BREAK_SNAPSHOT,   /* Abandon the backup; writes go on (default). */
  CBW_FAIL_WRITE,       /* Fail the write with EIO; keep the snapshot. */
};

struct engine_stats {
  uint64_t bytes_copied;        /* Data written to the target. */
  uint64_t bytes_zero;          /* Zero clusters (no data written). */
  uint64_t bytes_by_writes;     /* Of both, copied before writes. */
  uint64_t writes_failed;       /* Writes failed with EIO (fail-write). */
  uint64_t copy_timeouts;       /* Copy-before-writes that timed out. */
  uint64_t write_waits;         /* Writes that waited for others' copies. */
  uint64_t bytes_discarded;     /* Dropped from the snapshot (discard). */
  uint64_t bytes_buffered;      /* Copied before writes via the buffer. */
  uint64_t buffer_full;         /* Copies that found the buffer full. */
  uint64_t partial_copies;      /* Clusters first copied in part. */
};

/* The engine's state is private to engine.c and engine-timed.c
 * (engine-impl.h); these calls take its lock where they need it.
 */
struct engine;

/* A snapshot reader of clusters [c0, c1) (see snapshot.h).  While
 * registered on the source, writes to those clusters wait (after
 * their copy-before-write), so the reader sees point-in-time data;
 * registered on the target, engine_discard waits for it before the
 * caller frees the target's copy.  Lives on the reader's stack.
 */
struct engine_reader {
  struct engine_reader *next;
  uint64_t c0, c1;
  bool on_source;
};

/* A new engine for a disk of size bytes, copying to target (which the
 * engine does not own).  Nothing is protected yet.  NULL on error.
 */
extern struct engine *engine_new (const char *name, uint64_t size,
                                  unsigned cluster_size,
                                  struct target *target,
                                  enum cbw_on_error on_error);

/* Log every copy (set from a filter's -D <name>.engine=1). */
extern int backup_debug_engine;

/* Free the engine (after every user has stopped; waits for timed
 * copies still in flight).
 */
extern void engine_free (struct engine *e);

/* Bound the time a write waits in copy-before-write (0: no bound).
 * A copy that takes longer counts as a target failure under the
 * policy.  Call before activating.
 */
extern void engine_set_copy_timeout (struct engine *e, double seconds);

/* Give copy-before-write a buffer of up to bytes (0: none): a writer
 * then waits only for the old data to be read into memory, and
 * threads write it to the target behind it (engine-buffer.c).  Used
 * only under CBW_BREAK_SNAPSHOT, and not with snapshot readers.  With
 * drain_next (a source context that lives as long as the engine), a
 * write inside one cluster copies only the blocks it touches and the
 * drainers read the rest of the cluster.  Call before activating.
 */
extern void engine_set_buffer (struct engine *e, uint64_t bytes,
                               nbdkit_next *drain_next);

/* Wait until no claimed copy is in flight, the buffer's included
 * (call after deactivating, before finishing or closing the target).
 */
extern void engine_quiesce (struct engine *e);

/* Protect clusters [first, end) (the snapshot instant for them); end
 * is clipped to the disk, so UINT64_MAX protects everything.  Call
 * before activating, or with the write gate closed.
 */
extern void engine_protect (struct engine *e, uint64_t first, uint64_t end);

/* engine_protect for every cluster that bytes [offset, offset+count)
 * touch.
 */
extern void engine_protect_bytes (struct engine *e, uint64_t offset,
                                  uint64_t count);

/* At the snapshot instant, after engine_protect (before activating,
 * or with the write gate closed): the protected clusters that next's
 * extents say read as zero are never read or copied as data.  On a
 * target known to read zeros they are done at once; otherwise their
 * copy writes zeroes without reading the source (engine-zero.c).
 * 0; -1 if the extents could not be had (then nothing, or only part,
 * is skipped, which is still exact); also 0 if next has no extents.
 */
extern int engine_skip_zeros (struct engine *e, nbdkit_next *next);

/* Start (or stop) copy-before-write.  engine_deactivate first waits
 * for the clusters that the buffer holds in part (engine_set_buffer)
 * to be read whole, unless the snapshot is broken.
 */
extern void engine_activate (struct engine *e);
extern void engine_deactivate (struct engine *e);

/* Before a write, zero or trim of [offset, offset+count): copy every
 * protected cluster it touches that is not yet on the target, or wait
 * for the copy already in flight.  next reads the source.  Returns 0
 * when the request may go down; -1 with *err set when it must fail
 * (only under CBW_FAIL_WRITE).
 */
extern int engine_before_write (struct engine *e, nbdkit_next *next,
                                uint64_t offset, uint64_t count, int *err);

/* For the background job: claim up to max_clusters contiguous PENDING
 * clusters at or after *cursor (wrapping to 0 once).  Returns the
 * number claimed (their first cluster in *first, *cursor moved past
 * them), or 0 when none is PENDING; then, if wait is true, it first
 * waits until no copy is in flight either, so 0 means all done (or
 * the engine stopped).
 */
extern uint64_t engine_claim (struct engine *e, uint64_t *cursor,
                              uint64_t max_clusters, uint64_t *first,
                              bool wait);

/* Copy claimed clusters [first, first+n) from next to the target and
 * mark them COPIED (or PENDING again on failure).  use_extents skips
 * reading what the source reports as zero.  by_write counts the bytes
 * as copy-before-write.  0, or -1 (reported, and the engine broken or
 * not according to the policy).
 */
extern int engine_copy (struct engine *e, nbdkit_next *next,
                        uint64_t first, uint64_t n, bool use_extents,
                        bool by_write);

/* engine_copy, also adding to *read_bytes what it read from the
 * source (for the job's speed limit).
 */
extern int engine_copy_counted (struct engine *e, nbdkit_next *next,
                                uint64_t first, uint64_t n,
                                bool use_extents, bool by_write,
                                uint64_t *read_bytes);

/* Snapshot of counters and state under the lock. */
extern void engine_get_stats (struct engine *e, struct engine_stats *stats,
                              uint64_t *pending, bool *broken,
                              char **error);

/* Record a failure that breaks the snapshot (e.g. the job's own
 * error): stops protection, wakes every waiter.  msg is copied.
 */
extern void engine_break (struct engine *e, const char *msg);

/* Fields set by engine_new and never changed (no lock needed). */
extern const char *engine_name (const struct engine *e);
extern uint64_t engine_size (const struct engine *e);
extern unsigned engine_cluster_size (const struct engine *e);
extern struct target *engine_target (const struct engine *e);
extern enum cbw_on_error engine_on_error (const struct engine *e);

/* Is copy-before-write on (activated, not stopped or broken)? */
extern bool engine_is_active (struct engine *e);

/* Is every cluster that [offset, offset+len) touches on the target? */
extern bool engine_range_copied (struct engine *e, uint64_t offset,
                                 uint64_t len);

/* For snapshot readers (snapshot.c): look at the snapshot from offset
 * (below end).  Sets *stop to the end of the run of bytes whose
 * clusters are alike: all still on the source, all on the target, or
 * all no longer in the snapshot (never protected, or discarded).
 * Returns 1 for the source and 0 for the target, with r registered on
 * the run (call engine_reader_end after reading it); 2 for clusters
 * not in the snapshot (nothing registered, nothing reported); -1 with
 * *err = EIO (reported) if the snapshot is broken or stopped.
 */
extern int engine_reader_begin (struct engine *e, struct engine_reader *r,
                                uint64_t offset, uint64_t end,
                                uint64_t *stop, int *err);

/* Unregister r and wake the writers waiting for it.  0 if the
 * snapshot is still whole (what r read is point-in-time data), else
 * -1 with *err = EIO (reported).  err NULL: unregister only (after a
 * failed read), return 0.
 */
extern int engine_reader_end (struct engine *e, struct engine_reader *r,
                              int *err);

/* For writers, after engine_before_write: wait until no snapshot
 * reader is reading the source clusters this write touches.
 */
extern void engine_wait_readers (struct engine *e, uint64_t offset,
                                 uint64_t count);

/* A snapshot reader is done with [offset, offset+count) (NBD trim on
 * fleece's snapshot export, QEMU's discard-source): drop every cluster
 * wholly inside it (or reaching the disk's end) from the snapshot.
 * They are no longer protected (later writes to them copy nothing)
 * and later snapshot reads of them fail.  Waits for copies in flight
 * and for snapshot readers registered on those clusters, so once it
 * returns nobody uses the target's copy of [*start, *start+*len):
 * the caller may free it.  Returns false (nothing to free) if no
 * whole cluster is inside.
 */
extern bool engine_discard (struct engine *e, uint64_t offset,
                            uint64_t count, uint64_t *start, uint64_t *len);

#endif /* NBDKIT_BACKUP_ENGINE_H */
