/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* What every kind of target shares: recognising a qcow2 target, and
 * the publish-by-rename mechanism of file targets (raw and qcow2).
 *
 * A file target lives at "PATH.incomplete" while the job runs and is
 * renamed to PATH only once complete and flushed; the directory is
 * synced after each rename, so that after a crash either the old name
 * or the new one is on disk, never a complete-looking half backup.
 * The renaming itself is common/utils' publish.c, which nbdbackup
 * shares.
 */

#include <config.h>

#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "publish.h"
#include "target.h"

bool
target_file_is_qcow2 (const char *path)
{
  unsigned char magic[4];
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  ssize_t r;

  if (fd == -1)
    return false;
  r = pread (fd, magic, sizeof magic, 0);
  close (fd);
  return r == sizeof magic && memcmp (magic, "QFI\xfb", 4) == 0;
}

int
target_set_names (struct target *t, const char *path)
{
  if ((t->name = strdup (path)) == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  t->working_name = incomplete_name (path);
  return t->working_name ? 0 : -1;
}

int
target_unpublish (const char *param, struct target *t)
{
  return rename_durably (param, t->name, t->working_name);
}

int
target_publish (struct target *t)
{
  return rename_durably (NULL, t->working_name, t->name);
}
