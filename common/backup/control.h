/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The control socket: one Unix socket per nbdkit process (mode 0600),
 * one JSON object per line, in the spirit of QEMU's QMP:
 *
 *   <- {"nbdkit-backup": {"version": "0.1.0", "filters": ["cbw"]}}
 *   -> {"execute": "query-jobs", "arguments": {}, "id": 1}
 *   <- {"return": [...], "id": 1}
 *   -> {"execute": "nonsense"}
 *   <- {"error": {"class": "CommandNotFound",
 *                 "desc": "the command nonsense has not been found"}}
 *   <- {"event": "JOB_STATUS_CHANGE", "data": {...},
 *       "timestamp": {"seconds": N, "microseconds": N}}
 *
 * Filters register commands, and transaction actions (commands whose
 * effect must be atomic against writes: they run with the write gate
 * closed, alone or several at once in a "transaction").
 *
 * Requests must be valid UTF-8 and hold no NUL in any string; every
 * line sent is valid UTF-8 JSON.  At most CONTROL_MAX_CLIENTS clients
 * at a time; a client that lets more than CONTROL_MAX_QUEUE bytes of
 * replies and events pile up unread is disconnected, so that it never
 * holds up the others.
 *
 * control-commands.c: the command table, dispatch, transactions.
 * control-server.c: the socket, its clients, sending.
 */

#ifndef NBDKIT_BACKUP_CONTROL_H
#define NBDKIT_BACKUP_CONTROL_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

/* How the suite prints JSON: one line, and "/" left as it is (json-c
 * would write "\/", valid but hard on people reading paths).
 */
#define JSON_OUT (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

#define CONTROL_MAX_CLIENTS 16
#define CONTROL_MAX_QUEUE   (4 * 1024 * 1024)

/* Error classes (as QMP names them where QMP has one). */
#define CONTROL_GENERIC_ERROR     "GenericError"
#define CONTROL_COMMAND_NOT_FOUND "CommandNotFound"
#define CONTROL_NOT_FOUND         "DeviceNotFound"

struct control_error {
  const char *class;            /* One of the classes above. */
  char desc[512];
};

/* Fill *err (printf-style) and return -1, for handlers' convenience. */
extern int control_fail (struct control_error *err, const char *class,
                         const char *fs, ...)
  __attribute__ ((format (printf, 3, 4)));

/* The one check for a name that a command or parameter creates (a
 * bitmap name, a job id): 1 to max bytes, valid UTF-8, no control
 * characters.  0, or -1 with *err filled ("WHAT must ...").
 */
extern int control_check_name (const char *what, const char *name,
                               size_t max, struct control_error *err);

/* A command: args is the "arguments" object (never NULL).  On success
 * return 0 and set *ret to the reply's "return" value (a new
 * reference; NULL means {}).  On failure return -1 with *err filled.
 */
typedef int control_command_fn (json_object *args, json_object **ret,
                                struct control_error *err, void *opaque);

/* Register a command.  Names are unique.  0 or -1 (reported). */
extern int control_register (const char *name, control_command_fn *fn,
                             void *opaque);

/* A transaction action.  prepare checks args and does everything that
 * can fail (allocations, opening targets), with the write gate closed;
 * commit makes it take effect and cannot fail; abort undoes prepare.
 * The action is also a command of the same name, run as a transaction
 * of one.
 */
struct control_action {
  const char *type;
  int (*prepare) (json_object *args, void **state,
                  struct control_error *err, void *opaque);
  void (*commit) (void *state, void *opaque);
  void (*abort) (void *state, void *opaque);
  /* Called after the gate reopens (may do I/O, e.g. start a job). */
  void (*after) (void *state, void *opaque);
  /* Optional: the reply's "return" value when the action runs as a
   * command by itself (a new reference; NULL means {}).  Called after
   * commit, before after.  A transaction returns {}.
   */
  json_object *(*result) (void *state, void *opaque);
  void *opaque;
};

/* Register an action (the struct must live as long as the process). */
extern int control_register_action (const struct control_action *a);

/* Send an event to every connected client.  data is consumed (may be
 * NULL).  Safe from any thread.
 */
extern void control_emit_event (const char *name, json_object *data);

/* Lifecycle, called by each filter of the suite:
 *
 * control_configure in .config when the user gives <name>-control=PATH
 * (every filter that names a path must name the same one);
 * control_bind in .get_ready (creates the socket, so a bad path, or
 * a path where another server is listening, stops the server at start
 * before it serves anything); control_start in .after_fork (the last
 * filter to call it starts the listener thread, so that clients see
 * what every filter set up from its parameters); control_stop in
 * .cleanup (the last filter to call it stops every thread and removes
 * the socket).  Each is idempotent
 * and a no-op when no path was configured.
 */
extern int control_configure (const char *param, const char *path);
extern int control_bind (void);
extern int control_start (void);
extern void control_stop (void);

/* The configured socket path, or NULL. */
extern const char *control_path (void);

/* Handle one request line and return the reply line (without the
 * newline; the caller frees it).  Exposed for unit tests.
 */
extern char *control_handle_line (const char *line, size_t len);

#endif /* NBDKIT_BACKUP_CONTROL_H */
