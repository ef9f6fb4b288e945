/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup wait SOCKET [JOB-ID] [--json] [--progress|--no-progress]
 *
 * Notes on the design:
 *
 * A job has ended when query-jobs gives it the status completed,
 * failed or cancelled; anything else (running, or a state a later
 * server may add) means wait on.  query-jobs is the authority, and is
 * asked every POLL_INTERVAL, so the wait ends even if an event was
 * missed (it was sent before we connected, or the server sends none).
 * Events only make it end sooner: JOB_STATUS_CHANGE, BLOCK_JOB_COMPLETED
 * or BLOCK_JOB_CANCELLED for the job asks query-jobs again at once.
 * Should the job disappear from query-jobs after such an event, the
 * event's own account of the outcome is used.
 *
 * The progress bar shows the job's current-progress of
 * total-progress; its rate counts from when the wait began.
 */

#include <config.h>

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json.h>

#include "cleanup.h"
#include "files.h"
#include "nbdkit-stubs.h"
#include "nbdbackup.h"
#include "control.h"
#include "progress.h"

#define POLL_INTERVAL 0.2               /* seconds between query-jobs */

static void
wait_usage (const char *cmd)
{
  printf ("Usage: %s [OPTIONS] SOCKET [JOB-ID]\n"
          "\n"
          "Wait until the backup job JOB-ID (default: the first running "
          "job) of\n"
          "the nbdkit server whose control socket is SOCKET has completed, "
          "failed\n"
          "or been cancelled.\n"
          "\n"
          "      --progress            show the progress bar even if stderr "
          "is not\n"
          "                            a terminal\n"
          "      --no-progress         never show the progress bar\n"
          "      --json                print the job's final state (as "
          "query-jobs\n"
          "                            describes it) as JSON\n"
          HELP_VERBOSE_HELP
          "\n"
          "Exit status: 0 the job completed, 1 cannot talk to the server, "
          "2 usage\n"
          "error, 3 the server refused (or has no such job), 4 the job "
          "failed or\n"
          "was cancelled.  See nbdbackup(1).\n",
          cmd);
}

/* The status as a string literal if it is one that ends a job, else
 * NULL.
 */
static const char *
ended_status (const char *status)
{
  static const char *const ended[] = { "completed", "failed", "cancelled" };
  size_t i;

  for (i = 0; i < sizeof ended / sizeof ended[0]; ++i)
    if (strcmp (status, ended[i]) == 0)
      return ended[i];
  return NULL;
}

/* The element of the query-jobs array with that id, borrowed, or
 * NULL.
 */
static json_object *
find_job (json_object *jobs, const char *id)
{
  size_t i, n = json_object_array_length (jobs);

  for (i = 0; i < n; ++i) {
    json_object *j = json_object_array_get_idx (jobs, i);
    const char *jid = json_get_string (j, "id", NULL);

    if (jid && strcmp (jid, id) == 0)
      return j;
  }
  return NULL;
}

/* query-jobs, checked to be an array.  Returns an exit status. */
static int
query_jobs (struct control *c, json_object **jobs)
{
  int r = control_command (c, "query-jobs", NULL, jobs);

  if (r != NBDBACKUP_EXIT_OK)
    return r;
  if (!json_object_is_type (*jobs, json_type_array)) {
    nbdkit_error ("control socket %s: query-jobs did not return an array",
                  control_path (c));
    json_object_put (*jobs);
    *jobs = NULL;
    return NBDBACKUP_EXIT_FAILED;
  }
  return NBDBACKUP_EXIT_OK;
}

int
job_choose (struct control *c, const char *id, char **ret)
{
  json_object *jobs, *job = NULL;
  size_t i, n;
  int r;

  r = query_jobs (c, &jobs);
  if (r != NBDBACKUP_EXIT_OK)
    return r;
  n = json_object_array_length (jobs);
  if (id)
    job = find_job (jobs, id);
  else {
    for (i = 0; i < n && job == NULL; ++i) {
      json_object *j = json_object_array_get_idx (jobs, i);

      if (strcmp (json_get_string (j, "status", ""), "running") == 0)
        job = j;
    }
    if (job == NULL && n > 0)
      job = json_object_array_get_idx (jobs, 0);
  }

  if (job == NULL || json_get_string (job, "id", NULL) == NULL) {
    if (id)
      nbdkit_error ("the server has no job '%s'", id);
    else
      nbdkit_error ("the server has no job");
    r = NBDBACKUP_EXIT_REFUSED;
  }
  else {
    *ret = strdup (json_get_string (job, "id", NULL));
    if (*ret == NULL) {
      nbdkit_error ("strdup: %m");
      r = NBDBACKUP_EXIT_FAILED;
    }
  }
  json_object_put (jobs);
  return r;
}

/* If ev says how job id ended, set *status (a string literal) and
 * *error (the event's, or NULL) from it.  Returns true if the event
 * is about the job ending.
 */
static bool
event_ends_job (json_object *ev, const char *id, const char **status,
                const char **error)
{
  const char *name = json_get_string (ev, "event", "");
  json_object *data;

  if (!json_object_object_get_ex (ev, "data", &data) ||
      !json_object_is_type (data, json_type_object))
    return false;

  if (strcmp (name, "JOB_STATUS_CHANGE") == 0) {
    const char *st = ended_status (json_get_string (data, "status", ""));

    if (strcmp (json_get_string (data, "id", ""), id) != 0 || st == NULL)
      return false;
    *status = st;
    return true;
  }
  if (strcmp (json_get_string (data, "device", ""), id) != 0)
    return false;
  if (strcmp (name, "BLOCK_JOB_COMPLETED") == 0) {
    *error = json_get_string (data, "error", NULL);
    *status = *error ? "failed" : "completed";
    return true;
  }
  if (strcmp (name, "BLOCK_JOB_CANCELLED") == 0) {
    *status = "cancelled";
    return true;
  }
  return false;
}

/* Print how the job ended and return the exit status. */
static int
report_end (const char *id, json_object *job, bool json)
{
  const char *status = json_get_string (job, "status", "");
  const char *error = json_get_string (job, "error", NULL);

  if (json)
    printf ("%s\n", json_object_to_json_string_ext
            (job, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));

  if (strcmp (status, "completed") == 0) {
    if (!json)
      printf ("job %s completed\n", id);
    return NBDBACKUP_EXIT_OK;
  }
  if (strcmp (status, "cancelled") == 0) {
    if (error)
      nbdkit_error ("job %s was cancelled: %s", id, error);
    else
      nbdkit_error ("job %s was cancelled", id);
  }
  else
    nbdkit_error ("job %s failed: %s", id, error ? error : "no reason given");
  return NBDBACKUP_EXIT_JOB_FAILED;
}

int
job_wait (struct control *c, const char *id, bool json, bool progress)
{
  json_object *jobs = NULL, *job = NULL, *ev;
  const char *ev_status = NULL, *ev_error = NULL;
  CLEANUP_FREE char *ev_error_copy = NULL;
  bool bar = false;
  int64_t bar_total = -1;
  double next_poll = 0;
  int r;

  for (;;) {
    double now = monotonic_seconds ();

    if (now >= next_poll) {
      json_object *j;

      r = query_jobs (c, &jobs);
      if (r != NBDBACKUP_EXIT_OK)
        goto out;
      j = find_job (jobs, id);
      if (j) {
        int64_t cur = json_get_int64 (j, "current-progress", -1);
        int64_t tot = json_get_int64 (j, "total-progress", -1);

        json_object_put (job);
        job = json_object_get (j);
        if (cur >= 0 && tot >= 0) {
          if (!bar)
            progress_start_from (tot, cur, progress);
          else if (tot != bar_total)
            progress_set_total (tot);
          bar = true;
          bar_total = tot;
          progress_update (cur);
        }
        if (ended_status (json_get_string (job, "status", "")))
          break;
      }
      else if (ev_status) {
        /* Gone from the list, but an event told how it ended. */
        json_object_put (job);
        job = json_object_new_object ();
        json_object_object_add (job, "id", json_object_new_string (id));
        json_object_object_add (job, "status",
                                json_object_new_string (ev_status));
        json_object_object_add (job, "error", ev_error ?
                                json_object_new_string (ev_error) : NULL);
        break;
      }
      else {
        nbdkit_error ("control socket %s: job %s is no longer on the "
                      "server", control_path (c), id);
        r = NBDBACKUP_EXIT_FAILED;
        goto out;
      }
      json_object_put (jobs);
      jobs = NULL;
      next_poll = monotonic_seconds () + POLL_INTERVAL;
      now = monotonic_seconds ();
    }

    r = control_next_event (c, (int) ((next_poll - now) * 1000) + 1, &ev);
    if (r == -1) {
      r = NBDBACKUP_EXIT_FAILED;
      goto out;
    }
    if (r == 1) {
      const char *st = NULL, *err = NULL;

      if (event_ends_job (ev, id, &st, &err)) {
        nbdkit_debug ("job %s: an event says it is %s", id, st);
        ev_status = st;
        if (err) {
          free (ev_error_copy);
          ev_error_copy = strdup (err);
          ev_error = ev_error_copy;
        }
        next_poll = 0;
      }
      json_object_put (ev);
    }
  }

  if (bar)
    progress_end ();
  bar = false;
  r = report_end (id, job, json);

 out:
  if (bar)
    progress_end ();
  json_object_put (jobs);
  json_object_put (job);
  return r;
}

int
wait_main (int argc, char *argv[])
{
  enum { OPT_JSON = 256, OPT_PROGRESS, OPT_NO_PROGRESS };
  static const struct option long_options[] = {
    { "help",        no_argument, NULL, 'h' },
    { "json",        no_argument, NULL, OPT_JSON },
    { "no-progress", no_argument, NULL, OPT_NO_PROGRESS },
    { "progress",    no_argument, NULL, OPT_PROGRESS },
    { "verbose",     no_argument, NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  const char *cmd = argv[0];
  bool json = false;
  int progress = -1;            /* -1 = if stderr is a terminal */
  struct control *ctl;
  char *id = NULL;
  int c, r;

  while ((c = getopt_long (argc, argv, "hv", long_options, NULL)) != -1) {
    switch (c) {
    case OPT_JSON: json = true; break;
    case OPT_PROGRESS: progress = 1; break;
    case OPT_NO_PROGRESS: progress = 0; break;
    default:
      r = common_option (c, cmd, wait_usage);
      if (r != -1)
        return r;
    }
  }
  if (argc - optind < 1)
    return usage_error (cmd, "missing SOCKET");
  if (argc - optind > 2)
    return usage_error (cmd, "unexpected argument '%s' after JOB-ID",
                        argv[optind + 2]);
  if (progress == -1)
    progress = isatty (STDERR_FILENO);

  catch_signals ();
  ctl = control_connect (argv[optind]);
  if (ctl == NULL)
    return NBDBACKUP_EXIT_FAILED;
  r = job_choose (ctl, argc - optind == 2 ? argv[optind + 1] : NULL, &id);
  if (r == NBDBACKUP_EXIT_OK)
    r = job_wait (ctl, id, json, progress);
  free (id);
  control_close (ctl);
  return r;
}
