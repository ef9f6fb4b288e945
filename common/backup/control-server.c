/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The control socket's server side (see control.h for the protocol;
 * the commands are control-commands.c).
 *
 * Threads: one listener thread accepts clients, at most
 * CONTROL_MAX_CLIENTS at a time (the next one gets an error line and
 * is closed).  Each client has a thread that reads its requests, runs
 * them and sends what is queued for it.
 *
 * No client can hold up another, or a thread that emits an event:
 * every line for a client (greeting, reply, event) goes into that
 * client's output queue, which only its own thread writes to the
 * socket, and that socket is non-blocking.  Queuing is a copy, done
 * under short locks; nothing ever waits on a socket while holding a
 * lock.  A client that lets more than CONTROL_MAX_QUEUE bytes pile up
 * is disconnected.
 *
 * Lock order: see lock-order.h.
 *
 * Locks: server_lock (the client list, each client's greeted and done
 * flags, the socket state), then a client's out_lock (its queue),
 * never the other way round.  The greeting is queued, and the client
 * marked as greeted, under server_lock, which control_emit_event
 * holds while it queues an event: so no event comes before the
 * greeting.
 *
 * The socket file: at start, a file at the path is removed only if
 * it is a socket that nobody answers on (a dead server's).  Anything
 * else, and a live server's socket, stops this server at start.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <json-c/json.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "control.h"
#include "control-commands.h"
#include "utf8.h"

/* Longest request line accepted. */
#define MAX_LINE (1024 * 1024)

struct client {
  struct client *next;
  uint64_t id;                  /* Never 0: control_current_client. */
  int fd;                       /* Non-blocking. */
  int wake_fd;                  /* eventfd: something was queued. */
  pthread_t thread;
  bool greeted;                 /* Greeting queued: events may follow. */
  bool done;                    /* Thread finished; join and free. */

  /* This lock protects the output queue below. */
  pthread_mutex_t out_lock;
  char *out;
  size_t out_len, out_cap;
  bool overflow;                /* Too much unread: disconnect. */
};

/* This lock protects the server state below. */
static pthread_mutex_t server_lock = PTHREAD_MUTEX_INITIALIZER;
static char *socket_path;
static int listen_fd = -1;
static bool listening;
static pthread_t listen_thread;
static int wake_pipe[2] = { -1, -1 };  /* Wakes the listener to stop. */
/* Filters that called control_bind, and control_start: the listener
 * starts with the last filter's control_start, once every filter has
 * set up what its parameters describe (a job, bitmaps), so the first
 * client already sees them.
 */
static unsigned binders, starts;
static struct client *clients;
static uint64_t last_client_id;

/* s with every byte that is not part of valid UTF-8 replaced by
 * U+FFFD, or NULL if s is valid already (or out of memory).  Bad
 * bytes can come only from strings (a path given on the command line,
 * a message cut short), never from JSON's own syntax, so the result
 * is still JSON.
 */
static char *
valid_utf8_copy (const char *s, size_t len)
{
  const unsigned char *u = (const unsigned char *) s;
  char *r, *p;
  size_t i;

  if (utf8_valid_prefix (s, len) == len)
    return NULL;
  r = p = malloc (len * 3 + 1);
  if (r == NULL)
    return NULL;
  for (i = 0; i < len;) {
    size_t n = utf8_sequence_length (u + i, len - i);
    if (n == 0) {
      memcpy (p, "\xef\xbf\xbd", 3);
      p += 3;
      i++;
    }
    else {
      memcpy (p, s + i, n);
      p += n;
      i += n;
    }
  }
  *p = '\0';
  return r;
}

/* Queue the line s (without its newline) for cl and wake its thread.
 * Never blocks on the socket.  May be called with server_lock held.
 */
static void
queue_line (struct client *cl, const char *s)
{
  CLEANUP_FREE char *fixed = valid_utf8_copy (s, strlen (s));
  size_t len;
  uint64_t one = 1;
  bool overflowed = false;

  if (fixed)
    s = fixed;
  len = strlen (s);
  pthread_mutex_lock (&cl->out_lock);
  if (!cl->overflow && cl->out_len + len + 1 > CONTROL_MAX_QUEUE)
    cl->overflow = overflowed = true;
  if (!cl->overflow && cl->out_len + len + 1 > cl->out_cap) {
    size_t cap = cl->out_cap ? cl->out_cap : 4096;
    char *p;

    while (cap < cl->out_len + len + 1)
      cap *= 2;
    p = realloc (cl->out, cap);
    if (p == NULL)
      cl->overflow = true;
    else {
      cl->out = p;
      cl->out_cap = cap;
    }
  }
  if (!cl->overflow) {
    memcpy (cl->out + cl->out_len, s, len);
    cl->out[cl->out_len + len] = '\n';
    cl->out_len += len + 1;
  }
  pthread_mutex_unlock (&cl->out_lock);
  if (overflowed)
    nbdkit_debug ("control: a client left over %d bytes unread: "
                  "disconnecting it", CONTROL_MAX_QUEUE);
  if (write (cl->wake_fd, &one, sizeof one) != sizeof one) {
    /* The counter is full: the thread has wakings pending anyway. */
  }
}

/* Send what the socket takes now.  Called by cl's thread only.
 * Returns -1 to disconnect, 0 if all was sent, 1 if some is left.
 */
static int
flush_queue (struct client *cl)
{
  size_t sent = 0;
  int r = 0;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&cl->out_lock);

  if (cl->overflow)
    return -1;
  while (sent < cl->out_len) {
    ssize_t n = send (cl->fd, cl->out + sent, cl->out_len - sent,
                      MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n == -1) {
      if (errno == EINTR)
        continue;
      r = errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
      break;
    }
    sent += n;
  }
  memmove (cl->out, cl->out + sent, cl->out_len - sent);
  cl->out_len -= sent;
  return r;
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
      queue_line (cl, s);
  pthread_mutex_unlock (&server_lock);
  json_object_put (o);
}

static void
greet (struct client *cl)
{
  CLEANUP_FREE char *s = control_greeting_line ();
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&server_lock);

  if (s)
    queue_line (cl, s);
  cl->greeted = true;
}

/* Handle the complete lines in buf[0..*used) and keep the rest.
 * *discarding: the rest of an overlong line is being skipped.
 */
static void
handle_input (struct client *cl, char *buf, size_t *used, bool *discarding)
{
  size_t start = 0;
  char *nl;

  while ((nl = memchr (buf + start, '\n', *used - start)) != NULL) {
    size_t len = nl - (buf + start);

    if (*discarding)
      *discarding = false;
    else if (strspn (buf + start, " \t\r") < len) {
      CLEANUP_FREE char *reply =
        control_handle_client_line (cl->id, buf + start, len);
      if (reply)
        queue_line (cl, reply);
    }
    start += len + 1;
  }
  memmove (buf, buf + start, *used - start);
  *used -= start;
  if (*used == MAX_LINE) {      /* Overlong: refuse, skip to newline. */
    CLEANUP_FREE char *reply =
      control_error_line (CONTROL_GENERIC_ERROR, "request line too long");
    if (reply)
      queue_line (cl, reply);
    *used = 0;
    *discarding = true;
  }
}

static void *
client_thread (void *vp)
{
  struct client *cl = vp;
  CLEANUP_FREE char *buf = malloc (MAX_LINE + 1);
  size_t used = 0;
  bool discarding = false;
  bool reading = true;          /* False once the client has shut its end. */

  if (buf == NULL)
    goto out;
  greet (cl);
  for (;;) {
    int pending = flush_queue (cl);
    struct pollfd pfd[2] = {
      { .fd = cl->fd,
        .events = (reading ? POLLIN : 0) | (pending > 0 ? POLLOUT : 0) },
      { .fd = cl->wake_fd, .events = POLLIN },
    };
    ssize_t r;

    /* After the client's end of input, only what is queued is sent. */
    if (pending == -1 || (!reading && pending == 0))
      break;
    if (poll (pfd, 2, -1) == -1) {
      if (errno == EINTR)
        continue;
      break;
    }
    if (pfd[1].revents & POLLIN) {
      uint64_t n;
      if (read (cl->wake_fd, &n, sizeof n) == -1 && errno != EAGAIN)
        break;
    }
    if (pfd[0].revents & POLLERR)
      break;
    if (!reading || !(pfd[0].revents & (POLLIN | POLLHUP)))
      continue;
    r = recv (cl->fd, buf + used, MAX_LINE - used, MSG_DONTWAIT);
    if (r == -1 && (errno == EINTR || errno == EAGAIN))
      continue;
    if (r == -1)
      break;
    if (r == 0) {               /* A line cut short is dropped. */
      reading = false;
      continue;
    }
    used += r;
    handle_input (cl, buf, &used, &discarding);
  }
 out:
  /* The peer sees the end now, not when the client is reaped. */
  shutdown (cl->fd, SHUT_RDWR);
  /* A group transaction it prepared ends with it. */
  control_group_client_gone (cl->id);
  pthread_mutex_lock (&server_lock);
  cl->done = true;
  pthread_mutex_unlock (&server_lock);
  return NULL;
}

static void
free_client (struct client *cl)
{
  close (cl->fd);
  if (cl->wake_fd >= 0)
    close (cl->wake_fd);
  pthread_mutex_destroy (&cl->out_lock);
  free (cl->out);
  free (cl);
}

/* Join and free clients whose threads have finished (all: every
 * client, shut down first).  server_lock held (dropped while joining).
 */
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
      free_client (cl);
    }
    else
      pp = &cl->next;
  }
}

/* Live clients.  Lock held. */
static unsigned
count_clients_locked (void)
{
  struct client *cl;
  unsigned n = 0;

  for (cl = clients; cl; cl = cl->next)
    if (!cl->done)
      n++;
  return n;
}

/* One client too many: tell it why, and close.  Its socket is new and
 * empty, so the line fits (and if not, it is dropped, not waited on).
 */
static void
refuse_client (int fd)
{
  char desc[128];
  CLEANUP_FREE char *line = NULL;

  snprintf (desc, sizeof desc,
            "too many clients: this server serves at most %d at a time",
            CONTROL_MAX_CLIENTS);
  line = control_error_line (CONTROL_GENERIC_ERROR, desc);
  nbdkit_debug ("control: %s", desc);
  if (line) {
    size_t len = strlen (line);
    line[len] = '\n';           /* Over the NUL: sent by length. */
    if (send (fd, line, len + 1, MSG_NOSIGNAL | MSG_DONTWAIT) == -1) {
      /* Nothing more to do for it. */
    }
    line[len] = '\0';
  }
  close (fd);
}

/* Start serving the new connection fd.  Lock held. */
static void
add_client_locked (int fd)
{
  struct client *cl;

  if (count_clients_locked () >= CONTROL_MAX_CLIENTS) {
    refuse_client (fd);
    return;
  }
  cl = calloc (1, sizeof *cl);
  if (cl == NULL) {
    close (fd);
    return;
  }
  cl->id = ++last_client_id;
  cl->fd = fd;
  cl->wake_fd = eventfd (0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (cl->wake_fd == -1) {
    nbdkit_debug ("control: eventfd: %m");
    close (fd);
    free (cl);
    return;
  }
  pthread_mutex_init (&cl->out_lock, NULL);
  if (pthread_create (&cl->thread, NULL, client_thread, cl) != 0) {
    free_client (cl);
    return;
  }
  cl->next = clients;
  clients = cl;
}

static void *
listen_loop (void *vp)
{
  for (;;) {
    struct pollfd pfd[2] = {
      { .fd = listen_fd, .events = POLLIN },
      { .fd = wake_pipe[0], .events = POLLIN },
    };
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
    fd = accept4 (listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd == -1)
      continue;
    pthread_mutex_lock (&server_lock);
    add_client_locked (fd);
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

static const char *
file_kind (mode_t mode)
{
  if (S_ISREG (mode)) return "a regular file";
  if (S_ISLNK (mode)) return "a symbolic link";
  if (S_ISDIR (mode)) return "a directory";
  if (S_ISFIFO (mode)) return "a FIFO";
  if (S_ISCHR (mode) || S_ISBLK (mode)) return "a device";
  return "not a regular file";
}

/* Make the path free for bind: nothing there, or a dead server's
 * socket (nobody answers: ECONNREFUSED), which is removed.  A live
 * server's socket and anything that is not a socket are left alone
 * and refused.  0, or -1 (reported).
 */
static int
free_socket_path (const struct sockaddr_un *addr)
{
  struct stat st;
  int fd, r, e;

  if (lstat (socket_path, &st) == -1) {
    if (errno == ENOENT)
      return 0;
    nbdkit_error ("control socket %s: %m", socket_path);
    return -1;
  }
  if (!S_ISSOCK (st.st_mode)) {
    nbdkit_error ("control socket %s: the path exists and is %s, not a "
                  "socket: refusing to replace it", socket_path,
                  file_kind (st.st_mode));
    return -1;
  }
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd == -1) {
    nbdkit_error ("control socket: socket: %m");
    return -1;
  }
  r = connect (fd, (const struct sockaddr *) addr, sizeof *addr);
  e = errno;
  close (fd);
  if (r == 0 || e == EAGAIN || e == EINPROGRESS) {
    nbdkit_error ("control socket %s: another server is listening on it: "
                  "refusing to take it over (stop that server, or give "
                  "another path)", socket_path);
    return -1;
  }
  if (e != ECONNREFUSED) {
    errno = e;
    nbdkit_error ("control socket %s: cannot tell whether a server is "
                  "listening on it: %m", socket_path);
    return -1;
  }
  nbdkit_debug ("control: removing the dead socket %s", socket_path);
  if (unlink (socket_path) == -1 && errno != ENOENT) {
    nbdkit_error ("control socket %s: cannot remove the dead socket: %m",
                  socket_path);
    return -1;
  }
  return 0;
}

int
control_bind (void)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  mode_t old_mask;
  int fd;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&server_lock);

  control_commands_init ();
  if (socket_path == NULL)
    return 0;
  binders++;
  if (listen_fd >= 0)
    return 0;
  strcpy (addr.sun_path, socket_path);
  if (free_socket_path (&addr) == -1)
    return -1;
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1) {
    nbdkit_error ("control socket: socket: %m");
    return -1;
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
  if (listening || starts < binders)
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
  bool last = false;

  pthread_mutex_lock (&server_lock);
  if (listening) {
    if (--starts > 0) {
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
    last = true;
    close (wake_pipe[0]);
    close (wake_pipe[1]);
    wake_pipe[0] = wake_pipe[1] = -1;
  }
  /* Bound but never listening (a filter failed in .after_fork): the
   * socket is ours all the same.
   */
  if (listen_fd >= 0) {
    close (listen_fd);
    listen_fd = -1;
    unlink (socket_path);
  }
  binders = starts = 0;
  pthread_mutex_unlock (&server_lock);
  /* No client is left to end a held group: writers must not wait for
   * its deadline (lock order: exec_lock before server_lock).
   */
  if (last)
    control_group_shutdown ();
}
