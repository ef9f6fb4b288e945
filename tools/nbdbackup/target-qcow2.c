/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* A new qcow2 image target, written with common/qcow2.
 *
 * Without a backing file a new image reads as zeros everywhere, so
 * zero ranges are not written at all and their clusters stay
 * unallocated.  With --backing, unallocated clusters would read the
 * backing file's data, so zero ranges are written as zero clusters
 * (qcow2_zero) and everything the source holds lands in the overlay:
 * the overlay then reads exactly as the source whatever the backing
 * file holds.
 *
 * The backing file name is stored as the user gave it; like
 * qemu-img, a relative name is relative to the directory of TARGET.
 * The file is opened by us with that resolution, so the library's
 * same-directory policy (meant for names inside untrusted images)
 * does not apply: the user named it.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "ispowerof2.h"
#include "nbdkit-stubs.h"
#include "publish.h"
#include "qcow2.h"
#include "rounding.h"
#include "target.h"

/* Largest zero request: qcow2_zero takes a 32-bit count. */
#define QCOW2_MAX_ZERO (1024 * 1024 * 1024)

struct qcow2_target {
  struct target t;              /* must be first */
  char *path;
  char *incomplete;
  struct qcow2_image *img;
};

static int
q_write (struct target *t, unsigned lane, const void *buf,
         uint32_t len, uint64_t offset, void *opaque)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;
  int err;

  if (qcow2_pwrite (qt->img, buf, len, offset, &err) == -1)
    return -1;                  /* reported by the library */
  t->done (opaque, 0);
  return 0;
}

static int
q_zero (struct target *t, unsigned lane, uint32_t len, uint64_t offset,
        void *opaque)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;
  int err;

  if (qcow2_zero (qt->img, len, offset, true, &err) == -1)
    return -1;
  t->done (opaque, 0);
  return 0;
}

static int
q_flush (struct target *t)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;
  int err;

  return qcow2_flush (qt->img, &err);
}

static int
q_commit (struct target *t)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;
  struct qcow2_image *img = qt->img;

  qt->img = NULL;
  if (qcow2_close (img) == -1)
    return -1;
  return rename_durably (NULL, qt->incomplete, qt->path);
}

static void
q_close (struct target *t)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;

  if (qt->img)
    qcow2_close (qt->img);
  free (qt->path);
  free (qt->incomplete);
  free (qt);
}

static const struct target_ops qcow2_ops = {
  .write = q_write,
  .zero = q_zero,
  .flush = q_flush,
  .commit = q_commit,
  .close = q_close,
};

/* Resolve the backing name against TARGET's directory and work out
 * its format from its first bytes unless given.  *resolved is
 * malloc'd.  0 or -1 (reported).
 */
static int
resolve_backing (const char *path, const char *name, const char *format,
                 char **resolved, const char **format_ret)
{
  CLEANUP_FREE char *copy = NULL;
  CLEANUP_CLOSE int fd = -1;
  unsigned char magic[4];
  ssize_t r;

  if (name[0] == '/')
    *resolved = strdup (name);
  else {
    copy = strdup (path);
    if (copy == NULL || asprintf (resolved, "%s/%s", dirname (copy), name) == -1)
      *resolved = NULL;
  }
  if (*resolved == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }

  fd = open (*resolved, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    nbdkit_error ("backing file %s: %m", *resolved);
    goto err;
  }
  if (format) {
    *format_ret = format;
    return 0;
  }
  r = pread (fd, magic, sizeof magic, 0);
  if (r == -1) {
    nbdkit_error ("backing file %s: read: %m", *resolved);
    goto err;
  }
  if (r == 4 && memcmp (magic, "QFI\xfb", 4) == 0)
    *format_ret = "qcow2";
  else
    *format_ret = "raw";
  nbdkit_debug ("backing file %s is %s", *resolved, *format_ret);
  return 0;

 err:
  free (*resolved);
  *resolved = NULL;
  return -1;
}

struct target *
qcow2_target_create (const char *path, uint64_t size,
                     const struct file_target_options *opts)
{
  struct qcow2_target *qt;
  /* QEMU reads a qcow2 image's size in whole 512-byte sectors and
   * would drop a partial last sector, so round up as qemu-img create
   * does; the tail reads as zeros.
   */
  struct qcow2_create_options copts = { .size = ROUND_UP (size, 512),
                                        .version = 3 };
  /* The backing file the user named may itself be an overlay (an
   * incremental backup chain): follow the names inside it, but only
   * within its own directory, as the library does by default.
   */
  struct qcow2_open_options oopts = { .readonly = false,
                                      .policy = QCOW2_BACKING_SAME_DIR };
  CLEANUP_FREE char *backing_path = NULL;
  const char *backing_format = NULL;

  qt = calloc (1, sizeof *qt);
  if (qt == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  qt->t.ops = &qcow2_ops;
  qt->t.format = "qcow2";
  qt->t.zero_initialized = opts->backing == NULL;
  qt->t.max_zero = QCOW2_MAX_ZERO;
  qt->path = strdup (path);
  qt->incomplete = incomplete_name (path);
  if (qt->path == NULL || qt->incomplete == NULL) {
    nbdkit_error ("strdup: %m");
    goto err;
  }

  if (opts->backing) {
    if (resolve_backing (path, opts->backing, opts->backing_format,
                         &backing_path, &backing_format) == -1)
      goto err;
    copts.backing = opts->backing;
    copts.backing_format = backing_format;
    oopts.backing = backing_path;
    oopts.backing_format = backing_format;
  }
  else
    oopts.backing = "";
  if (opts->cluster_size)
    copts.cluster_bits = log_2_bits (opts->cluster_size);

  if (remove_stale (qt->incomplete) == -1)
    goto err;
  if (qcow2_create (qt->incomplete, &copts) == -1)
    goto err;
  qt->img = qcow2_open (qt->incomplete, &oopts);
  if (qt->img == NULL) {
    unlink (qt->incomplete);
    goto err;
  }
  if (opts->force && remove_old_target (path) == -1)
    goto err;
  return &qt->t;

 err:
  q_close (&qt->t);
  return NULL;
}
