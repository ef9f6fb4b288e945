/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The one qcow2 probe: is this file a qcow2 image, and what backing
 * file does it name?  Used by the targets (an existing target, a
 * backing file of unknown format) wherever the answer is needed, so
 * that every part of the suite agrees on it.
 */

#include <config.h>

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-plugin.h>

#include "cleanup.h"
#include "files.h"
#include "qcow2-internal.h"

/* Header fields the probe reads (qcow2 specification). */
#define HDR_BACKING_OFFSET 8
#define HDR_BACKING_SIZE   16
#define HDR_MIN            20
#define MAX_BACKING_NAME   1023

int
qcow2_probe_fd (int fd, const char *path, char **backing)
{
  unsigned char hdr[HDR_MIN];
  uint64_t off;
  uint32_t len;
  char *name;

  if (backing)
    *backing = NULL;
  if (full_pread (fd, hdr, sizeof hdr, 0) == -1) {
    nbdkit_error ("%s: read: %m", path);
    return -1;
  }
  if (get_be32 (hdr) != QCOW2_MAGIC)
    return 0;
  if (backing == NULL)
    return 1;
  off = get_be64 (hdr + HDR_BACKING_OFFSET);
  len = get_be32 (hdr + HDR_BACKING_SIZE);
  if (off == 0 || len == 0)
    return 1;
  if (len > MAX_BACKING_NAME) {
    nbdkit_error ("%s: backing file name is too long", path);
    return -1;
  }
  name = calloc (1, len + 1);
  if (name == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  if (full_pread (fd, name, len, off) == -1) {
    nbdkit_error ("%s: read: %m", path);
    free (name);
    return -1;
  }
  *backing = name;
  return 1;
}

int
qcow2_probe (const char *what, const char *path, char **backing)
{
  CLEANUP_CLOSE int fd = open_regular_file (what, path, O_RDONLY,
                                            OPEN_ALLOW_BLOCKDEV);

  if (fd == -1)
    return -1;
  return qcow2_probe_fd (fd, path, backing);
}
