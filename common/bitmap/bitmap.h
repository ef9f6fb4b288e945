/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* A bitmap of blocks: each block of a disk (blksize, a power of two)
 * maps to an entry of bpb bits (1, 2, 4 or 8).  Entries are packed
 * little-endian: entry i lives in byte i / ibpb at bit
 * (i % ibpb) * bpb.  The storage is padded to whole 64-bit words so
 * the search functions can scan a word at a time.
 *
 * The API is total: out-of-range gets return the caller's default,
 * out-of-range sets are ignored, and only bitmap_resize allocates.
 * The caller's lock protects a bitmap.
 */

#ifndef NBDKIT_BACKUP_BITMAP_H
#define NBDKIT_BACKUP_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bitmap {
  unsigned blksize;     /* Block size, a power of two. */
  unsigned blkbits;     /* log2 (blksize). */
  unsigned bpb;         /* Bits per block: 1, 2, 4 or 8. */
  unsigned bitshift;    /* log2 (bpb). */
  unsigned ibpb;        /* Entries per byte: 8 / bpb. */
  uint8_t *bitmap;      /* The entries, padded to 8 bytes. */
  size_t size;          /* Bytes of bitmap in use. */
  uint64_t nr_blocks;   /* Entries in use. */
};

/* Set up an empty bitmap; cannot fail. */
extern void bitmap_init (struct bitmap *bm, unsigned blksize, unsigned bpb);

/* Free the storage; the bitmap can be resized again afterwards. */
extern void bitmap_free (struct bitmap *bm);

/* Resize to cover a disk of new_size bytes (rounding up to whole
 * blocks).  New entries are zero.  Returns 0, or -1 with errno set
 * and nbdkit_error called.
 */
extern int bitmap_resize (struct bitmap *bm, uint64_t new_size);

/* The entry of block blk, or default_ if blk is out of range. */
static inline unsigned
bitmap_get_blk (const struct bitmap *bm, uint64_t blk, unsigned default_)
{
  uint64_t byte;
  unsigned shift;

  if (blk >= bm->nr_blocks)
    return default_;
  byte = blk >> (3 - bm->bitshift);
  shift = (blk & (bm->ibpb - 1)) << bm->bitshift;
  return (bm->bitmap[byte] >> shift) & ((1u << bm->bpb) - 1);
}

/* Set the entry of block blk to v (masked to bpb bits). */
static inline void
bitmap_set_blk (struct bitmap *bm, uint64_t blk, unsigned v)
{
  uint64_t byte;
  unsigned shift, mask;

  if (blk >= bm->nr_blocks)
    return;
  byte = blk >> (3 - bm->bitshift);
  shift = (blk & (bm->ibpb - 1)) << bm->bitshift;
  mask = ((1u << bm->bpb) - 1) << shift;
  bm->bitmap[byte] = (bm->bitmap[byte] & ~mask) | ((v << shift) & mask);
}

/* Byte-offset forms of get and set. */
static inline unsigned
bitmap_get (const struct bitmap *bm, uint64_t offset, unsigned default_)
{
  return bitmap_get_blk (bm, offset >> bm->blkbits, default_);
}

static inline void
bitmap_set (struct bitmap *bm, uint64_t offset, unsigned v)
{
  bitmap_set_blk (bm, offset >> bm->blkbits, v);
}

/* Set every entry of blocks [start, end) to v. */
extern void bitmap_set_range (struct bitmap *bm,
                              uint64_t start, uint64_t end, unsigned v);

/* The first block in [start, end) whose entry equals v, or end if
 * none.  Scans a 64-bit word at a time.
 */
extern uint64_t bitmap_find (const struct bitmap *bm,
                             uint64_t start, uint64_t end, unsigned v);

/* The first block in [start, end) whose entry differs from v, or
 * end if none.
 */
extern uint64_t bitmap_find_not (const struct bitmap *bm,
                                 uint64_t start, uint64_t end, unsigned v);

/* The first block at or after blk with a non-zero entry, or -1. */
extern int64_t bitmap_next (const struct bitmap *bm, uint64_t blk);

/* How many blocks in [start, end) have entry v. */
extern uint64_t bitmap_count (const struct bitmap *bm,
                              uint64_t start, uint64_t end, unsigned v);

#endif /* NBDKIT_BACKUP_BITMAP_H */
