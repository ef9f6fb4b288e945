/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Stand-ins for nbdkit's logging outside a server (see nbdkit-stubs.c). */

#ifndef NBDKIT_BACKUP_NBDKIT_STUBS_H
#define NBDKIT_BACKUP_NBDKIT_STUBS_H

#include <stdarg.h>

/* Prefix for messages; a program sets it to its own name. */
extern const char *stub_program_name;

extern void nbdkit_error (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2)));
extern void nbdkit_verror (const char *fs, va_list args);
extern void nbdkit_debug (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2)));
extern void nbdkit_vdebug (const char *fs, va_list args);
extern char *nbdkit_absolute_path (const char *path);

#endif /* NBDKIT_BACKUP_NBDKIT_STUBS_H */
