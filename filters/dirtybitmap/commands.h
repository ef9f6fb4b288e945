/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The dirtybitmap filter's control commands: QMP's
 * block-dirty-bitmap-{add,remove,clear,enable,disable,merge} (all
 * transaction actions) and query-dirty-ranges.
 */

#ifndef NBDKIT_DIRTYBITMAP_COMMANDS_H
#define NBDKIT_DIRTYBITMAP_COMMANDS_H

#include <stdint.h>

/* Register them all (from .get_ready).  0 or -1 (reported).
 * default_granularity is used when add gives none.
 */
extern int commands_register (uint32_t default_granularity);

#endif /* NBDKIT_DIRTYBITMAP_COMMANDS_H */
