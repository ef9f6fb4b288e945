/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The steps of one cbw backup (backup.h), shared by a backup set up
 * by parameters at server start and one started by the backup-start
 * command.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "backup.h"
#include "cleanup.h"
#include "incremental.h"
#include "minmax.h"
#include "nbd-uri.h"
#include "top-allocation.h"

/* Lock order: see lock-order.h. */

const char *const sync_name[] = { "full", "top", "none", "incremental" };

int
parse_sync (const char *s, enum sync_mode *sync)
{
  size_t i;

  for (i = 0; i < 4; ++i)
    if (strcmp (s, sync_name[i]) == 0) {
      *sync = i;
      return 0;
    }
  return -1;
}

int
parse_target_format (const char *s, enum target_format *f)
{
  return target_parse_format (s, f);
}

int
parse_on_error (const char *s, enum cbw_on_error *e)
{
  if (strcmp (s, "break-snapshot") == 0)
    *e = CBW_BREAK_SNAPSHOT;
  else if (strcmp (s, "fail-write") == 0)
    *e = CBW_FAIL_WRITE;
  else
    return -1;
  return 0;
}

static int
dup_str (char **dst, const char *src)
{
  *dst = NULL;
  if (src && (*dst = strdup (src)) == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  return 0;
}

int
spec_copy (struct backup_spec *dst, const struct backup_spec *src)
{
  *dst = *src;
  if (dup_str (&dst->target, src->target) == -1 ||
      dup_str (&dst->backing, src->backing) == -1 ||
      dup_str (&dst->backing_format, src->backing_format) == -1 ||
      dup_str (&dst->bitmap, src->bitmap) == -1 ||
      dup_str (&dst->status_path, src->status_path) == -1 ||
      dup_str (&dst->job_id, src->job_id) == -1) {
    spec_free (dst);
    return -1;
  }
  return 0;
}

void
spec_free (struct backup_spec *s)
{
  free (s->target);
  free (s->backing);
  free (s->backing_format);
  free (s->bitmap);
  free (s->status_path);
  free (s->job_id);
  s->target = s->backing = s->backing_format = NULL;
  s->bitmap = s->status_path = s->job_id = NULL;
}

void
spec_target_options (const struct backup_spec *s, struct target_options *o)
{
  *o = (struct target_options) {
    .format = s->format,
    .backing = s->backing,
    .backing_format = s->backing_format,
    .cluster_size = s->cluster_size,
    /* sync=top of a raw file: its holes read as zeros anyway. */
    .partial = s->sync == SYNC_INCREMENTAL ||
               (s->sync == SYNC_TOP &&
                !target_source_is_raw (s->source_file)),
    .source_file = s->source_file,
    /* One connection per copier, plus some for writers' copies. */
    .connections = s->workers + 2,
  };
}

/* Whether anything is at path (a dangling symlink too). */
static bool
exists (const char *path)
{
  struct stat st;

  return lstat (path, &st) == 0;
}

int
spec_check (struct backup_spec *s, const char *p, struct control_error *err)
{
  struct control_error ierr = { 0 };
  const char *target = s->target;

  if (target == NULL)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%starget was not set: name the file or NBD URI "
                         "to back up into", p);
  if ((s->sync == SYNC_INCREMENTAL) != (s->bitmap != NULL)) {
    if (s->bitmap)
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "%sbitmap: only %ssync=incremental uses a bitmap",
                           p, p);
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%ssync=incremental needs %sbitmap=NAME: the dirty "
                         "bitmap (nbdkit-dirtybitmap-filter) whose clusters "
                         "to copy", p, p);
  }
  /* Which kind of target: the one rule of the target library. */
  s->format = target_format_of (s->format, target);
  if ((s->format == TARGET_NBD) != is_nbd_uri (target))
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%starget: '%s' %s an NBD URI but %starget-format "
                         "is %s", p, target,
                         s->format == TARGET_NBD ? "is not" : "is", p,
                         s->format == TARGET_NBD ? "nbd" : "a file format");
  if (s->backing && s->format != TARGET_QCOW2)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%starget-backing: only a qcow2 target has a "
                         "backing file (name the target .qcow2 or set "
                         "%starget-format=qcow2)", p, p);
  if (s->format != TARGET_NBD) {
    struct target_options o;
    CLEANUP_FREE char *param = NULL;
    char msg[512];

    if (s->format == TARGET_QCOW2 && s->sync == SYNC_TOP &&
        s->backing == NULL && !exists (target))
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "%ssync=top with a new qcow2 target needs "
                           "%starget-backing: name the source's backing "
                           "file, so that the target chain reads as the "
                           "source", p, p);
    if (s->format == TARGET_QCOW2 && s->sync == SYNC_INCREMENTAL &&
        s->backing == NULL && !exists (target))
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "%ssync=incremental with a new qcow2 target "
                           "needs %starget-backing: name the previous "
                           "backup, so that the target chain reads as the "
                           "whole disk", p, p);
    if (asprintf (&param, "%starget", p) == -1)
      return control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
    spec_target_options (s, &o);
    if (target_check (param, target, &o, msg, sizeof msg) == -1)
      return control_fail (err, CONTROL_GENERIC_ERROR, "%s", msg);
  }
  if (s->status_path && strcmp (s->status_path, target) == 0)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%sstatus: must not be the target file", p);
  if (s->sync == SYNC_INCREMENTAL &&
      incremental_check (s->bitmap, &ierr) == -1)
    return control_fail (err, ierr.class ? ierr.class : CONTROL_GENERIC_ERROR,
                         "%sbitmap: %s", p, ierr.desc);
  return 0;
}

/* sync=top over a plugin with layers (the qcow2 plugin): protect
 * every cluster that is at least partly allocated in the top image,
 * as the plugin itself tells (its extents describe the whole chain).
 * 0 or -1.
 */
static int
protect_top_layer (struct engine *e, const struct top_allocation *ta,
                   int64_t size, struct control_error *err)
{
  uint64_t offset = 0, protected_bytes = 0;

  if (ta->size != (uint64_t) size)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "sync=top: the %s is %" PRIu64 " bytes but the "
                         "disk below cbw is %" PRIi64 " bytes: a filter "
                         "in between changes the disk, so the top "
                         "layer's allocation cannot be used",
                         ta->owner, ta->size, size);
  while (offset < (uint64_t) size) {
    uint32_t count = MIN (UINT64_C (1) << 30, (uint64_t) size - offset);
    uint64_t len;
    bool allocated;
    int ierr = 0;

    if (ta->status (ta->opaque, count, offset, &len, &allocated,
                    &ierr) == -1 || len == 0)
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "sync=top: reading the top layer's allocation "
                           "of the %s at offset %" PRIu64 " failed",
                           ta->owner, offset);
    if (allocated) {
      engine_protect_bytes (e, offset, len);
      protected_bytes += len;
    }
    offset += len;
  }
  nbdkit_debug ("cbw: sync=top: %" PRIu64 " of %" PRIi64
                " bytes allocated in the top layer of the %s",
                protected_bytes, size, ta->owner);
  return 0;
}

/* sync=top: protect every cluster that is at least partly not a hole
 * in the plugin's extents (a sparse raw file: its data), or what the
 * plugin says its top layer holds, if it has layers.  Runs before
 * protection starts, so nothing changes under it.  0 or -1.
 */
static int
protect_allocated (struct engine *e, nbdkit_next *next, int64_t size,
                   struct control_error *err)
{
  const uint64_t chunk = UINT64_C (1) << 30;
  const struct top_allocation *ta = top_allocation_find ();
  uint64_t offset = 0, protected_bytes = 0;
  int ierr = 0;

  if (ta)
    return protect_top_layer (e, ta, size, err);
  while (offset < (uint64_t) size) {
    uint32_t count = MIN (chunk, (uint64_t) size - offset);
    struct nbdkit_extents *exts;
    size_t i, n;

    exts = nbdkit_extents_full (next, count, offset, 0, &ierr);
    if (exts == NULL)
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "sync=top: reading the source's extents at "
                           "offset %" PRIu64 " failed", offset);
    n = nbdkit_extents_count (exts);
    for (i = 0; i < n; ++i) {
      struct nbdkit_extent x = nbdkit_get_extent (exts, i);
      uint64_t a = MAX (x.offset, offset);
      uint64_t b = MIN (x.offset + x.length, offset + count);

      if (a >= b || (x.type & NBDKIT_EXTENT_HOLE))
        continue;
      engine_protect_bytes (e, a, b - a);
      protected_bytes += b - a;
    }
    nbdkit_extents_free (exts);
    offset += count;
  }
  nbdkit_debug ("cbw: sync=top: %" PRIu64 " of %" PRIi64
                " bytes allocated in the top layer", protected_bytes, size);
  return 0;
}

struct backup *
backup_prepare (const struct backup_spec *s, const char *p,
                nbdkit_next *next, struct control_error *err)
{
  struct backup *b = calloc (1, sizeof *b);
  CLEANUP_FREE char *param = NULL;
  int64_t size;

  if (b == NULL || asprintf (&param, "%starget", p) == -1) {
    free (b);
    control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
    return NULL;
  }
  if (spec_copy (&b->spec, s) == -1) {
    free (b);
    control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
    return NULL;
  }
  size = next->get_size (next);
  if (size == -1) {
    control_fail (err, CONTROL_GENERIC_ERROR, "cannot get the disk's size");
    goto err;
  }

  {
    struct target_options o;
    spec_target_options (s, &o);
    b->target = target_open (param, s->target, size, &o);
  }
  if (b->target == NULL) {
    control_fail (err, CONTROL_GENERIC_ERROR,
                  "%s: cannot open %s (see the server's log)", param,
                  s->target);
    goto err;
  }
  b->engine = engine_new ("cbw", size, s->cluster_size, b->target,
                          s->on_error);
  if (b->engine == NULL) {
    control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
    goto err;
  }
  engine_set_copy_timeout (b->engine, s->copy_timeout);
  engine_set_buffer (b->engine, s->buffer_size, next);

  switch (s->sync) {
  case SYNC_TOP:
    if (protect_allocated (b->engine, next, size, err) == -1)
      goto err;
    break;
  case SYNC_INCREMENTAL: {
    struct control_error ierr = { 0 };
    b->bitmap = incremental_begin (b->engine, s->bitmap, &ierr);
    if (b->bitmap == NULL) {
      control_fail (err, ierr.class ? ierr.class : CONTROL_GENERIC_ERROR,
                    "%sbitmap: %s", p, ierr.desc);
      goto err;
    }
    break;
  }
  default:
    engine_protect (b->engine, 0, UINT64_MAX);
  }
  /* Holes at the instant need no copy (if extents fail, they are
   * copied as data: slower, still exact).
   */
  engine_skip_zeros (b->engine, next);
  return b;

 err:
  backup_abort (b);
  return NULL;
}

void
backup_activate (struct backup *b)
{
  engine_activate (b->engine);
}

/* When the job ends, settle the dirty bitmap as its mode says. */
static void
job_ended (struct job *j, enum job_state state, void *opaque)
{
  struct backup *b = opaque;

  if (b->bitmap) {
    incremental_end (b->bitmap, b->engine, state == JOB_COMPLETED,
                     b->spec.bitmap_mode);
    b->bitmap = NULL;
  }
}

int
backup_start_job (struct backup *b, nbdkit_next *next, bool use_extents)
{
  struct job_params p = {
    .name = "cbw",
    .id = b->spec.job_id,
    .sync = sync_name[b->spec.sync],
    .background_copy = b->spec.sync != SYNC_NONE,
    .workers = b->spec.workers,
    .status_path = b->spec.status_path,
    .speed = b->spec.speed,
    .use_extents = use_extents,
    .on_end = job_ended,
    .opaque = b,
  };

  b->job = job_start (&p, b->engine, next);
  if (b->job == NULL) {
    engine_break (b->engine, "could not start the backup job");
    if (b->bitmap) {
      engine_quiesce (b->engine);
      incremental_end (b->bitmap, b->engine, false, b->spec.bitmap_mode);
      b->bitmap = NULL;
    }
    return -1;
  }
  return 0;
}

/* Free everything; finish the target (as incomplete) unless the job
 * already did.
 */
static void
backup_free (struct backup *b, bool finish_target)
{
  if (b->bitmap)                /* Nothing was copied: leave it be. */
    incremental_end (b->bitmap, b->engine, false, DIRTY_MODE_NEVER);
  engine_free (b->engine);
  if (b->target) {
    if (finish_target)
      b->target->ops->finish (b->target, false);
    b->target->ops->close (b->target);
  }
  spec_free (&b->spec);
  free (b);
}

void
backup_abort (struct backup *b)
{
  if (b)
    backup_free (b, true);
}

bool
backup_running (struct backup *b)
{
  return b && b->job && !job_is_finished (b->job);
}

enum job_state
backup_end (struct backup *b, bool wait)
{
  enum job_state s = JOB_FAILED;

  if (b == NULL)
    return s;
  if (b->job) {
    s = job_finish (b->job, wait);
    nbdkit_debug ("cbw: backup %s", job_state_name (s));
    job_free (b->job);
    b->job = NULL;
    backup_free (b, false);     /* The job finished the target. */
  }
  else
    backup_free (b, true);
  return s;
}
