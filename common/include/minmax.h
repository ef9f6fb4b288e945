/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* MIN and MAX that evaluate each argument once. */

#ifndef NBDKIT_BACKUP_MINMAX_H
#define NBDKIT_BACKUP_MINMAX_H

/* Unique local names, so MIN (MAX (a, b), c) does not shadow. */
#define MINMAX_CAT_(a, b) a##b
#define MINMAX_CAT(a, b) MINMAX_CAT_ (a, b)
#define MINMAX_IMPL_(a, b, op, x, y) \
  ({ __typeof__ (a) x = (a); __typeof__ (b) y = (b); x op y ? x : y; })

#undef MIN
#define MIN(a, b) \
  MINMAX_IMPL_ (a, b, <, MINMAX_CAT (_mina, __COUNTER__), \
                MINMAX_CAT (_minb, __COUNTER__))
#undef MAX
#define MAX(a, b) \
  MINMAX_IMPL_ (a, b, >, MINMAX_CAT (_maxa, __COUNTER__), \
                MINMAX_CAT (_maxb, __COUNTER__))

#endif /* NBDKIT_BACKUP_MINMAX_H */
