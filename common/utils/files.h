/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Small file helpers shared by the filters and the tool. */

#ifndef NBDKIT_BACKUP_FILES_H
#define NBDKIT_BACKUP_FILES_H

#include <stddef.h>
#include <sys/types.h>

/* Replace path atomically with len bytes of data: write a temporary
 * file beside it (created O_EXCL, mode 0600), fsync, rename over path,
 * fsync the directory.  An existing path that is not a regular file (a
 * symlink, FIFO, socket, device or directory) is refused with EEXIST
 * and left alone: a file the suite replaces must be its own.
 * Returns 0, or -1 with errno set (nothing reported).
 */
extern int replace_file_atomically (const char *path,
                                    const void *data, size_t len);

/* The same, but the new file stays open: *fd is set to a read-write
 * descriptor of exactly the file that was renamed over path (for
 * mapping it).  0, or -1 with errno set.
 */
extern int replace_file_atomically_keep (const char *path, const void *data,
                                         size_t len, int *fd);

/* What kind of file st_mode says: "a regular file", "a directory",
 * "a symbolic link", "a FIFO", "a socket", "a block device", "a
 * character device", for messages.
 */
extern const char *file_kind (mode_t mode);

/* Flags for open_regular_file. */
#define OPEN_ALLOW_BLOCKDEV 1   /* a block device is accepted too */
#define OPEN_NOFOLLOW       2   /* a symlink at path is refused */

/* Open an existing file that must be a regular file (or a block
 * device with OPEN_ALLOW_BLOCKDEV), never blocking on it: the open
 * uses O_NONBLOCK (a FIFO opens at once), fstat checks the kind, then
 * O_NONBLOCK is cleared.  flags are open's (O_RDONLY, O_RDWR ...;
 * O_CLOEXEC is added).  Returns the fd, or -1 with errno set (ENOENT
 * for a missing file, EINVAL for the wrong kind, ELOOP for a symlink
 * with OPEN_NOFOLLOW) and the error reported as "WHAT PATH: is a
 * FIFO, not a regular file" or "WHAT PATH: <strerror>".
 */
extern int open_regular_file (const char *what, const char *path,
                              int flags, unsigned opts);

/* Create path as a new file with the given mode (0600 unless the user
 * asked otherwise), opened with flags | O_CREAT | O_EXCL | O_NOFOLLOW
 * | O_CLOEXEC.  A leftover at path that is not a directory (a file,
 * a symlink, a FIFO ...) is unlinked first, never followed or opened;
 * a directory is refused.  Returns the fd, or -1 with errno set and
 * the error reported as "WHAT PATH: ...".
 */
extern int create_file_excl (const char *what, const char *path,
                             int flags, mode_t mode);

/* fsync the directory that holds path.  0 or -1 with errno set. */
extern int fsync_parent_dir (const char *path);

/* Monotonic time in seconds. */
extern double monotonic_seconds (void);

#endif /* NBDKIT_BACKUP_FILES_H */
