/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"

void
cleanup_free (void *ptr)
{
  free (* (void **) ptr);
}

void
cleanup_close (int *fd)
{
  int saved = errno;

  if (*fd >= 0)
    close (*fd);
  errno = saved;
}

void
cleanup_fclose (FILE **fp)
{
  int saved = errno;

  if (*fp)
    fclose (*fp);
  errno = saved;
}

void
cleanup_mutex_unlock (pthread_mutex_t **ptr)
{
  int r = pthread_mutex_unlock (*ptr);

  if (r != 0)
    abort_on_lock_error ("pthread_mutex_unlock", r);
}

void
abort_on_lock_error (const char *fn, int r)
{
  fprintf (stderr, "nbdkit-backup: %s: %s\n", fn, strerror (r));
  abort ();
}
