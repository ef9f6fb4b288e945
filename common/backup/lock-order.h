/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The lock order of libnbdkit-backup and the suite's filters.  This
 * header holds comments only; every file that takes a second lock
 * while holding one says "Lock order: see lock-order.h."
 *
 * The rule: a thread may take a lock only if every lock it already
 * holds comes EARLIER in this list.  Nobody holds a lock of ours across a wait for
 * another thread unless that thread takes none of the locks held
 * (noted where it happens).
 *
 *  1. control exec_lock (control-commands.c; was command_lock): serialises the
 *     execution of control commands, held across a whole command,
 *     transactions included.
 *
 *     The group deadline timer and a departing client's thread
 *     (control-group.c) take it too, with nothing held, to abort a
 *     group transaction.
 *
 * 1a. control-group.c's group_lock: the group's state, which the
 *     deadline timer waits on.  A leaf: taken under exec_lock or
 *     alone, and nothing is taken or called while it is held.
 *
 *  2. control cmd_table_lock (control-commands.c; was commands_lock): protects
 *     the command table.  A leaf: held only to look up or add a
 *     command (transaction_cmd looks up its actions under exec_lock).
 *
 *  3. the write gate (gate.c, a reader-writer lock).  Read side:
 *     every write, zero or trim, taken first thing by the outermost
 *     of our filters on that thread (cbw.c, fleece.c,
 *     dirtybitmap.c), before any other lock of ours.  Write side: a
 *     transaction (control-commands.c's run_actions, under exec_lock), held
 *     across the actions' prepare and commit.  A group transaction
 *     leaves it closed between commands (from group-prepare to its
 *     commit or abort), held by no thread: while it is, every
 *     command that would close it is refused (it would wait holding
 *     exec_lock, which the group's end needs), and nothing waits for
 *     the gate while holding exec_lock.
 *
 *  4. the registry lock (registry.c).  registry_foreach_described
 *     calls the describe functions with it held, so a describe
 *     function may take the locks below it: fleece's snap_lock (read
 *     side), a job's lock, dirty_lock, the engine's lock.  Nothing
 *     below may call into the registry: register and unregister
 *     objects with none of those held (dirty_add, dirty_remove_*,
 *     job_start, job_free and fleece do).
 *
 *  5. fleece snap_lock (fleece.c, a reader-writer lock): the
 *     snapshot's existence.  Read side: snapshot reads, and live
 *     writes under the gate's read side.  Write side: snapshot-start
 *     (gate closed), snapshot-stop and cleanup.
 *
 *  6. a job's status_lock (job.c): one status file write at a time.
 *     job_write_status holds it while job_object takes the two
 *     below.
 *
 *  7. a job's lock (job.c).  throttle_wait asks the engine for its
 *     counters with it held (engine lock inside).
 *
 *  8. the dirtybitmap sidecar's lock (filters/dirtybitmap/persist.c):
 *     serialises writing the file.  The change hook
 *     (persist_mark_in_use) runs with it, before dirty_lock is
 *     taken; persist_save takes dirty_lock inside it to read the
 *     bitmaps.  Installing a new mapping (persist-map.c) claims the
 *     right to sync under sync_lock, a leaf taken only briefly (never
 *     across I/O or another lock): then takes dirty_lock to move the
 *     mirrors.  A power-mode writer waits on sync_lock's condition
 *     variable for another writer's fdatasync, holding only the
 *     gate's read side (3), which the syncing writer never needs.
 *
 *  9. dirty_lock (dirty.c, dirty-ops.c, dirty-backup.c; private to
 *     them): the set of dirty bitmaps.  No I/O while held.  The one
 *     call out is dirty_backup_end's "copied" callback (the bitmap
 *     mode "always"), which asks the engine (10) about each granule.
 *
 * 10. the engine's lock (engine.c, engine-timed.c; struct engine is
 *     private to them).  A leaf: no I/O and no call out (but
 *     nbdkit_error/nbdkit_debug) while held; copies, target writes
 *     and source reads run without it.
 *
 * 11. control server_lock (control-server.c: the client list, each
 *     client's greeted and done flags), then a client's out_lock (its
 *     output queue).  Queuing a reply or an event is a copy under
 *     these short locks; only the client's own thread writes its
 *     non-blocking socket, with no lock held, so a client that stops
 *     reading stalls nobody.  Taken with none of 3-10 held: events
 *     are emitted after the gate is open again (a transaction's after
 *     step) or by job threads holding nothing.
 *
 *     Leaves beside it, each taken with nothing below it held and
 *     calling out to nothing: job-id.c's ids_lock (ids used so far),
 *     exports.c's lock (export names served).  top-allocation.c has
 *     no lock of its own: it is an object in the registry (4).
 *
 * 12. target and image locks, leaves: target-nbd.c's lock (which
 *     connection is busy); common/qcow2's reuse_lock (read side for
 *     every data request) and then img->lock (metadata).  They are
 *     taken inside target and plugin I/O, which may run under 3 and
 *     5 (a live write going down) but never under 6-11.
 *
 * Waits for other threads while holding a lock:
 *
 *  - a write holding the gate's read side (and snap_lock's) waits on
 *    the engine's condition variable for another thread's copy, or
 *    for snapshot readers; copiers and readers never take the gate
 *    or snap_lock's write side, so the transaction that closes the
 *    gate waits at most for those copies.
 *  - cbw's backup-start commit (gate closed) ends the previous,
 *    finished backup, joining its controller thread; that thread may
 *    still update the bitmap (8-10), write the status file (6, 7)
 *    and send events (11), none of which needs exec_lock or the gate.
 *  - engine_free waits for timed copy helpers; they take only the
 *    engine's lock and target locks.
 */

#ifndef NBDKIT_BACKUP_LOCK_ORDER_H
#define NBDKIT_BACKUP_LOCK_ORDER_H
#endif /* NBDKIT_BACKUP_LOCK_ORDER_H */
