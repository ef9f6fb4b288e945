/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The sidecar file that keeps persistent bitmaps across a clean
 * shutdown (dirtybitmap-file=PATH).  The format is in persist.c.
 */

#ifndef NBDKIT_DIRTYBITMAP_PERSIST_H
#define NBDKIT_DIRTYBITMAP_PERSIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Lock the file (one server per file), load its bitmaps into the
 * process's set (every one inconsistent if the file was in use) and
 * remember the path.  A missing file is an empty set.  0, or -1
 * (reported: the server must not start).
 */
extern int persist_load (const char *path);

/* The set's change hook: before the first change after start, write
 * the file with the in-use flag set (no bits: after a crash every
 * bitmap is inconsistent anyway).  0 or -1 with errno set.
 */
extern int persist_mark_in_use (void);

/* Rewrite the file now, in use, so that it lists the persistent
 * bitmaps that exist now (after one was added or removed: a crash
 * then shows exactly those, inconsistent).  0 or -1 (errno).
 */
extern int persist_update_in_use (void);

/* True if a file was configured. */
extern bool persist_enabled (void);

/* The clean shutdown: write every persistent bitmap with the in-use
 * flag clear, atomically.  0, or -1 (reported; the file on disk then
 * still says in-use, so the bitmaps will load as inconsistent).
 */
extern int persist_save (void);

/* Release the lock and forget the path. */
extern void persist_close (void);

#endif /* NBDKIT_DIRTYBITMAP_PERSIST_H */
