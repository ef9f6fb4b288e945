/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* State the cbw filter's files share. */

#ifndef CBW_H
#define CBW_H

#include <stdbool.h>

#include <nbdkit-filter.h>

#include "backup.h"

/* The parameters, as a spec: the backup to run at server start (if
 * cbw-target is set) and the defaults of backup-start.  Set in
 * .config/.config_complete, never changed afterwards.
 */
extern struct backup_spec cbw_defaults;

/* The source, for jobs: opened in .after_fork, closed in .cleanup. */
extern nbdkit_next *cbw_job_next;
extern bool cbw_use_extents;

/* The current (or last) backup, and its engine for the data path.
 * Both change only with the write gate closed (or before any client),
 * from control commands, which run one at a time.
 */
extern struct backup *cbw_current;
extern struct engine *cbw_engine;

/* Register backup-start, job-cancel and job-set-speed.  0 or -1. */
extern int cbw_register_commands (void);

#endif /* CBW_H */
