/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Scope-bound cleanup: buffers freed and locks released when the
 * enclosing block ends, whichever way it ends.
 */

#ifndef NBDKIT_BACKUP_CLEANUP_H
#define NBDKIT_BACKUP_CLEANUP_H

#include <pthread.h>
#include <stdio.h>

/* free (*ptr). */
extern void cleanup_free (void *ptr);
#define CLEANUP_FREE __attribute__ ((cleanup (cleanup_free)))

/* close (*fd) when *fd >= 0, keeping errno. */
extern void cleanup_close (int *fd);
#define CLEANUP_CLOSE __attribute__ ((cleanup (cleanup_close)))

/* fclose (*fp) when *fp != NULL, keeping errno. */
extern void cleanup_fclose (FILE **fp);
#define CLEANUP_FCLOSE __attribute__ ((cleanup (cleanup_fclose)))

/* Unlock the mutex, aborting on failure (a bug). */
extern void cleanup_mutex_unlock (pthread_mutex_t **ptr);
#define CLEANUP_MUTEX_UNLOCK __attribute__ ((cleanup (cleanup_mutex_unlock)))

/* Lock *mutex until the end of the current block. */
#define ACQUIRE_LOCK_FOR_CURRENT_SCOPE(mutex)                           \
  CLEANUP_MUTEX_UNLOCK pthread_mutex_t *_lock                           \
    __attribute__ ((unused)) = (mutex);                                 \
  do {                                                                  \
    int _r = pthread_mutex_lock (_lock);                                \
    if (_r != 0) abort_on_lock_error ("pthread_mutex_lock", _r);        \
  } while (0)

/* Abort with a message: a lock call failing means memory corruption. */
extern void abort_on_lock_error (const char *fn, int r)
  __attribute__ ((noreturn));

#endif /* NBDKIT_BACKUP_CLEANUP_H */
