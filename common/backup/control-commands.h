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

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "control.h"

/* Register the built-in commands (once; safe to call again). */
extern void control_commands_init (void);

/* An error reply line with no id (the caller frees it; NULL if out of
 * memory).
 */
extern char *control_error_line (const char *class, const char *desc);

/* The greeting line (the caller frees it; NULL if out of memory). */
extern char *control_greeting_line (void);

/* handle_line for a request from client (a number the server side
 * gives each connection, never 0), so that commands can tell who
 * asked (control_current_client).
 */
extern char *control_handle_client_line (uint64_t client, const char *line,
                                         size_t len);

/* Serialise with commands from outside one (the group deadline timer,
 * a client going away): take and drop exec_lock (lock-order.h, 1).
 */
extern void control_exec_lock (void);
extern void control_exec_unlock (void);

/* The client whose command is running (exec_lock held), or 0. */
extern uint64_t control_current_client (void);

/* A transaction's actions, parsed, and prepared once prepare
 * succeeds.  Used by "transaction", an action run by itself, and the
 * group transaction (control-group.c).  All calls with exec_lock
 * held.
 */
struct action_list {
  size_t n;
  const struct control_action **acts;
  json_object **args;           /* A reference to each action's data. */
  void **states;
  size_t prepared;              /* Prepared and not yet aborted. */
};

/* Parse an "actions" array (list may be NULL: an error) into *al:
 * every action exists and its data is an object.  what names the
 * command in messages.  0, or -1 with *err filled (nothing to free).
 */
extern int actions_parse (json_object *list, const char *what,
                          struct action_list *al, struct control_error *err);

/* With the gate closed: prepare every action (everything that can
 * fail).  0, or -1 with *err filled and the prepared ones aborted.
 */
extern int actions_prepare (struct action_list *al,
                            struct control_error *err);

/* With the gate closed: commit every prepared action (cannot fail). */
extern void actions_commit (struct action_list *al);

/* With the gate closed: undo every prepared action. */
extern void actions_abort (struct action_list *al);

/* After the gate opens on committed actions (may do I/O). */
extern void actions_after (struct action_list *al);

/* Free the list (the states belong to the actions). */
extern void actions_free (struct action_list *al);

/* Group transactions (control-group.c). */

/* Register group-prepare, group-commit, group-abort. */
extern void control_group_register (void);

/* 0 if no group transaction is prepared; else -1 with *err saying so
 * (exec_lock held: a command that would close the gate).
 */
extern int control_group_check_idle (struct control_error *err);

/* May command name run now?  While a group is prepared only queries
 * (query-*), qmp_capabilities and group-* may.  0, or -1 with *err
 * (exec_lock held).
 */
extern int control_group_check_command (const char *name,
                                        struct control_error *err);

/* The group transaction held or last ended, for query-status (a new
 * reference), or NULL if there was none.
 */
extern json_object *control_group_describe (void);

/* client's connection has closed: abort the group transaction it
 * prepared, if one is held.  Takes exec_lock: call with no lock held.
 */
extern void control_group_client_gone (uint64_t client);

/* The server stops: abort a held group, wait for the timer to end. */
extern void control_group_shutdown (void);

#endif /* NBDKIT_BACKUP_CONTROL_COMMANDS_H */
