/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Reading the point-in-time view through a copy-before-write engine
 * (image fleecing): clusters already copied are read from the store,
 * the rest from the source, which cannot change under a reader.
 */

#ifndef NBDKIT_BACKUP_SNAPSHOT_H
#define NBDKIT_BACKUP_SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "engine.h"

/* Read [offset, offset+count) of the snapshot.  next reads the
 * source.  Fails with EIO once the snapshot is broken or stopped.
 */
extern int engine_snapshot_pread (struct engine *e, nbdkit_next *next,
                                  void *buf, uint32_t count, uint64_t offset,
                                  int *err);

/* Extents of the snapshot: copied clusters are data where next_data
 * finds data in the store, ZERO|HOLE elsewhere; the rest as the source
 * says.  next_data (opaque, offset, end, &data_end) returns the first
 * byte of data in [offset, end) (end if none) and where that data ends
 * (target_store_next_data); NULL: all data.
 */
extern int engine_snapshot_extents (struct engine *e, nbdkit_next *next,
                                    uint32_t count, uint64_t offset,
                                    uint32_t flags,
                                    struct nbdkit_extents *extents,
                                    uint64_t (*next_data) (void *opaque,
                                                           uint64_t offset,
                                                           uint64_t end,
                                                           uint64_t *data_end),
                                    void *opaque, int *err);

#endif /* NBDKIT_BACKUP_SNAPSHOT_H */
