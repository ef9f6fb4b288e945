/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The copy engine: source export to target, sparse-aware, with many
 * requests in flight.  See copy.c.
 */

#ifndef NBDBACKUP_COPY_H
#define NBDBACKUP_COPY_H

#include <stdbool.h>
#include <stdint.h>

#include "discard.h"
#include "source.h"
#include "target.h"

struct copy_options {
  unsigned requests;            /* in flight per source connection */
  uint32_t chunk;               /* largest read, a power of 2 */
  bool progress;                /* draw the progress bar */
  /* --incremental: ranges the source reports as holes are unchanged
   * since the previous backup; leave them to the target's backing
   * file (as qemu-img convert -B does).
   */
  bool skip_holes;
  /* --discard-source: tell the source what the target has (NULL:
   * don't).
   */
  struct discard *discard;
};

struct copy_stats {
  uint64_t total;               /* source size */
  uint64_t copied;              /* written to the target as data */
  uint64_t zero;                /* read as zeros, not written as data */
  uint64_t skipped;             /* holes left to the backing file */
  uint64_t discarded;           /* trimmed on the source */
};

struct copy;

/* Prepare a copy of src to tgt (sets tgt->done).  NULL if out of
 * memory (reported).
 */
extern struct copy *copy_new (struct source *src, struct target *tgt,
                              const struct copy_options *opts);

/* Copy every byte of the source.  Returns 0 when all of it is on the
 * target (not yet flushed), -1 after an error (reported) or a signal.
 * *stats says how far it got either way.
 */
extern int copy_run (struct copy *c, struct copy_stats *stats);

/* Free the engine.  Call it only after the source and target are
 * closed: libnbd may still hold callbacks that point into it until
 * then.
 */
extern void copy_free (struct copy *c);

#endif /* NBDBACKUP_COPY_H */
