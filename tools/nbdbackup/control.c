/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The control socket client.
 *
 * Notes on the design:
 *
 * The protocol (nbdkit-backup-control(7)) is one JSON object per
 * line.  Received bytes collect in buf; read_line cuts the first line
 * off, waiting with poll for more bytes up to a deadline.  Every line
 * is classified as it arrives: an object with an "event" member goes
 * to the event queue, anything else is a reply.  So a caller waiting
 * for a reply never loses an event, and one waiting for an event
 * (control_next_event) sees those that arrived meanwhile first.
 *
 * Requests go out one at a time, each with a fresh integer id, and
 * control_execute reads until the reply carries that id.  The server
 * answers in order, so a reply with another id cannot happen on our
 * own connection; it is skipped (with a debug message) rather than
 * trusted.
 *
 * Waiting has no time limit except for the greeting (a server that
 * accepts but never greets is not ours, or is stuck), since commands
 * that hold writes back may legitimately take a while.  A signal
 * (main.c's SIGINT/SIGTERM flag) ends any wait.  Writes use
 * MSG_NOSIGNAL, so a server that went away is an error message, not
 * SIGPIPE.
 *
 * The event queue is bounded: a client that never reads events (the
 * raw `control` subcommand) keeps only the newest MAX_EVENTS.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <json.h>

#include "cleanup.h"
#include "files.h"
#include "nbdkit-stubs.h"
#include "nbdbackup.h"
#include "control.h"

#define GREETING_TIMEOUT 30.0           /* seconds */
#define MAX_LINE (16 * 1024 * 1024)     /* longest line accepted */
#define MAX_EVENTS 1024                 /* events kept unread */

struct control {
  char *path;
  int fd;
  json_object *greeting;        /* the "nbdkit-backup" member */
  int64_t next_id;
  bool cleanup;                 /* only a second signal interrupts */

  /* Bytes received and not yet cut into lines. */
  char *buf;
  size_t len, cap;
  bool eof;

  /* Events received and not yet taken, oldest first (a ring). */
  json_object *events[MAX_EVENTS];
  size_t ev_first, ev_count;
};

void
control_cleanup_mode (struct control *c)
{
  c->cleanup = true;
}

const char *
control_path (const struct control *c)
{
  return c->path;
}

json_object *
control_greeting (const struct control *c)
{
  return c->greeting;
}

/* Milliseconds left until deadline (seconds of monotonic_seconds),
 * -1 for no deadline (deadline < 0), 0 if it has passed.
 */
static int
ms_left (double deadline)
{
  double left;

  if (deadline < 0)
    return -1;
  left = deadline - monotonic_seconds ();
  if (left <= 0)
    return 0;
  if (left > 86400)
    return 86400 * 1000;
  return (int) (left * 1000) + 1;
}

static bool
check_interrupted (const struct control *c)
{
  if (interrupted_by == 0 || (c->cleanup && signal_count < 2))
    return false;
  nbdkit_error ("control socket %s: interrupted by signal %d",
                c->path, (int) interrupted_by);
  return true;
}

/* Cut the next line off buf into *line (malloc'd, no newline),
 * reading more as needed until deadline.  1: a line, 0: time-out,
 * -1: error (reported).
 */
static int
read_line (struct control *c, double deadline, char **line)
{
  for (;;) {
    char *nl = memchr (c->buf, '\n', c->len);
    struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
    ssize_t n;
    int r;

    if (nl) {
      size_t n_line = nl - c->buf;

      *line = malloc (n_line + 1);
      if (*line == NULL) {
        nbdkit_error ("malloc: %m");
        return -1;
      }
      memcpy (*line, c->buf, n_line);
      (*line)[n_line] = '\0';
      c->len -= n_line + 1;
      memmove (c->buf, nl + 1, c->len);
      return 1;
    }
    /* Every line of the protocol is a JSON object.  Something else
     * (an NBD server's binary greeting) is not worth waiting for.
     */
    if (c->len > 0 && c->buf[0] != '{') {
      char shown[33];
      size_t i;

      for (i = 0; i < c->len && i < sizeof shown - 1; ++i)
        shown[i] = c->buf[i] >= 32 && c->buf[i] < 127 ? c->buf[i] : '.';
      shown[i] = '\0';
      nbdkit_error ("control socket %s: not an nbdkit-backup control "
                    "socket (it sent \"%s\")", c->path, shown);
      return -1;
    }
    if (c->eof) {
      nbdkit_error ("control socket %s: the server closed the connection%s",
                    c->path, c->len > 0 ? " in the middle of a line" : "");
      return -1;
    }
    if (c->len >= MAX_LINE) {
      nbdkit_error ("control socket %s: the server sent a line longer "
                    "than %d bytes", c->path, MAX_LINE);
      return -1;
    }
    if (c->cap - c->len < 4096) {
      size_t cap = c->cap ? c->cap * 2 : 65536;
      char *p = realloc (c->buf, cap);

      if (p == NULL) {
        nbdkit_error ("realloc: %m");
        return -1;
      }
      c->buf = p;
      c->cap = cap;
    }

    if (check_interrupted (c))
      return -1;
    r = poll (&pfd, 1, ms_left (deadline));
    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("control socket %s: poll: %m", c->path);
      return -1;
    }
    if (r == 0)
      return 0;
    n = read (c->fd, c->buf + c->len, c->cap - c->len);
    if (n == -1) {
      if (errno == EINTR || errno == EAGAIN)
        continue;
      nbdkit_error ("control socket %s: read: %m", c->path);
      return -1;
    }
    if (n == 0)
      c->eof = true;
    c->len += n;
  }
}

/* Parse a line from the server into an object.  NULL if it is not a
 * JSON object (reported).
 */
static json_object *
parse_line (struct control *c, const char *line)
{
  json_object *o = json_tokener_parse (line);

  if (o == NULL || !json_object_is_type (o, json_type_object)) {
    nbdkit_error ("control socket %s: the server sent something that is "
                  "not a JSON object: %.200s", c->path, line);
    json_object_put (o);
    return NULL;
  }
  return o;
}

static bool
is_event (json_object *o)
{
  return json_object_object_get_ex (o, "event", NULL);
}

static void
queue_event (struct control *c, json_object *ev)
{
  if (c->ev_count == MAX_EVENTS) {
    nbdkit_debug ("control: too many unread events, dropping the oldest");
    json_object_put (c->events[c->ev_first]);
    c->ev_first = (c->ev_first + 1) % MAX_EVENTS;
    c->ev_count--;
  }
  c->events[(c->ev_first + c->ev_count) % MAX_EVENTS] = ev;
  c->ev_count++;
}

/* Read lines until one that is not an event, queueing events; that
 * one is returned both as the line (if line is not NULL) and parsed.
 * NULL on error (reported).
 */
static json_object *
read_reply (struct control *c, char **line_ret)
{
  for (;;) {
    char *line;
    json_object *o;

    if (read_line (c, -1, &line) != 1)
      return NULL;
    nbdkit_debug ("control: <- %s", line);
    o = parse_line (c, line);
    if (o == NULL) {
      free (line);
      return NULL;
    }
    if (is_event (o)) {
      queue_event (c, o);
      free (line);
      continue;
    }
    if (line_ret)
      *line_ret = line;
    else
      free (line);
    return o;
  }
}

int
control_send_line (struct control *c, const char *line)
{
  size_t len = strlen (line), done = 0;
  CLEANUP_FREE char *buf = NULL;

  if (asprintf (&buf, "%s\n", line) == -1) {
    nbdkit_error ("asprintf: %m");
    return -1;
  }
  len++;
  nbdkit_debug ("control: -> %s", line);
  while (done < len) {
    ssize_t n = send (c->fd, buf + done, len - done, MSG_NOSIGNAL);

    if (n == -1) {
      if (errno == EINTR && !check_interrupted (c))
        continue;
      if (errno != EINTR)
        nbdkit_error ("control socket %s: send: %m", c->path);
      return -1;
    }
    done += n;
  }
  return 0;
}

struct control *
control_connect (const char *path)
{
  struct control *c;
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  json_object *o = NULL, *g;
  char *line = NULL;
  int r;

  if (strlen (path) >= sizeof addr.sun_path) {
    nbdkit_error ("control socket %s: the path is too long for a Unix "
                  "domain socket (at most %zu bytes)", path,
                  sizeof addr.sun_path - 1);
    return NULL;
  }
  strcpy (addr.sun_path, path);

  c = calloc (1, sizeof *c);
  if (c == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  c->fd = -1;
  c->next_id = 1;
  c->path = strdup (path);
  if (c->path == NULL) {
    nbdkit_error ("strdup: %m");
    goto err;
  }
  c->fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd == -1) {
    nbdkit_error ("socket: %m");
    goto err;
  }
  do
    r = connect (c->fd, (struct sockaddr *) &addr, sizeof addr);
  while (r == -1 && errno == EINTR && interrupted_by == 0);
  if (r == -1) {
    nbdkit_error ("control socket %s: connect: %m", path);
    goto err;
  }

  r = read_line (c, monotonic_seconds () + GREETING_TIMEOUT, &line);
  if (r == 0)
    nbdkit_error ("control socket %s: no greeting from the server in %g "
                  "seconds", path, GREETING_TIMEOUT);
  if (r != 1)
    goto err;
  nbdkit_debug ("control: <- %s", line);
  o = json_tokener_parse (line);
  /* A server with too many clients says so instead of greeting. */
  if (o && json_object_object_get_ex (o, "error", &g) &&
      json_get_string (g, "desc", NULL)) {
    nbdkit_error ("control socket %s: the server refused the connection: "
                  "%s", path, json_get_string (g, "desc", NULL));
    goto err;
  }
  if (o == NULL || !json_object_is_type (o, json_type_object) ||
      !json_object_object_get_ex (o, "nbdkit-backup", &g) ||
      !json_object_is_type (g, json_type_object)) {
    nbdkit_error ("control socket %s: not an nbdkit-backup control socket "
                  "(the greeting was: %.200s)", path, line);
    goto err;
  }
  c->greeting = json_object_get (g);
  json_object_put (o);
  free (line);
  return c;

 err:
  json_object_put (o);
  free (line);
  control_close (c);
  return NULL;
}

void
control_close (struct control *c)
{
  if (c == NULL)
    return;
  if (c->fd >= 0)
    close (c->fd);
  while (c->ev_count > 0) {
    json_object_put (c->events[c->ev_first]);
    c->ev_first = (c->ev_first + 1) % MAX_EVENTS;
    c->ev_count--;
  }
  json_object_put (c->greeting);
  free (c->buf);
  free (c->path);
  free (c);
}

void
control_error_free (struct control_error *err)
{
  free (err->class);
  free (err->desc);
  err->class = err->desc = NULL;
}

int
control_execute (struct control *c, const char *command, json_object *args,
                 json_object **ret, struct control_error *err)
{
  json_object *req = json_object_new_object ();
  json_object *reply = NULL, *v, *e;
  int64_t id = c->next_id++;
  int r = -1;

  *ret = NULL;
  if (req == NULL) {
    json_object_put (args);
    nbdkit_error ("json_object_new_object: out of memory");
    return -1;
  }
  json_object_object_add (req, "execute", json_object_new_string (command));
  if (args)
    json_object_object_add (req, "arguments", args);
  json_object_object_add (req, "id", json_object_new_int64 (id));
  if (control_send_line (c, json_object_to_json_string_ext
                         (req, JSON_C_TO_STRING_PLAIN |
                          JSON_C_TO_STRING_NOSLASHESCAPE)) == -1)
    goto out;

  for (;;) {
    reply = read_reply (c, NULL);
    if (reply == NULL)
      goto out;
    if (json_object_object_get_ex (reply, "id", &v) &&
        json_object_is_type (v, json_type_int) &&
        json_object_get_int64 (v) == id)
      break;
    nbdkit_debug ("control: skipping a reply that is not for request %"
                  PRIi64, id);
    json_object_put (reply);
  }

  if (json_object_object_get_ex (reply, "return", &v)) {
    *ret = json_object_get (v);
    r = 0;
  }
  else if (json_object_object_get_ex (reply, "error", &e) &&
           json_object_is_type (e, json_type_object)) {
    err->class = strdup (json_get_string (e, "class", "GenericError"));
    err->desc = strdup (json_get_string (e, "desc", "(no description)"));
    if (err->class == NULL || err->desc == NULL) {
      control_error_free (err);
      nbdkit_error ("strdup: %m");
    }
    else
      r = 1;
  }
  else
    nbdkit_error ("control socket %s: the reply to %s has neither "
                  "\"return\" nor \"error\": %.200s", c->path, command,
                  json_object_to_json_string_ext (reply,
                                                  JSON_C_TO_STRING_PLAIN));
 out:
  json_object_put (reply);
  json_object_put (req);
  return r;
}

int
control_command (struct control *c, const char *command, json_object *args,
                 json_object **ret)
{
  struct control_error err = { 0 };
  json_object *v;

  switch (control_execute (c, command, args, &v, &err)) {
  case 0:
    if (ret)
      *ret = v;
    else
      json_object_put (v);
    return NBDBACKUP_EXIT_OK;
  case 1:
    nbdkit_error ("%s: %s (%s)", command, err.desc, err.class);
    control_error_free (&err);
    return NBDBACKUP_EXIT_REFUSED;
  default:
    return NBDBACKUP_EXIT_FAILED;
  }
}

int
control_run (const char *path, const char *command, json_object *args,
             json_object **ret)
{
  struct control *c;
  int r;

  catch_signals ();
  c = control_connect (path);
  if (c == NULL) {
    json_object_put (args);
    return NBDBACKUP_EXIT_FAILED;
  }
  r = control_command (c, command, args, ret);
  control_close (c);
  return r;
}

char *
control_read_reply_line (struct control *c, bool *is_error)
{
  char *line = NULL;
  json_object *o = read_reply (c, &line);

  if (o == NULL)
    return NULL;
  *is_error = !json_object_object_get_ex (o, "return", NULL);
  json_object_put (o);
  return line;
}

int
control_next_event (struct control *c, int timeout_ms, json_object **event)
{
  double deadline =
    timeout_ms < 0 ? -1 : monotonic_seconds () + timeout_ms / 1000.0;

  for (;;) {
    char *line;
    json_object *o;
    int r;

    if (c->ev_count > 0) {
      *event = c->events[c->ev_first];
      c->ev_first = (c->ev_first + 1) % MAX_EVENTS;
      c->ev_count--;
      return 1;
    }
    r = read_line (c, deadline, &line);
    if (r != 1)
      return r;
    nbdkit_debug ("control: <- %s", line);
    o = parse_line (c, line);
    if (o == NULL) {
      free (line);
      return -1;
    }
    if (is_event (o))
      queue_event (c, o);
    else {
      nbdkit_debug ("control: skipping a reply to no request: %s", line);
      json_object_put (o);
    }
    free (line);
  }
}

const char *
json_get_string (json_object *o, const char *key, const char *def)
{
  json_object *v;

  if (o && json_object_object_get_ex (o, key, &v) &&
      json_object_is_type (v, json_type_string))
    return json_object_get_string (v);
  return def;
}

int64_t
json_get_int64 (json_object *o, const char *key, int64_t def)
{
  json_object *v;

  if (o && json_object_object_get_ex (o, key, &v) &&
      (json_object_is_type (v, json_type_int) ||
       json_object_is_type (v, json_type_double)))
    return json_object_get_int64 (v);
  return def;
}

double
json_get_double (json_object *o, const char *key, double def)
{
  json_object *v;

  if (o && json_object_object_get_ex (o, key, &v) &&
      (json_object_is_type (v, json_type_int) ||
       json_object_is_type (v, json_type_double)))
    return json_object_get_double (v);
  return def;
}
