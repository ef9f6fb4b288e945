/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdkit-cbw-filter: live, point-in-time backup of the disk below it.
 *
 * The snapshot instant is server start (.after_fork, before any
 * client can connect): every cluster is protected then.  From that
 * moment every pwrite, zero and trim first has the copy-before-write
 * engine (common/backup/engine.c) copy the old contents of each
 * protected cluster it touches to the target; for sync=full a
 * background job (common/backup/job.c) copies the rest.  The job reads
 * through a shared next context opened in .after_fork, so it runs
 * whether or not any client is connected.
 *
 * sync=top protects only the clusters that the plugin's extents do
 * not report as holes at the snapshot instant (over the qcow2 plugin:
 * the clusters allocated in the top image), so neither the job nor
 * copy-before-write ever copies the rest; with a qcow2 target that
 * names the source's backing file, the target chain reads as the
 * source did.
 *
 * sync=incremental protects only the clusters that dirty bitmap
 * cbw-bitmap (nbdkit-dirtybitmap-filter) marks, frozen at the
 * snapshot instant (common/backup/incremental.c); at .cleanup, once
 * the job has ended, the bitmap is updated as cbw-bitmap-mode says.
 *
 * Outcome: file targets (raw, qcow2) are written as PATH.incomplete
 * and renamed to PATH only once every cluster is on them and they
 * have been flushed; NBD targets are flushed, and there the status
 * file and the debug log are the only completion marker.
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

#include "engine.h"
#include "gate.h"
#include "incremental.h"
#include "ispowerof2.h"
#include "job.h"
#include "minmax.h"
#include "registry.h"
#include "target.h"

/* Log every cluster copy (-D cbw.engine=1). */
NBDKIT_DLL_PUBLIC int cbw_debug_engine = 0;

enum sync_mode { SYNC_FULL, SYNC_TOP, SYNC_NONE, SYNC_INCREMENTAL };
static const char *const sync_name[] = { "full", "top", "none",
                                         "incremental" };

/* Parameters, set in .config and never changed afterwards. */
static char *target_path;               /* cbw-target (path or URI) */
static enum target_format target_format = TARGET_AUTO; /* cbw-target-format */
static char *target_backing;            /* cbw-target-backing */
static char *target_backing_format;     /* cbw-target-backing-format */
static double copy_timeout;             /* cbw-copy-timeout, 0 = none */
static uint64_t speed;                  /* cbw-speed, 0 = unlimited */
static enum sync_mode sync_mode = SYNC_FULL; /* cbw-sync */
static unsigned cluster_size = 65536;   /* cbw-cluster-size */
static char *status_path;               /* cbw-status */
static unsigned workers = 4;            /* cbw-workers */
static bool finish_on_exit = true;      /* cbw-on-exit */
static enum cbw_on_error on_error = CBW_BREAK_SNAPSHOT; /* cbw-on-error */
static char *source_file;               /* the plugin's file=, if any */
static char *bitmap_name;               /* cbw-bitmap */
static enum dirty_mode bitmap_mode = DIRTY_MODE_ON_SUCCESS; /* cbw-bitmap-mode */

/* Set up in .after_fork, torn down in .cleanup.  Connections only
 * exist in between, so the data callbacks read these without a lock.
 */
static nbdkit_next *job_next;
static struct target *target;
static struct engine *engine;
static struct job *job;
static struct dirty_bitmap *bitmap;     /* sync=incremental's, frozen */

static void
cbw_load (void)
{
  registry_add_filter ("cbw");
}

static void
cbw_unload (void)
{
  registry_remove_filter ("cbw");
  free (target_path);
  free (target_backing);
  free (target_backing_format);
  free (status_path);
  free (source_file);
  free (bitmap_name);
}

static int
cbw_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
            const char *key, const char *value)
{
  if (strcmp (key, "cbw-target") == 0) {
    free (target_path);
    if (target_is_nbd_uri (value))
      target_path = strdup (value);
    else
      target_path = nbdkit_absolute_path (value);
    return target_path ? 0 : -1;
  }
  else if (strcmp (key, "cbw-target-format") == 0) {
    if (strcmp (value, "raw") == 0)
      target_format = TARGET_RAW;
    else if (strcmp (value, "qcow2") == 0)
      target_format = TARGET_QCOW2;
    else if (strcmp (value, "nbd") == 0)
      target_format = TARGET_NBD;
    else {
      nbdkit_error ("cbw-target-format: unknown format '%s' "
                    "(expecting raw, qcow2 or nbd)", value);
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "cbw-target-backing") == 0) {
    /* Kept as written: stored in the qcow2 header, where a relative
     * name is relative to the target's directory.
     */
    free (target_backing);
    target_backing = strdup (value);
    return target_backing ? 0 : -1;
  }
  else if (strcmp (key, "cbw-target-backing-format") == 0) {
    if (strcmp (value, "raw") != 0 && strcmp (value, "qcow2") != 0) {
      nbdkit_error ("cbw-target-backing-format: unknown format '%s' "
                    "(expecting raw or qcow2)", value);
      return -1;
    }
    free (target_backing_format);
    target_backing_format = strdup (value);
    return target_backing_format ? 0 : -1;
  }
  else if (strcmp (key, "cbw-copy-timeout") == 0) {
    char *end;
    double r;

    errno = 0;
    r = strtod (value, &end);
    if (errno != 0 || end == value || *end != '\0' || !(r >= 0) ||
        r > 86400) {
      nbdkit_error ("cbw-copy-timeout: '%s' must be a number of seconds "
                    "from 0 (no limit) to 86400", value);
      return -1;
    }
    copy_timeout = r;
    return 0;
  }
  else if (strcmp (key, "cbw-speed") == 0) {
    int64_t r = nbdkit_parse_size (value);
    if (r == -1) {
      nbdkit_error ("cbw-speed: '%s' must be bytes per second, with an "
                    "optional K, M or G suffix, or 0 (no limit)", value);
      return -1;
    }
    speed = r;
    return 0;
  }
  else if (strcmp (key, "cbw-sync") == 0) {
    if (strcmp (value, "full") == 0)
      sync_mode = SYNC_FULL;
    else if (strcmp (value, "top") == 0)
      sync_mode = SYNC_TOP;
    else if (strcmp (value, "none") == 0)
      sync_mode = SYNC_NONE;
    else if (strcmp (value, "incremental") == 0)
      sync_mode = SYNC_INCREMENTAL;
    else {
      nbdkit_error ("cbw-sync: unknown sync mode '%s' "
                    "(expecting full, top, incremental or none)", value);
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "cbw-bitmap") == 0) {
    struct control_error err = { 0 };

    if (dirty_check_name (value, &err) == -1) {
      nbdkit_error ("cbw-bitmap: %s", err.desc);
      return -1;
    }
    free (bitmap_name);
    bitmap_name = strdup (value);
    return bitmap_name ? 0 : -1;
  }
  else if (strcmp (key, "cbw-bitmap-mode") == 0) {
    if (incremental_parse_mode (value, &bitmap_mode) == -1) {
      nbdkit_error ("cbw-bitmap-mode: unknown mode '%s' "
                    "(expecting on-success, never or always)", value);
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "cbw-cluster-size") == 0) {
    int64_t r = nbdkit_parse_size (value);
    if (r == -1)
      return -1;
    if (r < 4096 || r > 16 * 1024 * 1024 || !is_power_of_2 (r)) {
      nbdkit_error ("cbw-cluster-size: '%s' must be a power of two "
                    "from 4K to 16M", value);
      return -1;
    }
    cluster_size = r;
    return 0;
  }
  else if (strcmp (key, "cbw-status") == 0) {
    free (status_path);
    status_path = nbdkit_absolute_path (value);
    return status_path ? 0 : -1;
  }
  else if (strcmp (key, "cbw-workers") == 0) {
    unsigned r;
    if (nbdkit_parse_unsigned ("cbw-workers", value, &r) == -1)
      return -1;
    if (r < 1 || r > JOB_MAX_WORKERS) {
      nbdkit_error ("cbw-workers: '%s' must be from 1 to %u",
                    value, JOB_MAX_WORKERS);
      return -1;
    }
    workers = r;
    return 0;
  }
  else if (strcmp (key, "cbw-on-exit") == 0) {
    if (strcmp (value, "finish") == 0)
      finish_on_exit = true;
    else if (strcmp (value, "cancel") == 0)
      finish_on_exit = false;
    else {
      nbdkit_error ("cbw-on-exit: unknown value '%s' "
                    "(expecting finish or cancel)", value);
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "cbw-on-error") == 0) {
    if (strcmp (value, "break-snapshot") == 0)
      on_error = CBW_BREAK_SNAPSHOT;
    else if (strcmp (value, "fail-write") == 0)
      on_error = CBW_FAIL_WRITE;
    else {
      nbdkit_error ("cbw-on-error: unknown policy '%s' "
                    "(expecting break-snapshot or fail-write)", value);
      return -1;
    }
    return 0;
  }

  /* Remember the file plugin's disk so the target can't be it. */
  if (strcmp (key, "file") == 0) {
    free (source_file);
    source_file = nbdkit_absolute_path (value);
  }
  return next (nxdata, key, value);
}

static int
cbw_config_complete (nbdkit_next_config_complete *next,
                     nbdkit_backend *nxdata)
{
  if (target_path == NULL) {
    nbdkit_error ("cbw-target parameter was not set: "
                  "name the file to back up into");
    return -1;
  }
  if ((sync_mode == SYNC_INCREMENTAL) != (bitmap_name != NULL)) {
    nbdkit_error (bitmap_name
                  ? "cbw-bitmap: only cbw-sync=incremental uses a bitmap"
                  : "cbw-sync=incremental needs cbw-bitmap=NAME: the dirty "
                  "bitmap (nbdkit-dirtybitmap-filter) whose clusters to "
                  "copy");
    return -1;
  }
  /* Which kind of target: by URI scheme, by an existing file's
   * magic, by a backing file asked for; else raw.
   */
  if (target_format == TARGET_AUTO) {
    if (target_is_nbd_uri (target_path))
      target_format = TARGET_NBD;
    else if (target_file_is_qcow2 (target_path) || target_backing)
      target_format = TARGET_QCOW2;
    else
      target_format = TARGET_RAW;
  }
  if ((target_format == TARGET_NBD) != target_is_nbd_uri (target_path)) {
    nbdkit_error ("cbw-target: '%s' %s an NBD URI but "
                  "cbw-target-format is %s", target_path,
                  target_format == TARGET_NBD ? "is not" : "is",
                  target_format == TARGET_NBD ? "nbd" : "a file format");
    return -1;
  }
  if (target_backing && target_format != TARGET_QCOW2) {
    nbdkit_error ("cbw-target-backing: only a qcow2 target has a "
                  "backing file");
    return -1;
  }
  if (target_format != TARGET_NBD) {
    struct stat st, sst;
    /* The file plugin's disk has its virtual size as its file size;
     * a qcow2 source or a qcow2 target does not.
     */
    bool sizes_comparable = target_format == TARGET_RAW && source_file &&
      !target_file_is_qcow2 (source_file);

    if (target_file_check ("cbw-target", target_path,
                           sizes_comparable ? source_file : NULL) == -1)
      return -1;
    if (source_file && stat (target_path, &st) == 0 &&
        stat (source_file, &sst) == 0 &&
        st.st_dev == sst.st_dev && st.st_ino == sst.st_ino) {
      nbdkit_error ("cbw-target: %s is the source disk itself", target_path);
      return -1;
    }
    if (target_format == TARGET_QCOW2 && sync_mode == SYNC_TOP &&
        target_backing == NULL && access (target_path, F_OK) == -1) {
      nbdkit_error ("cbw-sync=top with a new qcow2 target needs "
                    "cbw-target-backing: name the source's backing file, "
                    "so that the target chain reads as the source");
      return -1;
    }
    if (target_format == TARGET_QCOW2 && sync_mode == SYNC_INCREMENTAL &&
        target_backing == NULL && access (target_path, F_OK) == -1) {
      nbdkit_error ("cbw-sync=incremental with a new qcow2 target needs "
                    "cbw-target-backing: name the previous backup, so that "
                    "the target chain reads as the whole disk");
      return -1;
    }
    if (target_format == TARGET_RAW && target_file_is_qcow2 (target_path)) {
      nbdkit_error ("cbw-target: %s is a qcow2 image but "
                    "cbw-target-format is raw", target_path);
      return -1;
    }
  }
  if (status_path && strcmp (status_path, target_path) == 0) {
    nbdkit_error ("cbw-status: must not be the target file");
    return -1;
  }
  if (status_path &&
      job_write_initial_status (status_path, "starting") == -1) {
    nbdkit_error ("cbw-status: cannot write %s: %m", status_path);
    return -1;
  }
  return next (nxdata);
}

#define cbw_config_help \
  "cbw-target=<FILE|URI>     (required) Back up into this file or NBD URI.\n" \
  "cbw-target-format=raw|qcow2|nbd\n" \
  "                          Target kind (default: by URI, magic, else raw).\n" \
  "cbw-target-backing=<FILE> Backing file of a new qcow2 target.\n" \
  "cbw-target-backing-format=raw|qcow2\n" \
  "                          Its format (default: probed).\n" \
  "cbw-sync=full|top|incremental|none\n" \
  "                          What to copy (default full).\n" \
  "cbw-bitmap=<NAME>         Dirty bitmap of cbw-sync=incremental.\n" \
  "cbw-bitmap-mode=on-success|never|always\n" \
  "                          When the bitmap is cleared (default on-success).\n" \
  "cbw-cluster-size=<N>      Copy granularity (default 64K).\n" \
  "cbw-status=<FILE>         Write JSON job status here.\n" \
  "cbw-workers=<N>           Parallel copy threads (default 4).\n" \
  "cbw-on-exit=finish|cancel Finish the job when nbdkit exits (default).\n" \
  "cbw-on-error=break-snapshot|fail-write\n" \
  "                          Target failure policy (default break-snapshot).\n" \
  "cbw-copy-timeout=<SECS>   Copy-before-write time limit (default 0: none).\n" \
  "cbw-speed=<RATE>          Background job bytes/s limit (default 0: none)."

static int
cbw_get_ready (int thread_model)
{
  char *list = registry_list_filters ();

  backup_debug_engine |= cbw_debug_engine;
  nbdkit_debug ("cbw: registry %p holds: %s",
                registry_instance (), list ? list : "?");
  free (list);
  /* Refuse an unusable bitmap now, not after the server forked. */
  if (sync_mode == SYNC_INCREMENTAL) {
    struct control_error err = { 0 };

    if (incremental_check (bitmap_name, &err) == -1) {
      nbdkit_error ("cbw-bitmap: %s", err.desc);
      return -1;
    }
  }
  return 0;
}

static void
cbw_cleanup (nbdkit_backend *backend)
{
  enum job_state s = JOB_FAILED;

  if (job) {
    s = job_finish (job, finish_on_exit);
    nbdkit_debug ("cbw: backup %s", job_state_name (s));
    job_free (job);
    job = NULL;
  }
  if (bitmap) {
    incremental_end (bitmap, engine, s == JOB_COMPLETED, bitmap_mode);
    bitmap = NULL;
  }
  engine_free (engine);
  engine = NULL;
  if (target) {
    target->ops->close (target);
    target = NULL;
  }
  if (job_next) {
    job_next->finalize (job_next);
    nbdkit_next_context_close (job_next);
    job_next = NULL;
  }
}

/* sync=top: protect every cluster that is at least partly not a hole
 * in the plugin's extents (allocated in the top image, for the qcow2
 * plugin).  Runs before protection starts, so nothing changes under
 * it.  0 or -1 (reported).
 */
static int
protect_allocated (nbdkit_next *next, int64_t size)
{
  const uint64_t chunk = UINT64_C (1) << 30;
  uint64_t offset = 0, protected_bytes = 0;
  int err = 0;

  while (offset < (uint64_t) size) {
    uint32_t count = MIN (chunk, (uint64_t) size - offset);
    struct nbdkit_extents *exts;
    size_t i, n;

    exts = nbdkit_extents_full (next, count, offset, 0, &err);
    if (exts == NULL) {
      nbdkit_error ("cbw-sync=top: reading the source's extents at "
                    "offset %" PRIu64 " failed", offset);
      return -1;
    }
    n = nbdkit_extents_count (exts);
    for (i = 0; i < n; ++i) {
      struct nbdkit_extent x = nbdkit_get_extent (exts, i);
      uint64_t a = MAX (x.offset, offset);
      uint64_t b = MIN (x.offset + x.length, offset + count);

      if (a >= b || (x.type & NBDKIT_EXTENT_HOLE))
        continue;
      engine_protect (engine, a >> engine->cluster_bits,
                      ((b - 1) >> engine->cluster_bits) + 1);
      protected_bytes += b - a;
    }
    nbdkit_extents_free (exts);
    offset += count;
  }
  nbdkit_debug ("cbw: sync=top: %" PRIu64 " of %" PRIi64
                " bytes allocated in the top layer", protected_bytes, size);
  return 0;
}

/* The snapshot instant: before any client can connect. */
static int
cbw_after_fork (nbdkit_backend *backend)
{
  struct job_params p = {
    .name = "cbw",
    .sync = sync_name[sync_mode],
    .background_copy = sync_mode != SYNC_NONE,
    .workers = workers,
    .status_path = status_path,
    .speed = speed,
  };
  int64_t size;
  int r;

  job_next = nbdkit_next_context_open (backend, 1, "", 1);
  if (job_next == NULL) {
    nbdkit_error ("cbw: cannot open the source for the backup job");
    return -1;
  }
  if (job_next->prepare (job_next) == -1)
    goto err;
  size = job_next->get_size (job_next);
  if (size == -1)
    goto err;
  /* Zero extents let the job skip reading what reads as zero. */
  r = job_next->can_extents (job_next);
  if (r == -1)
    goto err;
  p.use_extents = r > 0;

  switch (target_format) {
  case TARGET_NBD:
    /* One connection per copier, plus some for writers' copies. */
    target = target_nbd_open ("cbw-target", target_path, size, workers + 2);
    break;
  case TARGET_QCOW2: {
    struct target_qcow2_options qo = {
      .backing = target_backing,
      .backing_format = target_backing_format,
      .cluster_size = cluster_size,
    };
    target = target_qcow2_open ("cbw-target", target_path, size, &qo);
    break;
  }
  default:
    target = target_file_open ("cbw-target", target_path, size);
  }
  if (target == NULL)
    goto err;
  engine = engine_new ("cbw", size, cluster_size, target, on_error);
  if (engine == NULL)
    goto err;
  engine_set_copy_timeout (engine, copy_timeout);
  if (sync_mode == SYNC_TOP) {
    if (protect_allocated (job_next, size) == -1)
      goto err;
  }
  else if (sync_mode == SYNC_INCREMENTAL) {
    struct control_error cerr = { 0 };

    bitmap = incremental_begin (engine, bitmap_name, &cerr);
    if (bitmap == NULL) {
      nbdkit_error ("cbw-bitmap: %s", cerr.desc);
      goto err;
    }
  }
  else
    engine_protect (engine, 0, engine->nr_clusters);
  engine_activate (engine);
  job = job_start (&p, engine, job_next);
  if (job == NULL)
    goto err;
  return 0;

 err:
  if (status_path)
    job_write_initial_status (status_path, "failed");
  cbw_cleanup (backend);
  return -1;
}

static int
cbw_pwrite (nbdkit_next *next, void *handle, const void *buf,
            uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  GATE_FOR_CURRENT_SCOPE ();

  if (engine && engine_before_write (engine, next, offset, count, err) == -1)
    return -1;
  return next->pwrite (next, buf, count, offset, flags, err);
}

static int
cbw_zero (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  GATE_FOR_CURRENT_SCOPE ();

  if (engine && engine_before_write (engine, next, offset, count, err) == -1)
    return -1;
  return next->zero (next, count, offset, flags, err);
}

static int
cbw_trim (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  GATE_FOR_CURRENT_SCOPE ();

  if (engine && engine_before_write (engine, next, offset, count, err) == -1)
    return -1;
  return next->trim (next, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name              = "cbw",
  .longname          = "nbdkit copy-before-write backup filter",
  .load              = cbw_load,
  .unload            = cbw_unload,
  .config            = cbw_config,
  .config_complete   = cbw_config_complete,
  .config_help       = cbw_config_help,
  .get_ready         = cbw_get_ready,
  .after_fork        = cbw_after_fork,
  .cleanup           = cbw_cleanup,
  .pwrite            = cbw_pwrite,
  .zero              = cbw_zero,
  .trim              = cbw_trim,
};

NBDKIT_REGISTER_FILTER (filter)
