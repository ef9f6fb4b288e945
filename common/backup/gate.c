/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The gate is a reader-writer lock that prefers the writer side, so a
 * transaction (the "writer" of the lock) is not starved by a stream
 * of disk writes (its "readers").  A thread-local depth makes entry
 * re-entrant within one thread: when cbw and fleece are stacked, only
 * the outermost filter takes the lock.
 *
 * It is built from a mutex and a condition variable rather than a
 * pthread_rwlock, because a closed gate belongs to no thread: a
 * group transaction (control-group.c) closes it in group-prepare and
 * opens it in group-commit or group-abort, which may run on another
 * client's thread, or on the deadline timer's.  Unlocking a
 * pthread_rwlock from a thread that did not lock it is undefined.
 *
 * The mutex is held only to change the counts below, never across a
 * write or an action.
 */

#include <config.h>

#include <pthread.h>
#include <stdbool.h>

#include "cleanup.h"
#include "gate.h"

/* This lock protects the fields below; changes are signalled on
 * gate_cond.
 */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static unsigned in_flight;      /* Writes inside the gate. */
static unsigned closers;        /* Threads waiting in gate_close. */
static unsigned waiting;        /* Writes held back at the gate. */
static bool closed;             /* A transaction holds the gate. */

static __thread unsigned depth;

void
gate_enter (void)
{
  if (depth++ > 0)
    return;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&gate_lock);
  /* A waiting closer goes first: writers do not starve it. */
  if (closed || closers > 0) {
    waiting++;
    while (closed || closers > 0)
      pthread_cond_wait (&gate_cond, &gate_lock);
    waiting--;
  }
  in_flight++;
}

void
gate_leave (void)
{
  if (--depth > 0)
    return;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&gate_lock);
  if (--in_flight == 0 && closers > 0)
    pthread_cond_broadcast (&gate_cond);
}

void
gate_cleanup (int *unused)
{
  gate_leave ();
}

void
gate_close (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&gate_lock);
  closers++;
  while (closed || in_flight > 0)
    pthread_cond_wait (&gate_cond, &gate_lock);
  closers--;
  closed = true;
}

void
gate_open (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&gate_lock);
  closed = false;
  pthread_cond_broadcast (&gate_cond);
}

bool
gate_is_closed (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&gate_lock);
  return closed;
}

unsigned
gate_writes_waiting (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&gate_lock);
  return waiting;
}

unsigned
gate_writes_in_flight (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&gate_lock);
  return in_flight;
}
