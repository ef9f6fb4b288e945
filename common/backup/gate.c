/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The gate is a reader-writer lock that prefers the writer side, so a
 * transaction (the "writer" of the lock) is not starved by a stream
 * of disk writes (its "readers").  A thread-local depth makes entry
 * re-entrant within one thread: when cbw and fleece are stacked, only
 * the outermost filter takes the lock.
 */

#include <config.h>

#include <pthread.h>
#include <stdatomic.h>

#include "cleanup.h"
#include "gate.h"

static pthread_rwlock_t gate;
static pthread_once_t gate_once = PTHREAD_ONCE_INIT;
static __thread unsigned depth;
static atomic_uint in_flight;

static void
gate_init (void)
{
  pthread_rwlockattr_t attr;
  int r;

  pthread_rwlockattr_init (&attr);
  pthread_rwlockattr_setkind_np (&attr,
                                 PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  r = pthread_rwlock_init (&gate, &attr);
  if (r != 0)
    abort_on_lock_error ("pthread_rwlock_init", r);
  pthread_rwlockattr_destroy (&attr);
}

void
gate_enter (void)
{
  int r;

  if (depth++ > 0)
    return;
  pthread_once (&gate_once, gate_init);
  r = pthread_rwlock_rdlock (&gate);
  if (r != 0)
    abort_on_lock_error ("pthread_rwlock_rdlock", r);
  atomic_fetch_add (&in_flight, 1);
}

void
gate_leave (void)
{
  int r;

  if (--depth > 0)
    return;
  atomic_fetch_sub (&in_flight, 1);
  r = pthread_rwlock_unlock (&gate);
  if (r != 0)
    abort_on_lock_error ("pthread_rwlock_unlock", r);
}

void
gate_cleanup (int *unused)
{
  gate_leave ();
}

void
gate_close (void)
{
  int r;

  pthread_once (&gate_once, gate_init);
  r = pthread_rwlock_wrlock (&gate);
  if (r != 0)
    abort_on_lock_error ("pthread_rwlock_wrlock", r);
}

void
gate_open (void)
{
  int r = pthread_rwlock_unlock (&gate);

  if (r != 0)
    abort_on_lock_error ("pthread_rwlock_unlock", r);
}

unsigned
gate_writes_in_flight (void)
{
  return atomic_load (&in_flight);
}
