/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* libFuzzer harness for the sidecar file parser (format.c).  Each
 * input is a file image.  Whatever it holds, format_parse must refuse
 * it or hand back records that lie inside it and agree with its own
 * rules, and never crash, hang or read out of bounds
 * (AddressSanitizer, UndefinedBehaviorSanitizer).  An accepted image
 * is written again with format_add and must parse the same.
 *
 * Random bytes almost never carry a right file size and CRC-32, which
 * would keep the fuzzer at the door; so each input is also tried with
 * both fixed up, to reach the record parser.
 */

#include <config.h>

#include <endian.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "format.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

struct ctx {
  const uint8_t *base;
  size_t size;
  struct format_writer *w;
  unsigned n;
};

static int
check (const struct format_record *r, void *opaque)
{
  struct ctx *c = opaque;
  char name[FORMAT_MAX_NAME + 1];

  if ((const uint8_t *) r->name < c->base ||
      (const uint8_t *) r->name + r->name_len > c->base + c->size ||
      r->name_len == 0 || r->name_len > FORMAT_MAX_NAME ||
      (r->data && (r->data < c->base ||
                   r->data + r->data_len > c->base + c->size)))
    abort ();
  memcpy (name, r->name, r->name_len);
  name[r->name_len] = '\0';
  c->n++;
  /* (A version 1 file's reasons are the parser's own strings.) */
  if (r->reason_len > FORMAT_MAX_REASON ||
      (r->reason_len > 0 && r->reason == NULL))
    abort ();
  if (c->w && format_add (c->w, name, r->granularity, r->recording,
                          r->inconsistent, NULL, r->data,
                          r->data_len) == -1)
    abort ();
  return 0;
}

static int
count (const struct format_record *r, void *opaque)
{
  (*(unsigned *) opaque)++;
  return 0;
}

static void try_one (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  uint8_t *fixed;
  uint64_t fs = htole64 (size);
  uint32_t crc;

  try_one (data, size);
  if (size < 44)
    return 0;
  fixed = malloc (size);
  if (fixed == NULL)
    abort ();
  memcpy (fixed, data, size);
  memcpy (fixed + 16, &fs, 8);
  if (size >= 4096 && fixed[8] == 2) {
    /* Version 2: bits on the first page boundary, both checksums. */
    static const uint8_t zero[8];
    uint32_t start = htole32 (4096);

    memcpy (fixed + 44, &start, 4);
    crc = htole32 (crc32 (0, fixed + 4096, size - 4096));
    memcpy (fixed + 40, &crc, 4);
    crc = crc32 (0, fixed, 36);
    crc = crc32 (crc, zero, 8);
    crc = htole32 (crc32 (crc, fixed + 44, 4096 - 44));
    memcpy (fixed + 36, &crc, 4);
  }
  else {
    crc = htole32 (crc32 (0, fixed, size - 4));
    memcpy (fixed + size - 4, &crc, 4);
  }
  try_one (fixed, size);
  free (fixed);
  return 0;
}

static void
try_one (const uint8_t *data, size_t size)
{
  char problem[256];
  struct format_header h;
  struct format_writer w;
  struct ctx c = { .base = data, .size = size };
  unsigned again = 0;

  if (format_parse (data, size, &h, check, &c,
                    problem, sizeof problem) == -1) {
    if (problem[0] == '\0')
      abort ();
    return;
  }
  /* Accepted: it must round-trip. */
  if (format_begin (&w, &h) == -1)
    abort ();
  c.w = &w;
  c.n = 0;
  if (format_parse (data, size, &h, check, &c,
                    problem, sizeof problem) == -1 ||
      format_end (&w) == -1 ||
      format_parse (w.p, w.len, &h, count, &again,
                    problem, sizeof problem) == -1 ||
      again != c.n)
    abort ();
  format_free (&w);
}
