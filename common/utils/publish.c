/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>

#include "files.h"
#include "nbdkit-stubs.h"
#include "publish.h"

char *
incomplete_name (const char *path)
{
  char *r;

  if (asprintf (&r, "%s.incomplete", path) == -1) {
    nbdkit_error ("malloc: %m");
    return NULL;
  }
  return r;
}

int
rename_durably (const char *param, const char *from, const char *to)
{
  const char *sep = param ? ": " : "";

  if (param == NULL)
    param = "";
  if (rename (from, to) == -1) {
    nbdkit_error ("%s%srename %s to %s: %m", param, sep, from, to);
    return -1;
  }
  if (fsync_parent_dir (to) == -1) {
    nbdkit_error ("%s%s%s: fsync of directory: %m", param, sep, to);
    return -1;
  }
  return 0;
}
