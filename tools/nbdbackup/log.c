/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Messages.  nbdkit_error and nbdkit_debug come from common/utils'
 * libstubs, as in the unit tests, so that the common/ libraries'
 * (qcow2's) errors are handled the same way as the tool's own.  The
 * tool sets the stubs' hooks for the two things it needs on top:
 * clearing the progress bar's line before a message is printed (see
 * progress.c), and remembering the first error, which is the root
 * cause that --json reports.  Debug messages follow --verbose and
 * NBDBACKUP_DEBUG instead of the stubs' NBDKIT_BACKUP_DEBUG.
 */

#include <config.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdkit-stubs.h"
#include "nbdbackup.h"

bool log_verbose = false;

static char *first_error;
/* Errors may come from several threads at once: the copy engine's
 * workers, and a group backup copying disks in parallel.
 */
static pthread_mutex_t first_error_lock = PTHREAD_MUTEX_INITIALIZER;

const char *
log_first_error (void)
{
  const char *r;

  pthread_mutex_lock (&first_error_lock);
  r = first_error;
  pthread_mutex_unlock (&first_error_lock);
  return r;
}

static void
remember_error (const char *msg)
{
  pthread_mutex_lock (&first_error_lock);
  if (first_error == NULL)
    first_error = strdup (msg);
  pthread_mutex_unlock (&first_error_lock);
}

static bool
debug_enabled (void)
{
  return log_verbose || getenv ("NBDBACKUP_DEBUG") != NULL;
}

void
log_init (void)
{
  stub_program_name = PROGRAM_NAME;
  stub_error_hook = remember_error;
  stub_debug_enabled = debug_enabled;
}

void
warning (const char *fs, ...)
{
  va_list args;

  if (stub_before_message)
    stub_before_message ();
  fprintf (stderr, "%s: warning: ", PROGRAM_NAME);
  va_start (args, fs);
  vfprintf (stderr, fs, args);
  va_end (args);
  fputc ('\n', stderr);
}
