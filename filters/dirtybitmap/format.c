/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The sidecar file's format, version 2: checking and reading a file
 * image, and writing one.  No I/O and no global state, so that the
 * unit test and the fuzzer can take it alone.  Version 1 is read by
 * format-v1.c.
 *
 * Version 2 keeps the bits of every consistent bitmap even while the
 * file is in use: the server maps the file (MAP_SHARED) and sets a
 * bit in it before the write it covers goes down (persist.c).  So the
 * metadata (header and directory) and the bits are checked apart: the
 * metadata has its own CRC, written once per version of the file; the
 * bits have a CRC only in a file closed cleanly.
 *
 * Integers are little-endian.
 *
 *   Header, 128 bytes:
 *     0   8  magic "NBDKDIRT"
 *     8   4  version: 2
 *    12   4  flags: bit 0 IN_USE, bit 1 POWER (the server ran with
 *            dirtybitmap-durability=power), bit 2 DISK_STAT (bytes
 *            88-111 are valid), bit 3 DISK_MTIME (byte 96 too);
 *            the other bits are zero
 *    16   8  file size
 *    24   8  disk size in bytes
 *    32   4  number of bitmaps
 *    36   4  metadata CRC-32 (zlib's crc32) of bytes [0, bits start),
 *            bytes 36 to 43 counted as zero
 *    40   4  bits CRC-32 of bytes [bits start, file size); zero in an
 *            in-use file
 *    44   4  bits start: a multiple of 4096
 *    48  16  the file's UUID: random when the file is first made,
 *            kept by every rewrite
 *    64   8  generation: 1 for a new file, one more at every rewrite
 *    72  16  the host's boot id (/proc/sys/kernel/random/boot_id)
 *            when the file was written
 *    88   8  the disk file's size  \
 *    96   8  its mtime (ns)         > as the server left it
 *   104   8  its inode number      /
 *   112  16  reserved, zero
 *   Then the directory, one record per bitmap:
 *     0   4  name length, 1 to 1023 (the name has no NUL byte)
 *     4   4  flags: bit 0 RECORDING, bit 1 INCONSISTENT; others zero
 *     8   4  granularity: a power of two from 512 to 2^31
 *    12   4  reason length, 0 to 1023: 0 unless INCONSISTENT
 *    16   8  bits offset: 0 if INCONSISTENT, else in the bits area,
 *            a multiple of 8, after the previous record's bits
 *    24   8  bits length: 0 if INCONSISTENT, else
 *            ceil (ceil (disk size / granularity) / 8)
 *    32      the name, then the reason (why it is inconsistent)
 *   Then zeroes up to bits start, and each bitmap's bits (bit i of
 *   byte j: granule 8j+i) at its offset, padded with zeroes to a
 *   multiple of 8 bytes.  The file ends after the last one's padding.
 *
 * Checks, in order, each with its own message: length, magic,
 * version, file size against the header, bits start, metadata
 * checksum, flags, bits checksum (clean files), then every record
 * (lengths, flags, granularity, bits place and length, names unique
 * and without NUL) and nothing but padding after the last.  Bits past
 * the last granule are ignored.
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
#define HEADER_SIZE 128
#define RECORD_SIZE 32
#define FILE_IN_USE 1u
#define FILE_POWER 2u
#define FILE_DISK_STAT 4u
#define FILE_DISK_MTIME 8u
#define FILE_FLAGS 15u
#define BM_RECORDING 1u
#define BM_INCONSISTENT 2u

uint32_t
format_get32 (const uint8_t *p)
{
  uint32_t v;
  memcpy (&v, p, 4);
  return le32toh (v);
}

uint64_t
format_get64 (const uint8_t *p)
{
  uint64_t v;
  memcpy (&v, p, 8);
  return le64toh (v);
}

static void
put32 (uint8_t *p, uint32_t v)
{
  v = htole32 (v);
  memcpy (p, &v, 4);
}

static void
put64 (uint8_t *p, uint64_t v)
{
  v = htole64 (v);
  memcpy (p, &v, 8);
}

uint64_t
format_bits_len (uint64_t disk_size, uint32_t granularity)
{
  uint64_t granules = disk_size / granularity +
    (disk_size % granularity != 0);
  return granules / 8 + (granules % 8 != 0);
}

static uint64_t
round8 (uint64_t n)
{
  return (n + 7) & ~UINT64_C (7);
}

#define PROBLEM(...) \
  do { snprintf (problem, problem_len, __VA_ARGS__); return -1; } while (0)

/* The metadata CRC: bytes 36-43 count as zero. */
static uint32_t
meta_crc (const uint8_t *buf, uint64_t bits_start)
{
  static const uint8_t zero[8];
  uint32_t c = crc32 (0, buf, 36);

  c = crc32 (c, zero, 8);
  return crc32 (c, buf + 44, bits_start - 44);
}

/* Walk the directory of a checked header.  With fn NULL, only check. */
static int
walk (const uint8_t *buf, size_t len, const struct format_header *h,
      uint64_t bits_start, uint32_t nr,
      int (*fn) (const struct format_record *r, void *opaque),
      void *opaque, char *problem, size_t problem_len)
{
  uint64_t pos = HEADER_SIZE, bits_end = bits_start;
  uint32_t i, j;

  for (i = 0; i < nr; ++i) {
    struct format_record r = { 0 };
    uint32_t name_len, flags, reason_len;
    uint64_t off, bits_len;

    if (bits_start - pos < RECORD_SIZE)
      PROBLEM ("bitmap record %" PRIu32 " runs past the end of the "
               "directory", i);
    name_len = format_get32 (buf + pos);
    flags = format_get32 (buf + pos + 4);
    r.granularity = format_get32 (buf + pos + 8);
    reason_len = format_get32 (buf + pos + 12);
    off = format_get64 (buf + pos + 16);
    bits_len = format_get64 (buf + pos + 24);
    if (name_len < 1 || name_len > FORMAT_MAX_NAME)
      PROBLEM ("bitmap record %" PRIu32 ": bad name length %" PRIu32, i,
               name_len);
    if (flags & ~(BM_RECORDING | BM_INCONSISTENT))
      PROBLEM ("bitmap record %" PRIu32 ": unknown flags 0x%" PRIx32, i,
               flags);
    if (r.granularity < FORMAT_MIN_GRANULARITY ||
        r.granularity > FORMAT_MAX_GRANULARITY ||
        !is_power_of_2 (r.granularity))
      PROBLEM ("bitmap record %" PRIu32 ": bad granularity %" PRIu32, i,
               r.granularity);
    r.recording = flags & BM_RECORDING;
    r.inconsistent = flags & BM_INCONSISTENT;
    if (reason_len > FORMAT_MAX_REASON ||
        (!r.inconsistent && reason_len != 0))
      PROBLEM ("bitmap record %" PRIu32 ": bad reason length %" PRIu32, i,
               reason_len);
    if (r.inconsistent ? bits_len != 0
        : bits_len != format_bits_len (h->disk_size, r.granularity))
      PROBLEM ("bitmap record %" PRIu32 ": bits length %" PRIu64
               " does not match the disk size", i, bits_len);
    if (r.inconsistent ? off != 0
        : (off < bits_end || off % 8 != 0 || off > len ||
           len - off < bits_len))
      PROBLEM ("bitmap record %" PRIu32 ": bad bits offset %" PRIu64, i,
               off);
    pos += RECORD_SIZE;
    if (bits_start - pos < (uint64_t) name_len + reason_len)
      PROBLEM ("bitmap record %" PRIu32 " runs past the end of the "
               "directory", i);
    r.name = (const char *) buf + pos;
    r.name_len = name_len;
    if (memchr (r.name, '\0', name_len))
      PROBLEM ("bitmap record %" PRIu32 ": the name holds a NUL byte", i);
    pos += name_len;
    r.reason = reason_len ? (const char *) buf + pos : NULL;
    r.reason_len = reason_len;
    pos += reason_len;
    if (!r.inconsistent) {
      r.data = buf + off;
      r.data_len = bits_len;
      r.data_offset = off;
      bits_end = round8 (off + bits_len);
    }

    if (fn == NULL) {
      /* Names are unique: compare with every earlier record. */
      uint64_t q = HEADER_SIZE;
      for (j = 0; j < i; ++j) {
        uint32_t nl = format_get32 (buf + q);
        uint32_t rl = format_get32 (buf + q + 12);
        if (nl == name_len &&
            memcmp (buf + q + RECORD_SIZE, r.name, nl) == 0)
          PROBLEM ("bitmap records %" PRIu32 " and %" PRIu32
                   " have the same name", j, i);
        q += RECORD_SIZE + nl + rl;
      }
    }
    else if (fn (&r, opaque) == -1)
      return -1;
  }
  if (bits_end != len)
    PROBLEM ("%" PRIu64 " bytes after the last bitmap's bits",
             (uint64_t) len - bits_end);
  return 0;
}

static int
parse_v2 (const uint8_t *buf, size_t len, struct format_header *h,
          int (*fn) (const struct format_record *r, void *opaque),
          void *opaque, char *problem, size_t problem_len)
{
  uint32_t flags, nr;
  uint64_t file_size, bits_start;

  if (len < HEADER_SIZE)
    PROBLEM ("truncated: %zu bytes, too short for a dirty bitmap file",
             len);
  file_size = format_get64 (buf + 16);
  if (len < file_size)
    PROBLEM ("truncated: %zu of %" PRIu64 " bytes", len, file_size);
  if (len > file_size)
    PROBLEM ("%zu bytes but its header says %" PRIu64 ": the file is "
             "corrupt", len, file_size);
  bits_start = format_get32 (buf + 44);
  if (bits_start < HEADER_SIZE || bits_start % FORMAT_BITS_ALIGN != 0 ||
      bits_start > len)
    PROBLEM ("bad bits start %" PRIu64 ": the file is corrupt", bits_start);
  if (meta_crc (buf, bits_start) != format_get32 (buf + 36))
    PROBLEM ("checksum mismatch: the file is corrupt");
  flags = format_get32 (buf + 12);
  if (flags & ~FILE_FLAGS)
    PROBLEM ("unknown flags 0x%" PRIx32, flags);
  if (memcmp (buf + 112, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 16) != 0)
    PROBLEM ("reserved header field is not zero");
  if (!(flags & FILE_IN_USE) &&
      crc32 (0, buf + bits_start, len - bits_start)
      != format_get32 (buf + 40))
    PROBLEM ("checksum mismatch in the bits: the file is corrupt");
  nr = format_get32 (buf + 32);
  memset (h, 0, sizeof *h);
  h->version = 2;
  h->in_use = flags & FILE_IN_USE;
  h->power = flags & FILE_POWER;
  h->disk_size = format_get64 (buf + 24);
  memcpy (h->uuid, buf + 48, 16);
  h->generation = format_get64 (buf + 64);
  memcpy (h->boot_id, buf + 72, 16);
  h->disk_stat = flags & FILE_DISK_STAT;
  h->disk_mtime = h->disk_stat && (flags & FILE_DISK_MTIME);
  h->disk_file_size = format_get64 (buf + 88);
  h->disk_mtime_ns = format_get64 (buf + 96);
  h->disk_ino = format_get64 (buf + 104);
  if (walk (buf, len, h, bits_start, nr, NULL, NULL,
            problem, problem_len) == -1)
    return -1;
  if (fn)
    return walk (buf, len, h, bits_start, nr, fn, opaque,
                 problem, problem_len);
  return 0;
}

int
format_parse (const uint8_t *buf, size_t len, struct format_header *h,
              int (*fn) (const struct format_record *r, void *opaque),
              void *opaque, char *problem, size_t problem_len)
{
  uint32_t version;

  if (len >= 8 && memcmp (buf, MAGIC, 8) != 0)
    PROBLEM ("not a dirty bitmap file (bad magic)");
  if (len < 12)
    PROBLEM ("truncated: %zu bytes, too short for a dirty bitmap file",
             len);
  version = format_get32 (buf + 8);
  if (version == 1)
    return format_v1_parse (buf, len, h, fn, opaque, problem, problem_len);
  if (version > FORMAT_VERSION)
    PROBLEM ("version %" PRIu32 " is newer than this filter reads "
             "(versions 1 to %d): it was written by a newer nbdkit-backup",
             version, FORMAT_VERSION);
  if (version != FORMAT_VERSION)
    PROBLEM ("version %" PRIu32 " is not a version of this file", version);
  return parse_v2 (buf, len, h, fn, opaque, problem, problem_len);
}

static int
append (struct format_buf *b, const void *data, size_t n)
{
  if (n == 0)
    return 0;
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

int
format_begin (struct format_writer *w, const struct format_header *h)
{
  memset (w, 0, sizeof *w);
  w->h = *h;
  return 0;
}

int
format_add (struct format_writer *w, const char *name, uint32_t granularity,
            bool recording, bool inconsistent, const char *reason,
            const uint8_t *bits, size_t bits_len)
{
  size_t name_len = strlen (name);
  size_t reason_len = inconsistent && reason ? strlen (reason) : 0;
  uint64_t len = inconsistent ? 0
    : format_bits_len (w->h.disk_size, granularity);
  uint64_t granules = w->h.disk_size / granularity +
    (w->h.disk_size % granularity != 0);
  uint8_t rec[RECORD_SIZE];

  if (name_len < 1 || name_len > FORMAT_MAX_NAME)
    return -1;
  if (reason_len > FORMAT_MAX_REASON)
    reason_len = FORMAT_MAX_REASON;
  if (!inconsistent && (bits == NULL || bits_len < len))
    return -1;
  put32 (rec, name_len);
  put32 (rec + 4, (recording ? BM_RECORDING : 0) |
         (inconsistent ? BM_INCONSISTENT : 0));
  put32 (rec + 8, granularity);
  put32 (rec + 12, reason_len);
  /* The offset in the bits area for now: format_end adds its start. */
  put64 (rec + 16, inconsistent ? 0 : w->bits.len);
  put64 (rec + 24, len);
  if (append (&w->dir, rec, RECORD_SIZE) == -1 ||
      append (&w->dir, name, name_len) == -1 ||
      append (&w->dir, reason, reason_len) == -1)
    return -1;
  if (!inconsistent) {
    if (append (&w->bits, bits, len) == -1)
      return -1;
    /* Bits past the last granule are written as zero. */
    if (len > 0 && granules % 8)
      w->bits.p[w->bits.len - 1] &= (1u << (granules % 8)) - 1;
    if (append (&w->bits, NULL, round8 (len) - len) == -1)
      return -1;
  }
  w->nr++;
  return 0;
}

int
format_end (struct format_writer *w)
{
  uint64_t bits_start = HEADER_SIZE + w->dir.len;
  uint32_t flags = 0;
  size_t pos;
  uint32_t i;
  uint8_t *p;

  bits_start = (bits_start + FORMAT_BITS_ALIGN - 1) &
    ~(uint64_t) (FORMAT_BITS_ALIGN - 1);
  if (bits_start > UINT32_MAX)
    return -1;
  w->len = bits_start + w->bits.len;
  p = w->p = calloc (1, w->len);
  if (p == NULL)
    return -1;
  if (w->dir.len)
    memcpy (p + HEADER_SIZE, w->dir.p, w->dir.len);
  if (w->bits.len)
    memcpy (p + bits_start, w->bits.p, w->bits.len);
  /* Bits offsets become offsets in the file. */
  for (pos = HEADER_SIZE, i = 0; i < w->nr; ++i) {
    uint64_t off = format_get64 (p + pos + 16);

    if (!(format_get32 (p + pos + 4) & BM_INCONSISTENT))
      put64 (p + pos + 16, off + bits_start);
    pos += RECORD_SIZE + format_get32 (p + pos) + format_get32 (p + pos + 12);
  }

  memcpy (p, MAGIC, 8);
  put32 (p + 8, FORMAT_VERSION);
  flags |= w->h.in_use ? FILE_IN_USE : 0;
  flags |= w->h.power ? FILE_POWER : 0;
  flags |= w->h.disk_stat ? FILE_DISK_STAT : 0;
  flags |= w->h.disk_stat && w->h.disk_mtime ? FILE_DISK_MTIME : 0;
  put32 (p + 12, flags);
  put64 (p + 16, w->len);
  put64 (p + 24, w->h.disk_size);
  put32 (p + 32, w->nr);
  put32 (p + 44, bits_start);
  memcpy (p + 48, w->h.uuid, 16);
  put64 (p + 64, w->h.generation);
  memcpy (p + 72, w->h.boot_id, 16);
  if (w->h.disk_stat) {
    put64 (p + 88, w->h.disk_file_size);
    put64 (p + 96, w->h.disk_mtime ? w->h.disk_mtime_ns : 0);
    put64 (p + 104, w->h.disk_ino);
  }
  if (!w->h.in_use)
    put32 (p + 40, crc32 (0, p + bits_start, w->len - bits_start));
  put32 (p + 36, meta_crc (p, bits_start));
  return 0;
}

void
format_free (struct format_writer *w)
{
  free (w->p);
  free (w->dir.p);
  free (w->bits.p);
  w->p = w->dir.p = w->bits.p = NULL;
  w->len = w->dir.len = w->bits.len = 0;
  w->dir.cap = w->bits.cap = 0;
}
