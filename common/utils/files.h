/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Small file helpers shared by the filters and the tool. */

#ifndef NBDKIT_BACKUP_FILES_H
#define NBDKIT_BACKUP_FILES_H

#include <stddef.h>

/* Replace path atomically with len bytes of data: write a temporary
 * file beside it, fsync, rename over path, fsync the directory.
 * Returns 0, or -1 with errno set (nothing reported).
 */
extern int replace_file_atomically (const char *path,
                                    const void *data, size_t len);

/* fsync the directory that holds path.  0 or -1 with errno set. */
extern int fsync_parent_dir (const char *path);

/* Monotonic time in seconds. */
extern double monotonic_seconds (void);

#endif /* NBDKIT_BACKUP_FILES_H */
