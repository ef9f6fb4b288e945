/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Messages.  The tool provides nbdkit_error and nbdkit_debug itself
 * (instead of linking common/utils' libstubs) because it needs two
 * things the stubs don't do: clear the progress bar's line before a
 * message is printed, and remember the first error, which is the root
 * cause that --json reports.  The common/ libraries (qcow2) report
 * through these functions too, so their errors are handled the same.
 */

#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "nbdkit-stubs.h"
#include "nbdbackup.h"

/* nbdkit-stubs.h declares this for libstubs; define it for anyone who
 * reads it.
 */
const char *stub_program_name = PROGRAM_NAME;

bool log_verbose = false;
void (*log_before_message) (void) = NULL;

static char *first_error;

const char *
log_first_error (void)
{
  return first_error;
}

void
nbdkit_verror (const char *fs, va_list args)
{
  char *msg;

  /* The caller has restored errno, so %m formats its error. */
  if (vasprintf (&msg, fs, args) == -1)
    msg = NULL;
  if (log_before_message)
    log_before_message ();
  fprintf (stderr, "%s: %s\n", PROGRAM_NAME, msg ? msg : fs);
  if (first_error == NULL)
    first_error = msg;
  else
    free (msg);
}

void
nbdkit_error (const char *fs, ...)
{
  va_list args;
  int saved = errno;

  va_start (args, fs);
  errno = saved;
  nbdkit_verror (fs, args);
  va_end (args);
  errno = saved;
}

void
nbdkit_vdebug (const char *fs, va_list args)
{
  if (!log_verbose && getenv ("NBDBACKUP_DEBUG") == NULL)
    return;
  if (log_before_message)
    log_before_message ();
  fprintf (stderr, "%s: debug: ", PROGRAM_NAME);
  vfprintf (stderr, fs, args);
  fputc ('\n', stderr);
}

void
nbdkit_debug (const char *fs, ...)
{
  va_list args;
  int saved = errno;

  va_start (args, fs);
  errno = saved;
  nbdkit_vdebug (fs, args);
  va_end (args);
  errno = saved;
}

void
warning (const char *fs, ...)
{
  va_list args;

  if (log_before_message)
    log_before_message ();
  fprintf (stderr, "%s: warning: ", PROGRAM_NAME);
  va_start (args, fs);
  vfprintf (stderr, fs, args);
  va_end (args);
  fputc ('\n', stderr);
}
