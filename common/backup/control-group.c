/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Group transactions: one instant across several servers.
 *
 * A coordinator (nbdbackup's group.c) asks every server to
 * group-prepare, then, once all have answered, to group-commit; any
 * failure before that and it asks them all to group-abort.
 *
 *   group-prepare {"group": ID, "deadline-ms": N, "actions": [...]}
 *     closes the write gate, waits until no write is in flight, and
 *     prepares the actions exactly as "transaction" does (everything
 *     that can fail: bad arguments, allocations, opening targets).
 *     Then it answers, with the gate left closed: writers wait.
 *   group-commit {"group": ID}: commits the prepared actions (which
 *     cannot fail), opens the gate, runs the actions' after steps.
 *   group-abort {"group": ID}: undoes them and opens the gate.
 *
 * The server never waits on the coordinator for longer than the
 * deadline (counted from the moment the gate closed): a timer thread
 * aborts the group then, by itself, so a coordinator that dies or
 * hangs never wedges a writer.  The connection that prepared the
 * group closing also aborts it at once (a coordinator that exits has
 * nothing more to say).  A commit after an abort is refused, with the
 * reason.  Events: GROUP_PREPARED, GROUP_COMMITTED, GROUP_ABORTED
 * (reason "abort", "deadline", "client" or "shutdown").
 *
 * At most one group is held at a time, and while it is held only
 * queries and the group commands run; every other command is refused.
 * One that would close the gate (a transaction, an action) would wait
 * for it while holding exec_lock, which the commit needs; one that
 * changes state (snapshot-stop, job-cancel) could undo what the
 * prepared actions rely on, and their commit cannot fail.
 *
 * Lock order: see lock-order.h.  Every change of the group's state
 * happens under exec_lock (1), as for any command: the deadline
 * timer and a departing client take it too, with nothing else held.
 * group_lock is a leaf taken under it, so that the timer can wait on
 * group_cond without exec_lock.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "control.h"
#include "control-commands.h"
#include "gate.h"

#define GROUP_ID_MAX 128
#define DEADLINE_MAX_MS 600000  /* Ten minutes. */

enum group_state {
  GROUP_NONE,                   /* No group yet. */
  GROUP_PREPARED,               /* Gate closed, actions prepared. */
  GROUP_COMMITTED,
  GROUP_ABORTED,
};

/* Changed only under exec_lock AND group_lock; read under either. */
static pthread_mutex_t group_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t group_cond;       /* CLOCK_MONOTONIC. */
static enum group_state state;
static char group_id[GROUP_ID_MAX + 1]; /* The current or last group. */
static uint64_t generation;             /* One per prepared group. */
static uint64_t owner;                  /* The client that prepared. */
static struct timespec closed_at;       /* When the gate closed. */
static struct timespec deadline;
static const char *reason;              /* Why the last group aborted. */
static int64_t closed_us;               /* How long its gate was closed. */
static unsigned timers;                 /* Timer threads running. */
/* Only under exec_lock: */
static struct action_list actions;

static pthread_once_t cond_once = PTHREAD_ONCE_INIT;

static void
init_cond (void)
{
  pthread_condattr_t attr;

  pthread_condattr_init (&attr);
  pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
  pthread_cond_init (&group_cond, &attr);
  pthread_condattr_destroy (&attr);
}

static int64_t
us_between (const struct timespec *a, const struct timespec *b)
{
  return (b->tv_sec - a->tv_sec) * INT64_C (1000000) +
    (b->tv_nsec - a->tv_nsec) / 1000;
}

static const char *
reason_text (const char *why)
{
  if (strcmp (why, "deadline") == 0)
    return "its deadline passed";
  if (strcmp (why, "client") == 0)
    return "the client that prepared it went away";
  if (strcmp (why, "shutdown") == 0)
    return "the server was shutting down";
  return "group-abort was asked";
}

/* End the prepared group (exec_lock held): commit or abort its
 * actions, open the gate, send the event.  why is NULL for a commit.
 */
static void
end_group (const char *why)
{
  struct timespec now;
  json_object *data = json_object_new_object ();

  if (why == NULL)
    actions_commit (&actions);
  else
    actions_abort (&actions);
  gate_open ();
  clock_gettime (CLOCK_MONOTONIC, &now);
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&group_lock);
    state = why ? GROUP_ABORTED : GROUP_COMMITTED;
    reason = why;
    closed_us = us_between (&closed_at, &now);
    pthread_cond_broadcast (&group_cond);
  }
  nbdkit_debug ("control: group %s %s after the gate was closed for "
                "%" PRIi64 " us%s%s", group_id,
                why ? "aborted" : "committed", closed_us,
                why ? ": " : "", why ? reason_text (why) : "");
  if (why == NULL)
    actions_after (&actions);
  actions_free (&actions);

  json_object_object_add (data, "group", json_object_new_string (group_id));
  json_object_object_add (data, "gate-closed-us",
                          json_object_new_int64 (closed_us));
  if (why)
    json_object_object_add (data, "reason", json_object_new_string (why));
  control_emit_event (why ? "GROUP_ABORTED" : "GROUP_COMMITTED", data);
}

/* Abort the group of generation gen at its deadline, unless it ended
 * before.  Detached: nothing joins it (a join under exec_lock could
 * wait for a timer waiting for exec_lock); control_group_shutdown
 * waits for the count to drop instead.
 */
static void *
timer_thread (void *vp)
{
  uint64_t gen = (uintptr_t) vp;
  bool fire;

  pthread_mutex_lock (&group_lock);
  while (generation == gen && state == GROUP_PREPARED) {
    int r = pthread_cond_timedwait (&group_cond, &group_lock, &deadline);
    if (r == ETIMEDOUT)
      break;
  }
  fire = generation == gen && state == GROUP_PREPARED;
  pthread_mutex_unlock (&group_lock);

  if (fire) {
    control_exec_lock ();
    /* A commit may have come meanwhile: it won the race. */
    if (generation == gen && state == GROUP_PREPARED)
      end_group ("deadline");
    control_exec_unlock ();
  }

  pthread_mutex_lock (&group_lock);
  timers--;
  pthread_cond_broadcast (&group_cond);
  pthread_mutex_unlock (&group_lock);
  return NULL;
}

/* The "group" argument, checked: NULL with *err filled if bad. */
static const char *
get_group_arg (json_object *args, const char *cmd,
               const char *const *allowed, struct control_error *err)
{
  json_object *g;
  char what[64];

  {
    json_object_object_foreach (args, key, val) {
      size_t i;
      bool ok = false;

      (void) val;
      for (i = 0; allowed[i]; ++i)
        ok |= strcmp (key, allowed[i]) == 0;
      if (!ok) {
        control_fail (err, CONTROL_GENERIC_ERROR,
                      "%s: unknown argument '%s'", cmd, key);
        return NULL;
      }
    }
  }
  if (!json_object_object_get_ex (args, "group", &g) ||
      !json_object_is_type (g, json_type_string)) {
    control_fail (err, CONTROL_GENERIC_ERROR,
                  "%s: 'group' (the group transaction's id, a string) "
                  "is missing", cmd);
    return NULL;
  }
  snprintf (what, sizeof what, "%s: 'group'", cmd);
  if (control_check_name (what, json_object_get_string (g), GROUP_ID_MAX,
                          err) == -1)
    return NULL;
  return json_object_get_string (g);
}

/* {"group": ID, "deadline-ms": N, "actions": [...]} */
static int
prepare_cmd (json_object *args, json_object **ret,
             struct control_error *err, void *opaque)
{
  static const char *const allowed[] =
    { "group", "deadline-ms", "actions", NULL };
  const char *id = get_group_arg (args, "group-prepare", allowed, err);
  json_object *d = NULL, *list = NULL, *data;
  int64_t ms;
  struct timespec before;
  pthread_t thread;
  uint64_t gen;
  int r;

  if (id == NULL)
    return -1;
  if (state == GROUP_PREPARED)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "group-prepare: group transaction '%s' is already "
                         "prepared: commit or abort it first", group_id);
  if (!json_object_object_get_ex (args, "deadline-ms", &d) ||
      !json_object_is_type (d, json_type_int) ||
      (ms = json_object_get_int64 (d)) < 1 || ms > DEADLINE_MAX_MS)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "group-prepare: 'deadline-ms' must be an integer "
                         "from 1 to %d (milliseconds)", DEADLINE_MAX_MS);
  json_object_object_get_ex (args, "actions", &list);
  if (actions_parse (list, "group-prepare", &actions, err) == -1)
    return -1;

  pthread_once (&cond_once, init_cond);
  clock_gettime (CLOCK_MONOTONIC, &before);
  gate_close ();
  if (actions_prepare (&actions, err) == -1) {
    gate_open ();
    actions_free (&actions);
    return -1;
  }
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&group_lock);
    clock_gettime (CLOCK_MONOTONIC, &closed_at);
    deadline = closed_at;
    deadline.tv_sec += ms / 1000;
    deadline.tv_nsec += (ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
      deadline.tv_sec++;
      deadline.tv_nsec -= 1000000000;
    }
    strcpy (group_id, id);
    gen = ++generation;
    owner = control_current_client ();
    state = GROUP_PREPARED;
    timers++;
  }
  r = pthread_create (&thread, NULL, timer_thread, (void *) (uintptr_t) gen);
  if (r == 0)
    pthread_detach (thread);
  else {
    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&group_lock);
      timers--;
    }
    end_group ("abort");
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "group-prepare: cannot start the deadline timer: "
                         "%s: nothing was applied", strerror (r));
  }

  data = json_object_new_object ();
  json_object_object_add (data, "group", json_object_new_string (id));
  json_object_object_add (data, "deadline-ms", json_object_new_int64 (ms));
  control_emit_event ("GROUP_PREPARED", data);

  *ret = json_object_new_object ();
  json_object_object_add (*ret, "group", json_object_new_string (id));
  json_object_object_add (*ret, "deadline-ms", json_object_new_int64 (ms));
  /* How long closing the gate waited for writes in flight (and the
   * actions took to prepare).
   */
  json_object_object_add (*ret, "prepare-us",
                          json_object_new_int64 (us_between (&before,
                                                             &closed_at)));
  return 0;
}

/* Is group id the one prepared now?  0, or -1 with *err saying what
 * became of it.
 */
static int
check_prepared (const char *cmd, const char *id, struct control_error *err)
{
  bool same = strcmp (id, group_id) == 0;

  if (state == GROUP_PREPARED && same)
    return 0;
  if (state == GROUP_PREPARED)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: group transaction '%s' is not prepared "
                         "(group transaction '%s' is)", cmd, id, group_id);
  if (state == GROUP_ABORTED && same)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: group transaction '%s' was aborted (%s): "
                         "nothing was applied", cmd, id, reason_text (reason));
  if (state == GROUP_COMMITTED && same)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: group transaction '%s' is already committed",
                         cmd, id);
  return control_fail (err, CONTROL_GENERIC_ERROR,
                       "%s: no group transaction '%s' is prepared", cmd, id);
}

static json_object *
end_reply (void)
{
  json_object *o = json_object_new_object ();

  json_object_object_add (o, "group", json_object_new_string (group_id));
  json_object_object_add (o, "gate-closed-us",
                          json_object_new_int64 (closed_us));
  if (state == GROUP_ABORTED)
    json_object_object_add (o, "reason", json_object_new_string (reason));
  return o;
}

/* {"group": ID} */
static int
commit_cmd (json_object *args, json_object **ret,
            struct control_error *err, void *opaque)
{
  static const char *const allowed[] = { "group", NULL };
  const char *id = get_group_arg (args, "group-commit", allowed, err);

  if (id == NULL || check_prepared ("group-commit", id, err) == -1)
    return -1;
  end_group (NULL);
  *ret = end_reply ();
  return 0;
}

/* {"group": ID}.  Aborting a group that has aborted already (at its
 * deadline, say) succeeds, so a coordinator can abort everywhere
 * without first asking what happened.
 */
static int
abort_cmd (json_object *args, json_object **ret,
           struct control_error *err, void *opaque)
{
  static const char *const allowed[] = { "group", NULL };
  const char *id = get_group_arg (args, "group-abort", allowed, err);

  if (id == NULL)
    return -1;
  if (state == GROUP_ABORTED && strcmp (id, group_id) == 0) {
    *ret = end_reply ();
    return 0;
  }
  if (check_prepared ("group-abort", id, err) == -1)
    return -1;
  end_group ("abort");
  *ret = end_reply ();
  return 0;
}

void
control_group_register (void)
{
  control_register ("group-prepare", prepare_cmd, NULL);
  control_register ("group-commit", commit_cmd, NULL);
  control_register ("group-abort", abort_cmd, NULL);
}

int
control_group_check_idle (struct control_error *err)
{
  if (state != GROUP_PREPARED)
    return 0;
  return control_fail (err, CONTROL_GENERIC_ERROR,
                       "group transaction '%s' is prepared and holds the "
                       "write gate: commit or abort it first", group_id);
}

int
control_group_check_command (const char *name, struct control_error *err)
{
  if (strncmp (name, "query-", 6) == 0 || strncmp (name, "group-", 6) == 0 ||
      strcmp (name, "qmp_capabilities") == 0)
    return 0;
  return control_group_check_idle (err);
}

json_object *
control_group_describe (void)
{
  json_object *o;
  struct timespec now;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&group_lock);

  if (state == GROUP_NONE)
    return NULL;
  o = json_object_new_object ();
  json_object_object_add (o, "group", json_object_new_string (group_id));
  json_object_object_add (o, "state", json_object_new_string
                          (state == GROUP_PREPARED ? "prepared"
                           : state == GROUP_COMMITTED ? "committed"
                           : "aborted"));
  if (state == GROUP_PREPARED) {
    clock_gettime (CLOCK_MONOTONIC, &now);
    json_object_object_add (o, "deadline-left-ms",
                            json_object_new_int64
                            (us_between (&now, &deadline) / 1000));
  }
  else
    json_object_object_add (o, "gate-closed-us",
                            json_object_new_int64 (closed_us));
  if (state == GROUP_ABORTED)
    json_object_object_add (o, "reason", json_object_new_string (reason));
  return o;
}

void
control_group_client_gone (uint64_t client)
{
  if (client == 0)
    return;
  control_exec_lock ();
  if (state == GROUP_PREPARED && owner == client)
    end_group ("client");
  control_exec_unlock ();
}

void
control_group_shutdown (void)
{
  control_exec_lock ();
  if (state == GROUP_PREPARED)
    end_group ("shutdown");
  control_exec_unlock ();

  /* The timers see the group ended and return. */
  pthread_mutex_lock (&group_lock);
  while (timers > 0)
    pthread_cond_wait (&group_cond, &group_lock);
  pthread_mutex_unlock (&group_lock);
}
