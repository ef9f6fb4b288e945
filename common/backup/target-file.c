/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The raw file target.
 *
 * While the job runs, the data lives in "PATH.incomplete"; only a
 * completed job renames it to PATH (after fdatasync, and with an
 * fsync of the directory after the rename).  So a crash, a kill -9,
 * a failed or cancelled job never leaves a file at PATH that could be
 * taken for a whole backup.  An existing complete file at PATH (last
 * night's backup, say) is moved to PATH.incomplete at the start, for
 * the same reason.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <linux/falloc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "control.h"
#include "files.h"
#include "minmax.h"
#include "nbdkit-stubs.h"
#include "target.h"

struct file_target {
  struct target t;              /* Must be first. */
  int fd;
  bool can_punch;               /* fallocate hole punching works. */
};

static int
file_pwrite (struct target *t, const void *buf, uint32_t count,
             uint64_t offset)
{
  struct file_target *ft = (struct file_target *) t;
  const char *p = buf;

  while (count > 0) {
    ssize_t r = pwrite (ft->fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("%s: pwrite: %m", t->working_name);
      return -1;
    }
    p += r; count -= r; offset += r;
  }
  return 0;
}

static int
file_zero (struct target *t, uint32_t count, uint64_t offset)
{
  struct file_target *ft = (struct file_target *) t;
  static const char zeroes[65536];

  if (ft->can_punch) {
    if (fallocate (ft->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                   offset, count) == 0)
      return 0;
    if (errno != EOPNOTSUPP && errno != ENOSYS) {
      nbdkit_error ("%s: fallocate: %m", t->working_name);
      return -1;
    }
    ft->can_punch = false;      /* Racy but harmless: a hint. */
  }
  while (count > 0) {
    uint32_t n = MIN (count, (uint32_t) sizeof zeroes);
    if (file_pwrite (t, zeroes, n, offset) == -1)
      return -1;
    count -= n; offset += n;
  }
  return 0;
}

static int
file_pread (struct target *t, void *buf, uint32_t count, uint64_t offset)
{
  struct file_target *ft = (struct file_target *) t;
  char *p = buf;

  while (count > 0) {
    ssize_t r = pread (ft->fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("%s: pread: %m", t->working_name);
      return -1;
    }
    if (r == 0) {               /* Past EOF of a sparse file: zeroes. */
      memset (p, 0, count);
      return 0;
    }
    p += r; count -= r; offset += r;
  }
  return 0;
}

static int
file_flush (struct target *t)
{
  struct file_target *ft = (struct file_target *) t;

  if (fdatasync (ft->fd) == -1) {
    nbdkit_error ("%s: fdatasync: %m", t->working_name);
    return -1;
  }
  return 0;
}

static int
file_finish (struct target *t, bool complete)
{
  if (!complete)
    return 0;                   /* Stays at PATH.incomplete. */
  if (file_flush (t) == -1)
    return -1;
  return target_publish (t);
}

static void
file_close (struct target *t)
{
  struct file_target *ft = (struct file_target *) t;

  if (ft->fd >= 0)
    close (ft->fd);
  free (t->name);
  free (t->working_name);
  free (ft);
}

static const struct target_ops file_ops = {
  .kind   = "raw",
  .pwrite = file_pwrite,
  .zero   = file_zero,
  .pread  = file_pread,
  .flush  = file_flush,
  .finish = file_finish,
  .close  = file_close,
};

int
target_file_check (const char *param, const char *path, const char *source,
                   struct control_error *err)
{
  struct stat st, sst;

  if (stat (path, &st) == 0) {
    if (!S_ISREG (st.st_mode))
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "%s: %s: not a regular file", param, path);
    if (source && stat (source, &sst) == 0 &&
        st.st_dev == sst.st_dev && st.st_ino == sst.st_ino)
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "%s: %s is the source disk itself", param, path);
    if (access (path, W_OK) == -1)
      return control_fail (err, CONTROL_GENERIC_ERROR, "%s: %s: %s",
                           param, path, strerror (errno));
  }
  else if (errno != ENOENT)
    return control_fail (err, CONTROL_GENERIC_ERROR, "%s: %s: %s",
                         param, path, strerror (errno));
  else {
    /* It will be created: its directory must let us. */
    CLEANUP_FREE char *copy = strdup (path);
    if (copy == NULL)
      return control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
    if (access (dirname (copy), W_OK | X_OK) == -1)
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "%s: cannot create %s: %s", param, path,
                           strerror (errno));
  }
  /* When the source is a known file, its size is known now too. */
  if (source && stat (path, &st) == 0 && stat (source, &sst) == 0 &&
      st.st_size != sst.st_size)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: %s is %" PRIu64 " bytes but the disk is %"
                         PRIu64 " bytes", param, path,
                         (uint64_t) st.st_size, (uint64_t) sst.st_size);
  return 0;
}

struct target *
target_file_open (const char *param, const char *path, uint64_t size)
{
  struct file_target *ft;
  struct stat st;
  bool existed;

  ft = calloc (1, sizeof *ft);
  if (ft == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  ft->fd = -1;
  ft->t.ops = &file_ops;
  ft->t.size = size;
  ft->can_punch = true;
  if (target_set_names (&ft->t, path) == -1)
    goto err;

  existed = stat (path, &st) == 0;
  if (existed) {
    if (!S_ISREG (st.st_mode)) {
      nbdkit_error ("%s: %s: not a regular file", param, path);
      goto err;
    }
    if ((uint64_t) st.st_size != size) {
      nbdkit_error ("%s: %s is %" PRIu64 " bytes but the disk is %" PRIu64
                    " bytes", param, path, (uint64_t) st.st_size, size);
      goto err;
    }
    /* Unpublish it: from now on it is a backup in progress. */
    if (target_unpublish (param, &ft->t) == -1)
      goto err;
    ft->fd = open (ft->t.working_name, O_RDWR | O_CLOEXEC);
    ft->t.known_zero = false;
  }
  else {
    /* A stale PATH.incomplete from an earlier failed run is garbage:
     * start it again from nothing.
     */
    ft->fd = open (ft->t.working_name,
                   O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (ft->fd >= 0 && ftruncate (ft->fd, size) == -1) {
      nbdkit_error ("%s: %s: ftruncate: %m", param, ft->t.working_name);
      goto err;
    }
    ft->t.known_zero = true;
  }
  if (ft->fd == -1) {
    nbdkit_error ("%s: %s: %m", param, ft->t.working_name);
    goto err;
  }
  if (fsync_parent_dir (path) == -1) {
    nbdkit_error ("%s: %s: fsync of directory: %m", param, path);
    goto err;
  }
  return &ft->t;

 err:
  file_close (&ft->t);
  return NULL;
}
