/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The PATH.incomplete rule for the files a backup writes (the cbw
 * filter's raw and qcow2 targets, nbdbackup pull's): a file being
 * written lives at "PATH.incomplete" and is renamed to PATH only once
 * it is complete and flushed, and the directory is synced after the
 * rename, so that after a crash PATH exists only if it is complete.
 *
 * What to do with an existing PATH or a stale PATH.incomplete is the
 * caller's policy (the filter reuses an existing target, the tool
 * refuses one without --force), so it is not here.
 *
 * Errors are reported with nbdkit_error: the server's inside nbdkit,
 * libstubs' in nbdbackup and the unit tests.
 */

#ifndef NBDKIT_BACKUP_PUBLISH_H
#define NBDKIT_BACKUP_PUBLISH_H

/* "PATH.incomplete", malloc'd, or NULL (reported). */
extern char *incomplete_name (const char *path);

/* Rename from to to, then fsync the directory, so that the rename
 * survives a crash.  Used both ways: PATH.incomplete to PATH to
 * publish a complete file, PATH to PATH.incomplete to take an
 * existing one back into progress.  0, or -1 with the error reported,
 * prefixed with "PARAM: " if param is not NULL.
 */
extern int rename_durably (const char *param, const char *from,
                           const char *to);

#endif /* NBDKIT_BACKUP_PUBLISH_H */
