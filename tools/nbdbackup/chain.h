/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Backing chains: what pull --force must not break.  See chain.c. */

#ifndef NBDBACKUP_CHAIN_H
#define NBDBACKUP_CHAIN_H

/* Refuse to replace path if qcow2 images beside it use it as their
 * backing file (directly or through each other), naming them.  0 if
 * none does (or path does not exist), -1 with the error reported.
 */
extern int chain_check_replace (const char *path);

/* Refuse a backing file name (relative to path's directory, as
 * stored) that is the existing path itself: the new image would be
 * its own backing file.  0 or -1 with the error reported.
 */
extern int chain_check_backing (const char *path, const char *backing);

#endif /* NBDBACKUP_CHAIN_H */
