/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit tests for the sidecar file format: what is written reads back
 * bit for bit, and every damaged image (each bit of each byte
 * flipped, each truncation, each kind of bad record) is refused with
 * the right reason, never accepted; version 1 files still read.
 */

#include <config.h>

#undef NDEBUG
#include <assert.h>
#include <endian.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "format.h"

#define DISK (UINT64_C (10) * 1024 * 1024 + 4096)   /* Not whole granules. */

struct seen {
  unsigned n;
  char names[8][32];
  uint32_t granularity[8];
  bool recording[8], inconsistent[8];
  uint8_t data[8][4096];
  size_t data_len[8];
};

static int
collect (const struct format_record *r, void *opaque)
{
  struct seen *s = opaque;
  unsigned i = s->n++;

  assert (i < 8 && r->name_len < 32 && r->data_len <= 4096);
  memcpy (s->names[i], r->name, r->name_len);
  s->names[i][r->name_len] = '\0';
  s->granularity[i] = r->granularity;
  s->recording[i] = r->recording;
  s->inconsistent[i] = r->inconsistent;
  assert ((r->data == NULL) == r->inconsistent);
  if (r->data)
    memcpy (s->data[i], r->data, r->data_len);
  s->data_len[i] = r->data_len;
  return 0;
}

static int
never (const struct format_record *r, void *opaque)
{
  abort ();
}

/* Fix the metadata checksum after editing a version 2 image (and the
 * bits checksum of a clean one).
 */
static void
recrc (uint8_t *p, size_t len)
{
  uint32_t start, c;
  static const uint8_t zero[8];

  memcpy (&start, p + 44, 4);
  start = le32toh (start);
  if (!(p[12] & 1)) {
    c = htole32 (crc32 (0, p + start, len - start));
    memcpy (p + 40, &c, 4);
  }
  c = crc32 (0, p, 36);
  c = crc32 (c, zero, 8);
  c = htole32 (crc32 (c, p + 44, start - 44));
  memcpy (p + 36, &c, 4);
}

/* Fix the checksum of a version 1 image. */
static void
recrc1 (uint8_t *p, size_t len)
{
  uint32_t c = htole32 (crc32 (0, p, len - 4));
  memcpy (p + len - 4, &c, 4);
}

static int
parse (const uint8_t *p, size_t len, char *problem)
{
  struct format_header h;

  return format_parse (p, len, &h, never, NULL, problem, 256);
}

static void
expect_problem (const uint8_t *p, size_t len, const char *want)
{
  char problem[256] = "";

  assert (parse (p, len, problem) == -1);
  if (strcmp (problem, want) != 0) {
    fprintf (stderr, "got '%s', expected '%s'\n", problem, want);
    abort ();
  }
}

/* A file with three bitmaps: 64K with bits, 4K inconsistent, 1M. */
static void
build (struct format_writer *w, bool in_use, uint8_t *bits64k,
       uint8_t *bits1m)
{
  struct format_header h = {
    .in_use = in_use, .power = in_use, .disk_size = DISK,
    .uuid = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 },
    .generation = 7, .boot_id = { 0xb0, 0x07 },
    .disk_stat = true, .disk_mtime = !in_use,
    .disk_file_size = 12345, .disk_mtime_ns = 67890, .disk_ino = 42,
  };
  size_t i;

  for (i = 0; i < 4096; ++i)
    bits64k[i] = (uint8_t) (i * 37 + 11);
  bits1m[0] = 0xff;
  bits1m[1] = 0xff;             /* Past the 11 granules: dropped. */
  assert (format_begin (w, &h) == 0);
  assert (format_add (w, "b64k", 65536, true, false, "ignored",
                      bits64k, 4096) == 0);
  assert (format_add (w, "b4k", 4096, false, true, "it broke",
                      NULL, 0) == 0);
  assert (format_add (w, "b1m", 1048576, false, false, NULL, bits1m, 2) == 0);
  assert (format_end (w) == 0);
}

static void
check_seen (const struct seen *s)
{
  assert (s->n == 3);
  assert (strcmp (s->names[0], "b64k") == 0 && s->granularity[0] == 65536);
  assert (s->recording[0] && !s->inconsistent[0]);
  assert (strcmp (s->names[1], "b4k") == 0 && s->inconsistent[1]);
  assert (s->data_len[1] == 0 && !s->recording[1]);
  assert (strcmp (s->names[2], "b1m") == 0 && s->data_len[2] == 2);
  assert (s->data[2][0] == 0xff && s->data[2][1] == 0x07);
}

static void
test_round_trip (void)
{
  struct format_writer w;
  static uint8_t b64[4096], b1m[2];
  struct seen s = { 0 };
  char problem[256];
  struct format_header h;

  build (&w, false, b64, b1m);
  assert (format_parse (w.p, w.len, &h, collect, &s,
                        problem, sizeof problem) == 0);
  assert (h.version == 2 && !h.in_use && !h.power && h.disk_size == DISK);
  assert (h.generation == 7 && h.uuid[0] == 1 && h.uuid[15] == 16);
  assert (h.boot_id[0] == 0xb0 && h.boot_id[1] == 0x07);
  assert (h.disk_stat && h.disk_mtime && h.disk_file_size == 12345 &&
          h.disk_mtime_ns == 67890 && h.disk_ino == 42);
  check_seen (&s);
  /* 161 granules of 64K: 21 bytes, the last holding one bit. */
  assert (s.data_len[0] == format_bits_len (DISK, 65536));
  assert (s.data_len[0] == 21);
  assert (memcmp (s.data[0], b64, 20) == 0);
  assert (s.data[0][20] == (b64[20] & 1));
  /* The bits start on a page: the server maps them. */
  assert (w.len >= 4096 && w.p[44] == 0 && w.p[45] == 0x10);
  format_free (&w);

  /* An in-use file keeps its bits (the server maps them), with no
   * bits checksum: changing a bit is no damage.
   */
  memset (&s, 0, sizeof s);
  build (&w, true, b64, b1m);
  w.p[4096] ^= 0x10;
  assert (format_parse (w.p, w.len, &h, collect, &s,
                        problem, sizeof problem) == 0);
  assert (h.in_use && h.power && !h.disk_mtime && h.disk_stat);
  check_seen (&s);
  assert (s.data_len[0] == 21 && s.data[0][0] == (b64[0] ^ 0x10));
  format_free (&w);

  /* Too few bits is refused when writing. */
  {
    struct format_header h0 = { .disk_size = DISK };
    assert (format_begin (&w, &h0) == 0);
    assert (format_add (&w, "x", 4096, true, false, NULL, b64, 10) == -1);
    format_free (&w);
  }
}

/* A version 1 image (the first release's), built by hand. */
static size_t
build_v1 (uint8_t *p, bool in_use)
{
  size_t n = 0;
  uint32_t v32;
  uint64_t v64;

#define PUT32(v) (v32 = htole32 (v), memcpy (p + n, &v32, 4), n += 4)
#define PUT64(v) (v64 = htole64 (v), memcpy (p + n, &v64, 8), n += 8)
  memcpy (p, "NBDKDIRT", 8); n = 8;
  PUT32 (1); PUT32 (in_use ? 1 : 0); PUT64 (0); PUT64 (DISK);
  PUT32 (2); PUT32 (0);
  /* "b1m": 11 granules, 2 bytes of bits. */
  PUT32 (3); PUT32 (1); PUT32 (1048576); PUT32 (0); PUT64 (in_use ? 0 : 2);
  memcpy (p + n, "b1m", 3); n += 3;
  if (!in_use) {
    p[n++] = 0x81;
    p[n++] = 0x04;
  }
  /* "bad": inconsistent. */
  PUT32 (3); PUT32 (2); PUT32 (4096); PUT32 (0); PUT64 (0);
  memcpy (p + n, "bad", 3); n += 3;
  v64 = htole64 (n + 4);
  memcpy (p + 16, &v64, 8);
  n += 4;
  recrc1 (p, n);
  return n;
#undef PUT32
#undef PUT64
}

static void
test_version_1 (void)
{
  uint8_t p[256];
  size_t len;
  struct seen s = { 0 };
  struct format_header h;
  char problem[256];

  len = build_v1 (p, false);
  assert (format_parse (p, len, &h, collect, &s, problem, 256) == 0);
  assert (h.version == 1 && !h.in_use && h.disk_size == DISK);
  assert (h.generation == 0 && !h.disk_stat);
  assert (s.n == 2 && strcmp (s.names[0], "b1m") == 0);
  assert (!s.inconsistent[0] && s.recording[0] && s.data_len[0] == 2);
  assert (s.data[0][0] == 0x81 && s.data[0][1] == 0x04);
  assert (strcmp (s.names[1], "bad") == 0 && s.inconsistent[1]);

  /* In use: version 1 kept no bits then, so nothing is trusted. */
  memset (&s, 0, sizeof s);
  len = build_v1 (p, true);
  assert (format_parse (p, len, &h, collect, &s, problem, 256) == 0);
  assert (h.version == 1 && h.in_use && s.n == 2);
  assert (s.inconsistent[0] && s.inconsistent[1] && s.data_len[0] == 0);

  /* Damage is still found. */
  len = build_v1 (p, false);
  p[44] ^= 4;
  expect_problem (p, len, "checksum mismatch: the file is corrupt");
  recrc1 (p, len);
  expect_problem (p, len, "bitmap record 0: unknown flags 0x5");
}

static void
test_damage (void)
{
  struct format_writer w;
  static uint8_t b64[4096], b1m[2];
  uint8_t *copy;
  char problem[256], want[256];
  size_t i, bit;
  const size_t rec0 = 128;

  build (&w, false, b64, b1m);
  copy = malloc (w.len);
  assert (copy);

  /* Every bit of every byte of the metadata and of the first bits
   * flipped (the padding between is covered by the checksum too).
   */
  for (i = 0; i < w.len; ++i) {
    if (i == 300)
      i = 4096;
    for (bit = 0; bit < 8; ++bit) {
      memcpy (copy, w.p, w.len);
      copy[i] ^= 1u << bit;
      assert (parse (copy, w.len, problem) == -1);
    }
  }
  memcpy (copy, w.p, w.len);
  copy[100] ^= 4;
  expect_problem (copy, w.len, "checksum mismatch: the file is corrupt");
  memcpy (copy, w.p, w.len);
  copy[w.len - 8] ^= 4;
  expect_problem (copy, w.len,
                  "checksum mismatch in the bits: the file is corrupt");
  memcpy (copy, w.p, w.len);
  copy[0] ^= 1;
  expect_problem (copy, w.len, "not a dirty bitmap file (bad magic)");
  memcpy (copy, w.p, w.len);
  copy[8] = 3;
  expect_problem (copy, w.len,
                  "version 3 is newer than this filter reads (versions 1 "
                  "to 2): it was written by a newer nbdkit-backup");
  copy[8] = 0;
  expect_problem (copy, w.len, "version 0 is not a version of this file");

  /* Every truncation. */
  for (i = 0; i < w.len; i += (i < 200 ? 1 : 97)) {
    assert (parse (w.p, i, problem) == -1);
    if (i >= 128) {
      snprintf (want, sizeof want, "truncated: %zu of %zu bytes", i, w.len);
      expect_problem (w.p, i, want);
    }
  }
  expect_problem (w.p, 10,
                  "truncated: 10 bytes, too short for a dirty bitmap file");
  expect_problem ((const uint8_t *) "not a bitmap file at all", 24,
                  "not a dirty bitmap file (bad magic)");

  /* Bad records behind a good checksum. */
  memcpy (copy, w.p, w.len);
  copy[12] = 0x10;                      /* Unknown file flag. */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "unknown flags 0x10");
  memcpy (copy, w.p, w.len);
  copy[44] = 0x20;                      /* Bits start not on a page. */
  expect_problem (copy, w.len, "bad bits start 4128: the file is corrupt");
  memcpy (copy, w.p, w.len);
  copy[120] = 1;
  recrc (copy, w.len);
  expect_problem (copy, w.len, "reserved header field is not zero");
  memcpy (copy, w.p, w.len);
  copy[32] = 2;                         /* Fewer records than there are. */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "8 bytes after the last bitmap's bits");
  memcpy (copy, w.p, w.len);
  copy[32] = 4;                         /* More records than there are. */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "bitmap record 3: bad name length 0");
  memcpy (copy, w.p, w.len);
  copy[rec0 + 8] = 0x01;                /* Granularity 65537. */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "bitmap record 0: bad granularity 65537");
  memcpy (copy, w.p, w.len);
  copy[rec0 + 4] = 0x10;                /* Unknown record flag. */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "bitmap record 0: unknown flags 0x10");
  memcpy (copy, w.p, w.len);
  copy[rec0 + 12] = 1;                  /* A reason, yet consistent. */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "bitmap record 0: bad reason length 1");
  memcpy (copy, w.p, w.len);
  copy[rec0 + 24] = 20;                 /* Bits for another disk size. */
  recrc (copy, w.len);
  expect_problem (copy, w.len,
                  "bitmap record 0: bits length 20 does not match the "
                  "disk size");
  memcpy (copy, w.p, w.len);
  copy[rec0 + 16] = 8;                  /* Bits in the metadata. */
  copy[rec0 + 17] = 0;
  recrc (copy, w.len);
  expect_problem (copy, w.len, "bitmap record 0: bad bits offset 8");
  memcpy (copy, w.p, w.len);
  copy[rec0] = 0;                       /* Name length 0. */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "bitmap record 0: bad name length 0");
  memcpy (copy, w.p, w.len);
  copy[rec0 + 32 + 1] = '\0';           /* "b\0" "4k". */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "bitmap record 0: the name holds a NUL byte");
  free (copy);
  format_free (&w);

  /* Two bitmaps of one name. */
  {
    struct format_header h = { .in_use = true, .disk_size = DISK };
    assert (format_begin (&w, &h) == 0);
    assert (format_add (&w, "same", 4096, true, true, NULL, NULL, 0) == 0);
    assert (format_add (&w, "same", 4096, true, true, NULL, NULL, 0) == 0);
    assert (format_end (&w) == 0);
    expect_problem (w.p, w.len, "bitmap records 0 and 1 have the same name");
    format_free (&w);
  }
}

int
main (void)
{
  test_round_trip ();
  test_version_1 ();
  test_damage ();
  printf ("test-format: ok\n");
  return 0;
}
