/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup backup of a group repository.  See group-backup.c. */

#ifndef NBDBACKUP_GROUP_BACKUP_H
#define NBDBACKUP_GROUP_BACKUP_H

#include "repo-backup.h"

#define GROUP_DEFAULT_DEADLINE_MS 10000
#define GROUP_DEFAULT_PARALLEL 4

/* The options only a group backup has. */
struct group_options_cli {
  unsigned deadline_ms;         /* --deadline */
  unsigned parallel;            /* --parallel: disks copied at once */
};

/* Back up every disk of the group repository opts->path at one
 * instant, with opts's options.  Returns an exit status.
 */
extern int group_backup_main (const struct backup *opts,
                              const struct group_options_cli *cli);

#endif /* NBDBACKUP_GROUP_BACKUP_H */
