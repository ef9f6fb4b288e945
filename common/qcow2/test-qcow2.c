/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit tests for common/qcow2: create, write, read back, zero, trim,
 * reopen, refcount table growth, refusals of bad headers, and file
 * reads into buffers at every alignment.  QEMU is the referee in
 * tests/qcow2-*.bats; here we check our own model.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>

#undef NDEBUG
#include <assert.h>

#include "qcow2.h"
#include "qcow2-internal.h"

static char dir[] = "/tmp/test-qcow2.XXXXXX";

static uint64_t seed = 1;
static uint64_t
rnd (void)
{
  seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  return seed >> 33;
}

static struct qcow2_image *
open_rw (const char *path)
{
  struct qcow2_open_options o = { .readonly = false };
  return qcow2_open (path, &o);
}

static void
check_equal (struct qcow2_image *img, const unsigned char *model,
             uint64_t size)
{
  unsigned char *b = malloc (size);
  int err;

  assert (b);
  assert (qcow2_pread (img, b, size, 0, &err) == 0);
  assert (memcmp (b, model, size) == 0);
  free (b);
}

/* Random writes, zeroes and trims against a model, then reopen. */
static void
test_random (unsigned cb, unsigned version, uint64_t size, int ops)
{
  char path[64];
  struct qcow2_create_options c = { .size = size, .cluster_bits = cb,
                                    .version = version };
  struct qcow2_image *img;
  unsigned char *model = calloc (1, size), *buf = malloc (size);
  int i, err;
  uint64_t total = 0;

  assert (model && buf);
  snprintf (path, sizeof path, "%s/r%u-%u.qcow2", dir, cb, version);
  assert (qcow2_create (path, &c) == 0);
  assert (qcow2_create (path, &c) == -1);       /* exists */
  img = open_rw (path);
  assert (img);
  assert (qcow2_get_size (img) == size);
  check_equal (img, model, size);

  for (i = 0; i < ops; ++i) {
    uint64_t off = rnd () % size;
    uint64_t len = 1 + rnd () % (size / 8);
    unsigned kind = rnd () % 4;
    uint64_t k;

    if (len > size - off)
      len = size - off;
    total += len;
    switch (kind) {
    case 0: case 1:
      for (k = 0; k < len; ++k)
        buf[k] = rnd ();
      assert (qcow2_pwrite (img, buf, len, off, &err) == 0);
      memcpy (model + off, buf, len);
      break;
    case 2:
      assert (qcow2_zero (img, len, off, rnd () & 1, &err) == 0);
      memset (model + off, 0, len);
      break;
    case 3:
      assert (qcow2_trim (img, len, off, &err) == 0);
      memset (model + off, 0, len);
      break;
    }
    if (rnd () % 8 == 0)
      assert (qcow2_flush (img, &err) == 0);
  }
  check_equal (img, model, size);
  assert (qcow2_close (img) == 0);

  img = open_rw (path);
  assert (img);
  check_equal (img, model, size);
  assert (qcow2_close (img) == 0);
  free (model);
  free (buf);
  unlink (path);
  (void) total;
}

/* Corrupt one header field and check that open refuses it. */
static void
test_refuse (uint64_t field, unsigned width, uint64_t value)
{
  char path[64];
  struct qcow2_create_options c = { .size = 1 << 20, .cluster_bits = 16 };
  struct qcow2_open_options o = { .readonly = true };
  unsigned char b[8];
  int fd;

  snprintf (path, sizeof path, "%s/bad.qcow2", dir);
  unlink (path);
  assert (qcow2_create (path, &c) == 0);
  fd = open (path, O_WRONLY);
  assert (fd >= 0);
  if (width == 8) put_be64 (b, value); else put_be32 (b, value);
  assert (pwrite (fd, b, width, field) == width);
  close (fd);
  assert (qcow2_open (path, &o) == NULL);
  unlink (path);
}

/* full_pread at every buffer skew around the 4K-aliasing window
 * (header.c), into ranges that run past the end of the file.
 */
static void
test_full_pread (void)
{
  char path[64];
  const size_t fsize = 3 * 4096 + 100;
  unsigned char *data = malloc (fsize);
  unsigned char *mem = malloc (2 * 4096 + 8192);
  unsigned char *page;
  const size_t counts[] = { 1, 63, 64, 65, 127, 4096, 4096 + 300 };
  const uint64_t offs[] = { 0, 1, 4096, 4096 - 40, fsize - 200, fsize + 5 };
  unsigned skew, i, j;
  size_t k;
  int fd;

  assert (data && mem);
  page = (unsigned char *) (((uintptr_t) mem + 4095) & ~(uintptr_t) 4095);
  for (k = 0; k < fsize; ++k)
    data[k] = rnd ();
  snprintf (path, sizeof path, "%s/pread.bin", dir);
  fd = open (path, O_RDWR | O_CREAT | O_EXCL, 0600);
  assert (fd >= 0);
  assert (pwrite (fd, data, fsize, 0) == (ssize_t) fsize);
  for (skew = 0; skew < 80; ++skew) {
    for (i = 0; i < sizeof counts / sizeof counts[0]; ++i) {
      for (j = 0; j < sizeof offs / sizeof offs[0]; ++j) {
        uint64_t off = offs[j];
        unsigned char *b = page + skew + (off & 4095);

        memset (page, 0xa5, 2 * 4096 + 4096);
        assert (full_pread (fd, b, counts[i], off) == 0);
        for (k = 0; k < counts[i]; ++k)
          assert (b[k] == (off + k < fsize ? data[off + k] : 0));
        assert (b[counts[i]] == 0xa5);
        if (b > page)
          assert (b[-1] == 0xa5);
      }
    }
  }
  close (fd);
  unlink (path);
  free (data);
  free (mem);
}

int
main (void)
{
  char path[64];

  assert (mkdtemp (dir) != NULL);

  test_full_pread ();
  test_random (9, 3, 4 << 20, 300);
  test_random (9, 2, 4 << 20, 300);
  test_random (12, 3, 8 << 20, 200);
  test_random (16, 3, 8 << 20, 200);
  test_random (16, 2, (8 << 20) + 1000, 200);
  test_random (21, 3, 8 << 20, 50);

  /* Refcount table growth: 512-byte clusters, 16-bit refcounts: one
   * refcount block counts 128K and the first table holds 64 blocks.
   */
  {
    struct qcow2_create_options c = { .size = 32 << 20, .cluster_bits = 9 };
    struct qcow2_image *img;
    unsigned char *b = malloc (32 << 20);
    unsigned char *r = malloc (32 << 20);
    int err;
    uint64_t k;

    snprintf (path, sizeof path, "%s/grow.qcow2", dir);
    assert (b && r);
    for (k = 0; k < (32 << 20); ++k)
      b[k] = rnd ();
    assert (qcow2_create (path, &c) == 0);
    img = open_rw (path);
    assert (img);
    assert (qcow2_pwrite (img, b, 32 << 20, 0, &err) == 0);
    assert (qcow2_close (img) == 0);
    img = open_rw (path);
    assert (img);
    assert (qcow2_pread (img, r, 32 << 20, 0, &err) == 0);
    assert (memcmp (b, r, 32 << 20) == 0);
    assert (img->rt_clusters > 1);
    assert (qcow2_close (img) == 0);
    unlink (path);
    free (b);
    free (r);
  }

  test_refuse (0, 4, 0x12345678);               /* magic */
  test_refuse (4, 4, 4);                        /* version */
  test_refuse (20, 4, 8);                       /* cluster bits */
  test_refuse (20, 4, 22);
  test_refuse (32, 4, 1);                       /* encryption */
  test_refuse (40, 8, 0x10000 + 512);           /* L1 unaligned */
  test_refuse (40, 8, 0);                       /* L1 over header */
  test_refuse (40, 8, 1ULL << 40);              /* L1 beyond EOF */
  test_refuse (48, 8, 1ULL << 40);              /* refcount table */
  test_refuse (72, 8, 1ULL << 2);               /* external data */
  test_refuse (72, 8, 1ULL << 4);               /* extended L2 */
  test_refuse (72, 8, 1ULL << 20);              /* unknown */
  test_refuse (96, 4, 7);                       /* refcount order */

  rmdir (dir);
  return 0;
}
