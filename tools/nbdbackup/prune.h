/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup prune: retention.  See prune.c. */

#ifndef NBDBACKUP_PRUNE_H
#define NBDBACKUP_PRUNE_H

#include "repo.h"

/* r's catalog has a pending prune (repo_open calls this).  Under the
 * exclusive lock, finish it (it is always finished forward: its new
 * files were complete and checked before it was recorded) and say so
 * on stderr, naming cmd; under the shared lock refuse, since files
 * may be half renamed.  0, or -1 (reported).
 */
extern int prune_finish_interrupted (struct repo *r,
                                     enum repo_lock_mode mode,
                                     const char *cmd);

#endif /* NBDBACKUP_PRUNE_H */
