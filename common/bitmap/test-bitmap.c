/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit tests for the block bitmap: every bpb and several block sizes,
 * every operation checked against a plain array model.
 */

#include <config.h>

#undef NDEBUG
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"

static uint64_t rng = 0x9e3779b97f4a7c15;

static uint64_t
rnd (void)
{
  rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
  return rng;
}

static uint64_t
model_find (const uint8_t *m, uint64_t n, uint64_t s, uint64_t e,
            unsigned v, int eq)
{
  uint64_t i;

  for (i = s; i < e; ++i) {
    unsigned x = i < n ? m[i] : 0;
    if ((x == v) == eq)
      return i;
  }
  return e;
}

static void
check_all (struct bitmap *bm, const uint8_t *m, uint64_t n)
{
  unsigned maxv = (1u << bm->bpb) - 1;
  uint64_t i;
  int t;

  for (i = 0; i < n; ++i)
    assert (bitmap_get_blk (bm, i, 99) == m[i]);
  assert (bitmap_get_blk (bm, n, 99) == 99);
  assert (bitmap_get_blk (bm, n + 1000, 7) == 7);

  for (t = 0; t < 200; ++t) {
    uint64_t s = rnd () % (n + 70), e = s + rnd () % (n + 70);
    unsigned v = rnd () % (maxv + 1);
    uint64_t cnt = 0, j;

    assert (bitmap_find (bm, s, e, v) == model_find (m, n, s, e, v, 1));
    assert (bitmap_find_not (bm, s, e, v) == model_find (m, n, s, e, v, 0));
    for (j = s; j < e; ++j)
      cnt += (j < n ? m[j] : 0) == v;
    assert (bitmap_count (bm, s, e, v) == cnt);
  }
  for (t = 0; t < 50; ++t) {
    uint64_t s = rnd () % (n + 10);
    uint64_t want = model_find (m, n, s, n, 0, 0);
    int64_t got = bitmap_next (bm, s);
    assert (want == n ? got == -1 : got == (int64_t) want);
  }
}

static void
test_one (unsigned blksize, unsigned bpb)
{
  struct bitmap bm;
  uint64_t sizes[] = { 0, 1, 7, 63, 64, 65, 200, 513, 4099 };
  uint8_t *m = calloc (8192, 1);
  unsigned maxv = (1u << bpb) - 1;
  size_t k;

  assert (m);
  bitmap_init (&bm, blksize, bpb);
  for (k = 0; k < sizeof sizes / sizeof sizes[0]; ++k) {
    uint64_t n = sizes[k], old_n = bm.nr_blocks, i;
    int t;

    /* The resize takes bytes and rounds up to whole blocks. */
    assert (bitmap_resize (&bm, n * blksize - (n ? blksize / 2 : 0)) == 0);
    assert (bm.nr_blocks == n);
    for (i = n; i < old_n; ++i)
      m[i] = 0;          /* Dropped entries come back as zero. */
    check_all (&bm, m, n);

    for (t = 0; t < 300; ++t) {
      uint64_t blk = n ? rnd () % n : 0;
      unsigned v = rnd () % (maxv + 1);
      switch (rnd () % 3) {
      case 0:
        bitmap_set_blk (&bm, blk, v);
        if (blk < n) m[blk] = v;
        break;
      case 1:
        bitmap_set (&bm, blk * blksize + blksize - 1, v);
        if (blk < n) m[blk] = v;
        assert (bitmap_get (&bm, blk * blksize, 99) == (blk < n ? v : 99));
        break;
      default: {
        uint64_t e = blk + rnd () % 150;
        bitmap_set_range (&bm, blk, e, v);
        for (i = blk; i < e && i < n; ++i)
          m[i] = v;
      }
      }
    }
    /* Out-of-range sets are ignored. */
    bitmap_set_blk (&bm, n, maxv);
    bitmap_set_range (&bm, n, n + 100, maxv);
    check_all (&bm, m, n);
  }
  /* Shrink then grow: the dropped tail must not come back. */
  bitmap_set_range (&bm, 0, bm.nr_blocks, maxv);
  assert (bitmap_resize (&bm, 3 * (uint64_t) blksize) == 0);
  assert (bitmap_resize (&bm, 300 * (uint64_t) blksize) == 0);
  assert (bitmap_count (&bm, 0, 3, maxv) == 3);
  assert (bitmap_count (&bm, 3, 300, 0) == 297);
  bitmap_free (&bm);
  bitmap_free (&bm);
  free (m);
}

int
main (void)
{
  unsigned blksizes[] = { 512, 4096, 65536, 1 << 24 };
  unsigned bpbs[] = { 1, 2, 4, 8 };
  size_t i, j;

  for (i = 0; i < 4; ++i)
    for (j = 0; j < 4; ++j)
      test_one (blksizes[i], bpbs[j]);
  printf ("test-bitmap: ok\n");
  return 0;
}
