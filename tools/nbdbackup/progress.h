/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* A one-line progress bar on stderr. */

#ifndef NBDBACKUP_PROGRESS_H
#define NBDBACKUP_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

/* Start a bar for total bytes (drawn only if enabled).  While it is
 * shown, every message first clears its line.
 */
extern void progress_start (uint64_t total, bool enabled);

/* progress_start for work already under way: done bytes were done
 * before now, so the rate and ETA count only what is done from now.
 */
extern void progress_start_from (uint64_t total, uint64_t done,
                                 bool enabled);

/* The total changed (a job may learn its size as it goes). */
extern void progress_set_total (uint64_t total);

/* done bytes out of total; redrawn at most 10 times a second. */
extern void progress_update (uint64_t done);

/* Erase the bar for good. */
extern void progress_end (void);

#endif /* NBDBACKUP_PROGRESS_H */
