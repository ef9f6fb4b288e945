/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The fleecing store: a target that keeps copied clusters in a
 * temporary sparse file, serves them back, and can be capped.
 */

#ifndef NBDKIT_BACKUP_STORE_H
#define NBDKIT_BACKUP_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "target.h"

/* Open a store for a disk of size bytes.  where is a directory (an
 * anonymous file is made there and vanishes with the process) or a
 * file path (created O_EXCL|O_NOFOLLOW, mode 0600, replacing an
 * earlier run's regular file, and removed when the store closes; a
 * symlink, FIFO, socket or device there is refused).  limit caps the data it may hold (0: no cap); past it,
 * writes fail with ENOSPC, as on a full disk.  NULL on error
 * (reported, naming param).
 */
extern struct target *target_store_open (const char *param, const char *where,
                                         uint64_t size, uint64_t limit);

/* Check at configuration time that a store can be made at where (as
 * target_store_open takes it).  0 or -1 (reported, naming param).
 */
extern int target_store_check (const char *param, const char *where);

/* The first byte of data (what the store was written) in [offset,
 * end), or end if there is none; *data_end is where that data ends
 * (at most end).  Everything else reads as zeros (a hole).  Without a
 * map from the file system, all of it is data.
 */
extern uint64_t target_store_next_data (void *store, uint64_t offset,
                                        uint64_t end, uint64_t *data_end);

/* Bytes of data the store holds now, and the most it has held. */
extern uint64_t target_store_used (struct target *t);
extern uint64_t target_store_peak (struct target *t);

/* Give back the space of [offset, offset+len), which nobody reads or
 * writes any more (engine_discard said so): it no longer counts as
 * used, and reads as zeros.
 */
extern void target_store_punch (struct target *t, uint64_t offset,
                                 uint64_t len);

#endif /* NBDKIT_BACKUP_STORE_H */
