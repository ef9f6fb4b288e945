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
 * sync=top protects only the clusters allocated in the top layer at
 * the snapshot instant: over the qcow2 plugin, what the plugin offers
 * through the registry (top-allocation.h; its extents describe the
 * whole chain), else the extents that are not holes (a sparse raw
 * file).  Neither the job nor copy-before-write ever copies the rest;
 * with a qcow2 target that names the source's backing file, the
 * target chain reads as the source did.
 *
 * sync=incremental protects only the clusters that dirty bitmap
 * cbw-bitmap (nbdkit-dirtybitmap-filter) marks, frozen at the
 * snapshot instant (common/backup/incremental.c); at .cleanup, once
 * the job has ended, the bitmap is updated as cbw-bitmap-mode says.
 *
 * With a control socket (cbw-control, or any filter's), backups can
 * also start on command (backup-start, a transaction action, in
 * cbw-control.c), and with no cbw-target the filter sits idle until
 * one does.  backup.c holds the steps both ways share.
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

#include "backup.h"
#include "cbw.h"
#include "cbw-params.h"
#include "control.h"
#include "engine.h"
#include "exports.h"
#include "gate.h"
#include "incremental.h"
#include "job.h"
#include "minmax.h"
#include "registry.h"
#include "target.h"

/* Lock order: see lock-order.h. */

/* Log every cluster copy (-D cbw.engine=1). */
NBDKIT_DLL_PUBLIC int cbw_debug_engine = 0;

/* Parameters (see cbw.h), and the few that are not per backup. */
struct backup_spec cbw_defaults = {
  .format = TARGET_AUTO,
  .sync = SYNC_FULL,
  .cluster_size = 65536,
  .workers = 4,
  .on_error = CBW_BREAK_SNAPSHOT,
  .buffer_size = BUFFER_DEFAULT,
  .bitmap_mode = DIRTY_MODE_ON_SUCCESS,
};
static bool finish_on_exit = true;      /* cbw-on-exit */
static char *source_file;               /* the plugin's file=, if any */

nbdkit_next *cbw_job_next;
bool cbw_use_extents;
struct backup *cbw_current;
struct engine *cbw_engine;

static void
cbw_load (void)
{
  registry_add_filter ("cbw");
}

static void
cbw_unload (void)
{
  registry_remove_filter ("cbw");
  spec_free (&cbw_defaults);
  free (source_file);
}

/* Replace *field with value (as an absolute path if path). */
static int
set_param (char **field, const char *value, bool path)
{
  char *copy = path ? nbdkit_absolute_path (value) : strdup (value);

  if (copy == NULL)
    return -1;
  free (*field);
  *field = copy;
  return 0;
}

static int
cbw_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
            const char *key, const char *value)
{
  struct control_error err = { 0 };
  int r;

  /* The backup's own settings: one parser with backup-start. */
  r = cbw_parse_setting (&cbw_defaults, CBW_FROM_PARAMETER, key, value,
                         &err);
  if (r == -1) {
    nbdkit_error ("%s", err.desc);
    return -1;
  }
  if (r == 1)
    return 0;

  if (strcmp (key, "cbw-on-exit") == 0) {
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
  else if (strcmp (key, "cbw-control") == 0)
    return control_configure ("cbw-control", value);

  /* Remember the file plugin's disk so the target can't be it. */
  if (strcmp (key, "file") == 0) {
    free (source_file);
    source_file = nbdkit_absolute_path (value);
    cbw_defaults.source_file = source_file;
  }
  exports_note_plugin_key (key);
  return next (nxdata, key, value);
}

static int
cbw_config_complete (nbdkit_next_config_complete *next,
                     nbdkit_backend *nxdata)
{
  struct backup_spec *d = &cbw_defaults;
  struct control_error err = { 0 };

  if (d->job_id == NULL && set_param (&d->job_id, "cbw", false) == -1)
    return -1;
  if (d->target == NULL) {
    /* With a control socket, wait for backup-start. */
    if (control_path () == NULL) {
      nbdkit_error ("cbw-target parameter was not set: name the file to "
                    "back up into (or set cbw-control=SOCKET to start "
                    "backups on command)");
      return -1;
    }
    return next (nxdata);
  }
  if (spec_check (d, "cbw-", &err) == -1) {
    /* The incremental checks need the dirtybitmap filter loaded:
     * they run again in .get_ready.
     */
    if (d->sync != SYNC_INCREMENTAL || d->bitmap == NULL ||
        strstr (err.desc, "cbw-bitmap: ") != err.desc) {
      nbdkit_error ("%s", err.desc);
      return -1;
    }
  }
  if (d->status_path &&
      job_write_initial_status (d->status_path, "starting") == -1) {
    nbdkit_error ("cbw-status: cannot write %s: %m", d->status_path);
    return -1;
  }
  return next (nxdata);
}

#define cbw_config_help \
  "cbw-target=<FILE|URI>     Back up into this file or NBD URI.\n" \
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
  "cbw-buffer-size=<SIZE>    Memory for old data on its way to the target\n" \
  "                          (default 64M for NBD targets, else 0: none).\n" \
  "cbw-speed=<RATE>          Background job bytes/s limit (default 0: none).\n" \
  "cbw-job-id=<ID>           The job's id on the control socket (default cbw).\n" \
  "cbw-control=<SOCKET>      The server's control socket (backups on command)."

static int
cbw_get_ready (int thread_model)
{
  char *list;
  struct backup_spec *d = &cbw_defaults;

  if (exports_refuse_multi_export ("cbw", "one backup job") == -1)
    return -1;
  list = registry_list_filters ();
  backup_debug_engine |= cbw_debug_engine;
  nbdkit_debug ("cbw: registry %p holds: %s",
                registry_instance (), list ? list : "?");
  free (list);
  /* Refuse an unusable bitmap now, not after the server forked. */
  if (d->target && d->sync == SYNC_INCREMENTAL) {
    struct control_error err = { 0 };

    if (incremental_check (d->bitmap, &err) == -1) {
      nbdkit_error ("cbw-bitmap: %s", err.desc);
      return -1;
    }
  }
  if (cbw_register_commands () == -1)
    return -1;
  return control_bind ();
}

static void
cbw_cleanup (nbdkit_backend *backend)
{
  /* No more commands first: they could start or change backups. */
  control_stop ();
  if (cbw_current) {
    backup_end (cbw_current, finish_on_exit);
    cbw_current = NULL;
    cbw_engine = NULL;
  }
  if (cbw_job_next) {
    cbw_job_next->finalize (cbw_job_next);
    nbdkit_next_context_close (cbw_job_next);
    cbw_job_next = NULL;
  }
}

/* The snapshot instant of a backup set by parameters: before any
 * client can connect.
 */
static int
cbw_after_fork (nbdkit_backend *backend)
{
  struct control_error err = { 0 };
  struct backup *b;
  int r;

  cbw_job_next = nbdkit_next_context_open (backend, 1, "", 1);
  if (cbw_job_next == NULL) {
    nbdkit_error ("cbw: cannot open the source for the backup job");
    return -1;
  }
  if (cbw_job_next->prepare (cbw_job_next) == -1)
    goto err;
  /* Zero extents let the job skip reading what reads as zero. */
  r = cbw_job_next->can_extents (cbw_job_next);
  if (r == -1)
    goto err;
  cbw_use_extents = r > 0;

  if (cbw_defaults.target) {
    b = backup_prepare (&cbw_defaults, "cbw-", cbw_job_next, &err);
    if (b == NULL) {
      nbdkit_error ("%s", err.desc);
      goto err;
    }
    cbw_current = b;
    cbw_engine = b->engine;
    backup_activate (b);
    if (backup_start_job (b, cbw_job_next, cbw_use_extents) == -1)
      goto err;
  }
  return control_start ();

 err:
  if (cbw_defaults.status_path)
    job_write_initial_status (cbw_defaults.status_path, "failed");
  cbw_cleanup (backend);
  return -1;
}

static int
cbw_pwrite (nbdkit_next *next, void *handle, const void *buf,
            uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  GATE_FOR_CURRENT_SCOPE ();

  if (cbw_engine &&
      engine_before_write (cbw_engine, next, offset, count, err) == -1)
    return -1;
  return next->pwrite (next, buf, count, offset, flags, err);
}

static int
cbw_zero (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  GATE_FOR_CURRENT_SCOPE ();

  if (cbw_engine &&
      engine_before_write (cbw_engine, next, offset, count, err) == -1)
    return -1;
  return next->zero (next, count, offset, flags, err);
}

static int
cbw_trim (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  GATE_FOR_CURRENT_SCOPE ();

  if (cbw_engine &&
      engine_before_write (cbw_engine, next, offset, count, err) == -1)
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
