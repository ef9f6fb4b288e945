/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Powers of two. */

#ifndef NBDKIT_BACKUP_ISPOWEROF2_H
#define NBDKIT_BACKUP_ISPOWEROF2_H

#include <stdbool.h>
#include <stdint.h>

/* True if v is a power of two (0 is not). */
static inline bool
is_power_of_2 (uint64_t v)
{
  return v != 0 && (v & (v - 1)) == 0;
}

/* log2 of a power of two. */
static inline unsigned
log_2_bits (uint64_t v)
{
  return v ? 63 - __builtin_clzll (v) : 0;
}

#endif /* NBDKIT_BACKUP_ISPOWEROF2_H */
