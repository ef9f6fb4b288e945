/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The coordinator of a group transaction (see group.h).
 *
 * Notes on the design:
 *
 * Each phase goes to every server at once: the requests are all sent
 * first, then the replies are all read, so the servers close (and
 * later open) their gates concurrently and writers wait for the
 * slowest server, not for the sum.  Each server has its own
 * connection; one request is outstanding on each at a time.
 *
 * The connections stay open from prepare to commit: a server aborts
 * the group when the connection that prepared it closes, so a
 * coordinator that dies (or is killed) releases every writer at once,
 * and one that hangs releases them at the deadline.
 *
 * Before committing, every connection is checked for news without
 * waiting: a server that died after preparing shows as end of file,
 * one whose deadline passed sent GROUP_ABORTED.  Either way nothing
 * has been committed yet, so the others are aborted.  What remains
 * is the window between that check and the commits' arrival, which
 * no coordinator without a log on the servers can close: a server
 * lost there is reported, with where the commit took effect.
 */

#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json.h>

#include "cleanup.h"
#include "nbdkit-stubs.h"
#include "nbdbackup.h"
#include "control.h"
#include "group.h"

/* The outcome of one request to one server. */
struct reply {
  int status;                   /* 0 ok, 1 refused, -1 failed/not sent */
  json_object *ret;             /* For 0. */
  char *desc;                   /* For 1. */
};

static void
reply_clear (struct reply *r)
{
  json_object_put (r->ret);
  free (r->desc);
  memset (r, 0, sizeof *r);
  r->status = -1;
}

static json_object *
request (const char *command, json_object *args)
{
  json_object *o = json_object_new_object ();

  json_object_object_add (o, "execute", json_object_new_string (command));
  json_object_object_add (o, "arguments", args);
  return o;
}

/* Send command to every server i with want[i] (args_fn makes its
 * arguments), then read every reply into rep[i].  Servers not asked
 * get status -1 too.  Returns how many answered with a return.
 */
static size_t
broadcast (struct control **ctl, size_t n, const bool *want,
           const char *command,
           json_object *(*args_fn) (size_t i, void *opaque), void *opaque,
           struct reply *rep)
{
  CLEANUP_FREE bool *sent = calloc (n, sizeof *sent);
  size_t i, ok = 0;

  if (sent == NULL) {
    nbdkit_error ("calloc: %m");
    return 0;
  }
  for (i = 0; i < n; ++i) {
    json_object *req;

    reply_clear (&rep[i]);
    if (!want[i] || ctl[i] == NULL)
      continue;
    req = request (command, args_fn (i, opaque));
    sent[i] = control_send_line (ctl[i], json_object_to_json_string_ext
                                 (req, JSON_C_TO_STRING_PLAIN |
                                  JSON_C_TO_STRING_NOSLASHESCAPE)) == 0;
    json_object_put (req);
  }
  for (i = 0; i < n; ++i) {
    CLEANUP_FREE char *line = NULL;
    json_object *o, *v;
    bool is_error;

    if (!sent[i])
      continue;
    line = control_read_reply_line (ctl[i], &is_error);
    if (line == NULL)
      continue;
    o = json_tokener_parse (line);
    if (!is_error && json_object_object_get_ex (o, "return", &v)) {
      rep[i].status = 0;
      rep[i].ret = json_object_get (v);
      ok++;
    }
    else {
      json_object *e = NULL;

      json_object_object_get_ex (o, "error", &e);
      rep[i].status = 1;
      rep[i].desc = strdup (json_get_string (e, "desc", "(no description)"));
      nbdkit_error ("control socket %s: %s: %s", control_path (ctl[i]),
                    command, rep[i].desc ? rep[i].desc : "refused");
    }
    json_object_put (o);
  }
  return ok;
}

struct args_ctx {
  const char *id;
  unsigned deadline_ms;
  struct group_member *m;
};

static json_object *
prepare_args (size_t i, void *opaque)
{
  struct args_ctx *a = opaque;
  json_object *o = json_object_new_object ();

  json_object_object_add (o, "group", json_object_new_string (a->id));
  json_object_object_add (o, "deadline-ms",
                          json_object_new_int64 (a->deadline_ms));
  json_object_object_add (o, "actions",
                          json_object_get (a->m[i].actions));
  return o;
}

static json_object *
id_args (size_t i, void *opaque)
{
  struct args_ctx *a = opaque;
  json_object *o = json_object_new_object ();

  json_object_object_add (o, "group", json_object_new_string (a->id));
  return o;
}

/* Is the server on c still holding group id?  Reads what it has sent
 * without waiting: end of file (reported by control_next_event) or
 * GROUP_ABORTED for id mean no.
 */
static bool
still_prepared (struct control *c, const char *id)
{
  json_object *ev;
  bool ok = true;
  int r;

  while ((r = control_next_event (c, 0, &ev)) == 1) {
    json_object *data = NULL;

    json_object_object_get_ex (ev, "data", &data);
    if (strcmp (json_get_string (ev, "event", ""), "GROUP_ABORTED") == 0 &&
        strcmp (json_get_string (data, "group", ""), id) == 0) {
      nbdkit_error ("control socket %s: the server aborted group %s (%s) "
                    "before the commit", control_path (c), id,
                    json_get_string (data, "reason", "?"));
      ok = false;
    }
    json_object_put (ev);
  }
  return ok && r == 0;
}

static int
cmp_int64 (const void *a, const void *b)
{
  int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;

  return x < y ? -1 : x > y;
}

static void
summarise (struct group_member *m, size_t n, struct group_result *res)
{
  CLEANUP_FREE int64_t *t = calloc (n ? n : 1, sizeof *t);
  size_t i, k = 0;

  res->closed_p50_us = res->closed_max_us = -1;
  if (t == NULL)
    return;
  for (i = 0; i < n; ++i)
    if (m[i].gate_closed_us >= 0)
      t[k++] = m[i].gate_closed_us;
  if (k == 0)
    return;
  qsort (t, k, sizeof *t, cmp_int64);
  res->closed_p50_us = t[(k - 1) / 2];
  res->closed_max_us = t[k - 1];
}

int
group_transaction (struct group_member *m, size_t n,
                   const struct group_options *opts,
                   struct group_result *res)
{
  CLEANUP_FREE struct control **ctl = calloc (n ? n : 1, sizeof *ctl);
  CLEANUP_FREE struct reply *rep = calloc (n ? n : 1, sizeof *rep);
  CLEANUP_FREE bool *want = calloc (n ? n : 1, sizeof *want);
  struct args_ctx a = { .deadline_ms = opts->deadline_ms, .m = m };
  size_t i, ok, committed = 0;
  int status = NBDBACKUP_EXIT_OK;
  bool abort_all = false;

  memset (res, 0, sizeof *res);
  if (ctl == NULL || rep == NULL || want == NULL) {
    nbdkit_error ("calloc: %m");
    return NBDBACKUP_EXIT_FAILED;
  }
  if (opts->id)
    snprintf (res->id, sizeof res->id, "%s", opts->id);
  else
    snprintf (res->id, sizeof res->id, "nbdbackup-%ld-%lld",
              (long) getpid (), (long long) time (NULL));
  a.id = res->id;
  for (i = 0; i < n; ++i) {
    m[i].prepared = m[i].committed = false;
    m[i].prepare_us = m[i].gate_closed_us = -1;
    rep[i].status = -1;
  }

  /* Connect to all first: a server that cannot be reached stops the
   * group before any gate closes.
   */
  for (i = 0; i < n; ++i) {
    ctl[i] = control_connect (m[i].socket);
    if (ctl[i] == NULL) {
      status = NBDBACKUP_EXIT_FAILED;
      goto out;
    }
    want[i] = true;
  }

  /* Phase 1. */
  ok = broadcast (ctl, n, want, "group-prepare", prepare_args, &a, rep);
  for (i = 0; i < n; ++i) {
    m[i].prepared = rep[i].status == 0;
    if (m[i].prepared)
      m[i].prepare_us = json_get_int64 (rep[i].ret, "prepare-us", -1);
    else if (rep[i].status == 1 && status == NBDBACKUP_EXIT_OK)
      status = NBDBACKUP_EXIT_REFUSED;
    else if (rep[i].status == -1)
      status = NBDBACKUP_EXIT_FAILED;
  }
  if (ok < n) {
    abort_all = true;
    goto out;
  }
  clock_gettime (CLOCK_REALTIME, &res->instant);
  nbdkit_debug ("group %s: every gate is closed", res->id);

  if (opts->before_commit && opts->before_commit (opts->opaque) == -1) {
    status = NBDBACKUP_EXIT_FAILED;
    abort_all = true;
    goto out;
  }
  for (i = 0; i < n; ++i)
    if (!still_prepared (ctl[i], res->id)) {
      status = NBDBACKUP_EXIT_FAILED;
      abort_all = true;
    }
  if (abort_all)
    goto out;

  /* Phase 2. */
  broadcast (ctl, n, want, "group-commit", id_args, &a, rep);
  for (i = 0; i < n; ++i) {
    m[i].committed = rep[i].status == 0;
    if (m[i].committed) {
      m[i].gate_closed_us = json_get_int64 (rep[i].ret, "gate-closed-us", -1);
      committed++;
    }
  }
  if (committed < n) {
    nbdkit_error ("group %s: committed on %zu of %zu servers: the group's "
                  "instant holds only where it was committed", res->id,
                  committed, n);
    status = NBDBACKUP_EXIT_FAILED;
  }

 out:
  if (abort_all) {
    size_t prepared = 0;

    for (i = 0; i < n; ++i) {
      want[i] = m[i].prepared;
      prepared += m[i].prepared;
    }
    if (prepared > 0) {
      broadcast (ctl, n, want, "group-abort", id_args, &a, rep);
      for (i = 0; i < n; ++i)
        if (rep[i].status == 0)
          m[i].gate_closed_us = json_get_int64 (rep[i].ret, "gate-closed-us",
                                                -1);
    }
    nbdkit_error ("group %s: nothing was applied (aborted on the %zu "
                  "of %zu servers that had prepared)", res->id, prepared, n);
  }
  summarise (m, n, res);
  for (i = 0; i < n; ++i) {
    reply_clear (&rep[i]);
    control_close (ctl[i]);
  }
  return status;
}
