/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Serving a qcow2 image (a backup and its chain) with nbdkit and the
 * suite's qcow2 plugin, on a Unix socket.  See serve.c.
 */

#ifndef NBDBACKUP_SERVE_H
#define NBDBACKUP_SERVE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* A private directory (mode 0700) in $TMPDIR or /tmp, for a server's
 * socket, pidfile and log, and mount's throwaway overlay.  Its path,
 * malloc'd, or NULL (reported).
 */
extern char *private_dir_new (void);

/* Remove a private directory and the files in it (not recursive).
 * Failures are warnings.
 */
extern void private_dir_remove (const char *dir);

struct serve_options {
  const char *file;             /* the qcow2 image to serve */
  /* Its backing file, overriding the name inside it (mount's
   * overlay: the backup, opened without the same-dir check), or NULL
   * to follow the name under the plugin's same-dir policy.
   */
  const char *backing;
  bool writable;                /* else readonly, in nbdkit and the plugin */
  /* The disk's size, if the image's is rounded up from it (qcow2 sizes
   * are multiples of 512): the padding is cut off with nbdkit's
   * truncate filter.  0: the image's size.
   */
  uint64_t size;
  /* The socket to listen on, or NULL for one in dir. */
  const char *socket;
  /* A private directory (private_dir_new) for the pidfile, the log
   * and the default socket.  The caller removes it after serve_stop.
   */
  const char *dir;
};

struct server;

/* Start nbdkit serving o->file and wait until it listens (its pidfile
 * is written).  NULL on error: reported, with what the server said.
 */
extern struct server *serve_start (const struct serve_options *o);

/* "nbd+unix:///?socket=SOCKET" */
extern const char *serve_uri (const struct server *s);
extern const char *serve_socket (const struct server *s);
extern pid_t serve_pid (const struct server *s);

/* If the server has exited, reap it, report how (and its log) and
 * return true.
 */
extern bool serve_exited (struct server *s);

/* Print the server's log (its error messages) as errors, once.  For
 * the caller whose reads failed: nbdkit sends a client only an errno.
 */
extern void serve_report_log (struct server *s);

/* Stop the server (SIGTERM to its pid, wait for it) and free s.  0,
 * or -1 if it had failed or did not stop cleanly (reported).
 */
extern int serve_stop (struct server *s);

#endif /* NBDBACKUP_SERVE_H */
