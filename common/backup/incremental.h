/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Incremental backups (sync=incremental): a copy-before-write engine
 * that protects exactly the clusters a dirty bitmap (dirty.h) marks,
 * and the bitmap's fate when the backup ends (the bitmap modes).
 */

#ifndef NBDKIT_BACKUP_INCREMENTAL_H
#define NBDKIT_BACKUP_INCREMENTAL_H

#include <stdbool.h>

#include "control.h"
#include "dirty.h"
#include "engine.h"

/* Parse a bitmap mode name ("on-success", "never", "always").  0, or
 * -1 if unknown.
 */
extern int incremental_parse_mode (const char *s, enum dirty_mode *mode);

/* Before the snapshot instant (e.g. in .get_ready, so that a refusal
 * stops the server at start): is the dirtybitmap filter loaded, and is
 * bitmap name, if it exists yet, usable?  0, or -1 with err filled.
 */
extern int incremental_check (const char *name, struct control_error *err);

/* The snapshot instant of an incremental backup (the write gate
 * closed, or no client yet): freeze bitmap name and protect in e
 * every cluster that overlaps one of its dirty granules, whatever the
 * two sizes are.  Returns the bitmap, or NULL with err filled (no
 * such bitmap, inconsistent, busy, another disk size).
 */
extern struct dirty_bitmap *incremental_begin (struct engine *e,
                                               const char *name,
                                               struct control_error *err);

/* The backup is over (the engine quiesced): success says the target
 * is complete.  Updates the bitmap as mode says (dirty.h) and
 * releases it.  A granule counts as copied when every cluster it
 * overlaps is on the target.
 */
extern void incremental_end (struct dirty_bitmap *b, struct engine *e,
                             bool success, enum dirty_mode mode);

#endif /* NBDKIT_BACKUP_INCREMENTAL_H */
