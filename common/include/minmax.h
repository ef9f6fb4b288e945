/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* MIN and MAX that evaluate each argument once. */

#ifndef NBDKIT_BACKUP_MINMAX_H
#define NBDKIT_BACKUP_MINMAX_H

#undef MIN
#define MIN(a, b) ({ __typeof__ (a) _a = (a); __typeof__ (b) _b = (b); \
                     _a < _b ? _a : _b; })
#undef MAX
#define MAX(a, b) ({ __typeof__ (a) _a = (a); __typeof__ (b) _b = (b); \
                     _a > _b ? _a : _b; })

#endif /* NBDKIT_BACKUP_MINMAX_H */
