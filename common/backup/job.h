/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* A backup job: the background copy of a snapshot's protected
 * clusters to the target (for sync=full; none for sync=none), its
 * outcome, and its status file.
 */

#ifndef NBDKIT_BACKUP_JOB_H
#define NBDKIT_BACKUP_JOB_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "engine.h"

enum job_state {
  JOB_RUNNING,
  JOB_COMPLETED,
  JOB_FAILED,
  JOB_CANCELLED,
};

struct job;
struct json_object;

#define JOB_MAX_WORKERS 64u

struct job_params {
  const char *name;             /* "cbw", for messages. */
  const char *sync;             /* "full", "none": for status. */
  bool background_copy;         /* Copy every protected cluster. */
  unsigned workers;             /* Parallel copiers, >= 1. */
  const char *status_path;      /* NULL: no status file. */
  bool use_extents;             /* next->can_extents was true. */
  uint64_t speed;               /* Bytes/s for the job's reads, 0 = no limit. */
  const char *id;               /* Job id for the control socket. */
  /* Called once when the job ends (from the thread that ends it),
   * before the JOB_STATUS_CHANGE event, e.g. to settle a bitmap.
   */
  void (*on_end) (struct job *j, enum job_state state, void *opaque);
  void *opaque;
};

struct job {
  /* Fields set by job_start and never changed. */
  struct job_params p;
  char *id;
  char *status_path;
  struct engine *e;
  nbdkit_next *next;            /* Shared context for reading. */
  uint64_t bytes_total;
  double start_time;

  /* Status file writes are serialized, each describing the job as it
   * is when it is written, so the last write is the newest state.
   */
  pthread_mutex_t status_lock;

  /* This lock protects the fields below. */
  pthread_mutex_t lock;
  pthread_cond_t done_cond;
  enum job_state state;
  bool cancel;
  bool finished;                /* Target finished, state final. */
  double end_time;
  double last_status;
  char *error;
  pthread_t controller;
  bool have_controller;
  /* The speed limit (a token bucket paid after each copy): workers
   * wait until next_slot before claiming.  Copy-before-write never
   * looks at it.  throttle_cond wakes sleepers on a speed change or
   * cancel.
   */
  uint64_t speed;
  double next_slot;
  pthread_cond_t throttle_cond;

  /* Work cursor, moved by engine_claim under the engine's lock. */
  uint64_t cursor;
};

/* Name of a state for status and messages. */
extern const char *job_state_name (enum job_state s);

/* Start a job over engine e (already protecting its clusters) reading
 * through next.  With background_copy, workers start now and the job
 * completes when every protected cluster is on the target.  NULL on
 * error (reported).
 */
extern struct job *job_start (const struct job_params *p, struct engine *e,
                              nbdkit_next *next);

/* End the job: with wait, let a running background copy finish; else
 * cancel it.  A job with nothing left to copy (sync=none, or a
 * finished copy) ends as completed unless the snapshot broke.  Returns
 * the final state.
 */
extern enum job_state job_finish (struct job *j, bool wait);

/* True once the job has ended (its target finished, its state final);
 * its thread may still be settling the bitmap and sending events.
 */
extern bool job_is_finished (struct job *j);

/* Change the background job's speed limit at run time (bytes per
 * second of source reads, 0 = unlimited).  Thread-safe; takes effect
 * at once, also for workers already sleeping.  Copy-before-write is
 * never throttled.
 * XXX For the control socket (common/control): a "job-set-speed"
 * command should call this.
 */
extern void job_set_speed (struct job *j, uint64_t bytes_per_sec);

/* The job as query-jobs shows it (a new json-c object), for the
 * registry's describe function.
 */
extern struct json_object *job_describe (void *j);

/* Register job-cancel {"id"} and job-set-speed {"id", "speed"} with
 * the control socket (once per process; call from .get_ready).
 */
extern void job_register_commands (void);

/* Free a finished job (and remove it from the registry). */
extern void job_free (struct job *j);

/* Write the status file now (if configured).  0 or -1 (reported). */
extern int job_write_status (struct job *j);

/* Write a status file saying only state and an error message, before
 * any job exists (so a bad path is refused at start).  0 or -1.
 */
extern int job_write_initial_status (const char *path, const char *state);

#endif /* NBDKIT_BACKUP_JOB_H */
