/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The control socket (see control.h for the protocol).
 *
 * Threads: one listener thread accepts clients; each client gets a
 * thread that reads request lines and writes replies.  Commands run
 * one at a time under command_lock, as QMP does, so handlers need no
 * locking against each other (only against the data path).  Events
 * may come from any thread; each client has a write lock so a reply
 * and an event never interleave, and a send timeout so one stuck
 * client cannot stall a job that emits an event.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "control.h"
#include "gate.h"
#include "registry.h"

/* Longest request line accepted. */
#define MAX_LINE (1024 * 1024)

struct command {
  struct command *next;
  char *name;
  control_command_fn *fn;
  void *opaque;
  const struct control_action *action;  /* Set for actions. */
};

struct client {
  struct client *next;
  int fd;
  pthread_t thread;
  pthread_mutex_t write_lock;
  bool greeted;                 /* Greeting sent: events may follow. */
  bool done;                    /* Thread finished; join and free. */
};

/* This lock protects the command list. */
static pthread_mutex_t commands_lock = PTHREAD_MUTEX_INITIALIZER;
static struct command *commands;

/* Commands run one at a time. */
static pthread_mutex_t command_lock = PTHREAD_MUTEX_INITIALIZER;

/* This lock protects the server state below. */
static pthread_mutex_t server_lock = PTHREAD_MUTEX_INITIALIZER;
static char *socket_path;
static int listen_fd = -1;
static bool listening;
static pthread_t listen_thread;
static int wake_pipe[2] = { -1, -1 };  /* Wakes the listener to stop. */
static unsigned starts;
static struct client *clients;

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

static struct command *
find_command (const char *name)
{
  struct command *c;

  for (c = commands; c; c = c->next)
    if (strcmp (c->name, name) == 0)
      return c;
  return NULL;
}

static int
add_command (const char *name, control_command_fn *fn, void *opaque,
             const struct control_action *action)
{
  struct command *c, **pp;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&commands_lock);

  if (find_command (name)) {
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

/* Run actions[0..n) (with their args) atomically against writes.
 * If ret is not NULL (an action run alone), set it to the action's
 * result.
 */
static int
run_actions (const struct control_action **acts, json_object **args,
             size_t n, json_object **ret, struct control_error *err)
{
  CLEANUP_FREE void **states = calloc (n ? n : 1, sizeof (void *));
  size_t i, prepared = 0;
  int r = 0;

  if (states == NULL)
    return control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");

  gate_close ();
  for (i = 0; i < n; ++i) {
    if (acts[i]->prepare (args[i], &states[i], err, acts[i]->opaque) == -1) {
      r = -1;
      break;
    }
    prepared++;
  }
  if (r == -1) {
    while (prepared-- > 0)
      if (acts[prepared]->abort)
        acts[prepared]->abort (states[prepared], acts[prepared]->opaque);
  }
  else {
    for (i = 0; i < n; ++i)
      acts[i]->commit (states[i], acts[i]->opaque);
    if (ret && n == 1 && acts[0]->result)
      *ret = acts[0]->result (states[0], acts[0]->opaque);
  }
  gate_open ();

  if (r == 0)
    for (i = 0; i < n; ++i)
      if (acts[i]->after)
        acts[i]->after (states[i], acts[i]->opaque);
  return r;
}

/* {"actions": [{"type": T, "data": {...}}, ...]} */
static int
transaction_cmd (json_object *args, json_object **ret,
                 struct control_error *err, void *opaque)
{
  json_object *list;
  size_t i, n;
  CLEANUP_FREE const struct control_action **acts = NULL;
  CLEANUP_FREE json_object **data = NULL;

  if (!json_object_object_get_ex (args, "actions", &list) ||
      !json_object_is_type (list, json_type_array))
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "transaction: 'actions' must be an array");
  n = json_object_array_length (list);
  acts = calloc (n ? n : 1, sizeof *acts);
  data = calloc (n ? n : 1, sizeof *data);
  if (acts == NULL || data == NULL)
    return control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");

  for (i = 0; i < n; ++i) {
    json_object *a = json_object_array_get_idx (list, i), *t;
    struct command *c;

    if (!json_object_is_type (a, json_type_object) ||
        !json_object_object_get_ex (a, "type", &t) ||
        !json_object_is_type (t, json_type_string))
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "transaction: action %zu has no 'type'", i);
    pthread_mutex_lock (&commands_lock);
    c = find_command (json_object_get_string (t));
    pthread_mutex_unlock (&commands_lock);
    if (c == NULL || c->action == NULL)
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "transaction: '%s' is not a transaction action",
                           json_object_get_string (t));
    acts[i] = c->action;
    if (!json_object_object_get_ex (a, "data", &data[i]) || data[i] == NULL)
      data[i] = NULL;
    else if (!json_object_is_type (data[i], json_type_object))
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "transaction: action %zu: 'data' must be an object",
                           i);
  }
  /* Actions see an empty object for missing data. */
  {
    json_object *empty = json_object_new_object ();
    for (i = 0; i < n; ++i)
      if (data[i] == NULL)
        data[i] = empty;
    i = run_actions (acts, data, n, NULL, err);
    json_object_put (empty);
    return (int) i;
  }
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
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&commands_lock);

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

  json_object_object_add (o, "version",
                          json_object_new_string (PACKAGE_VERSION));
  json_object_object_add (o, "pid", json_object_new_int64 (getpid ()));
  json_object_object_add (o, "filters", filters_array ());
  json_object_object_add (o, "writes-in-flight",
                          json_object_new_int64 (gate_writes_in_flight ()));
  registry_foreach_described ("job", describe_into, jobs);
  registry_foreach_described ("snapshot", describe_into, snaps);
  json_object_object_add (o, "jobs", jobs);
  json_object_object_add (o, "snapshots", snaps);
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
}

static char *
reply_string (json_object *reply)
{
  char *s = strdup (json_object_to_json_string_ext (reply,
                                                    JSON_OUT));
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
control_handle_line (const char *line, size_t len)
{
  struct json_tokener *tok;
  json_object *req, *exe, *args = NULL, *id = NULL, *ret = NULL;
  struct control_error err = { .class = CONTROL_GENERIC_ERROR };
  struct command *c;
  const char *name;
  char *reply;
  int r;

  pthread_once (&builtins_once, register_builtins);

  tok = json_tokener_new ();
  if (tok == NULL)
    return NULL;
  req = json_tokener_parse_ex (tok, line, len);
  if (req == NULL || tok->char_offset < (int) len) {
    enum json_tokener_error jerr = json_tokener_get_error (tok);
    char desc[256];

    /* Trailing blanks after a complete object are fine. */
    if (req && strspn (line + tok->char_offset, " \t\r") ==
        len - tok->char_offset)
      goto parsed;
    snprintf (desc, sizeof desc, "JSON parse error: %s",
              req ? "unexpected data after the object"
              : jerr == json_tokener_continue ? "incomplete JSON object"
              : json_tokener_error_desc (jerr));
    json_object_put (req);
    json_tokener_free (tok);
    return error_reply (NULL, CONTROL_GENERIC_ERROR, desc);
  }
 parsed:
  json_tokener_free (tok);

  if (!json_object_is_type (req, json_type_object)) {
    json_object_put (req);
    return error_reply (NULL, CONTROL_GENERIC_ERROR,
                        "the request must be a JSON object");
  }
  json_object_object_get_ex (req, "id", &id);
  if (!json_object_object_get_ex (req, "execute", &exe) ||
      !json_object_is_type (exe, json_type_string)) {
    reply = error_reply (id, CONTROL_GENERIC_ERROR,
                         "the request has no 'execute' string");
    json_object_put (req);
    return reply;
  }
  name = json_object_get_string (exe);
  if (json_object_object_get_ex (req, "arguments", &args) &&
      !json_object_is_type (args, json_type_object)) {
    reply = error_reply (id, CONTROL_GENERIC_ERROR,
                         "'arguments' must be a JSON object");
    json_object_put (req);
    return reply;
  }
  {
    json_object_object_foreach (req, key, val) {
      (void) val;
      if (strcmp (key, "execute") && strcmp (key, "arguments") &&
          strcmp (key, "id")) {
        char desc[256];
        snprintf (desc, sizeof desc, "unknown member '%s' in the request",
                  key);
        reply = error_reply (id, CONTROL_GENERIC_ERROR, desc);
        json_object_put (req);
        return reply;
      }
    }
  }

  pthread_mutex_lock (&commands_lock);
  c = find_command (name);
  pthread_mutex_unlock (&commands_lock);
  if (c == NULL) {
    char desc[256];
    snprintf (desc, sizeof desc, "the command %s has not been found", name);
    reply = error_reply (id, CONTROL_COMMAND_NOT_FOUND, desc);
    json_object_put (req);
    return reply;
  }

  {
    json_object *empty = args ? NULL : json_object_new_object ();
    json_object *a = args ? args : empty;

    pthread_mutex_lock (&command_lock);
    if (c->action)
      r = run_actions (&c->action, &a, 1, &ret, &err);
    else
      r = c->fn (a, &ret, &err, c->opaque);
    pthread_mutex_unlock (&command_lock);
    json_object_put (empty);
  }

  if (r == -1) {
    reply = error_reply (id, err.class ? err.class : CONTROL_GENERIC_ERROR,
                         err.desc[0] ? err.desc : "the command failed");
  }
  else {
    json_object *o = json_object_new_object ();
    json_object_object_add (o, "return", ret ? ret : json_object_new_object ());
    if (id)
      json_object_object_add (o, "id", json_object_get (id));
    reply = reply_string (o);
  }
  json_object_put (req);
  return reply;
}

/* Write a line to a client; on failure shut it down.  */
static void
client_send (struct client *cl, const char *s)
{
  size_t len = strlen (s);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&cl->write_lock);

  while (len > 0) {
    ssize_t r = send (cl->fd, s, len, MSG_NOSIGNAL);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      shutdown (cl->fd, SHUT_RDWR);
      return;
    }
    s += r; len -= r;
  }
  if (send (cl->fd, "\n", 1, MSG_NOSIGNAL) != 1)
    shutdown (cl->fd, SHUT_RDWR);
}

void
control_emit_event (const char *name, json_object *data)
{
  json_object *o = json_object_new_object ();
  json_object *ts = json_object_new_object ();
  struct timeval tv;
  struct client *cl;
  const char *s;

  gettimeofday (&tv, NULL);
  json_object_object_add (o, "event", json_object_new_string (name));
  json_object_object_add (o, "data", data ? data : json_object_new_object ());
  json_object_object_add (ts, "seconds", json_object_new_int64 (tv.tv_sec));
  json_object_object_add (ts, "microseconds",
                          json_object_new_int64 (tv.tv_usec));
  json_object_object_add (o, "timestamp", ts);
  s = json_object_to_json_string_ext (o, JSON_OUT);
  nbdkit_debug ("control: event %s", s);

  pthread_mutex_lock (&server_lock);
  for (cl = clients; cl; cl = cl->next)
    if (cl->greeted && !cl->done)
      client_send (cl, s);
  pthread_mutex_unlock (&server_lock);
  json_object_put (o);
}

/* The greeting is the first line a client reads: it is sent, and the
 * client marked as greeted, under the lock that control_emit_event
 * holds, so that no event can come before it.
 */
static void
greet (struct client *cl)
{
  json_object *o = json_object_new_object ();
  json_object *v = json_object_new_object ();

  json_object_object_add (v, "version",
                          json_object_new_string (PACKAGE_VERSION));
  json_object_object_add (v, "filters", filters_array ());
  json_object_object_add (o, "nbdkit-backup", v);
  pthread_mutex_lock (&server_lock);
  client_send (cl, json_object_to_json_string_ext (o, JSON_OUT));
  cl->greeted = true;
  pthread_mutex_unlock (&server_lock);
  json_object_put (o);
}

static void *
client_thread (void *vp)
{
  struct client *cl = vp;
  CLEANUP_FREE char *buf = malloc (MAX_LINE + 1);
  size_t used = 0;
  bool discarding = false;

  if (buf == NULL)
    goto out;
  greet (cl);
  for (;;) {
    ssize_t r = recv (cl->fd, buf + used, MAX_LINE - used, 0);
    char *nl;
    size_t start = 0;

    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      break;                    /* Closed (mid-line or not): drop it. */
    used += r;
    while ((nl = memchr (buf + start, '\n', used - start)) != NULL) {
      size_t len = nl - (buf + start);
      if (discarding)
        discarding = false;
      else if (strspn (buf + start, " \t\r") < len) {
        char *reply = control_handle_line (buf + start, len);
        if (reply) {
          client_send (cl, reply);
          free (reply);
        }
      }
      start += len + 1;
    }
    memmove (buf, buf + start, used - start);
    used -= start;
    if (used == MAX_LINE) {     /* Overlong: refuse, skip to newline. */
      char *reply = error_reply (NULL, CONTROL_GENERIC_ERROR,
                                 "request line too long");
      if (reply) {
        client_send (cl, reply);
        free (reply);
      }
      used = 0;
      discarding = true;
    }
  }
 out:
  pthread_mutex_lock (&server_lock);
  cl->done = true;
  pthread_mutex_unlock (&server_lock);
  return NULL;
}

/* Join and free clients whose threads have finished.  Lock held. */
static void
reap_clients_locked (bool all)
{
  struct client **pp = &clients;

  while (*pp) {
    struct client *cl = *pp;
    if (cl->done || all) {
      *pp = cl->next;
      if (!cl->done)
        shutdown (cl->fd, SHUT_RDWR);
      pthread_mutex_unlock (&server_lock);
      pthread_join (cl->thread, NULL);
      pthread_mutex_lock (&server_lock);
      close (cl->fd);
      pthread_mutex_destroy (&cl->write_lock);
      free (cl);
    }
    else
      pp = &cl->next;
  }
}

static void *
listen_loop (void *vp)
{
  for (;;) {
    struct pollfd pfd[2] = {
      { .fd = listen_fd, .events = POLLIN },
      { .fd = wake_pipe[0], .events = POLLIN },
    };
    struct client *cl;
    struct timeval tv = { .tv_sec = 2 };
    int fd, r;

    r = poll (pfd, 2, -1);
    pthread_mutex_lock (&server_lock);
    if (!listening) {
      pthread_mutex_unlock (&server_lock);
      break;
    }
    reap_clients_locked (false);
    pthread_mutex_unlock (&server_lock);
    if (r == -1 || !(pfd[0].revents & POLLIN))
      continue;
    fd = accept4 (listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd == -1)
      continue;
    setsockopt (fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    cl = calloc (1, sizeof *cl);
    if (cl == NULL) {
      close (fd);
      continue;
    }
    cl->fd = fd;
    pthread_mutex_init (&cl->write_lock, NULL);
    pthread_mutex_lock (&server_lock);
    if (pthread_create (&cl->thread, NULL, client_thread, cl) != 0) {
      pthread_mutex_unlock (&server_lock);
      close (fd);
      free (cl);
      continue;
    }
    cl->next = clients;
    clients = cl;
    pthread_mutex_unlock (&server_lock);
  }
  return NULL;
}

int
control_configure (const char *param, const char *path)
{
  CLEANUP_FREE char *abs = nbdkit_absolute_path (path);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&server_lock);

  if (abs == NULL)
    return -1;
  if (strlen (abs) >= sizeof ((struct sockaddr_un *) 0)->sun_path) {
    nbdkit_error ("%s: socket path too long: %s", param, abs);
    return -1;
  }
  if (socket_path && strcmp (socket_path, abs) != 0) {
    nbdkit_error ("%s: the control socket is already %s: one server has "
                  "one control socket", param, socket_path);
    return -1;
  }
  if (socket_path == NULL) {
    socket_path = abs;
    abs = NULL;
  }
  return 0;
}

const char *
control_path (void)
{
  return socket_path;
}

int
control_bind (void)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  mode_t old_mask;
  int fd;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&server_lock);

  pthread_once (&builtins_once, register_builtins);
  if (socket_path == NULL || listen_fd >= 0)
    return 0;
  strcpy (addr.sun_path, socket_path);
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1) {
    nbdkit_error ("control socket: socket: %m");
    return -1;
  }
  /* A stale socket from a dead server is replaced; anything else at
   * that path is not ours to remove.
   */
  {
    struct stat st;
    if (lstat (socket_path, &st) == 0 && S_ISSOCK (st.st_mode))
      unlink (socket_path);
  }
  /* Mode 0600 from the start: no window where others could connect. */
  old_mask = umask (0177);
  if (bind (fd, (struct sockaddr *) &addr, sizeof addr) == -1) {
    umask (old_mask);
    nbdkit_error ("control socket: %s: %m", socket_path);
    close (fd);
    return -1;
  }
  umask (old_mask);
  if (listen (fd, 16) == -1) {
    nbdkit_error ("control socket: listen: %m");
    close (fd);
    unlink (socket_path);
    return -1;
  }
  listen_fd = fd;
  nbdkit_debug ("control: listening on %s", socket_path);
  return 0;
}

int
control_start (void)
{
  int r;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&server_lock);

  if (listen_fd == -1)
    return 0;
  starts++;
  if (listening)
    return 0;
  if (pipe2 (wake_pipe, O_CLOEXEC) == -1) {
    nbdkit_error ("control socket: pipe2: %m");
    return -1;
  }
  listening = true;
  r = pthread_create (&listen_thread, NULL, listen_loop, NULL);
  if (r != 0) {
    listening = false;
    nbdkit_error ("control socket: pthread_create: %s", strerror (r));
    return -1;
  }
  return 0;
}

void
control_stop (void)
{
  pthread_mutex_lock (&server_lock);
  if (!listening || --starts > 0) {
    pthread_mutex_unlock (&server_lock);
    return;
  }
  listening = false;
  pthread_mutex_unlock (&server_lock);
  if (write (wake_pipe[1], "x", 1) != 1)
    shutdown (listen_fd, SHUT_RDWR);
  pthread_join (listen_thread, NULL);

  pthread_mutex_lock (&server_lock);
  reap_clients_locked (true);
  close (listen_fd);
  listen_fd = -1;
  close (wake_pipe[0]);
  close (wake_pipe[1]);
  wake_pipe[0] = wake_pipe[1] = -1;
  unlink (socket_path);
  pthread_mutex_unlock (&server_lock);
}
