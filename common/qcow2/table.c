/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* L1/L2 tables and the bounded table cache.
 *
 * The cache is write-through: a change to a cached table is written to
 * the file at once (only the changed entries), so the cache never holds
 * dirty data and the order of metadata writes is the order of the code
 * (see the design notes in io.c).  A fixed number of slots bounds the
 * memory used; the least recently used slot is reused.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <inttypes.h>
#include <string.h>
#include <errno.h>

#include <nbdkit-plugin.h>

#include "rounding.h"
#include "qcow2-internal.h"

int
cache_init (struct table_cache *c, unsigned nslots, uint32_t cluster_size)
{
  unsigned i;

  c->nslots = nslots;
  c->clock = 0;
  c->slots = calloc (nslots, sizeof c->slots[0]);
  if (c->slots == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  for (i = 0; i < nslots; ++i) {
    c->slots[i].data = malloc (cluster_size);
    if (c->slots[i].data == NULL) {
      nbdkit_error ("malloc: %m");
      return -1;
    }
  }
  return 0;
}

void
cache_free (struct table_cache *c)
{
  unsigned i;

  if (c->slots == NULL)
    return;
  for (i = 0; i < c->nslots; ++i)
    free (c->slots[i].data);
  free (c->slots);
  c->slots = NULL;
}

static struct cache_slot *
cache_victim (struct table_cache *c)
{
  unsigned i;
  struct cache_slot *v = &c->slots[0];

  for (i = 0; i < c->nslots; ++i) {
    if (c->slots[i].offset == 0)
      return &c->slots[i];
    if (c->slots[i].used < v->used)
      v = &c->slots[i];
  }
  return v;
}

unsigned char *
cache_get (struct qcow2_image *img, struct table_cache *c, uint64_t offset)
{
  unsigned i;
  struct cache_slot *s;

  for (i = 0; i < c->nslots; ++i) {
    if (c->slots[i].offset == offset) {
      c->slots[i].used = ++c->clock;
      return c->slots[i].data;
    }
  }
  s = cache_victim (c);
  s->offset = 0;
  if (full_pread (img->fd, s->data, img->cluster_size, offset) == -1) {
    nbdkit_error ("%s: read table at %#" PRIx64 ": %m", img->path, offset);
    return NULL;
  }
  s->offset = offset;
  s->used = ++c->clock;
  return s->data;
}

unsigned char *
cache_put (struct qcow2_image *img, struct table_cache *c, uint64_t offset,
           const void *data)
{
  unsigned i;
  struct cache_slot *s = NULL;

  for (i = 0; i < c->nslots; ++i)
    if (c->slots[i].offset == offset)
      s = &c->slots[i];
  if (s == NULL)
    s = cache_victim (c);
  memcpy (s->data, data, img->cluster_size);
  s->offset = offset;
  s->used = ++c->clock;
  return s->data;
}

int
l2_entry_kind (struct qcow2_image *img, uint64_t e, enum cluster_kind *kind)
{
  uint64_t off;

  if (e & QCOW2_OFLAG_COMPRESSED) {
    if (e & QCOW2_OFLAG_COPIED) {
      nbdkit_error ("%s: compressed L2 entry %#" PRIx64 " has the copied "
                    "flag set", img->path, e);
      return -1;
    }
    if ((e & img->coffset_mask) < img->cluster_size) {
      nbdkit_error ("%s: compressed cluster at %#" PRIx64 " overlaps the "
                    "header", img->path, e & img->coffset_mask);
      return -1;
    }
    *kind = CLUSTER_COMPRESSED;
    return 0;
  }
  off = e & QCOW2_OFFSET_MASK;
  if (e & ~(QCOW2_OFFSET_MASK | QCOW2_OFLAG_COPIED | QCOW2_OFLAG_ZERO)) {
    nbdkit_error ("%s: L2 entry %#" PRIx64 " has reserved bits set",
                  img->path, e);
    return -1;
  }
  if (off != 0 && !IS_ALIGNED (off, img->cluster_size)) {
    nbdkit_error ("%s: data cluster offset %#" PRIx64 " is not cluster "
                  "aligned", img->path, off);
    return -1;
  }
  if (off != 0 && off < img->cluster_size) {
    nbdkit_error ("%s: data cluster offset %#" PRIx64 " overlaps the "
                  "header", img->path, off);
    return -1;
  }
  if (e & QCOW2_OFLAG_ZERO) {
    if (img->version < 3) {
      nbdkit_error ("%s: zero flag in a version 2 image", img->path);
      return -1;
    }
    *kind = off ? CLUSTER_ZERO_ALLOC : CLUSTER_ZERO;
  }
  else
    *kind = off ? CLUSTER_NORMAL : CLUSTER_UNALLOCATED;
  return 0;
}

int
l2_get_table (struct qcow2_image *img, uint64_t vc, bool alloc,
              unsigned char **table, uint64_t *table_offset,
              uint64_t *idx, int *err)
{
  uint64_t l1_idx = vc >> img->l2_bits;
  uint64_t l2_off;

  *idx = vc & ((UINT64_C (1) << img->l2_bits) - 1);
  *table = NULL;
  if (l1_idx >= img->l1_size) {
    nbdkit_error ("%s: guest cluster %" PRIu64 " is beyond the L1 table",
                  img->path, vc);
    *err = EIO;
    return -1;
  }
  l2_off = img->l1[l1_idx] & QCOW2_OFFSET_MASK;
  if (l2_off != 0 && alloc && !(img->l1[l1_idx] & QCOW2_OFLAG_COPIED)) {
    /* A shared L2 table only exists with internal snapshots, which we
     * refuse to write to at open; anything else is corruption.
     */
    nbdkit_error ("%s: L2 table at %#" PRIx64 " is shared (no copied "
                  "flag); cannot write", img->path, l2_off);
    *err = EIO;
    return -1;
  }
  if (l2_off == 0) {
    unsigned char *zeros;
    unsigned char b[8];
    uint64_t e;

    if (!alloc)
      return 0;
    /* New L2 table: refcount first, then the zeroed table, then the L1
     * entry pointing to it.
     */
    l2_off = refcount_alloc_cluster (img, err);
    if (l2_off == 0)
      return -1;
    if (meta_mark (img, l2_off >> img->cluster_bits, 1) == -1) {
      *err = ENOMEM;
      return -1;
    }
    zeros = calloc (1, img->cluster_size);
    if (zeros == NULL) {
      *err = errno;
      nbdkit_error ("calloc: %m");
      return -1;
    }
    if (full_pwrite (img->fd, zeros, img->cluster_size, l2_off) == -1) {
      *err = errno;
      nbdkit_error ("%s: write L2 table: %m", img->path);
      free (zeros);
      return -1;
    }
    *table = cache_put (img, &img->l2_cache, l2_off, zeros);
    free (zeros);
    e = l2_off | QCOW2_OFLAG_COPIED;
    put_be64 (b, e);
    if (full_pwrite (img->fd, b, 8, img->l1_offset + l1_idx * 8) == -1) {
      *err = errno;
      nbdkit_error ("%s: write L1 entry: %m", img->path);
      return -1;
    }
    img->l1[l1_idx] = e;
  }
  else {
    *table = cache_get (img, &img->l2_cache, l2_off);
    if (*table == NULL) {
      *err = EIO;
      return -1;
    }
  }
  *table_offset = l2_off;
  return 0;
}

int
l2_lookup (struct qcow2_image *img, uint64_t vc, uint64_t n,
           uint64_t *out, int *err)
{
  unsigned char *table;
  uint64_t table_off, idx, i, per = UINT64_C (1) << img->l2_bits;

  if (l2_get_table (img, vc, false, &table, &table_off, &idx, err) == -1)
    return -1;
  if (n > per - idx)
    n = per - idx;
  for (i = 0; i < n; ++i) {
    enum cluster_kind kind;

    out[i] = table ? get_be64 (table + (idx + i) * 8) : 0;
    if (l2_entry_kind (img, out[i], &kind) == -1) {
      *err = EIO;
      return -1;
    }
  }
  return n;
}

int
l2_write_entries (struct qcow2_image *img, unsigned char *table,
                  uint64_t table_offset, uint64_t first, uint64_t n,
                  int *err)
{
  if (full_pwrite (img->fd, table + first * 8, n * 8,
                   table_offset + first * 8) == -1) {
    *err = errno;
    nbdkit_error ("%s: write L2 table: %m", img->path);
    return -1;
  }
  return 0;
}
