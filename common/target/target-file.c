/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The raw target: a file, or a block device named on purpose.
 *
 * While the job runs, a file's data lives in "PATH.incomplete"; only
 * a completed job renames it to PATH (after fsync, and with an fsync
 * of the directory after the rename).  So a crash, a kill -9, a failed
 * or cancelled job never leaves a file at PATH that could be taken for
 * a whole backup.  An existing complete file at PATH (last night's
 * backup, say) is moved to PATH.incomplete at the start, for the same
 * reason, and updated there; with o->replace (nbdbackup --force) a new
 * file is made instead and the old one removed.  A new file starts
 * sparse (ftruncate), so it reads as zeros everywhere (known_zero).
 *
 * A block device cannot be renamed: it is written in place, and the
 * caller's status is its only completion marker, as for NBD.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "files.h"
#include "minmax.h"
#include "nbdkit-stubs.h"
#include "target-internal.h"

/* Largest zero request: the count is 32 bits. */
#define FILE_MAX_ZERO (UINT32_C (1) << 30)

struct file_target {
  struct target t;              /* Must be first. */
  int fd;
  bool can_punch;               /* fallocate hole punching works. */
  struct writeback wb;          /* Page-cache hygiene. */
};

/* The name the data is at now. */
static const char *
where (struct target *t)
{
  return t->working_name ? t->working_name : t->name;
}

static int
file_pwrite (struct target *t, const void *buf, uint32_t count,
             uint64_t offset)
{
  struct file_target *ft = (struct file_target *) t;
  const char *p = buf;
  const uint64_t start = offset, len = count;

  while (count > 0) {
    ssize_t r = pwrite (ft->fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("%s: write at offset %" PRIu64 ": %m", where (t),
                    offset);
      return -1;
    }
    p += r; count -= r; offset += r;
  }
  /* A bulk copy (the job's chunks, a pull): page-cache hygiene. */
  if (len >= WRITEBACK_MIN)
    writeback_push (&ft->wb, ft->fd, start, len);
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
      nbdkit_error ("%s: fallocate: %m", where (t));
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
      nbdkit_error ("%s: pread: %m", where (t));
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

  /* fsync, not fdatasync: the file's size is metadata we need. */
  if (fsync (ft->fd) == -1) {
    nbdkit_error ("%s: fsync: %m", where (t));
    return -1;
  }
  return 0;
}

static int
file_finish (struct target *t, bool complete)
{
  struct file_target *ft = (struct file_target *) t;
  int fd = ft->fd;

  if (!complete)
    return 0;                   /* Stays at PATH.incomplete. */
  if (file_flush (t) == -1)
    return -1;
  ft->fd = -1;
  if (close (fd) == -1) {
    nbdkit_error ("%s: close: %m", where (t));
    return -1;
  }
  return target_publish (t);
}

static void
file_close (struct target *t)
{
  struct file_target *ft = (struct file_target *) t;

  if (ft->fd >= 0)
    close (ft->fd);
  writeback_destroy (&ft->wb);
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

/* An existing block device, written in place. */
static int
open_blockdev (const char *param, struct file_target *ft, uint64_t size)
{
  off_t end;

  free (ft->t.working_name);
  ft->t.working_name = NULL;
  ft->fd = open_regular_file (param, ft->t.name, O_RDWR,
                              OPEN_ALLOW_BLOCKDEV | OPEN_NOFOLLOW);
  if (ft->fd == -1)
    return -1;
  end = lseek (ft->fd, 0, SEEK_END);
  if (end == -1 || (uint64_t) end < size) {
    nbdkit_error ("%s: %s is %" PRIi64 " bytes but the disk is %" PRIu64
                  " bytes", param, ft->t.name, (int64_t) end, size);
    return -1;
  }
  ft->can_punch = false;        /* A device: zero by writing. */
  return 0;
}

/* An existing file, updated in place under its working name.  It is
 * opened (never through a symlink) and its size checked before it is
 * renamed, so that a refused file is left exactly as it was.
 */
static int
open_existing (const char *param, struct file_target *ft, uint64_t size)
{
  struct stat st;

  ft->fd = open_regular_file (param, ft->t.name, O_RDWR, OPEN_NOFOLLOW);
  if (ft->fd == -1)
    return -1;
  if (fstat (ft->fd, &st) == -1) {
    nbdkit_error ("%s: %s: fstat: %m", param, ft->t.name);
    return -1;
  }
  if ((uint64_t) st.st_size != size) {
    nbdkit_error ("%s: %s is %" PRIu64 " bytes but the disk is %" PRIu64
                  " bytes", param, ft->t.name, (uint64_t) st.st_size, size);
    return -1;
  }
  return target_unpublish (param, &ft->t);
}

/* A new sparse file at the working name. */
static int
create_new (const char *param, struct file_target *ft, uint64_t size)
{
  ft->fd = create_file_excl (param, ft->t.working_name, O_RDWR, 0600);
  if (ft->fd == -1)
    return -1;
  if (ftruncate (ft->fd, size) == -1) {
    nbdkit_error ("%s: %s: ftruncate: %m", param, ft->t.working_name);
    return -1;
  }
  ft->t.known_zero = true;
  return 0;
}

struct target *
target_file_open (const char *param, const char *path,
                  enum target_existing kind, uint64_t size,
                  const struct target_options *o)
{
  struct file_target *ft;
  int r;

  ft = target_alloc (sizeof *ft, &file_ops, path, size, FILE_MAX_ZERO);
  if (ft == NULL)
    return NULL;
  ft->fd = -1;
  ft->can_punch = true;
  writeback_init (&ft->wb);

  if (kind == EXISTING_BLOCKDEV)
    r = open_blockdev (param, ft, size);
  else if (kind == EXISTING_FILE && !o->replace)
    r = open_existing (param, ft, size);
  else
    r = create_new (param, ft, size);
  if (r == -1 ||
      target_placed (param, path, kind,
                     kind == EXISTING_NONE || o->replace) == -1)
    goto err;
  return &ft->t;

 err:
  if (ft->fd >= 0 && ft->t.known_zero)
    unlink (ft->t.working_name); /* Ours, and empty. */
  file_close (&ft->t);
  return NULL;
}
