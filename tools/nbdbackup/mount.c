/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup mount [OPTIONS] REPO SOCKET
 *
 * Serve a point in time of a repository over NBD on the Unix socket
 * SOCKET until a signal, or until --run's command ends (like nbdkit
 * --run): instant recovery, or copying files out with nbd-client,
 * qemu-nbd or guestfish.
 *
 * Read-only by default.  --writable serves a throwaway qcow2 overlay
 * whose backing file is the backup (by its absolute path, so that
 * qemu-img can open the overlay too), made in a private directory
 * and deleted at the end, or --overlay=FILE, kept.  The repository is
 * never written: the backup is the overlay's backing file, opened
 * read-only, and the overlay may not be in the repository.  The
 * shared repository lock is held all along, so prune (exclusive)
 * cannot fold or delete a backup while it is served.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "files.h"
#include "nbdkit-stubs.h"
#include "qcow2.h"
#include "rounding.h"
#include "nbdbackup.h"
#include "point.h"
#include "repo.h"
#include "group-repo.h"
#include "serve.h"

struct mount {
  const char *repo;
  const char *id;               /* NULL: the newest */
  const char *socket;
  bool writable;
  const char *overlay;          /* --overlay, kept */
  const char *run;              /* --run */
  const char *pidfile;          /* --pidfile */
};

static void
mount_usage (const char *cmd)
{
  printf ("Usage: %s [OPTIONS] REPO SOCKET\n"
          "\n"
          "Serve a backup of the repository REPO over NBD on the Unix "
          "socket\n"
          "SOCKET until SIGINT or SIGTERM (or until --run's command "
          "ends).\n"
          "\n"
          "Options:\n"
          "      --id=ID               the backup to serve (default: the "
          "newest)\n"
          "      --writable            accept writes, into a throwaway "
          "qcow2 overlay\n"
          "                            (the repository is never written)\n"
          "      --overlay=FILE        with --writable: create the overlay "
          "as FILE\n"
          "                            and keep it (default: a temporary "
          "file,\n"
          "                            deleted at the end)\n"
          "      --run=CMD             run the shell command CMD with $uri "
          "and\n"
          "                            $unixsocket set, stop when it ends, "
          "and exit\n"
          "                            with its status\n"
          "      --pidfile=FILE        write nbdbackup's pid to FILE once "
          "serving\n"
          "      --disk=NAME           the disk of a group repository "
          "(required\n"
          "                            for one)\n"
          HELP_VERBOSE_HELP
          "\n"
          "Exit status: 0 stopped by a signal, 1 failed, 2 usage error, 5 "
          "the\n"
          "repository is busy; with --run, CMD's status.  See "
          "nbdbackup(1).\n",
          cmd);
}

static int
parse_options (int argc, char *argv[], struct mount *m)
{
  enum { OPT_ID = 256, OPT_WRITABLE, OPT_OVERLAY, OPT_RUN, OPT_PIDFILE };
  static const struct option long_options[] = {
    DISK_OPTION,
    { "help",     no_argument,       NULL, 'h' },
    { "id",       required_argument, NULL, OPT_ID },
    { "overlay",  required_argument, NULL, OPT_OVERLAY },
    { "pidfile",  required_argument, NULL, OPT_PIDFILE },
    { "run",      required_argument, NULL, OPT_RUN },
    { "verbose",  no_argument,       NULL, 'v' },
    { "writable", no_argument,       NULL, OPT_WRITABLE },
    { NULL, 0, NULL, 0 }
  };
  const char *cmd = argv[0];
  int c, r;

  while ((c = getopt_long (argc, argv, "hv", long_options, NULL)) != -1) {
    switch (c) {
    case OPT_ID:
      m->id = optarg;
      break;
    case OPT_WRITABLE:
      m->writable = true;
      break;
    case OPT_OVERLAY:
      if (*optarg == '\0')
        return usage_error (cmd, "--overlay: empty file name");
      m->overlay = optarg;
      break;
    case OPT_RUN:
      m->run = optarg;
      break;
    case OPT_PIDFILE:
      if (*optarg == '\0')
        return usage_error (cmd, "--pidfile: empty file name");
      m->pidfile = optarg;
      break;
    default:
      r = common_option (c, cmd, mount_usage);
      if (r != -1)
        return r;
    }
  }
  if (argc - optind < 2)
    return usage_error (cmd, "missing %s",
                        argc == optind ? "REPO and SOCKET" : "SOCKET");
  if (argc - optind > 2)
    return usage_error (cmd, "unexpected argument '%s' after SOCKET",
                        argv[optind + 2]);
  m->repo = argv[optind];
  m->socket = argv[optind + 1];
  if (*m->socket == '\0')
    return usage_error (cmd, "SOCKET is empty");
  if (m->overlay && !m->writable)
    return usage_error (cmd, "--overlay needs --writable");
  return -1;
}

/* A path must not exist yet: 0, or -1 (reported). */
static int
check_new (const char *what, const char *path)
{
  struct stat st;

  if (lstat (path, &st) == 0) {
    nbdkit_error ("%s %s: already exists (%s)", what, path,
                  file_kind (st.st_mode));
    return -1;
  }
  if (errno != ENOENT) {
    nbdkit_error ("%s %s: %m", what, path);
    return -1;
  }
  return 0;
}

/* The overlay must not be in the repository: 0 or -1 (reported). */
static int
check_overlay_outside (const char *repo, const char *overlay)
{
  char *copy = strdup (overlay), *slash;
  const char *dir;
  struct stat a, b;
  int r = 0;

  if (copy == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  slash = strrchr (copy, '/');
  if (slash == NULL)
    dir = ".";
  else {
    *slash = '\0';
    dir = slash == copy ? "/" : copy;
  }
  if (stat (dir, &a) == -1) {
    nbdkit_error ("--overlay %s: directory %s: %m", overlay, dir);
    r = -1;
  }
  else if (stat (repo, &b) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino) {
    nbdkit_error ("--overlay %s: is in the repository %s, which mount "
                  "never writes", overlay, repo);
    r = -1;
  }
  free (copy);
  return r;
}

/* Create the overlay of the point at path.  0 or -1 (reported). */
static int
make_overlay (const struct point *p, const char *path)
{
  struct qcow2_create_options o = {
    .size = ROUND_UP (p->size, 512), /* as the backup's own image */
    .backing = p->abs_file,
    .backing_format = "qcow2",
  };

  return qcow2_create (path, &o);
}

/* Write our pid to path (created 0600 beside it, then renamed, so a
 * reader never sees it half written).  0 or -1 (reported).
 */
static int
write_pidfile (const char *path)
{
  char *tmp = NULL, buf[32];
  int fd, len, r = -1;

  if (asprintf (&tmp, "%s.tmp", path) == -1) {
    nbdkit_error ("asprintf: %m");
    return -1;
  }
  fd = create_file_excl ("--pidfile", tmp, O_WRONLY, 0600);
  if (fd == -1)
    goto out;
  len = snprintf (buf, sizeof buf, "%ld\n", (long) getpid ());
  if (write (fd, buf, len) != len) {
    nbdkit_error ("--pidfile %s: write: %m", tmp);
    close (fd);
    unlink (tmp);
    goto out;
  }
  close (fd);
  if (rename (tmp, path) == -1) {
    nbdkit_error ("--pidfile %s: rename: %m", path);
    unlink (tmp);
    goto out;
  }
  r = 0;
 out:
  free (tmp);
  return r;
}

/* Start --run's command with $uri and $unixsocket.  Its pid, or -1. */
static pid_t
start_run (const char *run, struct server *s)
{
  pid_t pid = fork ();

  if (pid == -1) {
    nbdkit_error ("fork: %m");
    return -1;
  }
  if (pid == 0) {
    signal (SIGINT, SIG_DFL);
    signal (SIGTERM, SIG_DFL);
    if (setenv ("uri", serve_uri (s), 1) == -1 ||
        setenv ("unixsocket", serve_socket (s), 1) == -1)
      _exit (127);
    execl ("/bin/sh", "sh", "-c", run, (char *) NULL);
    _exit (127);
  }
  return pid;
}

/* Serve until a signal, the server's exit, or (run_pid > 0) the
 * command's end.  Returns the exit status.
 */
static int
serve_until_done (struct server *s, pid_t run_pid)
{
  int status;

  for (;;) {
    if (interrupted_by != 0) {
      nbdkit_debug ("stopping on signal %d", (int) interrupted_by);
      if (run_pid > 0) {
        kill (run_pid, interrupted_by);
        waitpid (run_pid, &status, 0);
      }
      return NBDBACKUP_EXIT_OK;
    }
    if (run_pid > 0) {
      pid_t r = waitpid (run_pid, &status, WNOHANG);

      if (r == run_pid) {
        if (WIFEXITED (status))
          return WEXITSTATUS (status);
        if (WIFSIGNALED (status))
          return 128 + WTERMSIG (status);
        return NBDBACKUP_EXIT_FAILED;
      }
    }
    if (serve_exited (s)) {
      nbdkit_error ("the server stopped serving");
      if (run_pid > 0) {
        kill (run_pid, SIGTERM);
        waitpid (run_pid, &status, 0);
      }
      return NBDBACKUP_EXIT_FAILED;
    }
    poll (NULL, 0, 100);
  }
}

static int
do_mount (const struct mount *m)
{
  struct repo *r = NULL;
  const struct repo_entry *e;
  struct point p = { 0 };
  struct server *s = NULL;
  char *dir = NULL, *overlay = NULL;
  bool pidfile_written = false;
  int ret = NBDBACKUP_EXIT_FAILED, rr;

  if (check_new ("SOCKET", m->socket) == -1 ||
      (m->pidfile && check_new ("--pidfile", m->pidfile) == -1) ||
      (m->overlay && (check_new ("--overlay", m->overlay) == -1 ||
                      check_overlay_outside (m->repo, m->overlay) == -1)))
    return NBDBACKUP_EXIT_FAILED;

  rr = repo_open (m->repo, REPO_LOCK_SHARED, "nbdbackup mount", &r);
  if (rr != NBDBACKUP_EXIT_OK)
    return rr;
  e = point_find (r, m->id);
  if (e == NULL || point_open (r, e, &p) == -1)
    goto out;

  dir = private_dir_new ();
  if (dir == NULL)
    goto out;
  if (m->writable) {
    if (m->overlay)
      overlay = strdup (m->overlay);
    else if (asprintf (&overlay, "%s/overlay.qcow2", dir) == -1)
      overlay = NULL;
    if (overlay == NULL) {
      nbdkit_error ("malloc: %m");
      goto out;
    }
    if (make_overlay (&p, overlay) == -1)
      goto out;
  }

  s = serve_start (&(struct serve_options) {
      .file = m->writable ? overlay : p.file,
      .backing = m->writable ? p.abs_file : NULL,
      .writable = m->writable,
      .size = p.size,
      .socket = m->socket,
      .dir = dir,
    });
  if (s == NULL)
    goto out;
  if (m->pidfile) {
    if (write_pidfile (m->pidfile) == -1)
      goto out;
    pidfile_written = true;
  }
  if (m->run == NULL)
    fprintf (stderr, "%s mount: serving backup %s (%s) on %s\n",
             PROGRAM_NAME, p.id, m->writable ? "writable overlay" :
             "read-only", serve_uri (s));

  if (m->run) {
    pid_t pid = start_run (m->run, s);

    if (pid == -1)
      goto out;
    ret = serve_until_done (s, pid);
  }
  else
    ret = serve_until_done (s, 0);

 out:
  if (s && serve_stop (s) == -1 && ret == NBDBACKUP_EXIT_OK)
    ret = NBDBACKUP_EXIT_FAILED;
  if (pidfile_written)
    unlink (m->pidfile);
  /* The socket is nbdkit's; remove it if nbdkit left it behind. */
  if (s) {
    struct stat st;

    if (lstat (m->socket, &st) == 0 && S_ISSOCK (st.st_mode))
      unlink (m->socket);
  }
  private_dir_remove (dir);     /* with a throwaway overlay */
  free (dir);
  free (overlay);
  point_close (&p);
  repo_close (r);
  return ret;
}

int
mount_main (int argc, char *argv[])
{
  struct mount m = { 0 };
  int r;

  r = parse_options (argc, argv, &m);
  if (r != -1)
    return r;
  catch_signals ();
  return do_mount (&m);
}
