/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Telling an NBD URI from a file name (cbw-target=, nbdbackup's
 * SOURCE and TARGET).
 */

#ifndef NBDKIT_BACKUP_NBD_URI_H
#define NBDKIT_BACKUP_NBD_URI_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

/* True if str starts with an NBD URI scheme: nbd://, nbds://,
 * nbd+unix://, nbds+unix://, nbd+vsock:// or nbds+vsock://.
 */
static inline bool
is_nbd_uri (const char *str)
{
  static const char *const schemes[] = {
    "nbd://", "nbds://", "nbd+unix://", "nbds+unix://",
    "nbd+vsock://", "nbds+vsock://",
  };
  size_t i;

  for (i = 0; i < sizeof schemes / sizeof schemes[0]; ++i)
    if (strncmp (str, schemes[i], strlen (schemes[i])) == 0)
      return true;
  return false;
}

#endif /* NBDKIT_BACKUP_NBD_URI_H */
