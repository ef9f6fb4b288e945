/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* backup-start: the cbw filter's transaction action.
 *
 *   {"execute": "backup-start",
 *    "arguments": {"target": "/backups/disk.qcow2", "sync": "full"}}
 *
 * Arguments left out take the filter's parameters (cbw-sync,
 * cbw-cluster-size, cbw-workers, ...) as defaults.  prepare opens the
 * target and marks the clusters to protect, with the write gate
 * closed; commit is the snapshot instant (protection starts); after
 * starts the job's threads once the gate is open again.
 */

#include <config.h>

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include <nbdkit-filter.h>

#include "backup.h"
#include "cbw.h"
#include "cleanup.h"
#include "incremental.h"
#include "ispowerof2.h"
#include "job-id.h"
#include "nbd-uri.h"
#include "registry.h"

static int
get_string (json_object *v, const char *name, const char **out,
            struct control_error *err)
{
  if (!json_object_is_type (v, json_type_string))
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "backup-start: '%s' must be a string", name);
  *out = json_object_get_string (v);
  return 0;
}

static int
get_uint (json_object *v, const char *name, uint64_t max, uint64_t *out,
          struct control_error *err)
{
  if (!json_object_is_type (v, json_type_int) ||
      json_object_get_int64 (v) < 0 ||
      (uint64_t) json_object_get_int64 (v) > max)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "backup-start: '%s' must be a whole number from "
                         "0 to %" PRIu64, name, max);
  *out = json_object_get_int64 (v);
  return 0;
}

/* Replace *field with a copy of s (or an absolute path of s). */
static int
set_str (char **field, const char *s, bool path,
         struct control_error *err)
{
  char *copy = path && !is_nbd_uri (s) && *s != '/'
    ? nbdkit_absolute_path (s) : strdup (s);

  if (copy == NULL)
    return control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
  free (*field);
  *field = copy;
  return 0;
}

/* Fill spec from the defaults and args.  0, or -1 with err filled. */
static int
spec_from_args (struct backup_spec *spec, json_object *args,
                struct control_error *err)
{
  if (spec_copy (spec, &cbw_defaults) == -1)
    return control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
  /* A status file belongs to the backup the parameters describe. */
  free (spec->status_path);
  spec->status_path = NULL;

  json_object_object_foreach (args, key, v) {
    const char *s = NULL;
    uint64_t n = 0;

    if (strcmp (key, "target") == 0) {
      if (get_string (v, key, &s, err) == -1 ||
          set_str (&spec->target, s, true, err) == -1)
        return -1;
    }
    else if (strcmp (key, "sync") == 0) {
      if (get_string (v, key, &s, err) == -1)
        return -1;
      if (parse_sync (s, &spec->sync) == -1)
        return control_fail (err, CONTROL_GENERIC_ERROR,
                             "sync: unknown sync mode '%s' (expecting "
                             "full, top, incremental or none)", s);
    }
    else if (strcmp (key, "format") == 0) {
      if (get_string (v, key, &s, err) == -1)
        return -1;
      if (parse_target_format (s, &spec->format) == -1)
        return control_fail (err, CONTROL_GENERIC_ERROR,
                             "format: unknown format '%s' (expecting raw, "
                             "qcow2 or nbd)", s);
    }
    else if (strcmp (key, "backing") == 0) {
      if (get_string (v, key, &s, err) == -1 ||
          set_str (&spec->backing, s, false, err) == -1)
        return -1;
    }
    else if (strcmp (key, "backing-format") == 0) {
      if (get_string (v, key, &s, err) == -1)
        return -1;
      if (strcmp (s, "raw") != 0 && strcmp (s, "qcow2") != 0)
        return control_fail (err, CONTROL_GENERIC_ERROR,
                             "backing-format: unknown format '%s' "
                             "(expecting raw or qcow2)", s);
      if (set_str (&spec->backing_format, s, false, err) == -1)
        return -1;
    }
    else if (strcmp (key, "cluster-size") == 0) {
      if (get_uint (v, key, 16 * 1024 * 1024, &n, err) == -1)
        return -1;
      if (n < 4096 || !is_power_of_2 (n))
        return control_fail (err, CONTROL_GENERIC_ERROR,
                             "cluster-size: %" PRIu64 " must be a power "
                             "of two from 4K to 16M", n);
      spec->cluster_size = n;
    }
    else if (strcmp (key, "speed") == 0) {
      if (get_uint (v, key, INT64_MAX, &n, err) == -1)
        return -1;
      spec->speed = n;
    }
    else if (strcmp (key, "workers") == 0) {
      if (get_uint (v, key, JOB_MAX_WORKERS, &n, err) == -1)
        return -1;
      if (n < 1)
        return control_fail (err, CONTROL_GENERIC_ERROR,
                             "workers: must be from 1 to %u",
                             JOB_MAX_WORKERS);
      spec->workers = n;
    }
    else if (strcmp (key, "on-error") == 0) {
      if (get_string (v, key, &s, err) == -1)
        return -1;
      if (parse_on_error (s, &spec->on_error) == -1)
        return control_fail (err, CONTROL_GENERIC_ERROR,
                             "on-error: unknown policy '%s' (expecting "
                             "break-snapshot or fail-write)", s);
    }
    else if (strcmp (key, "copy-timeout") == 0) {
      double d;
      if (!json_object_is_type (v, json_type_int) &&
          !json_object_is_type (v, json_type_double))
        return control_fail (err, CONTROL_GENERIC_ERROR,
                             "copy-timeout: must be a number of seconds");
      d = json_object_get_double (v);
      if (!(d >= 0) || d > 86400)
        return control_fail (err, CONTROL_GENERIC_ERROR,
                             "copy-timeout: must be from 0 (no limit) "
                             "to 86400 seconds");
      spec->copy_timeout = d;
    }
    else if (strcmp (key, "bitmap") == 0) {
      if (get_string (v, key, &s, err) == -1)
        return -1;
      if (dirty_check_name (s, err) == -1 ||
          set_str (&spec->bitmap, s, false, err) == -1)
        return -1;
    }
    else if (strcmp (key, "bitmap-mode") == 0) {
      if (get_string (v, key, &s, err) == -1)
        return -1;
      if (incremental_parse_mode (s, &spec->bitmap_mode) == -1)
        return control_fail (err, CONTROL_GENERIC_ERROR,
                             "bitmap-mode: unknown mode '%s' (expecting "
                             "on-success, never or always)", s);
    }
    else if (strcmp (key, "job-id") == 0) {
      if (get_string (v, key, &s, err) == -1)
        return -1;
      if (control_check_name ("job-id", s, 128, err) == -1)
        return -1;
      if (set_str (&spec->job_id, s, false, err) == -1)
        return -1;
    }
    else
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "backup-start: unknown argument '%s'", key);
  }
  if (!json_object_object_get_ex (args, "target", NULL))
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "backup-start: missing argument 'target'");
  return 0;
}

/* On the socket, a target is an NBD URI or an absolute path: the
 * server's working directory (/ once it is a daemon) means nothing to
 * the client.  0, or -1 with err filled.
 */
static int
check_target_arg (json_object *args, struct control_error *err)
{
  json_object *t;
  const char *s;

  if (!json_object_object_get_ex (args, "target", &t) ||
      !json_object_is_type (t, json_type_string))
    return 0;                   /* spec_from_args says what is wrong. */
  s = json_object_get_string (t);
  if (*s == '\0')
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "backup-start: 'target' is empty: give an "
                         "absolute path or an NBD URI");
  if (*s != '/' && !is_nbd_uri (s))
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "backup-start: target '%s' must be an absolute "
                         "path (or an NBD URI)", s);
  return 0;
}

static int
start_prepare (json_object *args, void **state, struct control_error *err,
               void *opaque)
{
  struct backup_spec spec = { 0 };
  struct backup *b;

  if (backup_running (cbw_current))
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "a backup is already running (job '%s'): cancel "
                         "it or wait for it to end",
                         cbw_current->spec.job_id);
  if (check_target_arg (args, err) == -1)
    return -1;
  if (spec_from_args (&spec, args, err) == -1)
    goto err;
  /* An id the server picks is new, so a client can wait on it. */
  if (!json_object_object_get_ex (args, "job-id", NULL)) {
    char *id = job_id_fresh (cbw_defaults.job_id);
    if (id == NULL) {
      control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
      goto err;
    }
    free (spec.job_id);
    spec.job_id = id;
  }
  /* The id may be reused only by replacing our own finished job. */
  if (registry_find_object ("job", spec.job_id) &&
      !(cbw_current && cbw_current->job &&
        strcmp (cbw_current->spec.job_id, spec.job_id) == 0)) {
    control_fail (err, CONTROL_GENERIC_ERROR,
                  "job-id: a job '%s' already exists", spec.job_id);
    goto err;
  }
  if (spec_check (&spec, "", err) == -1)
    goto err;
  b = backup_prepare (&spec, "", cbw_job_next, err);
  if (b == NULL)
    goto err;
  spec_free (&spec);
  *state = b;
  return 0;

 err:
  spec_free (&spec);
  return -1;
}

/* The snapshot instant.  The gate is closed: no write is in flight,
 * so the data path's engine pointer can change.
 */
static void
start_commit (void *state, void *opaque)
{
  struct backup *b = state, *old = cbw_current;

  cbw_current = b;
  cbw_engine = b->engine;
  backup_activate (b);
  if (old)
    backup_end (old, true);     /* Ended already: frees it. */
}

static void
start_abort (void *state, void *opaque)
{
  backup_abort (state);
}

static void
start_after (void *state, void *opaque)
{
  struct backup *b = state;

  if (backup_start_job (b, cbw_job_next, cbw_use_extents) == -1)
    nbdkit_error ("cbw: backup-start: the job could not start");
}

/* {"id": ID}: the job to wait for. */
static json_object *
start_result (void *state, void *opaque)
{
  struct backup *b = state;
  json_object *o = json_object_new_object ();

  json_object_object_add (o, "id", json_object_new_string (b->spec.job_id));
  return o;
}

static const struct control_action backup_start_action = {
  .type = "backup-start",
  .prepare = start_prepare,
  .commit = start_commit,
  .abort = start_abort,
  .after = start_after,
  .result = start_result,
};

int
cbw_register_commands (void)
{
  job_register_commands ();
  return control_register_action (&backup_start_action);
}
