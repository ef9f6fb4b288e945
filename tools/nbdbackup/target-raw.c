/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* A new raw file target.  It starts as a sparse file of the source's
 * size (ftruncate), so it reads as zeros everywhere and ranges that
 * are zero on the source are simply never written: the copy is as
 * sparse as the source, or sparser.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbdkit-stubs.h"
#include "publish.h"
#include "target.h"

struct raw_target {
  struct target t;              /* must be first */
  char *path;
  char *incomplete;
  int fd;
};

static int
raw_write (struct target *t, unsigned lane, const void *buf,
           uint32_t len, uint64_t offset, void *opaque)
{
  struct raw_target *rt = (struct raw_target *) t;
  const char *p = buf;
  uint64_t off = offset;
  size_t left = len;

  while (left > 0) {
    ssize_t r = pwrite (rt->fd, p, left, off);

    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("%s: write at offset %" PRIu64 ": %m",
                    rt->incomplete, off);
      return -1;
    }
    p += r;
    off += r;
    left -= r;
  }
  t->done (opaque, 0);
  return 0;
}

static int
raw_flush (struct target *t)
{
  struct raw_target *rt = (struct raw_target *) t;

  /* fsync, not fdatasync: the file's size is metadata we need. */
  if (fsync (rt->fd) == -1) {
    nbdkit_error ("%s: fsync: %m", rt->incomplete);
    return -1;
  }
  return 0;
}

static int
raw_commit (struct target *t)
{
  struct raw_target *rt = (struct raw_target *) t;
  int fd = rt->fd;

  rt->fd = -1;
  if (close (fd) == -1) {
    nbdkit_error ("%s: close: %m", rt->incomplete);
    return -1;
  }
  return rename_durably (NULL, rt->incomplete, rt->path);
}

static void
raw_close (struct target *t)
{
  struct raw_target *rt = (struct raw_target *) t;

  if (rt->fd >= 0)
    close (rt->fd);
  free (rt->path);
  free (rt->incomplete);
  free (rt);
}

static const struct target_ops raw_ops = {
  .write = raw_write,
  .zero = NULL,                 /* zero_initialized */
  .flush = raw_flush,
  .commit = raw_commit,
  .close = raw_close,
};

struct target *
raw_target_create (const char *path, uint64_t size,
                   const struct file_target_options *opts)
{
  struct raw_target *rt;

  rt = calloc (1, sizeof *rt);
  if (rt == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  rt->t.ops = &raw_ops;
  rt->t.format = "raw";
  rt->t.zero_initialized = true;
  rt->fd = -1;
  rt->path = strdup (path);
  rt->incomplete = incomplete_name (path);
  if (rt->path == NULL || rt->incomplete == NULL) {
    nbdkit_error ("strdup: %m");
    goto err;
  }
  if (remove_stale (rt->incomplete) == -1)
    goto err;
  rt->fd = open (rt->incomplete, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                 0666);
  if (rt->fd == -1) {
    nbdkit_error ("%s: %m", rt->incomplete);
    goto err;
  }
  if (ftruncate (rt->fd, size) == -1) {
    nbdkit_error ("%s: ftruncate: %m", rt->incomplete);
    unlink (rt->incomplete);
    goto err;
  }
  if (opts->force && remove_old_target (path) == -1)
    goto err;
  return &rt->t;

 err:
  raw_close (&rt->t);
  return NULL;
}
