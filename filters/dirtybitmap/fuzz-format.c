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
  if (c->w && format_add (c->w, name, r->granularity, r->recording,
                          r->inconsistent, r->data, r->data_len) == -1)
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
  crc = htole32 (crc32 (0, fixed, size - 4));
  memcpy (fixed + size - 4, &crc, 4);
  try_one (fixed, size);
  free (fixed);
  return 0;
}

static void
try_one (const uint8_t *data, size_t size)
{
  char problem[256];
  bool in_use;
  uint64_t disk;
  struct format_writer w;
  struct ctx c = { .base = data, .size = size };
  unsigned again = 0;

  if (format_parse (data, size, &in_use, &disk, check, &c,
                    problem, sizeof problem) == -1) {
    if (problem[0] == '\0')
      abort ();
    return;
  }
  /* Accepted: it must round-trip. */
  if (format_begin (&w, in_use, disk) == -1)
    abort ();
  c.w = &w;
  c.n = 0;
  if (format_parse (data, size, &in_use, &disk, check, &c,
                    problem, sizeof problem) == -1 ||
      format_end (&w) == -1 ||
      format_parse (w.p, w.len, &in_use, &disk, count, &again,
                    problem, sizeof problem) == -1 ||
      again != c.n)
    abort ();
  format_free (&w);
}
