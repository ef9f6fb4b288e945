/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit tests for the sidecar file format: what is written reads back
 * bit for bit, and every damaged image (each bit of each byte
 * flipped, each truncation, each kind of bad record) is refused with
 * the right reason, never accepted.
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

/* Fix the checksum after editing an image. */
static void
recrc (uint8_t *p, size_t len)
{
  uint32_t c = htole32 (crc32 (0, p, len - 4));
  memcpy (p + len - 4, &c, 4);
}

static int
parse (const uint8_t *p, size_t len, char *problem)
{
  bool in_use;
  uint64_t size;

  return format_parse (p, len, &in_use, &size, never, NULL, problem, 256);
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
  size_t i;

  for (i = 0; i < 4096; ++i)
    bits64k[i] = (uint8_t) (i * 37 + 11);
  bits1m[0] = 0xff;
  bits1m[1] = 0xff;             /* Past the 11 granules: dropped. */
  assert (format_begin (w, in_use, DISK) == 0);
  assert (format_add (w, "b64k", 65536, true, false, bits64k, 4096) == 0);
  assert (format_add (w, "b4k", 4096, false, true, NULL, 0) == 0);
  assert (format_add (w, "b1m", 1048576, false, false, bits1m, 2) == 0);
  assert (format_end (w) == 0);
}

static void
test_round_trip (void)
{
  struct format_writer w;
  static uint8_t b64[4096], b1m[2];
  struct seen s = { 0 };
  char problem[256];
  bool in_use = true;
  uint64_t size = 0;

  build (&w, false, b64, b1m);
  assert (format_parse (w.p, w.len, &in_use, &size, collect, &s,
                        problem, sizeof problem) == 0);
  assert (!in_use && size == DISK && s.n == 3);
  assert (strcmp (s.names[0], "b64k") == 0 && s.granularity[0] == 65536);
  assert (s.recording[0] && !s.inconsistent[0]);
  /* 161 granules of 64K: 21 bytes, the last holding one bit. */
  assert (s.data_len[0] == format_bits_len (DISK, 65536));
  assert (s.data_len[0] == 21);
  assert (memcmp (s.data[0], b64, 20) == 0);
  assert (s.data[0][20] == (b64[20] & 1));
  assert (strcmp (s.names[1], "b4k") == 0 && s.inconsistent[1]);
  assert (s.data_len[1] == 0 && !s.recording[1]);
  assert (strcmp (s.names[2], "b1m") == 0 && s.data_len[2] == 2);
  assert (s.data[2][0] == 0xff && s.data[2][1] == 0x07);
  format_free (&w);

  /* An in-use file: names and flags, no bits, all inconsistent. */
  memset (&s, 0, sizeof s);
  build (&w, true, b64, b1m);
  assert (format_parse (w.p, w.len, &in_use, &size, collect, &s,
                        problem, sizeof problem) == 0);
  assert (in_use && s.n == 3);
  assert (s.inconsistent[0] && s.inconsistent[1] && s.inconsistent[2]);
  assert (s.recording[0] && s.data_len[0] == 0);
  format_free (&w);

  /* Too few bits is refused when writing. */
  assert (format_begin (&w, false, DISK) == 0);
  assert (format_add (&w, "x", 4096, true, false, b64, 10) == -1);
  format_free (&w);
}

static void
test_damage (void)
{
  struct format_writer w;
  static uint8_t b64[4096], b1m[2];
  uint8_t *copy;
  char problem[256], want[256];
  size_t i, bit;

  build (&w, false, b64, b1m);
  copy = malloc (w.len);
  assert (copy);

  /* Every bit of every byte flipped. */
  for (i = 0; i < w.len; ++i)
    for (bit = 0; bit < 8; ++bit) {
      memcpy (copy, w.p, w.len);
      copy[i] ^= 1u << bit;
      assert (parse (copy, w.len, problem) == -1);
    }
  memcpy (copy, w.p, w.len);
  copy[100] ^= 4;
  expect_problem (copy, w.len, "checksum mismatch: the file is corrupt");
  memcpy (copy, w.p, w.len);
  copy[w.len - 1] ^= 4;
  expect_problem (copy, w.len, "checksum mismatch: the file is corrupt");
  memcpy (copy, w.p, w.len);
  copy[0] ^= 1;
  expect_problem (copy, w.len, "not a dirty bitmap file (bad magic)");
  memcpy (copy, w.p, w.len);
  copy[8] = 2;
  expect_problem (copy, w.len,
                  "version 2 is not supported (this filter reads version 1)");

  /* Every truncation. */
  for (i = 0; i < w.len; ++i) {
    assert (parse (w.p, i, problem) == -1);
    if (i >= 44) {
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
  copy[12] = 2;                         /* Unknown file flag. */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "unknown flags 0x2");
  memcpy (copy, w.p, w.len);
  copy[32] = 2;                         /* Fewer records than there are. */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "29 bytes after the last bitmap record");
  memcpy (copy, w.p, w.len);
  copy[32] = 4;                         /* More records than there are. */
  recrc (copy, w.len);
  expect_problem (copy, w.len,
                  "bitmap record 3 runs past the end of the file");
  memcpy (copy, w.p, w.len);
  copy[40 + 8] = 0x01;                  /* Granularity 65537. */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "bitmap record 0: bad granularity 65537");
  memcpy (copy, w.p, w.len);
  copy[40 + 4] = 0x10;                  /* Unknown record flag. */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "bitmap record 0: unknown flags 0x10");
  memcpy (copy, w.p, w.len);
  copy[40 + 16] = 20;                   /* Bits for another disk size. */
  recrc (copy, w.len);
  expect_problem (copy, w.len,
                  "bitmap record 0: bits length 20 does not match the "
                  "disk size");
  memcpy (copy, w.p, w.len);
  copy[40] = 0;                         /* Name length 0. */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "bitmap record 0: bad name length 0");
  memcpy (copy, w.p, w.len);
  copy[40 + 24 + 1] = '\0';             /* "b\0" "4k". */
  recrc (copy, w.len);
  expect_problem (copy, w.len, "bitmap record 0: the name holds a NUL byte");
  free (copy);
  format_free (&w);

  /* Two bitmaps of one name. */
  assert (format_begin (&w, true, DISK) == 0);
  assert (format_add (&w, "same", 4096, true, false, NULL, 0) == 0);
  assert (format_add (&w, "same", 4096, true, false, NULL, 0) == 0);
  assert (format_end (&w) == 0);
  expect_problem (w.p, w.len, "bitmap records 0 and 1 have the same name");
  format_free (&w);
}

int
main (void)
{
  test_round_trip ();
  test_damage ();
  printf ("test-format: ok\n");
  return 0;
}
