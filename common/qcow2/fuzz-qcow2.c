/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* libFuzzer harness for the qcow2 header and table parser.  Each input
 * is an image file: it is opened read-only (backing switched off, so
 * no other file is ever opened), read and mapped over its first MiB,
 * then opened read-write and written, zeroed, trimmed and flushed.
 * Whatever the input, the library must report errors, never crash,
 * hang or leak (AddressSanitizer, UndefinedBehaviorSanitizer).
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "qcow2.h"

/* Quiet stand-ins for nbdkit's logging. */
void nbdkit_error (const char *fs, ...);
void nbdkit_debug (const char *fs, ...);
void nbdkit_error (const char *fs, ...) { (void) fs; }
void nbdkit_debug (const char *fs, ...) { (void) fs; }

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static void
exercise (struct qcow2_image *img, bool write)
{
  static unsigned char buf[1024 * 1024];
  uint64_t size = qcow2_get_size (img), off, len;
  uint32_t n = size < sizeof buf ? size : sizeof buf;
  unsigned flags;
  int err;

  qcow2_pread (img, buf, n, 0, &err);
  for (off = 0; off < n; off += len) {
    if (qcow2_block_status (img, n - off, off, &len, &flags, &err) == -1 ||
        len == 0)
      break;
  }
  if (write && size > 0) {
    memset (buf, 0xa5, 4096);
    qcow2_pwrite (img, buf, size < 4096 ? size : 4096, 0, &err);
    qcow2_zero (img, size / 4, size / 4, false, &err);
    qcow2_trim (img, size / 4, size / 2, &err);
    qcow2_flush (img, &err);
    qcow2_pread (img, buf, n, 0, &err);
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  char path[64];
  struct qcow2_open_options o = { .readonly = true, .backing = "" };
  struct qcow2_image *img;
  int fd;

  fd = memfd_create ("fuzz-qcow2", 0);
  if (fd == -1)
    abort ();
  if (write (fd, data, size) != (ssize_t) size)
    abort ();
  snprintf (path, sizeof path, "/proc/self/fd/%d", fd);

  img = qcow2_open (path, &o);
  if (img) {
    exercise (img, false);
    qcow2_close (img);
    o.readonly = false;
    img = qcow2_open (path, &o);
    if (img) {
      exercise (img, true);
      qcow2_close (img);
    }
  }
  close (fd);
  return 0;
}
