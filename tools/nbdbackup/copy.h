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

#include "source.h"
#include "target.h"

struct digests;

struct copy_options {
  unsigned requests;            /* in flight per source connection */
  uint32_t chunk;               /* largest read, a power of 2 */
  bool progress;                /* draw the progress bar */
  /* --incremental: ranges the source reports as holes are unchanged
   * since the previous backup; leave them to the target's backing
   * file (as qemu-img convert -B does).
   */
  bool skip_holes;

  /* Digests (digest.h).  Each NULL unless wanted; every list given
   * must be of the source's size and of one chunk size, which chunk
   * must be a multiple of.  When any is set, work is cut into whole
   * digest chunks (extents rounded out: a chunk is a hole or zero only
   * if all of it is), a zero chunk is hashed as the zero digest
   * without reading, and every chunk read is hashed from the bytes
   * read.
   *
   * record: the digest of every chunk copied or zero is stored in it;
   * a skipped hole keeps the entry it has (start it as the parent's).
   * expect: every chunk read or zero is checked against it (verify,
   * restore).
   * parent: the list of the target's backing file: a chunk that reads
   * as zero and is zero in the parent is not written (an incremental
   * overlay reads the parent's zeros).
   */
  struct digests *record;
  const struct digests *expect;
  const struct digests *parent;
  /* expect: called for each chunk whose digest differs; returns 0 to
   * go on, -1 to stop the copy.  NULL: report "chunk at offset N:
   * digest mismatch" and stop.  Either way copy_run returns -1.
   */
  int (*mismatch) (void *opaque, uint64_t offset, uint32_t len);
  void *mismatch_opaque;
};

struct copy_stats {
  uint64_t total;               /* source size */
  uint64_t copied;              /* written to the target as data */
  uint64_t zero;                /* read as zeros, not written as data */
  uint64_t skipped;             /* holes left to the backing file */
  uint64_t mismatches;          /* chunks that differed from expect */
};

struct copy;

/* Prepare a copy of src to tgt.  tgt may be NULL with a digest
 * option: then the source is only read and hashed (verify).  NULL if
 * out of memory or the options do not fit (reported).
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
