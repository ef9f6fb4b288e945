/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* syncshim: an LD_PRELOAD library that simulates storage which
 * forgets everything not yet synced, for the power-cut tests of the
 * dirtybitmap filter.
 *
 * Notes on the design:
 *
 * A power cut keeps of the sidecar file only what was synced.  So at
 * every fsync or fdatasync of the sidecar (SYNCSHIM_FILE) or of one of
 * its temporary files (SYNCSHIM_FILE.tmp.*), the shim copies the
 * file's contents as they are (page cache included, so the writes
 * made through the server's shared mapping too) to FILE.durable; a
 * rename of the temporary file over the sidecar renames its durable
 * copy too.  After killing the server the test puts FILE.durable in
 * place of the file: that is what survived the cut.
 *
 * Every pwrite and fallocate (zero, trim) that reaches the disk file
 * (SYNCSHIM_DISK) is logged to SYNCSHIM_DISK_LOG as "OFFSET LENGTH"
 * before it is done: the writes that may have reached the disk.
 *
 * SYNCSHIM_BOOT_ID names a file read in place of the kernel's boot id
 * (a restart "after the power came back").  While SYNCSHIM_FILE.fail-sync
 * exists, syncs of the sidecar fail with EIO (the storage failed): as
 * many as its size in bytes (at least one), then it is removed.
 *
 * Deliberately simple: writes of the disk are all counted as possibly
 * durable (the check is that each has its bit), and the directory
 * fsync is not modelled (a rename counts as durable at once).
 */

#define _GNU_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define BOOT_ID "/proc/sys/kernel/random/boot_id"

static void *
next_fn (const char *name)
{
  void *f = dlsym (RTLD_NEXT, name);

  if (f == NULL) {
    fprintf (stderr, "syncshim: no %s\n", name);
    abort ();
  }
  return f;
}

/* The path of fd into buf, or "" (a deleted file too). */
static const char *
fd_path (int fd, char *buf, size_t len)
{
  char proc[64];
  ssize_t n;

  snprintf (proc, sizeof proc, "/proc/self/fd/%d", fd);
  n = readlink (proc, buf, len - 1);
  if (n <= 0)
    n = 0;
  buf[n] = '\0';
  return buf;
}

/* Is path the sidecar or one of its temporary files? */
static bool
is_sidecar (const char *path)
{
  const char *f = getenv ("SYNCSHIM_FILE");
  size_t n;

  if (f == NULL)
    return false;
  n = strlen (f);
  return strncmp (path, f, n) == 0 &&
    (path[n] == '\0' || strncmp (path + n, ".tmp.", 5) == 0) &&
    strstr (path, " (deleted)") == NULL;
}

/* Syncs of the sidecar may run in several threads at once (a remap's
 * sync beside the writers' shared one).  Real storage never loses
 * what an earlier sync made durable, so the copies are taken and
 * published one at a time: the copy published last is the newest.
 * (Unserialized, an older copy could be renamed over a newer one and
 * the model would forget bits a writer had already relied on.)
 */
static pthread_mutex_t durable_lock = PTHREAD_MUTEX_INITIALIZER;

/* Copy fd's contents to PATH.durable (atomically: a crash of the
 * process during the copy leaves the previous one).
 */
static void
keep_durable (int fd, const char *path)
{
  char tmp[4200], dst[4200], buf[65536];
  ssize_t n;
  off_t off = 0;
  int out;

  pthread_mutex_lock (&durable_lock);

  snprintf (dst, sizeof dst, "%s.durable", path);
  snprintf (tmp, sizeof tmp, "%s.durable-new", path);
  out = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out == -1)
    abort ();
  while ((n = pread (fd, buf, sizeof buf, off)) > 0) {
    if (write (out, buf, n) != n)
      abort ();
    off += n;
  }
  close (out);
  if (rename (tmp, dst) == -1)
    abort ();
  pthread_mutex_unlock (&durable_lock);
}

/* The common part of fsync and fdatasync. */
static int
sync_fd (int fd, int (*real) (int))
{
  char path[4096];
  const char *f = getenv ("SYNCSHIM_FILE");

  fd_path (fd, path, sizeof path);
  if (!is_sidecar (path))
    return real (fd);
  if (f) {
    char fail[4200];

    struct stat st;

    snprintf (fail, sizeof fail, "%s.fail-sync", f);
    if (stat (fail, &st) == 0) {
      /* Its size counts the syncs that still fail. */
      if (st.st_size <= 1)
        unlink (fail);
      else if (truncate (fail, st.st_size - 1) == -1)
        abort ();
      errno = EIO;
      return -1;
    }
  }
  if (real (fd) == -1)
    return -1;
  keep_durable (fd, path);
  return 0;
}

int
fsync (int fd)
{
  static int (*real) (int);

  if (real == NULL)
    real = next_fn ("fsync");
  return sync_fd (fd, real);
}

int
fdatasync (int fd)
{
  static int (*real) (int);

  if (real == NULL)
    real = next_fn ("fdatasync");
  return sync_fd (fd, real);
}

int
rename (const char *old, const char *new)
{
  static int (*real) (const char *, const char *);
  char a[4200], b[4200];

  if (real == NULL)
    real = next_fn ("rename");
  if (real (old, new) == -1)
    return -1;
  if (is_sidecar (old) && is_sidecar (new)) {
    snprintf (a, sizeof a, "%s.durable", old);
    snprintf (b, sizeof b, "%s.durable", new);
    real (a, b);
  }
  return 0;
}

/* Log a change of the disk file. */
static void
log_disk (int fd, off_t offset, off_t len)
{
  const char *disk = getenv ("SYNCSHIM_DISK");
  const char *log = getenv ("SYNCSHIM_DISK_LOG");
  char path[4096], line[64];
  int lfd, n;

  if (disk == NULL || log == NULL ||
      strcmp (fd_path (fd, path, sizeof path), disk) != 0)
    return;
  n = snprintf (line, sizeof line, "%lld %lld\n", (long long) offset,
                (long long) len);
  lfd = open (log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (lfd == -1 || write (lfd, line, n) != n)
    abort ();
  close (lfd);
}

ssize_t
pwrite (int fd, const void *buf, size_t count, off_t offset)
{
  static ssize_t (*real) (int, const void *, size_t, off_t);

  if (real == NULL)
    real = next_fn ("pwrite");
  log_disk (fd, offset, count);
  return real (fd, buf, count, offset);
}

ssize_t
pwrite64 (int fd, const void *buf, size_t count, off_t offset)
{
  static ssize_t (*real) (int, const void *, size_t, off_t);

  if (real == NULL)
    real = next_fn ("pwrite64");
  log_disk (fd, offset, count);
  return real (fd, buf, count, offset);
}

int
fallocate (int fd, int mode, off_t offset, off_t len)
{
  static int (*real) (int, int, off_t, off_t);

  if (real == NULL)
    real = next_fn ("fallocate");
  log_disk (fd, offset, len);
  return real (fd, mode, offset, len);
}

int
fallocate64 (int fd, int mode, off_t offset, off_t len)
{
  static int (*real) (int, int, off_t, off_t);

  if (real == NULL)
    real = next_fn ("fallocate64");
  log_disk (fd, offset, len);
  return real (fd, mode, offset, len);
}

/* The boot id, replaced. */
static const char *
boot_id_file (const char *path)
{
  const char *f = getenv ("SYNCSHIM_BOOT_ID");

  return f && strcmp (path, BOOT_ID) == 0 ? f : path;
}

int
open (const char *path, int flags, ...)
{
  static int (*real) (const char *, int, ...);
  mode_t mode = 0;

  if (real == NULL)
    real = next_fn ("open");
  if (flags & (O_CREAT | O_TMPFILE)) {
    va_list ap;
    va_start (ap, flags);
    mode = va_arg (ap, mode_t);
    va_end (ap);
  }
  return real (boot_id_file (path), flags, mode);
}

int
open64 (const char *path, int flags, ...)
{
  static int (*real) (const char *, int, ...);
  mode_t mode = 0;

  if (real == NULL)
    real = next_fn ("open64");
  if (flags & (O_CREAT | O_TMPFILE)) {
    va_list ap;
    va_start (ap, flags);
    mode = va_arg (ap, mode_t);
    va_end (ap);
  }
  return real (boot_id_file (path), flags, mode);
}
