/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Which qcow2 images depend on a file as their backing file: what
 * must be known before that file is replaced.  See dependents.c.
 */

#ifndef NBDKIT_BACKUP_QCOW2_DEPENDENTS_H
#define NBDKIT_BACKUP_QCOW2_DEPENDENTS_H

#include <stddef.h>

/* The names, relative to that directory, of the qcow2 images in
 * path's directory whose backing chain goes through path (directly,
 * or through another image of that directory that does), sorted.
 * Files are matched by device and inode, never by name.  Symlinks,
 * FIFOs, devices and unreadable files in the directory are skipped,
 * never followed or blocked on.
 *
 * Returns 0 and sets *names (NULL-terminated, free with
 * qcow2_free_names) and *n, with *n = 0 if path does not exist or
 * nothing depends on it; -1 with the error reported.
 */
extern int qcow2_find_dependents (const char *path, char ***names,
                                  size_t *n);

extern void qcow2_free_names (char **names);

#endif /* NBDKIT_BACKUP_QCOW2_DEPENDENTS_H */
