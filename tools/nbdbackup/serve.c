/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Serving a backup: nbdkit with the suite's qcow2 plugin.
 *
 * Notes on the design:
 *
 * restore, verify and mount read a point in time through the same
 * code that serves any qcow2 chain, the qcow2 plugin, rather than
 * through a second reader inside the tool: what verify checks is
 * exactly what restore and mount give.  The server is an ordinary
 * child process:
 *
 *   nbdkit -f --exit-with-parent -U SOCKET -P DIR/nbdkit.pid [-r]
 *          PLUGIN file=IMAGE readonly=true backing-policy=same-dir
 *          [backing=FILE backing-format=qcow2]
 *
 * (with --filter=truncate truncate=SIZE when the disk's size is not a
 * multiple of 512: a qcow2 image's size is rounded up to one, and
 * what is served must be the disk, not the padding).
 * -f keeps nbdkit in the process we forked, so the pid in the pidfile
 * must be our child's; it is checked, and the server is stopped by
 * that pid only, never by name.  nbdkit writes the pidfile once it
 * listens, so waiting for the pidfile is waiting for readiness (the
 * bound only guards against a hang).  --exit-with-parent stops the
 * server if nbdbackup dies, even of SIGKILL.  Its stderr goes to
 * DIR/nbdkit.log, which is printed as errors when the server fails to
 * start, exits, or fails a read (nbdkit tells a client only an errno).
 *
 * Where nbdkit and the plugin are: configure's paths (NBDKIT_PATH and
 * the installed plugindir), overridden by NBDBACKUP_NBDKIT and
 * NBDBACKUP_QCOW2_PLUGIN (tests/helpers.bash points the latter at the
 * build tree).
 *
 * Backing files named inside a backup are followed under the plugin's
 * same-dir policy: a repository's chain stays in its directory.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "files.h"
#include "nbdkit-stubs.h"
#include "nbdbackup.h"
#include "serve.h"

/* Bounds that only guard against a hang. */
#define START_SECONDS 60
#define STOP_SECONDS 60

struct server {
  pid_t pid;                    /* our child, nbdkit; 0 once reaped */
  int status;                   /* its wait status once reaped */
  bool log_reported;
  char *socket;
  char *uri;
  char *pidfile;
  char *log;
};

char *
private_dir_new (void)
{
  const char *tmp = getenv ("TMPDIR");
  char *dir;

  /* The socket goes in it: keep it short enough for sun_path. */
  if (tmp == NULL || *tmp == '\0' || strlen (tmp) > 64)
    tmp = "/tmp";
  if (asprintf (&dir, "%s/nbdbackup-XXXXXX", tmp) == -1) {
    nbdkit_error ("asprintf: %m");
    return NULL;
  }
  if (mkdtemp (dir) == NULL) {  /* mode 0700 */
    nbdkit_error ("mkdtemp: %s: %m", dir);
    free (dir);
    return NULL;
  }
  return dir;
}

void
private_dir_remove (const char *dir)
{
  DIR *d;
  struct dirent *e;

  if (dir == NULL)
    return;
  d = opendir (dir);
  if (d == NULL) {
    warning ("%s: %m", dir);
    return;
  }
  while ((e = readdir (d)) != NULL) {
    if (strcmp (e->d_name, ".") == 0 || strcmp (e->d_name, "..") == 0)
      continue;
    if (unlinkat (dirfd (d), e->d_name, 0) == -1)
      warning ("%s/%s: %m", dir, e->d_name);
  }
  closedir (d);
  if (rmdir (dir) == -1)
    warning ("%s: %m", dir);
}

static const char *
nbdkit_program (void)
{
  const char *p = getenv ("NBDBACKUP_NBDKIT");

  return p && *p ? p : NBDKIT_PATH;
}

static const char *
plugin_path (void)
{
  const char *p = getenv ("NBDBACKUP_QCOW2_PLUGIN");

  return p && *p ? p : QCOW2_PLUGIN_PATH;
}

const char *
serve_uri (const struct server *s)
{
  return s->uri;
}

const char *
serve_socket (const struct server *s)
{
  return s->socket;
}

pid_t
serve_pid (const struct server *s)
{
  return s->pid;
}

void
serve_report_log (struct server *s)
{
  FILE *fp;
  char *line = NULL;
  size_t n = 0;
  ssize_t len;

  if (s->log_reported)
    return;
  s->log_reported = true;
  fp = fopen (s->log, "re");
  if (fp == NULL)
    return;
  while ((len = getline (&line, &n, fp)) != -1) {
    if (len > 0 && line[len - 1] == '\n')
      line[--len] = '\0';
    if (len > 0)
      nbdkit_error ("the server says: %s", line);
  }
  free (line);
  fclose (fp);
}

static void
report_status (struct server *s)
{
  if (WIFEXITED (s->status))
    nbdkit_error ("nbdkit exited with status %d", WEXITSTATUS (s->status));
  else if (WIFSIGNALED (s->status))
    nbdkit_error ("nbdkit was killed by signal %d (%s)",
                  WTERMSIG (s->status), strsignal (WTERMSIG (s->status)));
}

bool
serve_exited (struct server *s)
{
  pid_t r;

  if (s->pid == 0)
    return true;
  r = waitpid (s->pid, &s->status, WNOHANG);
  if (r == 0)
    return false;
  if (r == -1)
    s->status = 0;
  s->pid = 0;
  serve_report_log (s);
  report_status (s);
  return true;
}

static void
server_free (struct server *s)
{
  if (s == NULL)
    return;
  free (s->socket);
  free (s->uri);
  free (s->pidfile);
  free (s->log);
  free (s);
}

/* The pid in the pidfile, or 0 if it is not written yet. */
static pid_t
read_pidfile (const char *path)
{
  char buf[32];
  ssize_t n;
  int fd;
  long v;

  fd = open (path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd == -1)
    return 0;
  n = read (fd, buf, sizeof buf - 1);
  close (fd);
  if (n <= 0 || buf[n - 1] != '\n')
    return 0;                   /* not all written yet */
  buf[n] = '\0';
  v = strtol (buf, NULL, 10);
  return v > 0 ? (pid_t) v : 0;
}

static void
exec_nbdkit (const struct serve_options *o, struct server *s, int logfd)
{
  const char *argv[20];
  char *file_arg = NULL, *backing_arg = NULL, *truncate_arg = NULL;
  int i = 0, nullfd;

  if (asprintf (&file_arg, "file=%s", o->file) == -1 ||
      (o->backing && asprintf (&backing_arg, "backing=%s", o->backing) == -1) ||
      (o->size % 512 &&
       asprintf (&truncate_arg, "truncate=%" PRIu64, o->size) == -1))
    _exit (127);
  argv[i++] = nbdkit_program ();
  argv[i++] = "-f";
  argv[i++] = "--exit-with-parent";
  argv[i++] = "-U";
  argv[i++] = s->socket;
  argv[i++] = "-P";
  argv[i++] = s->pidfile;
  if (!o->writable)
    argv[i++] = "-r";
  if (truncate_arg)
    argv[i++] = "--filter=truncate";
  argv[i++] = plugin_path ();
  argv[i++] = file_arg;
  argv[i++] = o->writable ? "readonly=false" : "readonly=true";
  argv[i++] = "backing-policy=same-dir";
  if (backing_arg) {
    argv[i++] = backing_arg;
    argv[i++] = "backing-format=qcow2";
  }
  if (truncate_arg)
    argv[i++] = truncate_arg;
  argv[i] = NULL;

  /* Its own process group: a Ctrl-C on the terminal reaches only
   * nbdbackup, which stops its clients first and then the server.
   */
  setpgid (0, 0);
  nullfd = open ("/dev/null", O_RDWR);
  if (nullfd == -1 || dup2 (nullfd, 0) == -1 || dup2 (nullfd, 1) == -1 ||
      dup2 (logfd, 2) == -1)
    _exit (127);
  execvp (argv[0], (char **) argv);
  dprintf (2, "%s: %s\n", argv[0], strerror (errno));
  _exit (127);
}

/* Wait for the pidfile of the child we forked.  0 or -1 (reported). */
static int
wait_ready (struct server *s)
{
  double end = monotonic_seconds () + START_SECONDS;
  pid_t pid;

  for (;;) {
    pid = read_pidfile (s->pidfile);
    if (pid != 0) {
      if (pid != s->pid) {
        nbdkit_error ("%s: names pid %ld, but nbdkit is pid %ld",
                      s->pidfile, (long) pid, (long) s->pid);
        return -1;
      }
      return 0;
    }
    if (serve_exited (s)) {
      nbdkit_error ("nbdkit failed to start");
      return -1;
    }
    if (interrupted_by != 0) {
      nbdkit_error ("interrupted by signal %d (%s)", (int) interrupted_by,
                    strsignal (interrupted_by));
      return -1;
    }
    if (monotonic_seconds () > end) {
      serve_report_log (s);
      nbdkit_error ("nbdkit did not start listening within %d seconds",
                    START_SECONDS);
      return -1;
    }
    poll (NULL, 0, 10);
  }
}

struct server *
serve_start (const struct serve_options *o)
{
  struct server *s;
  struct sockaddr_un sun;
  int logfd;

  s = calloc (1, sizeof *s);
  if (s == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  if ((o->socket ? (s->socket = strdup (o->socket)) == NULL
       : asprintf (&s->socket, "%s/sock", o->dir) == -1) ||
      asprintf (&s->uri, "nbd+unix:///?socket=%s", s->socket) == -1 ||
      asprintf (&s->pidfile, "%s/nbdkit.pid", o->dir) == -1 ||
      asprintf (&s->log, "%s/nbdkit.log", o->dir) == -1) {
    nbdkit_error ("malloc: %m");
    server_free (s);
    return NULL;
  }
  if (strlen (s->socket) >= sizeof sun.sun_path) {
    nbdkit_error ("socket %s: the name is longer than %zu bytes",
                  s->socket, sizeof sun.sun_path - 1);
    server_free (s);
    return NULL;
  }
  if (access (plugin_path (), R_OK) == -1) {
    nbdkit_error ("the qcow2 plugin %s: %m (set NBDBACKUP_QCOW2_PLUGIN "
                  "to its path)", plugin_path ());
    server_free (s);
    return NULL;
  }

  logfd = create_file_excl ("server log", s->log, O_WRONLY, 0600);
  if (logfd == -1) {
    server_free (s);
    return NULL;
  }
  nbdkit_debug ("serving %s%s%s on %s", o->file,
                o->backing ? " over " : "", o->backing ? o->backing : "",
                s->socket);
  s->pid = fork ();
  if (s->pid == -1) {
    nbdkit_error ("fork: %m");
    close (logfd);
    server_free (s);
    return NULL;
  }
  if (s->pid == 0)
    exec_nbdkit (o, s, logfd);
  close (logfd);

  if (wait_ready (s) == -1) {
    serve_stop (s);
    return NULL;
  }
  return s;
}

int
serve_stop (struct server *s)
{
  double end;
  int r = 0;

  if (s == NULL)
    return 0;
  if (s->pid == 0)
    r = -1;                     /* it had exited: reported then */
  else {
    /* (Harmless if it has just exited and is not reaped yet.) */
    kill (s->pid, SIGTERM);
    end = monotonic_seconds () + STOP_SECONDS;
    while (waitpid (s->pid, &s->status, WNOHANG) == 0) {
      if (monotonic_seconds () > end) {
        warning ("nbdkit (pid %ld) did not exit within %d seconds of "
                 "SIGTERM: killing it", (long) s->pid, STOP_SECONDS);
        kill (s->pid, SIGKILL);
        waitpid (s->pid, &s->status, 0);
        break;
      }
      poll (NULL, 0, 10);
    }
    s->pid = 0;
    /* A clean end: an exit status of 0, or SIGTERM's default action. */
    if (!(WIFEXITED (s->status) && WEXITSTATUS (s->status) == 0) &&
        !(WIFSIGNALED (s->status) && WTERMSIG (s->status) == SIGTERM)) {
      serve_report_log (s);
      report_status (s);
      r = -1;
    }
  }
  server_free (s);
  return r;
}
