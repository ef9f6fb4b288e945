/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* What the command side of the control socket (control-commands.c:
 * the command table, dispatch, transactions) offers its server side
 * (control-server.c: the socket, clients, sending).  The public
 * interface is control.h.
 */

#ifndef NBDKIT_BACKUP_CONTROL_COMMANDS_H
#define NBDKIT_BACKUP_CONTROL_COMMANDS_H

/* Register the built-in commands (once; safe to call again). */
extern void control_commands_init (void);

/* An error reply line with no id (the caller frees it; NULL if out of
 * memory).
 */
extern char *control_error_line (const char *class, const char *desc);

/* The greeting line (the caller frees it; NULL if out of memory). */
extern char *control_greeting_line (void);

#endif /* NBDKIT_BACKUP_CONTROL_COMMANDS_H */
