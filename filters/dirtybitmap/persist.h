/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The sidecar file that keeps persistent bitmaps across restarts and
 * crashes (dirtybitmap-file=PATH).  The life of the file is described
 * in persist.c, its format in format.c.
 */

#ifndef NBDKIT_DIRTYBITMAP_PERSIST_H
#define NBDKIT_DIRTYBITMAP_PERSIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Lock the file (one server per file), load its bitmaps into the
 * process's set and remember the path.  Bitmaps that cannot be
 * trusted (persist.c says when) load inconsistent with the reason.
 * A missing file is an empty set.  disk_path (or NULL) is the
 * plugin's disk file, checked for changes made while no server ran;
 * power is dirtybitmap-durability=power.  0, or -1 (reported: the
 * server must not start).
 */
extern int persist_load (const char *path, const char *disk_path,
                         bool power);

/* The set's change hook: before the first change after start, write
 * the file with the in-use flag set and every bitmap's bits, and map
 * it, so that from now on each bit is set in the file before the
 * write it covers goes down.  0 or -1 with errno set.
 */
extern int persist_mark_in_use (void);

/* Rewrite the file now, in use, as the set is now (after a bitmap was
 * added, removed or changed by a command).  0 or -1 (errno).
 */
extern int persist_update_in_use (void);

/* After dirty_mark_seq gave seq, before the write goes down: in power
 * mode, make the new bits durable (one sync shared by every writer
 * waiting); rewrite the file if a bitmap in it became inconsistent.
 * If the file's storage fails, the persistent bitmaps become
 * inconsistent, and the file is rewritten to say so.  0 (the write
 * may go down) or -1 with errno set (it must fail: the file could not
 * be made to tell the truth).
 */
extern int persist_after_mark (uint64_t seq);

/* True if a file was configured. */
extern bool persist_enabled (void);

/* The clean shutdown: write every persistent bitmap with the in-use
 * flag clear, atomically, and unmap the file.  0, or -1 (reported;
 * the file on disk then still says in use, with the bits of the
 * mapping).
 */
extern int persist_save (void);

/* Release the lock, unmap, forget the path. */
extern void persist_close (void);

/* persist-map.c: the file's shared mapping and its syncs. */

/* Map fd (a new version of the file, len bytes, owned from now on)
 * and install each persistent bitmap's bits in it as its mirror;
 * unmap the previous version.  In power mode the bits are durable
 * when it returns.  fd -1 unmaps.  0 or -1 with errno set (the
 * previous mapping is then dropped too, and fd closed).
 */
extern int persist_map_install (int fd, size_t len, bool power);

/* Wait until every mirror change up to seq is durable (fdatasync,
 * shared with concurrent callers).  0 or -1 with errno set.
 */
extern int persist_map_sync (uint64_t seq);

#endif /* NBDKIT_DIRTYBITMAP_PERSIST_H */
