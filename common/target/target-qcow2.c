/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The qcow2 target, on common/qcow2.
 *
 * Like the raw file, it is written as "PATH.incomplete" and published
 * by rename only when complete (target.c).  A new image is created
 * with the disk's size rounded up to whole 512-byte sectors (QEMU
 * would drop a partial last sector; the tail reads as zeros, as after
 * qemu-img create), the cluster size asked for (the filters pass their
 * copy granularity, so that every copy fills whole qcow2 clusters and
 * nothing is copied up from the backing file), and optionally a
 * backing file, stored as the user gave it and, like qemu-img,
 * resolved against the target's directory when relative.  The target
 * of a sync=top backup names the same backing file as the source, an
 * incremental one the previous backup; clusters the job never writes
 * stay unallocated so that they read through to it.
 *
 * The user named the target and its backing file, so the chain below
 * them is followed whatever directory it is in (QCOW2_BACKING_ANY).
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
#include <unistd.h>

#include "cleanup.h"
#include "files.h"
#include "ispowerof2.h"
#include "minmax.h"
#include "nbdkit-stubs.h"
#include "qcow2.h"
#include "rounding.h"
#include "target-internal.h"

/* Largest zero request: qcow2_zero takes a 32-bit count. */
#define QCOW2_MAX_ZERO (UINT32_C (1) << 30)

struct qcow2_target {
  struct target t;              /* Must be first. */
  struct qcow2_image *img;
  struct writeback wb;          /* Page-cache hygiene. */
};

/* errno from the library's *err. */
static int
failed (int err)
{
  errno = err ? err : EIO;
  return -1;
}

static int
q_pwrite (struct target *t, const void *buf, uint32_t count,
          uint64_t offset)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;
  int err = 0;

  if (qcow2_pwrite (qt->img, buf, count, offset, &err) == -1)
    return failed (err);
  /* A bulk copy: page-cache hygiene, over what the image gained at
   * its end (new clusters go there, between the metadata they need).
   */
  if (count >= WRITEBACK_MIN)
    writeback_push_tail (&qt->wb, qcow2_get_fd (qt->img));
  return 0;
}

static int
q_zero (struct target *t, uint32_t count, uint64_t offset)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;
  int err = 0;

  if (qcow2_zero (qt->img, count, offset, true, &err) == -1)
    return failed (err);
  return 0;
}

static int
q_pread (struct target *t, void *buf, uint32_t count, uint64_t offset)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;
  int err = 0;

  if (qcow2_pread (qt->img, buf, count, offset, &err) == -1)
    return failed (err);
  return 0;
}

static int
q_flush (struct target *t)
{
  struct qcow2_target *qt = (struct qcow2_target *) t;
  int err = 0;

  if (qcow2_flush (qt->img, &err) == -1)
    return failed (err);
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
  writeback_destroy (&qt->wb);
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

/* The backing file's path as a reader of path would open it.  NULL on
 * error (reported).
 */
static char *
backing_path (const char *path, const char *backing)
{
  CLEANUP_FREE char *copy = NULL;
  char *r = NULL;

  if (backing[0] == '/')
    r = strdup (backing);
  else if ((copy = strdup (path)) == NULL ||
           asprintf (&r, "%s/%s", dirname (copy), backing) == -1)
    r = NULL;
  if (r == NULL)
    nbdkit_error ("malloc: %m");
  return r;
}

/* An existing image, updated under its working name. */
static int
open_existing (const char *param, struct qcow2_target *qt, uint64_t size)
{
  struct qcow2_open_options oo = {
    .policy = QCOW2_BACKING_ANY,
    .target_param = param,      /* no symlink: see target_existing */
  };
  uint64_t isize;

  qt->img = qcow2_open (qt->t.name, &oo);
  if (qt->img == NULL)
    return -1;
  isize = qcow2_get_size (qt->img);
  if (isize != size && isize != ROUND_UP (size, 512)) {
    nbdkit_error ("%s: %s is %" PRIu64 " bytes but the disk is %" PRIu64
                  " bytes", param, qt->t.name, isize, size);
    return -1;
  }
  return target_unpublish (param, &qt->t);
}

/* A new image at the working name. */
static int
create_new (const char *param, struct qcow2_target *qt, uint64_t size,
            const struct target_options *o)
{
  struct qcow2_create_options co = {
    .size = ROUND_UP (size, 512),
    .version = 3,
    .backing = o->backing,
    .backing_format = o->backing_format,
  };
  struct qcow2_open_options oo = {
    .policy = QCOW2_BACKING_ANY,
    .backing = "",              /* none, unless set below */
  };
  CLEANUP_FREE char *bpath = NULL, *what = NULL;
  int isq;

  if (o->cluster_size)
    co.cluster_bits = log_2_bits (MIN (MAX (o->cluster_size, 512u),
                                       2u * 1024 * 1024));
  if (o->backing) {
    if ((bpath = backing_path (qt->t.name, o->backing)) == NULL)
      return -1;
    /* It must be there, readable, and not something to block on;
     * its format is probed unless given.
     */
    if (asprintf (&what, "%s: backing file", param) == -1) {
      nbdkit_error ("asprintf: %m");
      return -1;
    }
    isq = qcow2_probe (what, bpath, NULL);
    if (isq == -1)
      return -1;
    if (co.backing_format == NULL) {
      co.backing_format = isq ? "qcow2" : "raw";
      nbdkit_debug ("%s: backing file %s is %s", param, bpath,
                    co.backing_format);
    }
    oo.backing = bpath;
    oo.backing_format = co.backing_format;
  }
  /* A leftover PATH.incomplete from an earlier failed run is garbage;
   * unlink never follows it if it is a symlink.
   */
  if (unlink (qt->t.working_name) == -1 && errno != ENOENT) {
    nbdkit_error ("%s %s: removing the leftover: %m", param,
                  qt->t.working_name);
    return -1;
  }
  if (qcow2_create (qt->t.working_name, &co) == -1)
    return -1;
  qt->img = qcow2_open (qt->t.working_name, &oo);
  if (qt->img == NULL) {
    unlink (qt->t.working_name);
    return -1;
  }
  /* Unallocated clusters read as zeros only without a backing file. */
  qt->t.known_zero = o->backing == NULL;
  return 0;
}

struct target *
target_qcow2_open (const char *param, const char *path,
                   enum target_existing kind, uint64_t size,
                   const struct target_options *o)
{
  struct qcow2_target *qt;
  int r;

  qt = target_alloc (sizeof *qt, &qcow2_ops, path, size, QCOW2_MAX_ZERO);
  if (qt == NULL)
    return NULL;
  writeback_init (&qt->wb);

  if (kind == EXISTING_FILE && !o->replace)
    r = open_existing (param, qt, size);
  else
    r = create_new (param, qt, size, o);
  if (r == -1 ||
      target_placed (param, path, kind,
                     kind == EXISTING_NONE || o->replace) == -1)
    goto err;
  writeback_mark_end (&qt->wb, qcow2_get_fd (qt->img));
  return &qt->t;

 err:
  q_close (&qt->t);
  return NULL;
}
