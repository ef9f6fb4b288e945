/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* A client of the control socket (nbdkit-backup-control(7)): one
 * connection, requests sent one at a time, events queued while a
 * reply is awaited.  Every error message names the socket.
 */

#ifndef NBDBACKUP_CONTROL_H
#define NBDBACKUP_CONTROL_H

#include <stdbool.h>
#include <stdint.h>

#include <json.h>

struct control;

/* The server's error reply: class (GenericError, CommandNotFound,
 * DeviceNotFound, ...) and description.  Free with
 * control_error_free.
 */
struct control_error {
  char *class;
  char *desc;
};

/* Connect to the control socket at path and read the greeting.
 * NULL on error (reported).
 */
extern struct control *control_connect (const char *path);

/* Close the connection and free everything. */
extern void control_close (struct control *c);

/* From now on the first SIGINT or SIGTERM no longer interrupts the
 * commands on c, only a second one does: for the commands that undo
 * what a command stopped by a signal had done (nbdbackup backup's
 * rollback).
 */
extern void control_cleanup_mode (struct control *c);

/* The socket's path, as given. */
extern const char *control_path (const struct control *c);

/* The greeting's "nbdkit-backup" object (borrowed). */
extern json_object *control_greeting (const struct control *c);

/* Send command with args (an object, or NULL for none; the reference
 * is taken over) and wait for the reply with the same id, queueing
 * events.  Returns 0 with *ret the return value (a new reference,
 * may be NULL for JSON null), 1 if the server answered with an error
 * (*err filled in, nothing printed), or -1 if the connection failed
 * or the wait was interrupted by a signal (reported).
 */
extern int control_execute (struct control *c, const char *command,
                            json_object *args, json_object **ret,
                            struct control_error *err);

/* control_execute, printing a refusal as "nbdbackup: COMMAND: DESC
 * (CLASS)".  Returns an exit status: NBDBACKUP_EXIT_OK (*ret set if
 * ret is not NULL), _REFUSED or _FAILED.
 */
extern int control_command (struct control *c, const char *command,
                            json_object *args, json_object **ret);

/* The whole of a subcommand that sends one command: catch SIGINT and
 * SIGTERM, connect to the control socket at path, control_command,
 * close.  Returns an exit status as control_command does, and
 * NBDBACKUP_EXIT_FAILED if the connection failed (args are freed).
 */
extern int control_run (const char *path, const char *command,
                        json_object *args, json_object **ret);

extern void control_error_free (struct control_error *err);

/* Send one request line as it is (it must not contain a newline). */
extern int control_send_line (struct control *c, const char *line);

/* Read the next line that is not an event (queueing events): the
 * reply to the oldest request not yet answered.  Returns the line,
 * malloc'd and without its newline, and in *is_error whether it is an
 * error reply; NULL on error (reported).
 */
extern char *control_read_reply_line (struct control *c, bool *is_error);

/* Wait up to timeout_ms (-1: for ever) for the next event, taking
 * queued ones first.  Returns 1 with *event set (a new reference),
 * 0 on time-out, -1 on error or a signal (reported).
 */
extern int control_next_event (struct control *c, int timeout_ms,
                               json_object **event);

/* Helpers for reading replies.  Each returns def if member key of o
 * is missing or of the wrong type.
 */
extern const char *json_get_string (json_object *o, const char *key,
                                    const char *def);
extern int64_t json_get_int64 (json_object *o, const char *key, int64_t def);
extern double json_get_double (json_object *o, const char *key, double def);

#endif /* NBDBACKUP_CONTROL_H */
