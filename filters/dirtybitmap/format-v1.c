/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The sidecar file's format: checking and reading a file image, and
 * writing one.  No I/O and no global state, so that the unit test and
 * the fuzzer can take it alone.
 *
 * Version 1.  Integers are little-endian.
 *
 *   Header, 40 bytes:
 *     0   8  magic "NBDKDIRT"
 *     8   4  version: 1
 *    12   4  flags: bit 0 IN_USE; the other bits are zero
 *    16   8  file size: every byte, checksum included
 *    24   8  disk size in bytes
 *    32   4  number of bitmaps
 *    36   4  reserved, zero
 *   Then each bitmap: a 24-byte record, its name, its bits:
 *     0   4  name length, 1 to 1023 (the name has no NUL byte)
 *     4   4  flags: bit 0 RECORDING, bit 1 INCONSISTENT; others zero
 *     8   4  granularity: a power of two from 512 to 2^31
 *    12   4  reserved, zero
 *    16   8  bits length: ceil (ceil (disk size / granularity) / 8),
 *            or 0 for an inconsistent bitmap and in an in-use file
 *    24      the name, then the bits (bit i of byte j: granule 8j+i)
 *   Then a CRC-32 (zlib's crc32) of every byte before it, 4 bytes.
 *
 * Checks, in order, each with its own message: length, magic,
 * version, file size against the header, checksum, flags, then every
 * record (lengths, flags, granularity, bits length against the disk
 * size, names unique and without NUL) and nothing after the last.
 * Bits past the last granule are ignored.
 */

#include <config.h>

#include <endian.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "format.h"
#include "ispowerof2.h"

#define MAGIC "NBDKDIRT"
#define HEADER_SIZE 40
#define RECORD_SIZE 24
#define CRC_SIZE 4
#define FILE_IN_USE 1u
#define BM_RECORDING 1u
#define BM_INCONSISTENT 2u

static uint32_t
get32 (const uint8_t *p)
{
  uint32_t v;
  memcpy (&v, p, 4);
  return le32toh (v);
}

static uint64_t
get64 (const uint8_t *p)
{
  uint64_t v;
  memcpy (&v, p, 8);
  return le64toh (v);
}

uint64_t
format_bits_len (uint64_t disk_size, uint32_t granularity)
{
  uint64_t granules = disk_size / granularity +
    (disk_size % granularity != 0);
  return granules / 8 + (granules % 8 != 0);
}

#define PROBLEM(...) \
  do { snprintf (problem, problem_len, __VA_ARGS__); return -1; } while (0)

/* Walk the records of a checked header.  With fn NULL, only check. */
static int
walk (const uint8_t *buf, size_t len, bool in_use, uint64_t disk_size,
      uint32_t nr,
      int (*fn) (const struct format_record *r, void *opaque),
      void *opaque, char *problem, size_t problem_len)
{
  uint64_t pos = HEADER_SIZE, end = len - CRC_SIZE;
  uint32_t i, j;

  for (i = 0; i < nr; ++i) {
    struct format_record r;
    uint32_t name_len, flags;
    uint64_t bits_len;

    if (end - pos < RECORD_SIZE)
      PROBLEM ("bitmap record %" PRIu32 " runs past the end of the file",
               i);
    name_len = get32 (buf + pos);
    flags = get32 (buf + pos + 4);
    r.granularity = get32 (buf + pos + 8);
    bits_len = get64 (buf + pos + 16);
    if (name_len < 1 || name_len > FORMAT_MAX_NAME)
      PROBLEM ("bitmap record %" PRIu32 ": bad name length %" PRIu32, i,
               name_len);
    if (flags & ~(BM_RECORDING | BM_INCONSISTENT))
      PROBLEM ("bitmap record %" PRIu32 ": unknown flags 0x%" PRIx32, i,
               flags);
    if (get32 (buf + pos + 12) != 0)
      PROBLEM ("bitmap record %" PRIu32 ": reserved field is not zero", i);
    if (r.granularity < FORMAT_MIN_GRANULARITY ||
        r.granularity > FORMAT_MAX_GRANULARITY ||
        !is_power_of_2 (r.granularity))
      PROBLEM ("bitmap record %" PRIu32 ": bad granularity %" PRIu32, i,
               r.granularity);
    r.recording = flags & BM_RECORDING;
    r.inconsistent = in_use || (flags & BM_INCONSISTENT);
    if ((in_use || (flags & BM_INCONSISTENT)) ? bits_len != 0
        : bits_len != format_bits_len (disk_size, r.granularity))
      PROBLEM ("bitmap record %" PRIu32 ": bits length %" PRIu64
               " does not match the disk size", i, bits_len);
    pos += RECORD_SIZE;
    if (end - pos < name_len || end - pos - name_len < bits_len)
      PROBLEM ("bitmap record %" PRIu32 " runs past the end of the file",
               i);
    r.name = (const char *) buf + pos;
    r.name_len = name_len;
    if (memchr (r.name, '\0', name_len))
      PROBLEM ("bitmap record %" PRIu32 ": the name holds a NUL byte", i);
    pos += name_len;
    r.data = r.inconsistent ? NULL : buf + pos;
    r.data_len = bits_len;
    pos += bits_len;

    if (fn == NULL) {
      /* Names are unique: compare with every earlier record. */
      uint64_t q = HEADER_SIZE;
      for (j = 0; j < i; ++j) {
        uint32_t nl = get32 (buf + q);
        uint64_t bl = get64 (buf + q + 16);
        if (nl == name_len &&
            memcmp (buf + q + RECORD_SIZE, r.name, nl) == 0)
          PROBLEM ("bitmap records %" PRIu32 " and %" PRIu32
                   " have the same name", j, i);
        q += RECORD_SIZE + nl + bl;
      }
    }
    else if (fn (&r, opaque) == -1)
      return -1;
  }
  if (pos != end)
    PROBLEM ("%" PRIu64 " bytes after the last bitmap record",
             end - pos);
  return 0;
}

int
format_parse (const uint8_t *buf, size_t len, bool *in_use,
               uint64_t *disk_size,
               int (*fn) (const struct format_record *r, void *opaque),
               void *opaque, char *problem, size_t problem_len)
{
  uint32_t version, flags, nr;
  uint64_t file_size;

  if (len < HEADER_SIZE + CRC_SIZE) {
    if (len >= 8 && memcmp (buf, MAGIC, 8) != 0)
      PROBLEM ("not a dirty bitmap file (bad magic)");
    PROBLEM ("truncated: %zu bytes, too short for a dirty bitmap file",
             len);
  }
  if (memcmp (buf, MAGIC, 8) != 0)
    PROBLEM ("not a dirty bitmap file (bad magic)");
  version = get32 (buf + 8);
  if (version != FORMAT_VERSION)
    PROBLEM ("version %" PRIu32 " is not supported (this filter reads "
             "version %d)", version, FORMAT_VERSION);
  file_size = get64 (buf + 16);
  if (len < file_size)
    PROBLEM ("truncated: %zu of %" PRIu64 " bytes", len, file_size);
  if (len > file_size)
    PROBLEM ("%zu bytes but its header says %" PRIu64 ": the file is "
             "corrupt", len, file_size);
  if (crc32 (0, buf, len - CRC_SIZE) != get32 (buf + len - CRC_SIZE))
    PROBLEM ("checksum mismatch: the file is corrupt");
  flags = get32 (buf + 12);
  if (flags & ~FILE_IN_USE)
    PROBLEM ("unknown flags 0x%" PRIx32, flags);
  if (get32 (buf + 36) != 0)
    PROBLEM ("reserved header field is not zero");
  nr = get32 (buf + 32);
  *in_use = flags & FILE_IN_USE;
  *disk_size = get64 (buf + 24);
  if (walk (buf, len, *in_use, *disk_size, nr, NULL, NULL,
            problem, problem_len) == -1)
    return -1;
  if (fn)
    return walk (buf, len, *in_use, *disk_size, nr, fn, opaque,
                 problem, problem_len);
  return 0;
}


static int
append (struct format_writer *b, const void *data, size_t n)
{
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    uint8_t *p;

    while (cap < b->len + n)
      cap *= 2;
    p = realloc (b->p, cap);
    if (p == NULL)
      return -1;
    b->p = p;
    b->cap = cap;
  }
  if (data)
    memcpy (b->p + b->len, data, n);
  else
    memset (b->p + b->len, 0, n);
  b->len += n;
  return 0;
}

static int
append32 (struct format_writer *b, uint32_t v)
{
  v = htole32 (v);
  return append (b, &v, 4);
}

static int
append64 (struct format_writer *b, uint64_t v)
{
  v = htole64 (v);
  return append (b, &v, 8);
}

int
format_begin (struct format_writer *w, bool in_use, uint64_t disk_size)
{
  memset (w, 0, sizeof *w);
  w->in_use = in_use;
  w->disk_size = disk_size;
  if (append (w, MAGIC, 8) == -1 ||
      append32 (w, FORMAT_VERSION) == -1 ||
      append32 (w, in_use ? FILE_IN_USE : 0) == -1 ||
      append64 (w, 0) == -1 ||                  /* File size, at the end. */
      append64 (w, disk_size) == -1 ||
      append32 (w, 0) == -1 ||                  /* Count, at the end. */
      append32 (w, 0) == -1)
    return -1;
  return 0;
}

int
format_add (struct format_writer *w, const char *name, uint32_t granularity,
            bool recording, bool inconsistent, const uint8_t *bits,
            size_t bits_len)
{
  size_t name_len = strlen (name);
  bool with_bits = !w->in_use && !inconsistent;
  uint64_t len = with_bits ? format_bits_len (w->disk_size, granularity) : 0;

  if (with_bits && (bits == NULL || bits_len < len))
    return -1;
  if (append32 (w, name_len) == -1 ||
      append32 (w, (recording ? BM_RECORDING : 0) |
                (inconsistent ? BM_INCONSISTENT : 0)) == -1 ||
      append32 (w, granularity) == -1 ||
      append32 (w, 0) == -1 ||
      append64 (w, len) == -1 ||
      append (w, name, name_len) == -1)
    return -1;
  if (len > 0) {
    uint64_t granules = w->disk_size / granularity +
      (w->disk_size % granularity != 0);

    if (append (w, bits, len) == -1)
      return -1;
    /* Bits past the last granule are written as zero. */
    if (granules % 8)
      w->p[w->len - 1] &= (1u << (granules % 8)) - 1;
  }
  w->nr++;
  return 0;
}

int
format_end (struct format_writer *w)
{
  uint64_t size = htole64 (w->len + CRC_SIZE);
  uint32_t nr = htole32 (w->nr);

  memcpy (w->p + 16, &size, 8);
  memcpy (w->p + 32, &nr, 4);
  return append32 (w, crc32 (0, w->p, w->len));
}

void
format_free (struct format_writer *w)
{
  free (w->p);
  w->p = NULL;
  w->len = w->cap = 0;
}
