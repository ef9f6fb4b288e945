/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Undoing a backup that did not finish, and tidying the server's
 * bitmaps.  See repo-rollback.c.
 */

#ifndef NBDBACKUP_REPO_ROLLBACK_H
#define NBDBACKUP_REPO_ROLLBACK_H

#include "control.h"
#include "repo.h"

/* Roll back r->pending (there must be one) on the server behind c and
 * in the repository (under the exclusive lock): stop the snapshot,
 * give the changes back to the disabled bitmap, remove the bitmaps
 * made, delete the backup's files, clear pending and save.  Only what
 * exists is undone, so it works wherever the backup stopped.  Returns
 * an exit status; on failure pending stays for the next try.
 */
extern int repo_rollback (struct repo *r, struct control *c);

/* Complete r->pending of op "finish" (there must be one): stop the
 * snapshot (none active is fine), remove the bitmaps it lists (a
 * missing one is fine), clear pending and save.  Returns an exit
 * status; on failure pending stays for the next try.
 */
extern int repo_finish_pending (struct repo *r, struct control *c);

/* Remove the bitmaps with the repository's prefix that the catalog
 * neither tracks nor has pending (left by a backup that succeeded but
 * could not remove them).  Failures are warnings.
 */
extern void repo_remove_stale_bitmaps (struct repo *r, struct control *c);

/* uri with its export name replaced by name (percent-encoded).
 * malloc'd, or NULL (reported).
 */
extern char *uri_with_export (const char *uri, const char *name);

#endif /* NBDBACKUP_REPO_ROLLBACK_H */
