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
  CLEANUP_FREE char *tmp = NULL;
  CLEANUP_CLOSE int fd = -1;
  const char *p = data;
  int saved;

  /* A unique name: several threads may replace the same file. */
  if (asprintf (&tmp, "%s.tmp.XXXXXX", path) == -1)
    return -1;
  fd = mkostemp (tmp, O_CLOEXEC);
  if (fd == -1)
    return -1;
  if (fchmod (fd, 0644) == -1)
    goto err;
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
  return fsync_parent_dir (path);

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
