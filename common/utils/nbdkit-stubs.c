/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdkit_error and nbdkit_debug for programs that link common/ code
 * outside an nbdkit server: the unit tests and the nbdbackup tool.
 * Errors go to stderr; debug messages only when NBDKIT_BACKUP_DEBUG
 * is set in the environment, unless the program decides otherwise
 * through the hooks in nbdkit-stubs.h.
 */

#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbdkit-stubs.h"

static bool
debug_from_env (void)
{
  return getenv ("NBDKIT_BACKUP_DEBUG") != NULL;
}

const char *stub_program_name = "nbdkit-backup";
void (*stub_before_message) (void) = NULL;
void (*stub_error_hook) (const char *msg) = NULL;
bool (*stub_debug_enabled) (void) = debug_from_env;

void
nbdkit_verror (const char *fs, va_list args)
{
  char *msg;

  /* The caller has restored errno, so %m formats its error.  Format
   * first: the hooks may change errno.
   */
  if (vasprintf (&msg, fs, args) == -1)
    msg = NULL;
  if (stub_before_message)
    stub_before_message ();
  fprintf (stderr, "%s: %s\n", stub_program_name, msg ? msg : fs);
  if (msg && stub_error_hook)
    stub_error_hook (msg);
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
  int saved = errno;

  if (!stub_debug_enabled ())
    return;
  if (stub_before_message) {
    stub_before_message ();
    errno = saved;              /* for %m */
  }
  fprintf (stderr, "%s: debug: ", stub_program_name);
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

char *
nbdkit_absolute_path (const char *path)
{
  char *cwd, *r;

  if (path == NULL || *path == '\0') {
    nbdkit_error ("cannot convert null or empty path to an absolute path");
    return NULL;
  }
  if (*path == '/')
    return strdup (path);
  cwd = getcwd (NULL, 0);
  if (cwd == NULL) {
    nbdkit_error ("getcwd: %m");
    return NULL;
  }
  if (asprintf (&r, "%s/%s", cwd, path) == -1)
    r = NULL;
  free (cwd);
  return r;
}
