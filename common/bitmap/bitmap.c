/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <config.h>

#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "ispowerof2.h"
#include "nbdkit-stubs.h"
#include "rounding.h"

void
bitmap_init (struct bitmap *bm, unsigned blksize, unsigned bpb)
{
  assert (is_power_of_2 (blksize));
  assert (bpb == 1 || bpb == 2 || bpb == 4 || bpb == 8);
  bm->blksize = blksize;
  bm->blkbits = log_2_bits (blksize);
  bm->bpb = bpb;
  bm->bitshift = log_2_bits (bpb);
  bm->ibpb = 8 / bpb;
  bm->bitmap = NULL;
  bm->size = 0;
  bm->nr_blocks = 0;
}

void
bitmap_free (struct bitmap *bm)
{
  free (bm->bitmap);
  bm->bitmap = NULL;
  bm->size = 0;
  bm->nr_blocks = 0;
}

int
bitmap_resize (struct bitmap *bm, uint64_t new_size)
{
  uint64_t nr_blocks = DIV_ROUND_UP (new_size, (uint64_t) bm->blksize);
  uint64_t bytes = DIV_ROUND_UP (nr_blocks, bm->ibpb);
  uint64_t alloc = ROUND_UP (bytes, 8);
  uint64_t old_alloc = ROUND_UP ((uint64_t) bm->size, 8);
  uint8_t *p;

  if (alloc > SIZE_MAX) {
    errno = ENOMEM;
    nbdkit_error ("bitmap: disk too large for this host's memory");
    return -1;
  }
  if (alloc != old_alloc) {
    p = realloc (bm->bitmap, alloc ? alloc : 8);
    if (p == NULL) {
      nbdkit_error ("realloc: %m");
      return -1;
    }
    bm->bitmap = p;
    if (alloc > old_alloc)
      memset (p + old_alloc, 0, alloc - old_alloc);
  }
  /* Invariant: entries at or past nr_blocks are zero, so growing
   * needs nothing more and shrinking clears the dropped tail.
   */
  if (nr_blocks < bm->nr_blocks) {
    uint64_t kept = alloc * bm->ibpb;
    uint64_t old_nr = bm->nr_blocks;

    bm->nr_blocks = old_nr < kept ? old_nr : kept;
    bitmap_set_range (bm, nr_blocks, bm->nr_blocks, 0);
  }
  bm->nr_blocks = nr_blocks;
  bm->size = bytes;
  return 0;
}

void
bitmap_set_range (struct bitmap *bm, uint64_t start, uint64_t end, unsigned v)
{
  uint64_t blk;
  uint8_t fill;
  unsigned i;

  if (end > bm->nr_blocks)
    end = bm->nr_blocks;
  if (start >= end)
    return;

  /* Head and tail entry by entry; whole bytes between with memset. */
  for (blk = start; blk < end && (blk & (bm->ibpb - 1)) != 0; ++blk)
    bitmap_set_blk (bm, blk, v);
  if (blk >= end)
    return;
  fill = 0;
  for (i = 0; i < bm->ibpb; ++i)
    fill |= (v & ((1u << bm->bpb) - 1)) << (i * bm->bpb);
  if (end - blk >= bm->ibpb) {
    uint64_t nbytes = (end - blk) / bm->ibpb;
    memset (&bm->bitmap[blk / bm->ibpb], fill, nbytes);
    blk += nbytes * bm->ibpb;
  }
  for (; blk < end; ++blk)
    bitmap_set_blk (bm, blk, v);
}

/* The word holding entry blk, as a host integer whose bit 0 is the
 * lowest bit of the first byte.
 */
static inline uint64_t
load_word (const struct bitmap *bm, uint64_t word_index)
{
  uint64_t w;

  memcpy (&w, &bm->bitmap[word_index * 8], 8);
  return le64toh (w);
}

/* A word with v repeated in every entry. */
static inline uint64_t
pattern (const struct bitmap *bm, unsigned v)
{
  uint64_t p = v & ((1u << bm->bpb) - 1);
  unsigned s;

  for (s = bm->bpb; s < 64; s <<= 1)
    p |= p << s;
  return p;
}

/* A word with the lowest bit of every entry set. */
static inline uint64_t
low_bits (const struct bitmap *bm)
{
  return pattern (bm, 1);
}

/* From x = word ^ pattern(v): a word with the low bit of an entry
 * set iff that entry is non-zero in x (so differs from v).
 */
static inline uint64_t
nonzero_entries (const struct bitmap *bm, uint64_t x)
{
  unsigned s;

  for (s = 1; s < bm->bpb; s <<= 1)
    x |= x >> s;
  return x & low_bits (bm);
}

/* Common search: first blk in [start, end) where (entry == v) is
 * want_equal.
 */
static uint64_t
find (const struct bitmap *bm, uint64_t start, uint64_t end, unsigned v,
      bool want_equal)
{
  const unsigned per_word = 64 >> bm->bitshift;
  const uint64_t pat = pattern (bm, v);
  const uint64_t lows = low_bits (bm);
  uint64_t limit = end < bm->nr_blocks ? end : bm->nr_blocks;
  uint64_t blk = start;

  while (blk < limit) {
    uint64_t wi = blk / per_word;
    uint64_t hits = nonzero_entries (bm, load_word (bm, wi) ^ pat);
    unsigned first = blk % per_word;

    if (want_equal)
      hits = ~hits & lows;
    /* Drop entries before blk. */
    hits &= ~UINT64_C (0) << (first << bm->bitshift);
    if (hits) {
      uint64_t found = wi * per_word + (__builtin_ctzll (hits) >> bm->bitshift);
      if (found < limit)
        return found;
      break;                    /* A padding entry: past the end. */
    }
    blk = (wi + 1) * per_word;
  }
  /* Blocks past the bitmap read as 0. */
  if (limit < end && ((v == 0) == want_equal))
    return start > limit ? start : limit;
  return end;
}

uint64_t
bitmap_find (const struct bitmap *bm, uint64_t start, uint64_t end, unsigned v)
{
  return find (bm, start, end, v, true);
}

uint64_t
bitmap_find_not (const struct bitmap *bm, uint64_t start, uint64_t end,
                 unsigned v)
{
  return find (bm, start, end, v, false);
}

int64_t
bitmap_next (const struct bitmap *bm, uint64_t blk)
{
  uint64_t r = find (bm, blk, bm->nr_blocks, 0, false);

  return r < bm->nr_blocks ? (int64_t) r : -1;
}

uint64_t
bitmap_count (const struct bitmap *bm, uint64_t start, uint64_t end,
              unsigned v)
{
  const unsigned per_word = 64 >> bm->bitshift;
  const uint64_t pat = pattern (bm, v);
  const uint64_t lows = low_bits (bm);
  uint64_t limit = end < bm->nr_blocks ? end : bm->nr_blocks;
  uint64_t blk = start, n = 0;

  while (blk < limit) {
    uint64_t wi = blk / per_word;
    uint64_t eq = ~nonzero_entries (bm, load_word (bm, wi) ^ pat) & lows;
    uint64_t word_end = (wi + 1) * per_word;
    unsigned first = blk % per_word;

    eq &= ~UINT64_C (0) << (first << bm->bitshift);
    if (word_end > limit) {
      unsigned keep = (limit - wi * per_word) << bm->bitshift;
      eq &= keep >= 64 ? ~UINT64_C (0) : (UINT64_C (1) << keep) - 1;
      word_end = limit;
    }
    n += __builtin_popcountll (eq);
    blk = word_end;
  }
  if (v == 0 && end > limit && start < end)
    n += end - (start > limit ? start : limit);
  return n;
}
