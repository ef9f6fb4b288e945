/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Copy-before-write with a deadline: the writer reads the source and
 * a detached helper thread writes the target, so the writer can stop
 * waiting at its deadline.  See the notes at the top of engine.c.
 *
 * Lock order: see lock-order.h (only the engine's lock is taken here).
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nbdkit-filter.h>

#include "engine.h"
#include "engine-impl.h"
#include "minmax.h"

#define MAX_HELPERS 64

struct timed_task {
  struct engine *e;
  uint64_t first, n, offset, len;
  char *buf;
  /* Protected by the engine's lock. */
  bool done;
  int result;
  unsigned refs;
};

/* Drop a reference.  Lock held. */
static void
task_unref_locked (struct timed_task *t)
{
  if (--t->refs == 0) {
    free (t->buf);
    free (t);
  }
}

static void *
timed_helper (void *vp)
{
  struct timed_task *t = vp;
  struct engine *e = t->e;
  uint64_t data = 0, zero = 0;
  char failure[256] = "";
  bool ok;

  ok = engine_store (e, t->buf, t->offset, t->len, &data, &zero) == 0;
  if (!ok) {
    snprintf (failure, sizeof failure,
              "writing %s at offset %" PRIu64 " failed: %s",
              engine_target_noun (e), t->offset, strerror (errno));
    nbdkit_error ("%s: %s", e->name, failure);
  }
  engine_finish_claim (e, t->first, t->n, ok, data, zero, true, failure);

  pthread_mutex_lock (&e->lock);
  t->done = true;
  t->result = ok ? 0 : -1;
  task_unref_locked (t);
  e->helpers--;
  pthread_cond_broadcast (&e->cond);
  pthread_mutex_unlock (&e->lock);
  return NULL;
}

int
engine_timed_copy (struct engine *e, nbdkit_next *next, uint64_t first,
            uint64_t n, const struct timespec *deadline)
{
  struct timed_task *t;
  char failure[256] = "";
  pthread_attr_t attr;
  pthread_t tid;
  int err = 0, r;
  uint64_t read_bytes = 0, at;

  t = calloc (1, sizeof *t);
  if (t == NULL) {
    snprintf (failure, sizeof failure, "calloc: %s", strerror (errno));
    goto failed;
  }
  t->e = e;
  t->first = first;
  t->n = n;
  t->offset = first << e->cluster_bits;
  t->len = MIN (n << e->cluster_bits, e->size - t->offset);
  t->refs = 2;
  t->buf = malloc (t->len);
  if (t->buf == NULL) {
    snprintf (failure, sizeof failure, "malloc: %s", strerror (errno));
    goto failed;
  }
  if (backup_debug_engine)
    nbdkit_debug ("%s: copy clusters %" PRIu64 "+%" PRIu64
                  " (before write, timed)", e->name, first, n);
  if (engine_read_source (e, next, t->buf, t->offset, t->len, &read_bytes,
                          &err, &at) == -1) {
    snprintf (failure, sizeof failure,
              "reading the source at offset %" PRIu64 " failed: %s",
              at, strerror (err));
    goto failed;
  }

  pthread_mutex_lock (&e->lock);
  if (e->helpers >= MAX_HELPERS) {
    /* Every helper is stuck on the target: this one would be too. */
    pthread_mutex_unlock (&e->lock);
    free (t->buf);
    free (t);
    engine_finish_claim (e, first, n, false, 0, 0, true,
                  "copy-before-write: too many copies stuck on the target");
    return COPY_TIMED_OUT;      /* As it would be, in a moment. */
  }
  e->helpers++;
  pthread_mutex_unlock (&e->lock);

  pthread_attr_init (&attr);
  pthread_attr_setdetachstate (&attr, PTHREAD_CREATE_DETACHED);
  r = pthread_create (&tid, &attr, timed_helper, t);
  pthread_attr_destroy (&attr);
  if (r != 0) {
    pthread_mutex_lock (&e->lock);
    e->helpers--;
    pthread_mutex_unlock (&e->lock);
    snprintf (failure, sizeof failure, "pthread_create: %s", strerror (r));
    goto failed;
  }

  pthread_mutex_lock (&e->lock);
  while (!t->done) {
    if (pthread_cond_timedwait (&e->cond, &e->lock, deadline) == ETIMEDOUT &&
        !t->done) {
      task_unref_locked (t);    /* The helper frees it. */
      pthread_mutex_unlock (&e->lock);
      return COPY_TIMED_OUT;
    }
  }
  r = t->result;
  task_unref_locked (t);
  pthread_mutex_unlock (&e->lock);
  return r;

 failed:
  if (t) {
    free (t->buf);
    free (t);
  }
  nbdkit_error ("%s: %s", e->name, failure);
  engine_finish_claim (e, first, n, false, 0, 0, true, failure);
  return -1;
}
