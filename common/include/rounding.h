/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Rounding to a power of two.  n must be a power of two. */

#ifndef NBDKIT_BACKUP_ROUNDING_H
#define NBDKIT_BACKUP_ROUNDING_H

#define ROUND_UP(i, n) ({ __typeof__ (i) _n = (n); ((i) + _n - 1) & -_n; })
#define ROUND_DOWN(i, n) ((i) & -(__typeof__ (i)) (n))
#define IS_ALIGNED(i, n) (((i) & ((n) - 1)) == 0)
#define DIV_ROUND_UP(i, n) (((i) + (n) - 1) / (n))

#endif /* NBDKIT_BACKUP_ROUNDING_H */
