/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Stand-ins for nbdkit's logging outside a server (see nbdkit-stubs.c). */

#ifndef NBDKIT_BACKUP_NBDKIT_STUBS_H
#define NBDKIT_BACKUP_NBDKIT_STUBS_H

#include <stdarg.h>
#include <stdbool.h>

/* Prefix for messages; a program sets it to its own name. */
extern const char *stub_program_name;

/* Hooks a program may set (nbdbackup does, in log.c); the unit tests
 * leave the defaults.
 */

/* Called before any message is printed (to clear a progress line), or
 * NULL.
 */
extern void (*stub_before_message) (void);

/* Called with each error message once it is printed, or NULL.  msg is
 * only valid during the call.
 */
extern void (*stub_error_hook) (const char *msg);

/* Whether to print debug messages.  The default prints them when
 * NBDKIT_BACKUP_DEBUG is set in the environment.
 */
extern bool (*stub_debug_enabled) (void);

extern void nbdkit_error (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2)));
extern void nbdkit_verror (const char *fs, va_list args);
extern void nbdkit_debug (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2)));
extern void nbdkit_vdebug (const char *fs, va_list args);
extern char *nbdkit_absolute_path (const char *path);

#endif /* NBDKIT_BACKUP_NBDKIT_STUBS_H */
