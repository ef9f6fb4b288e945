/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Job ids: every id a job of this process has had is remembered, so
 * that an id the server picks is never one a client has seen before
 * (a client waiting on "cbw" must not mistake last night's job for
 * tonight's).
 */

#ifndef NBDKIT_BACKUP_JOB_ID_H
#define NBDKIT_BACKUP_JOB_ID_H

/* Remember id as used (idempotent).  0, or -1 (reported). */
extern int job_id_reserve (const char *id);

/* A new id: base if no job has had it, else base-2, base-3, ...
 * It is reserved when a job starts with it (job_start), so an attempt
 * that fails before then uses up no id.  The caller frees it.  NULL
 * on error (reported).
 */
extern char *job_id_fresh (const char *base);

#endif /* NBDKIT_BACKUP_JOB_ID_H */
