/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The control socket's commands (see control.h for the protocol):
 * the command table, one request line in and one reply line out,
 * and transactions.  The socket and its clients are control-server.c.
 *
 * Lock order: see lock-order.h.
 *
 * Commands run one at a time under exec_lock, as QMP does, so
 * handlers need no locking against each other (only against the data
 * path).  The table has its own lock, cmd_table_lock, taken alone and
 * briefly (lookups, registration), never while a command runs.
 *
 * Every request is checked before any handler sees it: valid UTF-8
 * (so replies that quote it are too), and no string holding a NUL
 * ("a\u0000b" would reach a handler as "a").  Names a command creates
 * (bitmaps, jobs) go through control_check_name.
 */

#include <config.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "control.h"
#include "control-commands.h"
#include "gate.h"
#include "registry.h"
#include "utf8.h"

struct command {
  struct command *next;
  char *name;
  control_command_fn *fn;
  void *opaque;
  const struct control_action *action;  /* Set for actions. */
};

/* This lock protects the command table. */
static pthread_mutex_t cmd_table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct command *commands;

/* Commands run one at a time: held while one runs. */
static pthread_mutex_t exec_lock = PTHREAD_MUTEX_INITIALIZER;
/* The client whose command runs (0: none, or a unit test).  Protected
 * by exec_lock.
 */
static uint64_t current_client;

void
control_exec_lock (void)
{
  int r = pthread_mutex_lock (&exec_lock);

  if (r != 0)
    abort_on_lock_error ("pthread_mutex_lock", r);
}

void
control_exec_unlock (void)
{
  pthread_mutex_unlock (&exec_lock);
}

uint64_t
control_current_client (void)
{
  return current_client;
}

int
control_fail (struct control_error *err, const char *class,
              const char *fs, ...)
{
  va_list args;

  err->class = class;
  va_start (args, fs);
  vsnprintf (err->desc, sizeof err->desc, fs, args);
  va_end (args);
  return -1;
}

int
control_check_name (const char *what, const char *name, size_t max,
                    struct control_error *err)
{
  size_t len = strlen (name), i;

  if (len == 0 || len > max)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s must be 1 to %zu bytes long", what, max);
  for (i = 0; i < len; ++i) {
    unsigned char c = name[i];
    if (c < 0x20 || c == 0x7f)
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "%s must not contain control characters "
                           "(byte 0x%02x at offset %zu)", what, c, i);
  }
  if (utf8_valid_prefix (name, len) != len)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s must be valid UTF-8", what);
  return 0;
}

/* Lock held. */
static struct command *
find_command_locked (const char *name)
{
  struct command *c;

  for (c = commands; c; c = c->next)
    if (strcmp (c->name, name) == 0)
      return c;
  return NULL;
}

/* Commands are never removed, so the pointer stays valid. */
static struct command *
find_command (const char *name)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&cmd_table_lock);
  return find_command_locked (name);
}

static int
add_command (const char *name, control_command_fn *fn, void *opaque,
             const struct control_action *action)
{
  struct command *c, **pp;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&cmd_table_lock);

  if (find_command_locked (name)) {
    nbdkit_error ("control: command %s registered twice", name);
    return -1;
  }
  c = calloc (1, sizeof *c);
  if (c == NULL || (c->name = strdup (name)) == NULL) {
    nbdkit_error ("malloc: %m");
    free (c);
    return -1;
  }
  c->fn = fn;
  c->opaque = opaque;
  c->action = action;
  for (pp = &commands; *pp; pp = &(*pp)->next)
    ;
  *pp = c;
  return 0;
}

int
control_register (const char *name, control_command_fn *fn, void *opaque)
{
  return add_command (name, fn, opaque, NULL);
}

int
control_register_action (const struct control_action *a)
{
  return add_command (a->type, NULL, NULL, a);
}

void
actions_free (struct action_list *al)
{
  size_t i;

  for (i = 0; i < al->n; ++i)
    json_object_put (al->args ? al->args[i] : NULL);
  free (al->acts);
  free (al->args);
  free (al->states);
  memset (al, 0, sizeof *al);
}

/* Make room for n actions.  0 or -1 with *err. */
static int
actions_alloc (struct action_list *al, size_t n, struct control_error *err)
{
  memset (al, 0, sizeof *al);
  al->acts = calloc (n ? n : 1, sizeof *al->acts);
  al->args = calloc (n ? n : 1, sizeof *al->args);
  al->states = calloc (n ? n : 1, sizeof *al->states);
  if (al->acts == NULL || al->args == NULL || al->states == NULL) {
    actions_free (al);
    return control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
  }
  return 0;
}

int
actions_parse (json_object *list, const char *what, struct action_list *al,
               struct control_error *err)
{
  size_t i, n;

  if (list == NULL || !json_object_is_type (list, json_type_array))
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: 'actions' must be an array", what);
  n = json_object_array_length (list);
  if (actions_alloc (al, n, err) == -1)
    return -1;

  for (i = 0; i < n; ++i) {
    json_object *a = json_object_array_get_idx (list, i), *t, *d = NULL;
    struct command *c;

    if (!json_object_is_type (a, json_type_object) ||
        !json_object_object_get_ex (a, "type", &t) ||
        !json_object_is_type (t, json_type_string)) {
      actions_free (al);
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "%s: action %zu has no 'type'", what, i);
    }
    c = find_command (json_object_get_string (t));
    if (c == NULL || c->action == NULL) {
      control_fail (err, CONTROL_GENERIC_ERROR,
                    "%s: '%s' is not a transaction action",
                    what, json_object_get_string (t));
      actions_free (al);
      return -1;
    }
    if (json_object_object_get_ex (a, "data", &d) && d != NULL &&
        !json_object_is_type (d, json_type_object)) {
      actions_free (al);
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "%s: action %zu: 'data' must be an object",
                           what, i);
    }
    al->acts[i] = c->action;
    /* Actions see an empty object for missing data. */
    al->args[i] = d ? json_object_get (d) : json_object_new_object ();
    al->n++;
  }
  return 0;
}

int
actions_prepare (struct action_list *al, struct control_error *err)
{
  size_t i;

  al->prepared = 0;
  for (i = 0; i < al->n; ++i) {
    if (al->acts[i]->prepare (al->args[i], &al->states[i], err,
                              al->acts[i]->opaque) == -1) {
      actions_abort (al);
      return -1;
    }
    al->prepared++;
  }
  return 0;
}

void
actions_commit (struct action_list *al)
{
  size_t i;

  for (i = 0; i < al->prepared; ++i)
    al->acts[i]->commit (al->states[i], al->acts[i]->opaque);
}

void
actions_abort (struct action_list *al)
{
  while (al->prepared > 0) {
    size_t i = --al->prepared;
    if (al->acts[i]->abort)
      al->acts[i]->abort (al->states[i], al->acts[i]->opaque);
  }
}

void
actions_after (struct action_list *al)
{
  size_t i;

  for (i = 0; i < al->prepared; ++i)
    if (al->acts[i]->after)
      al->acts[i]->after (al->states[i], al->acts[i]->opaque);
}

/* Run the actions atomically against writes (exec_lock held).  If
 * ret is not NULL (an action run alone), set it to the action's
 * result.
 */
static int
run_actions (struct action_list *al, json_object **ret,
             struct control_error *err)
{
  /* The gate is closed for a prepared group transaction: closing it
   * again would wait for the group's end while holding exec_lock,
   * which the group's commit needs.
   */
  if (control_group_check_idle (err) == -1)
    return -1;

  gate_close ();
  if (actions_prepare (al, err) == -1) {
    gate_open ();
    return -1;
  }
  actions_commit (al);
  if (ret && al->n == 1 && al->acts[0]->result)
    *ret = al->acts[0]->result (al->states[0], al->acts[0]->opaque);
  gate_open ();

  actions_after (al);
  return 0;
}

/* {"actions": [{"type": T, "data": {...}}, ...]} */
static int
transaction_cmd (json_object *args, json_object **ret,
                 struct control_error *err, void *opaque)
{
  json_object *list = NULL;
  struct action_list al;
  int r;

  json_object_object_get_ex (args, "actions", &list);
  if (actions_parse (list, "transaction", &al, err) == -1)
    return -1;
  r = run_actions (&al, NULL, err);
  actions_free (&al);
  return r;
}

static int
capabilities_cmd (json_object *args, json_object **ret,
                  struct control_error *err, void *opaque)
{
  return 0;
}

static int
query_commands_cmd (json_object *args, json_object **ret,
                    struct control_error *err, void *opaque)
{
  json_object *list = json_object_new_array ();
  struct command *c;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&cmd_table_lock);

  for (c = commands; c; c = c->next) {
    json_object *o = json_object_new_object ();
    json_object_object_add (o, "name", json_object_new_string (c->name));
    json_object_object_add (o, "transaction-action",
                            json_object_new_boolean (c->action != NULL));
    json_object_array_add (list, o);
  }
  *ret = list;
  return 0;
}

static json_object *
filters_array (void)
{
  CLEANUP_FREE char *names = registry_list_filters ();
  json_object *a = json_object_new_array ();
  char *p, *save = NULL;

  if (names)
    for (p = strtok_r (names, " ", &save); p; p = strtok_r (NULL, " ", &save))
      json_object_array_add (a, json_object_new_string (p));
  return a;
}

static void
describe_into (const char *name, void *obj, void *describe, void *opaque)
{
  json_object *list = opaque;
  json_object *(*fn) (void *) = describe;

  if (fn)
    json_object_array_add (list, fn (obj));
}

/* query-jobs, query-snapshots, query-bitmaps: every registered object
 * of the kind, described by its owner.
 */
static int
query_kind_cmd (json_object *args, json_object **ret,
                struct control_error *err, void *opaque)
{
  json_object *list = json_object_new_array ();

  registry_foreach_described (opaque, describe_into, list);
  *ret = list;
  return 0;
}

static int
query_status_cmd (json_object *args, json_object **ret,
                  struct control_error *err, void *opaque)
{
  json_object *o = json_object_new_object ();
  json_object *jobs = json_object_new_array ();
  json_object *snaps = json_object_new_array ();
  json_object *bitmaps = json_object_new_array ();

  json_object_object_add (o, "version",
                          json_object_new_string (PACKAGE_VERSION));
  json_object_object_add (o, "pid", json_object_new_int64 (getpid ()));
  json_object_object_add (o, "filters", filters_array ());
  json_object_object_add (o, "writes-in-flight",
                          json_object_new_int64 (gate_writes_in_flight ()));
  json_object_object_add (o, "writes-waiting",
                          json_object_new_int64 (gate_writes_waiting ()));
  json_object_object_add (o, "gate-closed",
                          json_object_new_boolean (gate_is_closed ()));
  json_object_object_add (o, "group", control_group_describe ());
  registry_foreach_described ("job", describe_into, jobs);
  registry_foreach_described ("snapshot", describe_into, snaps);
  registry_foreach_described ("bitmap", describe_into, bitmaps);
  json_object_object_add (o, "jobs", jobs);
  json_object_object_add (o, "snapshots", snaps);
  json_object_object_add (o, "bitmaps", bitmaps);
  *ret = o;
  return 0;
}

static pthread_once_t builtins_once = PTHREAD_ONCE_INIT;

static void
register_builtins (void)
{
  control_register ("qmp_capabilities", capabilities_cmd, NULL);
  control_register ("query-commands", query_commands_cmd, NULL);
  control_register ("query-status", query_status_cmd, NULL);
  control_register ("query-jobs", query_kind_cmd, (void *) "job");
  control_register ("query-snapshots", query_kind_cmd, (void *) "snapshot");
  control_register ("query-bitmaps", query_kind_cmd, (void *) "bitmap");
  control_register ("transaction", transaction_cmd, NULL);
  control_group_register ();
}

void
control_commands_init (void)
{
  pthread_once (&builtins_once, register_builtins);
}

static char *
reply_string (json_object *reply)
{
  char *s = strdup (json_object_to_json_string_ext (reply, JSON_OUT));
  json_object_put (reply);
  return s;
}

static char *
error_reply (json_object *id, const char *class, const char *desc)
{
  json_object *reply = json_object_new_object ();
  json_object *e = json_object_new_object ();

  json_object_object_add (e, "class", json_object_new_string (class));
  json_object_object_add (e, "desc", json_object_new_string (desc));
  json_object_object_add (reply, "error", e);
  if (id)
    json_object_object_add (reply, "id", json_object_get (id));
  return reply_string (reply);
}

char *
control_error_line (const char *class, const char *desc)
{
  return error_reply (NULL, class, desc);
}

char *
control_greeting_line (void)
{
  json_object *o = json_object_new_object ();
  json_object *v = json_object_new_object ();

  json_object_object_add (v, "version",
                          json_object_new_string (PACKAGE_VERSION));
  json_object_object_add (v, "filters", filters_array ());
  json_object_object_add (o, "nbdkit-backup", v);
  return reply_string (o);
}

#define NUL_IN_REQUEST "a string in the request contains NUL (\\u0000)"

/* A string (len bytes) fit to reach a handler: no NUL, valid UTF-8
 * (json-c turns escapes such as "\udc00" into bytes of its own).
 * NULL, or what is wrong with it.
 */
static const char *
bad_string (const char *s, size_t len)
{
  if (memchr (s, '\0', len))
    return NUL_IN_REQUEST;
  if (utf8_valid_prefix (s, len) != len)
    return "a string in the request is not valid UTF-8";
  return NULL;
}

/* Check every key and string in v (depth-first).  NULL, or why not. */
static const char *
check_strings (json_object *v, int depth)
{
  const char *why = NULL;
  size_t i, n;

  if (depth > 64)
    return "the request is nested too deeply";
  switch (json_object_get_type (v)) {
  case json_type_string:
    return bad_string (json_object_get_string (v),
                       json_object_get_string_len (v));
  case json_type_array:
    n = json_object_array_length (v);
    for (i = 0; i < n && why == NULL; ++i)
      why = check_strings (json_object_array_get_idx (v, i), depth + 1);
    return why;
  case json_type_object: {
    json_object_object_foreach (v, key, val) {
      if ((why = bad_string (key, strlen (key))) != NULL ||
          (why = check_strings (val, depth + 1)) != NULL)
        return why;
    }
    return NULL;
  }
  default:
    return NULL;
  }
}

/* Does the JSON text escape a NUL ("\u0000")?  Checked on the text,
 * since json-c cuts an object's keys at a NUL.  A backslash appears
 * only in strings, so escapes can be followed without parsing.
 */
static bool
escapes_nul (const char *s, size_t len)
{
  size_t i;

  for (i = 0; i + 1 < len; ++i)
    if (s[i] == '\\') {
      if (s[i + 1] == 'u' && len - i >= 6 && memcmp (s + i + 2, "0000", 4) == 0)
        return true;
      i++;                      /* Skip the escaped character. */
    }
  return false;
}

/* Parse line into *req (a JSON object).  NULL, or an error reply. */
static char *
parse_request (const char *line, size_t len, json_object **req)
{
  struct json_tokener *tok;
  json_object *o;
  size_t valid = utf8_valid_prefix (line, len);
  char desc[256];

  *req = NULL;
  if (valid != len) {
    snprintf (desc, sizeof desc,
              "the request is not valid UTF-8 (byte 0x%02x at offset %zu)",
              (unsigned char) line[valid], valid);
    return error_reply (NULL, CONTROL_GENERIC_ERROR, desc);
  }
  if (escapes_nul (line, len))
    return error_reply (NULL, CONTROL_GENERIC_ERROR, NUL_IN_REQUEST);
  tok = json_tokener_new ();
  if (tok == NULL)
    return error_reply (NULL, CONTROL_GENERIC_ERROR, "out of memory");
  o = json_tokener_parse_ex (tok, line, len);
  /* Trailing blanks after a complete object are fine. */
  if (o == NULL || (tok->char_offset < (int) len &&
                    strspn (line + tok->char_offset, " \t\r") !=
                    len - tok->char_offset)) {
    enum json_tokener_error jerr = json_tokener_get_error (tok);

    snprintf (desc, sizeof desc, "JSON parse error: %s",
              o ? "unexpected data after the object"
              : jerr == json_tokener_continue ? "incomplete JSON object"
              : json_tokener_error_desc (jerr));
    json_object_put (o);
    json_tokener_free (tok);
    return error_reply (NULL, CONTROL_GENERIC_ERROR, desc);
  }
  json_tokener_free (tok);
  if (!json_object_is_type (o, json_type_object)) {
    json_object_put (o);
    return error_reply (NULL, CONTROL_GENERIC_ERROR,
                        "the request must be a JSON object");
  }
  *req = o;
  return NULL;
}

/* The request's form: NULL, or an error reply (with id). */
static char *
check_request (json_object *req, json_object *id)
{
  json_object *exe, *args;
  const char *why = check_strings (req, 0);
  char desc[256];

  /* The id is echoed: only a valid one. */
  if (why)
    return error_reply (check_strings (id, 0) ? NULL : id,
                        CONTROL_GENERIC_ERROR, why);
  if (!json_object_object_get_ex (req, "execute", &exe) ||
      !json_object_is_type (exe, json_type_string))
    return error_reply (id, CONTROL_GENERIC_ERROR,
                        "the request has no 'execute' string");
  if (json_object_object_get_ex (req, "arguments", &args) &&
      !json_object_is_type (args, json_type_object))
    return error_reply (id, CONTROL_GENERIC_ERROR,
                        "'arguments' must be a JSON object");
  {
    json_object_object_foreach (req, key, val) {
      (void) val;
      if (strcmp (key, "execute") && strcmp (key, "arguments") &&
          strcmp (key, "id")) {
        snprintf (desc, sizeof desc, "unknown member '%s' in the request",
                  key);
        return error_reply (id, CONTROL_GENERIC_ERROR, desc);
      }
    }
  }
  return NULL;
}

/* Run the command c with args (NULL: none) and make the reply. */
static char *
execute (struct command *c, json_object *args, json_object *id,
         uint64_t client)
{
  struct control_error err = { .class = CONTROL_GENERIC_ERROR };
  json_object *empty = args ? NULL : json_object_new_object ();
  json_object *a = args ? args : empty;
  json_object *ret = NULL, *o;
  int r;

  pthread_mutex_lock (&exec_lock);
  current_client = client;
  if (control_group_check_command (c->name, &err) == -1)
    r = -1;
  else if (c->action) {
    struct action_list al;

    r = actions_alloc (&al, 1, &err);
    if (r == 0) {
      al.acts[0] = c->action;
      al.args[0] = json_object_get (a);
      al.n = 1;
      r = run_actions (&al, &ret, &err);
      actions_free (&al);
    }
  }
  else
    r = c->fn (a, &ret, &err, c->opaque);
  current_client = 0;
  pthread_mutex_unlock (&exec_lock);
  json_object_put (empty);

  if (r == -1) {
    json_object_put (ret);
    return error_reply (id, err.class ? err.class : CONTROL_GENERIC_ERROR,
                        err.desc[0] ? err.desc : "the command failed");
  }
  o = json_object_new_object ();
  json_object_object_add (o, "return", ret ? ret : json_object_new_object ());
  if (id)
    json_object_object_add (o, "id", json_object_get (id));
  return reply_string (o);
}

char *
control_handle_line (const char *line, size_t len)
{
  return control_handle_client_line (0, line, len);
}

char *
control_handle_client_line (uint64_t client, const char *line, size_t len)
{
  json_object *req, *exe, *args = NULL, *id = NULL;
  struct command *c;
  char *reply;

  control_commands_init ();
  reply = parse_request (line, len, &req);
  if (reply)
    return reply;
  json_object_object_get_ex (req, "id", &id);
  reply = check_request (req, id);
  if (reply == NULL) {
    json_object_object_get_ex (req, "execute", &exe);
    json_object_object_get_ex (req, "arguments", &args);
    c = find_command (json_object_get_string (exe));
    if (c == NULL) {
      char desc[256];
      snprintf (desc, sizeof desc, "the command %s has not been found",
                json_object_get_string (exe));
      reply = error_reply (id, CONTROL_COMMAND_NOT_FOUND, desc);
    }
    else
      reply = execute (c, args, id, client);
  }
  json_object_put (req);
  return reply;
}
