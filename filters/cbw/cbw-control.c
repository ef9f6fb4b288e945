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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include <nbdkit-filter.h>

#include "backup.h"
#include "cbw.h"
#include "cbw-params.h"
#include "cleanup.h"
#include "incremental.h"
#include "ispowerof2.h"
#include "job-id.h"
#include "nbd-uri.h"
#include "registry.h"

/* Lock order: see lock-order.h. */

/* An argument's value as the text a parameter would give: strings as
 * they are, numbers in decimal.  NULL (err filled) for anything else.
 */
static const char *
arg_text (json_object *v, const char *key, char *buf, size_t len,
          struct control_error *err)
{
  switch (json_object_get_type (v)) {
  case json_type_string:
    return json_object_get_string (v);
  case json_type_int:
    snprintf (buf, len, "%" PRId64, json_object_get_int64 (v));
    return buf;
  case json_type_double:
    snprintf (buf, len, "%.17g", json_object_get_double (v));
    return buf;
  default:
    control_fail (err, CONTROL_GENERIC_ERROR,
                  "backup-start: '%s' must be a string or a number", key);
    return NULL;
  }
}

/* Fill spec from the defaults and args, through the parser the
 * parameters use (cbw-params.c).  0, or -1 with err filled.
 */
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
    char buf[64];
    const char *s = arg_text (v, key, buf, sizeof buf, err);
    int r;

    if (s == NULL)
      return -1;
    r = cbw_parse_setting (spec, CBW_FROM_COMMAND, key, s, err);
    if (r == -1)
      return -1;
    if (r == 0)
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
  /* An empty one gets the parser's message, the same as cbw-target=. */
  if (*s != '\0' && *s != '/' && !is_nbd_uri (s))
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
