/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* What the raw and qcow2 targets share: the TARGET.incomplete rule
 * (the naming and renaming are common/utils' publish.c, which the cbw
 * filter shares), and the tool's policy for what is already there.
 *
 * A file target is created as TARGET.incomplete and renamed to TARGET
 * only after every byte is written and flushed, then the directory is
 * synced, so TARGET exists only if it is complete, even after a
 * crash.  A stale TARGET.incomplete (an earlier run that failed or
 * was killed) is simply removed: it can never be mistaken for a
 * backup, and nothing resumes from it.
 *
 * An existing TARGET is refused unless --force.  With --force it is
 * removed as soon as the new TARGET.incomplete exists, not kept until
 * the rename: if the new copy then fails, the user is left with no
 * TARGET rather than an old one that a script could take for the
 * result of this run (the cbw filter does the same with cbw-target).
 */

#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nbdkit-stubs.h"
#include "target.h"

int
file_target_check (const char *path, bool force)
{
  struct stat st;

  if (lstat (path, &st) == -1) {
    if (errno == ENOENT)
      return 0;
    nbdkit_error ("%s: %m", path);
    return -1;
  }
  if (!S_ISREG (st.st_mode)) {
    nbdkit_error ("%s: exists and is not a regular file", path);
    return -1;
  }
  if (!force) {
    nbdkit_error ("%s: already exists (use --force to replace it)", path);
    return -1;
  }
  return 0;
}

int
remove_stale (const char *incomplete)
{
  if (unlink (incomplete) == -1 && errno != ENOENT) {
    nbdkit_error ("%s: cannot remove stale file: %m", incomplete);
    return -1;
  }
  return 0;
}

int
remove_old_target (const char *path)
{
  if (unlink (path) == -1 && errno != ENOENT) {
    nbdkit_error ("%s: cannot remove: %m", path);
    return -1;
  }
  return 0;
}
