/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The qcow2 target, on common/qcow2.
 *
 * Like the raw file, it is written as "PATH.incomplete" and published
 * by rename only when complete (target.c).  A new image is created
 * with the disk's size, a cluster size matching the copy granularity
 * (so that every copy fills whole qcow2 clusters and nothing is ever
 * copied up from the backing file), and optionally a backing file: the
 * target of a sync=top backup names the same backing file as the
 * source, and clusters the job never writes stay unallocated so that
 * they read through to it.
 *
 * Zero clusters are never written as data: they become qcow2 zero
 * clusters (or stay unallocated on a new image without a backing file,
 * which reads as zeros anyway: known_zero).
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "files.h"
#include "ispowerof2.h"
#include "minmax.h"
#include "qcow2.h"
#include "target.h"

struct qcow2_target {
  struct target t;              /* Must be first. */
  struct qcow2_image *img;
};

static int
q_pwrite (struct target *t, const void *buf, uint32_t count,
          uint64_t offset)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;
  int err = 0;

  if (qcow2_pwrite (qt->img, buf, count, offset, &err) == -1) {
    errno = err ? err : EIO;
    return -1;
  }
  return 0;
}

static int
q_zero (struct target *t, uint32_t count, uint64_t offset)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;
  int err = 0;

  if (qcow2_zero (qt->img, count, offset, true, &err) == -1) {
    errno = err ? err : EIO;
    return -1;
  }
  return 0;
}

static int
q_pread (struct target *t, void *buf, uint32_t count, uint64_t offset)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;
  int err = 0;

  if (qcow2_pread (qt->img, buf, count, offset, &err) == -1) {
    errno = err ? err : EIO;
    return -1;
  }
  return 0;
}

static int
q_flush (struct target *t)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;
  int err = 0;

  if (qcow2_flush (qt->img, &err) == -1) {
    errno = err ? err : EIO;
    return -1;
  }
  return 0;
}

static int
q_finish (struct target *t, bool complete)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;
  int r;

  /* Close (which flushes data, then metadata) before publishing, so
   * the published image is consistent on disk whatever happens next.
   * An incomplete image is closed cleanly too: it stays usable for
   * inspection, under its .incomplete name.
   */
  r = qcow2_close (qt->img);
  qt->img = NULL;
  if (!complete)
    return 0;
  if (r == -1)
    return -1;
  return target_publish (t);
}

static void
q_close (struct target *t)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;

  if (qt->img)
    qcow2_close (qt->img);
  free (t->name);
  free (t->working_name);
  free (qt);
}

static const struct target_ops qcow2_ops = {
  .kind   = "qcow2",
  .pwrite = q_pwrite,
  .zero   = q_zero,
  .pread  = q_pread,
  .flush  = q_flush,
  .finish = q_finish,
  .close  = q_close,
};

/* The backing file's path as a reader of path would open it. */
static char *
backing_path (const char *path, const char *backing)
{
  CLEANUP_FREE char *copy = NULL;
  char *r;

  if (backing[0] == '/')
    return strdup (backing);
  copy = strdup (path);
  if (copy == NULL)
    return NULL;
  if (asprintf (&r, "%s/%s", dirname (copy), backing) == -1)
    return NULL;
  return r;
}

struct target *
target_qcow2_open (const char *param, const char *path, uint64_t size,
                   const struct target_qcow2_options *o)
{
  struct qcow2_target *qt;
  struct qcow2_open_options oo = {
    .policy = QCOW2_BACKING_ANY, /* the user named the target */
  };
  struct stat st;

  qt = calloc (1, sizeof *qt);
  if (qt == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  qt->t.ops = &qcow2_ops;
  qt->t.size = size;
  if (target_set_names (&qt->t, path) == -1)
    goto err;

  if (stat (path, &st) == 0) {
    if (!S_ISREG (st.st_mode) || !target_file_is_qcow2 (path)) {
      nbdkit_error ("%s: %s: not a qcow2 image", param, path);
      goto err;
    }
    qt->img = qcow2_open (path, &oo);
    if (qt->img == NULL)
      goto err;
    if (qcow2_get_size (qt->img) != size) {
      nbdkit_error ("%s: %s is %" PRIu64 " bytes but the disk is %" PRIu64
                    " bytes", param, path, qcow2_get_size (qt->img), size);
      goto err;
    }
    if (target_unpublish (param, &qt->t) == -1)
      goto err;
    qt->t.known_zero = false;
  }
  else {
    struct qcow2_create_options co = {
      .size = size,
      .cluster_bits = log_2_bits (MIN (MAX (o->cluster_size, 512u),
                                       2u * 1024 * 1024)),
      .backing = o->backing,
      .backing_format = o->backing_format,
    };
    CLEANUP_FREE char *bpath = NULL;

    if (o->backing) {
      bpath = backing_path (path, o->backing);
      if (bpath == NULL) {
        nbdkit_error ("malloc: %m");
        goto err;
      }
      if (access (bpath, R_OK) == -1) {
        nbdkit_error ("%s: backing file %s: %m", param, bpath);
        goto err;
      }
      if (co.backing_format == NULL)
        co.backing_format = target_file_is_qcow2 (bpath) ? "qcow2" : "raw";
    }
    /* A stale PATH.incomplete from an earlier failed run is garbage. */
    if (unlink (qt->t.working_name) == -1 && errno != ENOENT) {
      nbdkit_error ("%s: %s: %m", param, qt->t.working_name);
      goto err;
    }
    if (qcow2_create (qt->t.working_name, &co) == -1)
      goto err;
    qt->img = qcow2_open (qt->t.working_name, &oo);
    if (qt->img == NULL)
      goto err;
    if (fsync_parent_dir (path) == -1) {
      nbdkit_error ("%s: %s: fsync of directory: %m", param, path);
      goto err;
    }
    /* Unallocated clusters read as zeros only without a backing file. */
    qt->t.known_zero = o->backing == NULL;
  }
  return &qt->t;

 err:
  q_close (&qt->t);
  return NULL;
}
