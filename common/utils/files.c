/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "files.h"
#include "nbdkit-stubs.h"

const char *
file_kind (mode_t mode)
{
  switch (mode & S_IFMT) {
  case S_IFREG: return "a regular file";
  case S_IFDIR: return "a directory";
  case S_IFLNK: return "a symbolic link";
  case S_IFIFO: return "a FIFO";
  case S_IFSOCK: return "a socket";
  case S_IFBLK: return "a block device";
  case S_IFCHR: return "a character device";
  default: return "not a regular file";
  }
}

int
open_regular_file (const char *what, const char *path, int flags,
                   unsigned opts)
{
  struct stat st;
  int fd, fl;

  flags |= O_NONBLOCK | O_CLOEXEC;
  if (opts & OPEN_NOFOLLOW)
    flags |= O_NOFOLLOW;
  fd = open (path, flags);
  if (fd == -1) {
    int saved = errno;
    if (saved == ELOOP && (opts & OPEN_NOFOLLOW))
      nbdkit_error ("%s %s: is a symbolic link, not a regular file",
                    what, path);
    else
      nbdkit_error ("%s %s: %m", what, path);
    errno = saved;
    return -1;
  }
  if (fstat (fd, &st) == -1) {
    int saved = errno;
    nbdkit_error ("%s %s: fstat: %m", what, path);
    close (fd);
    errno = saved;
    return -1;
  }
  if (!S_ISREG (st.st_mode) &&
      !(S_ISBLK (st.st_mode) && (opts & OPEN_ALLOW_BLOCKDEV))) {
    nbdkit_error ("%s %s: is %s, not a regular file%s", what, path,
                  file_kind (st.st_mode),
                  (opts & OPEN_ALLOW_BLOCKDEV) ? " or block device" : "");
    close (fd);
    errno = EINVAL;
    return -1;
  }
  fl = fcntl (fd, F_GETFL);
  if (fl == -1 || fcntl (fd, F_SETFL, fl & ~O_NONBLOCK) == -1) {
    int saved = errno;
    nbdkit_error ("%s %s: fcntl: %m", what, path);
    close (fd);
    errno = saved;
    return -1;
  }
  return fd;
}

int
create_file_excl (const char *what, const char *path, int flags,
                  mode_t mode)
{
  struct stat st;
  int fd;

  if (lstat (path, &st) == 0) {
    if (S_ISDIR (st.st_mode)) {
      nbdkit_error ("%s %s: is a directory", what, path);
      errno = EISDIR;
      return -1;
    }
    /* A leftover: removed, never followed or opened. */
    if (unlink (path) == -1 && errno != ENOENT) {
      int saved = errno;
      nbdkit_error ("%s %s: removing the leftover: %m", what, path);
      errno = saved;
      return -1;
    }
  }
  fd = open (path, flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd == -1) {
    int saved = errno;
    nbdkit_error ("%s %s: %m", what, path);
    errno = saved;
    return -1;
  }
  return fd;
}

int
fsync_parent_dir (const char *path)
{
  CLEANUP_FREE char *copy = strdup (path);
  CLEANUP_CLOSE int fd = -1;

  if (copy == NULL)
    return -1;
  fd = open (dirname (copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd == -1)
    return -1;
  return fsync (fd);
}

int
replace_file_atomically (const char *path, const void *data, size_t len)
{
  return replace_file_atomically_keep (path, data, len, NULL);
}

int
replace_file_atomically_keep (const char *path, const void *data, size_t len,
                              int *fd_ret)
{
  CLEANUP_FREE char *tmp = NULL;
  CLEANUP_CLOSE int fd = -1;
  const char *p = data;
  int saved;

  struct stat st;

  /* Only a regular file of ours is replaced (rename would replace a
   * symlink or FIFO itself without following it, but such a file is
   * not one we made).
   */
  if (lstat (path, &st) == 0 && !S_ISREG (st.st_mode)) {
    errno = EEXIST;
    return -1;
  }

  /* A unique name: several threads may replace the same file.
   * mkostemp creates it O_EXCL with mode 0600, which it keeps.
   */
  if (asprintf (&tmp, "%s.tmp.XXXXXX", path) == -1)
    return -1;
  fd = mkostemp (tmp, O_CLOEXEC);
  if (fd == -1)
    return -1;
  while (len > 0) {
    ssize_t r = write (fd, p, len);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      goto err;
    }
    p += r;
    len -= r;
  }
  if (fsync (fd) == -1)
    goto err;
  if (rename (tmp, path) == -1)
    goto err;
  if (fsync_parent_dir (path) == -1)
    return -1;
  if (fd_ret) {
    *fd_ret = fd;
    fd = -1;
  }
  return 0;

 err:
  saved = errno;
  unlink (tmp);
  errno = saved;
  return -1;
}

double
monotonic_seconds (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}
