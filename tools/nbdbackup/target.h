/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Where a copy goes: a raw file, a qcow2 image or an NBD export,
 * behind one interface.
 *
 * Requests complete through t->done (set by the caller before the
 * first request).  The file backends do the I/O at once and call
 * t->done before returning; the NBD backend issues an asynchronous
 * command on the connection ("lane") the caller names, and calls
 * t->done from libnbd's completion callback, that is from inside
 * nbd_aio_notify_* on one of t->nbd, which the caller must poll.
 *
 * A file target is written as TARGET.incomplete and renamed to TARGET
 * only by commit, after flush: a target that did not complete never
 * looks complete.
 */

#ifndef NBDBACKUP_TARGET_H
#define NBDBACKUP_TARGET_H

#include <stdbool.h>
#include <stdint.h>

#include <libnbd.h>

struct target;

/* Completion: err is 0 or an errno value. */
typedef void (*target_done_fn) (void *opaque, int err);

struct target_ops {
  /* Write len bytes (<= the copy's chunk) from buf at offset.  buf
   * stays valid until done is called.  0 = issued (done will be or
   * has been called), -1 = failed and reported (done is not called).
   */
  int (*write) (struct target *t, unsigned lane, const void *buf,
                uint32_t len, uint64_t offset, void *opaque);
  /* Make [offset, offset+len) read as zeros; len <= t->max_zero.  NULL
   * when the target is zero_initialized (the copy never needs it).
   */
  int (*zero) (struct target *t, unsigned lane, uint32_t len,
               uint64_t offset, void *opaque);
  /* With nothing in flight: make every write durable.  0 or -1. */
  int (*flush) (struct target *t);
  /* After flush: close and publish (rename TARGET.incomplete to
   * TARGET).  0 or -1.
   */
  int (*commit) (struct target *t);
  /* Release everything.  Without commit, a file target stays
   * TARGET.incomplete.
   */
  void (*close) (struct target *t);
};

struct target {
  const struct target_ops *ops;
  const char *format;           /* "raw", "qcow2" or "nbd" */
  /* Fresh and reading as zeros everywhere: ranges that read as zeros
   * on the source need no request at all.
   */
  bool zero_initialized;
  uint32_t max_zero;            /* largest zero request */
  struct nbd_handle **nbd;      /* connections to poll (NBD target) */
  unsigned nr_nbd;
  target_done_fn done;          /* set by the caller */
};

/* Options of a new file target. */
struct file_target_options {
  bool force;                   /* replace an existing TARGET */
  uint32_t cluster_size;        /* qcow2; 0 = the library's default */
  const char *backing;          /* qcow2 backing file as stored, or NULL */
  const char *backing_format;   /* "raw", "qcow2" or NULL to probe */
};

/* Check before any work that path may be (re)created: an existing
 * TARGET is refused unless force, and must be a regular file.
 * 0, or -1 with the error reported.
 */
extern int file_target_check (const char *path, bool force);

/* Create TARGET.incomplete for size bytes (see target-file.c). */
extern struct target *raw_target_create (const char *path, uint64_t size,
                                         const struct file_target_options *);
extern struct target *qcow2_target_create (const char *path, uint64_t size,
                                           const struct file_target_options *);

/* Connect nr_lanes connections to an existing NBD export of at least
 * size bytes.  NULL with the error reported.
 */
extern struct target *nbd_target_open (const char *uri, uint64_t size,
                                       unsigned nr_lanes, uint32_t chunk);

/* target-file.c: helpers for the file backends, besides
 * incomplete_name and rename_durably (common/utils' publish.h).
 */

/* Remove a stale TARGET.incomplete left by an earlier failed run. */
extern int remove_stale (const char *incomplete);

/* With --force: remove the old TARGET once TARGET.incomplete exists. */
extern int remove_old_target (const char *path);

#endif /* NBDBACKUP_TARGET_H */
