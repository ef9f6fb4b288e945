/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The allocation of a layered image's top layer, offered by the
 * plugin that serves the image (the qcow2 plugin) to the filters in
 * the same process (cbw's sync=top).
 *
 * base:allocation cannot carry it: NBD clients, QEMU's first, read a
 * HOLE without ZERO as "unallocated, read as zeros", so the plugin's
 * extents describe the whole chain as qemu-nbd does (data wherever any
 * layer has data).  Whether a cluster belongs to the top layer or to a
 * backing file is a question only sync=top asks, so it goes through
 * the suite's process-wide registry instead.  The plugin sees its own
 * offsets: a filter between cbw and the plugin must not move data
 * (cbw checks at least that the sizes agree).
 */

#ifndef NBDKIT_BACKUP_TOP_ALLOCATION_H
#define NBDKIT_BACKUP_TOP_ALLOCATION_H

#include <stdbool.h>
#include <stdint.h>

struct top_allocation {
  const char *owner;            /* for messages: "qcow2 image PATH" */
  uint64_t size;                /* the plugin's disk size */
  /* Status of the longest run [offset, offset + *len), *len <= count,
   * that is wholly allocated in the top layer (data or zeros: both
   * hide the backing file) or wholly not.  0, or -1 with *err set and
   * the error reported.  Thread-safe.
   */
  int (*status) (void *opaque, uint32_t count, uint64_t offset,
                 uint64_t *len, bool *allocated, int *err);
  void *opaque;
};

/* Offer ta (which must stay valid until withdrawn) to the process.
 * At most one offer at a time (one plugin per process).  0 or -1.
 */
extern int top_allocation_offer (const struct top_allocation *ta);

/* Withdraw the offer (the plugin is unloading). */
extern void top_allocation_withdraw (void);

/* The offer, or NULL when the plugin has no layers to tell apart
 * (the file plugin: there, a hole is what the top lacks).
 */
extern const struct top_allocation *top_allocation_find (void);

#endif /* NBDKIT_BACKUP_TOP_ALLOCATION_H */
