/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Fast test that a buffer is all zero bytes. */

#ifndef NBDKIT_BACKUP_ISZERO_H
#define NBDKIT_BACKUP_ISZERO_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

/* True if every byte of buf[0..size) is zero.  Checks the first 16
 * bytes by hand, then compares the buffer with itself shifted by 16,
 * which memcmp does at full speed.
 */
static inline bool
is_zero (const char *buf, size_t size)
{
  size_t i, limit = size < 16 ? size : 16;

  for (i = 0; i < limit; ++i)
    if (buf[i])
      return false;
  if (size > limit)
    return memcmp (buf, buf + limit, size - limit) == 0;
  return true;
}

#endif /* NBDKIT_BACKUP_ISZERO_H */
