/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* What the target backends share (not for users of the library). */

#ifndef NBDKIT_BACKUP_TARGET_INTERNAL_H
#define NBDKIT_BACKUP_TARGET_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "target.h"

/* What is at a file target's name now. */
enum target_existing {
  EXISTING_NONE,                /* nothing: it will be created */
  EXISTING_FILE,                /* a regular file */
  EXISTING_BLOCKDEV,            /* a block device: written in place */
};

/* Look at name with lstat and sort it, refusing what may not be a
 * target.  0 with *kind (and *st) set, or -1 with a message in msg.
 */
extern int target_existing (const char *param, const char *name,
                            enum target_existing *kind, struct stat *st,
                            char *msg, size_t msglen);

/* Allocate a file target's struct (size_of bytes, zeroed, struct
 * target first) with its ops, size, max_zero, name (path) and working
 * name ("PATH.incomplete").  NULL on error (reported, nothing left).
 */
extern void *target_alloc (size_t size_of, const struct target_ops *ops,
                           const char *path, uint64_t size,
                           uint32_t max_zero);

/* After a file target is in place: with created set for a new file
 * over an existing one (o->replace), remove the old PATH; then sync
 * the directory (not for a block device).  0 or -1 (reported).
 */
extern int target_placed (const char *param, const char *path,
                          enum target_existing kind, bool created);

/* Unpublish an existing complete target: rename PATH to its working
 * name, so that from now on it is a backup in progress.  0 or -1
 * (reported, naming param).
 */
extern int target_unpublish (const char *param, struct target *t);

/* Publish a complete, flushed target: rename the working name to
 * PATH and sync the directory (nothing for a target written in
 * place).  0 or -1 (reported).
 */
extern int target_publish (struct target *t);

/* Page-cache hygiene for bulk writes (writeback.c).  A bulk write is
 * at least WRITEBACK_MIN bytes; the pages of the WB_RING newest bulk
 * ranges are kept, older ones are dropped once on disk.
 */
#define WRITEBACK_MIN (256 * 1024)
#define WB_RING 8
struct writeback {
  pthread_mutex_t lock;         /* Protects the rest. */
  unsigned next;                /* Next ring slot. */
  uint64_t mark;                /* writeback_push_tail: pushed up to here. */
  struct { uint64_t offset, len; } ring[WB_RING];
};
extern void writeback_init (struct writeback *w);
extern void writeback_destroy (struct writeback *w);

/* [offset, offset+len) of fd was just written in bulk: start its
 * writeback, and drop the pages of the range pushed WB_RING calls ago
 * once they are on the disk.
 */
extern void writeback_push (struct writeback *w, int fd, uint64_t offset,
                            uint64_t len);

/* fd grows at its end as bulk data is written (a new qcow2 image
 * allocates its clusters there): push what it gained since the last
 * push, once that is at least WRITEBACK_MIN.
 */
extern void writeback_push_tail (struct writeback *w, int fd);

/* What fd holds now is not the caller's bulk data (an existing image
 * written in place): writeback_push_tail starts after it.
 */
extern void writeback_mark_end (struct writeback *w, int fd);

/* The backends.  kind is what target_existing found. */
extern struct target *target_file_open (const char *param, const char *path,
                                        enum target_existing kind,
                                        uint64_t size,
                                        const struct target_options *o);
extern struct target *target_qcow2_open (const char *param, const char *path,
                                         enum target_existing kind,
                                         uint64_t size,
                                         const struct target_options *o);
extern struct target *target_nbd_open (const char *param, const char *uri,
                                       uint64_t size, unsigned connections);

#endif /* NBDKIT_BACKUP_TARGET_INTERNAL_H */
