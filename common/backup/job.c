/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The background copy.  A controller thread starts the workers; each
 * worker claims runs of PENDING clusters from a shared cursor and
 * copies them, skipping what the source reports as zero.  Writers'
 * copy-before-write claims clusters through the same engine, so the
 * job simply never sees those again.  When no cluster is pending the
 * controller flushes and publishes the target, and only then says
 * "completed".
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

#include <json-c/json.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "files.h"
#include "control.h"
#include "job.h"
#include "job-id.h"
#include "registry.h"
#include "minmax.h"

/* Lock order: see lock-order.h. */

/* Bytes a worker claims at a time: large enough for good throughput,
 * small enough that writers rarely wait behind the job.
 */
#define JOB_CHUNK (1024 * 1024)

/* Status file rewrites at most this often while running. */
#define STATUS_INTERVAL 0.5

const char *
job_state_name (enum job_state s)
{
  switch (s) {
  case JOB_RUNNING:   return "running";
  case JOB_COMPLETED: return "completed";
  case JOB_FAILED:    return "failed";
  case JOB_CANCELLED: return "cancelled";
  }
  return "unknown";
}

/* Progress: bytes of the snapshot that are safe on the target. */
static uint64_t
bytes_done (struct job *j, uint64_t pending)
{
  uint64_t left = pending * engine_cluster_size (j->e);

  return left >= j->bytes_total ? 0 : j->bytes_total - left;
}

static int
write_json (const char *path, json_object *o)
{
  const char *s = json_object_to_json_string_ext (o, JSON_OUT);
  CLEANUP_FREE char *line = NULL;

  if (asprintf (&line, "%s\n", s) == -1)
    return -1;
  if (replace_file_atomically (path, line, strlen (line)) == -1) {
    int e = errno;
    struct stat st;

    /* Say why, where replace_file_atomically refused a path that is
     * not ours to replace (a symlink, a FIFO, a directory...).
     */
    if (e == EEXIST && lstat (path, &st) == 0 && !S_ISREG (st.st_mode))
      nbdkit_error ("status file %s: is %s, not a regular file",
                    path, file_kind (st.st_mode));
    errno = e;
    return -1;
  }
  return 0;
}

int
job_write_initial_status (const char *path, const char *state)
{
  json_object *o = json_object_new_object ();
  int r;

  json_object_object_add (o, "state", json_object_new_string (state));
  json_object_object_add (o, "error", NULL);
  r = write_json (path, o);
  json_object_put (o);
  return r;
}

/* Add key (status-file style) or qkey (query-jobs style) to o. */
static void
add (json_object *o, bool qmp, const char *key, const char *qkey,
     json_object *v)
{
  json_object_object_add (o, qmp ? qkey : key, v);
}

/* The job's state as one object: the status file's keys, or with qmp
 * the control socket's (QMP-like names, plus id and type).
 */
static json_object *
job_object (struct job *j, bool qmp)
{
  struct engine_stats st;
  uint64_t pending, done;
  bool broken;
  CLEANUP_FREE char *eerr = NULL;
  enum job_state state;
  double now = monotonic_seconds (), elapsed;
  json_object *o = json_object_new_object ();
  struct target *t = engine_target (j->e);

  engine_get_stats (j->e, &st, &pending, &broken, &eerr);
  done = bytes_done (j, pending);

  pthread_mutex_lock (&j->lock);
  state = j->state;
  elapsed = (j->finished ? j->end_time : now) - j->start_time;
  if (qmp) {
    json_object_object_add (o, "id", json_object_new_string (j->id));
    json_object_object_add (o, "type", json_object_new_string ("backup"));
  }
  add (o, qmp, "state", "status",
       json_object_new_string (job_state_name (state)));
  add (o, qmp, "sync", "sync", json_object_new_string (j->p.sync));
  add (o, qmp, "target", "target", json_object_new_string (t->name));
  add (o, qmp, "target_format", "target-format",
       json_object_new_string (t->ops->kind));
  add (o, qmp, "target_in_progress", "target-in-progress",
       t->working_name && state != JOB_COMPLETED
       ? json_object_new_string (t->working_name) : NULL);
  add (o, qmp, "cluster_size", "cluster-size",
       json_object_new_int64 (engine_cluster_size (j->e)));
  add (o, qmp, "disk_size", "disk-size",
       json_object_new_int64 (engine_size (j->e)));
  add (o, qmp, "bytes_done", "current-progress", json_object_new_int64 (done));
  add (o, qmp, "bytes_total", "total-progress",
       json_object_new_int64 (j->bytes_total));
  add (o, qmp, "bytes_written", "bytes-written",
       json_object_new_int64 (st.bytes_copied));
  add (o, qmp, "bytes_zero", "bytes-zero", json_object_new_int64 (st.bytes_zero));
  add (o, qmp, "bytes_before_writes", "bytes-before-writes",
       json_object_new_int64 (st.bytes_by_writes));
  add (o, qmp, "elapsed_seconds", "elapsed-seconds",
       json_object_new_double (elapsed));
  add (o, qmp, "rate_mib_per_second", "rate-mib-per-second",
       json_object_new_double (elapsed > 0 ? done / elapsed / 1048576 : 0));
  add (o, qmp, "speed_limit", "speed", json_object_new_int64 (j->speed));
  add (o, qmp, "workers", "workers",
       json_object_new_int64 (j->p.background_copy ? j->p.workers : 0));
  add (o, qmp, "on_error", "on-error",
       json_object_new_string (engine_on_error (j->e) == CBW_FAIL_WRITE
                               ? "fail-write" : "break-snapshot"));
  add (o, qmp, "writes_failed", "writes-failed",
       json_object_new_int64 (st.writes_failed));
  add (o, qmp, "copy_timeouts", "copy-timeouts",
       json_object_new_int64 (st.copy_timeouts));
  add (o, qmp, "error", "error",
       j->error ? json_object_new_string (j->error)
       : eerr ? json_object_new_string (eerr) : NULL);
  pthread_mutex_unlock (&j->lock);
  return o;
}

json_object *
job_describe (void *vj)
{
  return job_object (vj, true);
}

int
job_write_status (struct job *j)
{
  json_object *o;
  int r;

  if (j->status_path == NULL)
    return 0;
  pthread_mutex_lock (&j->status_lock);
  o = job_object (j, false);
  pthread_mutex_lock (&j->lock);
  j->last_status = monotonic_seconds ();
  pthread_mutex_unlock (&j->lock);
  r = write_json (j->status_path, o);
  pthread_mutex_unlock (&j->status_lock);
  if (r == -1)
    nbdkit_error ("%s: writing status file %s: %m", j->p.name,
                  j->status_path);
  json_object_put (o);
  return r;
}

/* JOB_STATUS_CHANGE, as QMP sends it. */
static void
emit_status_change (struct job *j, enum job_state state)
{
  json_object *d = json_object_new_object ();

  json_object_object_add (d, "id", json_object_new_string (j->id));
  json_object_object_add (d, "status",
                          json_object_new_string (job_state_name (state)));
  control_emit_event ("JOB_STATUS_CHANGE", d);
}

/* BLOCK_JOB_COMPLETED (with "error" if it failed) or
 * BLOCK_JOB_CANCELLED, as QMP sends them.
 */
static void
emit_job_end (struct job *j, enum job_state state)
{
  json_object *d = json_object_new_object ();
  uint64_t pending;

  engine_get_stats (j->e, NULL, &pending, NULL, NULL);
  json_object_object_add (d, "device", json_object_new_string (j->id));
  json_object_object_add (d, "type", json_object_new_string ("backup"));
  json_object_object_add (d, "len", json_object_new_int64 (j->bytes_total));
  json_object_object_add (d, "offset",
                          json_object_new_int64 (bytes_done (j, pending)));
  pthread_mutex_lock (&j->lock);
  json_object_object_add (d, "speed", json_object_new_int64 (j->speed));
  if (state == JOB_FAILED && j->error)
    json_object_object_add (d, "error", json_object_new_string (j->error));
  pthread_mutex_unlock (&j->lock);
  control_emit_event (state == JOB_CANCELLED
                      ? "BLOCK_JOB_CANCELLED" : "BLOCK_JOB_COMPLETED", d);
}

static void
maybe_write_status (struct job *j)
{
  bool due;

  pthread_mutex_lock (&j->lock);
  due = monotonic_seconds () - j->last_status >= STATUS_INTERVAL;
  if (due)
    j->last_status = monotonic_seconds ();
  pthread_mutex_unlock (&j->lock);
  if (due)
    job_write_status (j);
}

void
job_set_speed (struct job *j, uint64_t bytes_per_sec)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);

  j->speed = bytes_per_sec;
  /* Forget debt run up at the old speed: the new one starts now. */
  j->next_slot = monotonic_seconds ();
  pthread_cond_broadcast (&j->throttle_cond);
  nbdkit_debug ("%s: job speed limit %" PRIu64 " bytes/s", j->p.name,
                bytes_per_sec);
}

/* Sleep until the speed limit lets the job read again.  False if the
 * job was cancelled meanwhile.
 */
static bool
throttle_wait (struct job *j)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);

  for (;;) {
    double now = monotonic_seconds (), wait;
    struct timespec ts;
    uint64_t pending;

    if (j->cancel)
      return false;
    if (j->speed == 0 || j->next_slot <= now)
      return true;
    /* Nothing left (writers copied the rest): end now, not later.
     * (The engine's lock nests inside ours only here.)
     */
    engine_get_stats (j->e, NULL, &pending, NULL, NULL);
    if (pending == 0 || !engine_is_active (j->e))
      return true;
    wait = MIN (j->next_slot - now, 1.0);
    clock_gettime (CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t) wait;
    ts.tv_nsec += (long) ((wait - (time_t) wait) * 1e9);
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait (&j->throttle_cond, &j->lock, &ts);
  }
}

/* Pay for bytes read under the speed limit.  A burst of at most one
 * chunk per worker is allowed after an idle spell, no more.
 */
static void
throttle_pay (struct job *j, uint64_t bytes)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  double now = monotonic_seconds ();
  double burst = (double) JOB_CHUNK * j->p.workers;

  if (j->speed == 0 || bytes == 0)
    return;
  if (j->next_slot < now - burst / j->speed)
    j->next_slot = now - burst / j->speed;
  j->next_slot += (double) bytes / j->speed;
}

static void *
worker (void *vp)
{
  struct job *j = vp;
  uint64_t chunk = MAX (1u, JOB_CHUNK / engine_cluster_size (j->e));
  uint64_t first, n;

  while (throttle_wait (j) &&
         (n = engine_claim (j->e, &j->cursor, chunk, &first, true)) > 0) {
    uint64_t read_bytes = 0;
    int r = engine_copy_counted (j->e, j->next, first, n, j->p.use_extents,
                                 false, &read_bytes);

    throttle_pay (j, read_bytes);
    if (r == -1)
      break;                    /* The engine is broken now. */
    maybe_write_status (j);
  }
  return NULL;
}

/* Decide the outcome and publish or keep back the target.  Called
 * once, with no copies of ours in flight.
 */
static void
conclude (struct job *j, bool cancel)
{
  uint64_t pending;
  bool broken;
  CLEANUP_FREE char *eerr = NULL;
  enum job_state state;
  struct target *t = engine_target (j->e);

  /* No more copy-before-write: the job is over either way.  Let the
   * copies still in flight end before the target is finished.
   */
  engine_deactivate (j->e);
  engine_quiesce (j->e);
  engine_get_stats (j->e, NULL, &pending, &broken, &eerr);

  if (broken)
    state = JOB_FAILED;
  else if (cancel && j->p.background_copy && pending > 0)
    state = JOB_CANCELLED;
  else if (!j->p.background_copy || pending == 0)
    state = JOB_COMPLETED;
  else
    state = JOB_FAILED;

  if (state == JOB_COMPLETED) {
    if (t->ops->finish (t, true) == -1) {
      state = JOB_FAILED;
      eerr = strdup ("flushing or publishing the target failed");
    }
  }
  else
    t->ops->finish (t, false);

  pthread_mutex_lock (&j->lock);
  j->state = state;
  if (state == JOB_FAILED && j->error == NULL)
    j->error = strdup (eerr ? eerr : "the backup did not finish");
  j->end_time = monotonic_seconds ();
  j->finished = true;
  pthread_cond_broadcast (&j->done_cond);
  pthread_mutex_unlock (&j->lock);

  if (j->p.on_end)
    j->p.on_end (j, state, j->p.opaque);
  job_write_status (j);
  emit_status_change (j, state);
  emit_job_end (j, state);
  {
    struct engine_stats st;
    double secs = j->end_time - j->start_time;
    engine_get_stats (j->e, &st, NULL, NULL, NULL);
    nbdkit_debug ("%s: job %s: %" PRIu64 " bytes written, %" PRIu64
                  " zero, %" PRIu64 " before writes, in %.3f s",
                  j->p.name, job_state_name (state), st.bytes_copied,
                  st.bytes_zero, st.bytes_by_writes, secs);
    if (state == JOB_COMPLETED)
      nbdkit_debug ("%s: target %s is complete", j->p.name, t->name);
    else
      nbdkit_debug ("%s: target left incomplete at %s%s%s", j->p.name,
                    t->working_name ? t->working_name : t->name,
                    j->error ? ": " : "", j->error ? j->error : "");
  }
}

static void *
controller (void *vp)
{
  struct job *j = vp;
  pthread_t threads[JOB_MAX_WORKERS];
  unsigned i, started = 0;
  bool cancel;

  for (i = 0; i < j->p.workers; ++i) {
    int r = pthread_create (&threads[i], NULL, worker, j);
    if (r != 0) {
      nbdkit_error ("%s: pthread_create: %s", j->p.name, strerror (r));
      if (started == 0)
        engine_break (j->e, "could not start the copy threads");
      break;
    }
    started++;
  }
  for (i = 0; i < started; ++i)
    pthread_join (threads[i], NULL);

  pthread_mutex_lock (&j->lock);
  cancel = j->cancel;
  pthread_mutex_unlock (&j->lock);
  conclude (j, cancel);
  return NULL;
}

struct job *
job_start (const struct job_params *p, struct engine *e, nbdkit_next *next)
{
  struct job *j = calloc (1, sizeof *j);
  uint64_t pending;
  int r;

  if (j == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  j->p = *p;
  j->p.workers = MIN (MAX (p->workers, 1u), JOB_MAX_WORKERS);
  j->id = strdup (p->id ? p->id : p->name);
  if (j->id == NULL ||
      (p->status_path && (j->status_path = strdup (p->status_path)) == NULL)) {
    nbdkit_error ("strdup: %m");
    free (j->id);
    free (j);
    return NULL;
  }
  if (job_id_reserve (j->id) == -1 ||
      registry_add_object ("job", j->id, j, job_describe) == -1) {
    free (j->status_path);
    free (j->id);
    free (j);
    return NULL;
  }
  j->e = e;
  j->next = next;
  /* What the snapshot protects: the whole disk, or for sync=top only
   * the allocated clusters.
   */
  {
    struct engine_stats st;

    /* Clusters already done (holes at the instant, or copied before
     * a write since the instant) are part of the job too.
     */
    engine_get_stats (e, &st, &pending, NULL, NULL);
    j->bytes_total = MIN (pending * engine_cluster_size (e)
                          + st.bytes_copied + st.bytes_zero,
                          engine_size (e));
  }
  j->speed = p->speed;
  j->start_time = monotonic_seconds ();
  j->state = JOB_RUNNING;
  pthread_mutex_init (&j->status_lock, NULL);
  pthread_mutex_init (&j->lock, NULL);
  pthread_cond_init (&j->done_cond, NULL);
  {
    pthread_condattr_t attr;
    pthread_condattr_init (&attr);
    pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
    pthread_cond_init (&j->throttle_cond, &attr);
    pthread_condattr_destroy (&attr);
  }
  j->next_slot = j->start_time;

  nbdkit_debug ("%s: job started: sync=%s, %" PRIu64 " bytes, "
                "cluster size %u, %u workers, target %s", p->name, p->sync,
                engine_size (e), engine_cluster_size (e),
                p->background_copy ? j->p.workers : 0,
                engine_target (e)->working_name
                ? engine_target (e)->working_name : engine_target (e)->name);
  job_write_status (j);
  emit_status_change (j, JOB_RUNNING);

  if (p->background_copy) {
    r = pthread_create (&j->controller, NULL, controller, j);
    if (r != 0) {
      nbdkit_error ("%s: pthread_create: %s", p->name, strerror (r));
      engine_break (e, "could not start the job");
      conclude (j, false);
    }
    else
      j->have_controller = true;
  }
  return j;
}

enum job_state
job_finish (struct job *j, bool wait)
{
  enum job_state state;

  pthread_mutex_lock (&j->lock);
  if (!wait && !j->finished) {
    j->cancel = true;
    pthread_cond_broadcast (&j->throttle_cond);
  }
  pthread_mutex_unlock (&j->lock);

  if (j->have_controller) {
    if (!wait)
      engine_deactivate (j->e);   /* Wakes workers waiting to claim. */
    pthread_join (j->controller, NULL);
    j->have_controller = false;
  }
  else if (!j->finished)
    conclude (j, !wait);

  pthread_mutex_lock (&j->lock);
  state = j->state;
  pthread_mutex_unlock (&j->lock);
  return state;
}

bool
job_is_finished (struct job *j)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  return j->finished;
}

void
job_free (struct job *j)
{
  if (j == NULL)
    return;
  registry_remove_object ("job", j->id);
  free (j->id);
  pthread_mutex_destroy (&j->status_lock);
  pthread_mutex_destroy (&j->lock);
  pthread_cond_destroy (&j->done_cond);
  pthread_cond_destroy (&j->throttle_cond);
  free (j->status_path);
  free (j->error);
  free (j);
}

/* The job named by args' "id", or NULL with *err filled. */
static struct job *
job_from_args (json_object *args, struct control_error *err)
{
  json_object *id;
  struct job *j;

  if (!json_object_object_get_ex (args, "id", &id) ||
      !json_object_is_type (id, json_type_string)) {
    control_fail (err, CONTROL_GENERIC_ERROR, "missing argument 'id'");
    return NULL;
  }
  j = registry_find_object ("job", json_object_get_string (id));
  if (j == NULL)
    control_fail (err, CONTROL_NOT_FOUND, "job '%s' not found",
                  json_object_get_string (id));
  return j;
}

static int
cancel_cmd (json_object *args, json_object **ret, struct control_error *err,
            void *opaque)
{
  struct job *j = job_from_args (args, err);

  if (j == NULL)
    return -1;
  pthread_mutex_lock (&j->lock);
  if (j->finished) {
    enum job_state s = j->state;
    pthread_mutex_unlock (&j->lock);
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "job '%s' has already ended (%s)", j->id,
                         job_state_name (s));
  }
  pthread_mutex_unlock (&j->lock);
  job_finish (j, false);
  return 0;
}

static int
set_speed_cmd (json_object *args, json_object **ret,
               struct control_error *err, void *opaque)
{
  struct job *j = job_from_args (args, err);
  json_object *speed;

  if (j == NULL)
    return -1;
  if (!json_object_object_get_ex (args, "speed", &speed) ||
      !json_object_is_type (speed, json_type_int) ||
      json_object_get_int64 (speed) < 0)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "'speed' must be a number of bytes per second "
                         "(0 for no limit)");
  job_set_speed (j, json_object_get_int64 (speed));
  return 0;
}

static void
register_commands (void)
{
  control_register ("job-cancel", cancel_cmd, NULL);
  control_register ("job-set-speed", set_speed_cmd, NULL);
}

void
job_register_commands (void)
{
  static pthread_once_t once = PTHREAD_ONCE_INIT;

  pthread_once (&once, register_commands);
}
