/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* pull --discard-source: trim on the source what the target has.
 * See discard.c.
 */

#ifndef NBDBACKUP_DISCARD_H
#define NBDBACKUP_DISCARD_H

#include <stdbool.h>
#include <stdint.h>

#include "source.h"

struct discard;

/* Check that src accepts trim, then prepare to trim it.  NULL on
 * error (reported: a source that refuses trim is named).
 */
extern struct discard *discard_new (struct source *src);

/* [offset, offset+len) is on the target (its writes were
 * acknowledged).  Ranges may come in any order.  No libnbd call, so
 * safe inside a completion callback.  -1 if out of memory (reported).
 */
extern int discard_done (struct discard *d, uint64_t offset, uint64_t len);

/* From the copy loop: trim what is done and not trimmed yet, unless a
 * trim is in flight.  A failed trim is a warning, never an error:
 * the target has the data; only the server's space is not given back.
 */
extern void discard_kick (struct discard *d);

/* Is a trim in flight? */
extern bool discard_busy (const struct discard *d);

/* Has everything done been trimmed (or trimming stopped after a
 * failed trim)?
 */
extern bool discard_caught_up (const struct discard *d);

/* Bytes trimmed so far. */
extern uint64_t discard_bytes (const struct discard *d);

/* Free it (after the source is closed). */
extern void discard_free (struct discard *d);

#endif /* NBDBACKUP_DISCARD_H */
