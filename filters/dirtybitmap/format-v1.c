/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Version 1 of the sidecar file, read only: the first release wrote
 * it, and a file of it loads (the next save writes version 2).  No
 * I/O and no global state.
 *
 * Integers are little-endian.
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
 * A version 1 server wrote no bits while in use, so every bitmap of
 * an in-use file is inconsistent.
 *
 * Checks, in order, each with its own message: length, file size
 * against the header, checksum, flags, then every record (lengths,
 * flags, granularity, bits length against the disk size, names unique
 * and without NUL) and nothing after the last.  format_parse has
 * checked the magic and the version.
 */

#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <zlib.h>

#include "format.h"
#include "ispowerof2.h"

#define HEADER_SIZE 40
#define RECORD_SIZE 24
#define CRC_SIZE 4
#define FILE_IN_USE 1u
#define BM_RECORDING 1u
#define BM_INCONSISTENT 2u

static const char in_use_reason[] =
  "the server did not stop cleanly (a version 1 bitmap file keeps no "
  "bits while in use)";
static const char flagged_reason[] =
  "it was inconsistent in the version 1 bitmap file";

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
    struct format_record r = { 0 };
    uint32_t name_len, flags;
    uint64_t bits_len;

    if (end - pos < RECORD_SIZE)
      PROBLEM ("bitmap record %" PRIu32 " runs past the end of the file",
               i);
    name_len = format_get32 (buf + pos);
    flags = format_get32 (buf + pos + 4);
    r.granularity = format_get32 (buf + pos + 8);
    bits_len = format_get64 (buf + pos + 16);
    if (name_len < 1 || name_len > FORMAT_MAX_NAME)
      PROBLEM ("bitmap record %" PRIu32 ": bad name length %" PRIu32, i,
               name_len);
    if (flags & ~(BM_RECORDING | BM_INCONSISTENT))
      PROBLEM ("bitmap record %" PRIu32 ": unknown flags 0x%" PRIx32, i,
               flags);
    if (format_get32 (buf + pos + 12) != 0)
      PROBLEM ("bitmap record %" PRIu32 ": reserved field is not zero", i);
    if (r.granularity < FORMAT_MIN_GRANULARITY ||
        r.granularity > FORMAT_MAX_GRANULARITY ||
        !is_power_of_2 (r.granularity))
      PROBLEM ("bitmap record %" PRIu32 ": bad granularity %" PRIu32, i,
               r.granularity);
    r.recording = flags & BM_RECORDING;
    r.inconsistent = in_use || (flags & BM_INCONSISTENT);
    if (r.inconsistent) {
      r.reason = (flags & BM_INCONSISTENT) ? flagged_reason : in_use_reason;
      r.reason_len = strlen (r.reason);
    }
    if (r.inconsistent ? bits_len != 0
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
    r.data_offset = pos;
    pos += bits_len;

    if (fn == NULL) {
      /* Names are unique: compare with every earlier record. */
      uint64_t q = HEADER_SIZE;
      for (j = 0; j < i; ++j) {
        uint32_t nl = format_get32 (buf + q);
        uint64_t bl = format_get64 (buf + q + 16);
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
format_v1_parse (const uint8_t *buf, size_t len, struct format_header *h,
                 int (*fn) (const struct format_record *r, void *opaque),
                 void *opaque, char *problem, size_t problem_len)
{
  uint32_t flags, nr;
  uint64_t file_size;

  if (len < HEADER_SIZE + CRC_SIZE)
    PROBLEM ("truncated: %zu bytes, too short for a dirty bitmap file",
             len);
  file_size = format_get64 (buf + 16);
  if (len < file_size)
    PROBLEM ("truncated: %zu of %" PRIu64 " bytes", len, file_size);
  if (len > file_size)
    PROBLEM ("%zu bytes but its header says %" PRIu64 ": the file is "
             "corrupt", len, file_size);
  if (crc32 (0, buf, len - CRC_SIZE) != format_get32 (buf + len - CRC_SIZE))
    PROBLEM ("checksum mismatch: the file is corrupt");
  flags = format_get32 (buf + 12);
  if (flags & ~FILE_IN_USE)
    PROBLEM ("unknown flags 0x%" PRIx32, flags);
  if (format_get32 (buf + 36) != 0)
    PROBLEM ("reserved header field is not zero");
  nr = format_get32 (buf + 32);
  memset (h, 0, sizeof *h);
  h->version = 1;
  h->in_use = flags & FILE_IN_USE;
  h->disk_size = format_get64 (buf + 24);
  if (walk (buf, len, h->in_use, h->disk_size, nr, NULL, NULL,
            problem, problem_len) == -1)
    return -1;
  if (fn)
    return walk (buf, len, h->in_use, h->disk_size, nr, fn, opaque,
                 problem, problem_len);
  return 0;
}
