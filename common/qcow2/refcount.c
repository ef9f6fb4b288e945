/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Refcounts and cluster allocation.
 *
 * Refcounts are kept exact: a cluster is counted (written to its
 * refcount block) before anything points to it, and its count drops
 * only after every pointer to it is gone.  Decrements are queued and
 * applied at the next flush, after fdatasync has made the removal of
 * the pointers durable: so a freed cluster is never reused (and
 * overwritten) while a crash could still bring back an old pointer to
 * it, and never while a request still does I/O on it (see reuse_lock).
 * A crash before the decrements are written leaves only leaks, which
 * 'qemu-img check -r leaks' repairs.
 *
 * A new refcount block for range r (the clusters it describes) is
 * placed at the first cluster of that range: a range without a block
 * has no counted cluster, so that cluster is free, and the block then
 * counts itself.  When the refcount table is full it is moved to the
 * end of the file, grown, together with the blocks that count the new
 * table itself.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <inttypes.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <nbdkit-plugin.h>

#include "rounding.h"
#include "minmax.h"
#include "qcow2-internal.h"

static uint64_t
rb_entry_get (struct qcow2_image *img, const unsigned char *b, uint64_t i)
{
  unsigned bits = 1u << img->refcount_order;

  switch (img->refcount_order) {
  case 0: case 1: case 2:
    return (b[i * bits / 8] >> ((i * bits) % 8)) & ((1u << bits) - 1);
  case 3: return b[i];
  case 4: return ((uint64_t) b[i * 2] << 8) | b[i * 2 + 1];
  case 5: return get_be32 (b + i * 4);
  default: return get_be64 (b + i * 8);
  }
}

/* Set entry i; returns the byte offset and length that changed. */
static void
rb_entry_set (struct qcow2_image *img, unsigned char *b, uint64_t i,
              uint64_t v, uint64_t *boff, unsigned *blen)
{
  unsigned bits = 1u << img->refcount_order;

  switch (img->refcount_order) {
  case 0: case 1: case 2: {
    unsigned shift = (i * bits) % 8;
    unsigned mask = ((1u << bits) - 1) << shift;
    b[i * bits / 8] = (b[i * bits / 8] & ~mask) | ((v << shift) & mask);
    *boff = i * bits / 8; *blen = 1;
    return;
  }
  case 3: b[i] = v; *boff = i; *blen = 1; return;
  case 4: b[i * 2] = v >> 8; b[i * 2 + 1] = v; *boff = i * 2; *blen = 2;
    return;
  case 5: put_be32 (b + i * 4, v); *boff = i * 4; *blen = 4; return;
  default: put_be64 (b + i * 8, v); *boff = i * 8; *blen = 8; return;
  }
}

int
refcount_get (struct qcow2_image *img, uint64_t hc, uint64_t *rc)
{
  uint64_t r = hc >> img->rb_bits;
  unsigned char *b;

  if (r >= img->rt_entries || img->rt[r] == 0) {
    *rc = 0;
    return 0;
  }
  b = cache_get (img, &img->rb_cache, img->rt[r]);
  if (b == NULL)
    return -1;
  *rc = rb_entry_get (img, b, hc & ((UINT64_C (1) << img->rb_bits) - 1));
  return 0;
}

/* Set the refcount of a cluster whose block exists. */
static int
refcount_set (struct qcow2_image *img, uint64_t hc, uint64_t v)
{
  uint64_t r = hc >> img->rb_bits, boff;
  unsigned blen;
  unsigned char *b;

  if (r >= img->rt_entries || img->rt[r] == 0) {
    nbdkit_error ("%s: no refcount block for cluster %" PRIu64,
                  img->path, hc);
    return -1;
  }
  b = cache_get (img, &img->rb_cache, img->rt[r]);
  if (b == NULL)
    return -1;
  rb_entry_set (img, b, hc & ((UINT64_C (1) << img->rb_bits) - 1), v,
                &boff, &blen);
  if (full_pwrite (img->fd, b + boff, blen, img->rt[r] + boff) == -1) {
    nbdkit_error ("%s: write refcount block: %m", img->path);
    return -1;
  }
  return 0;
}

static int
write_rt_entry (struct qcow2_image *img, uint64_t r)
{
  unsigned char e[8];

  put_be64 (e, img->rt[r]);
  if (full_pwrite (img->fd, e, 8, img->rt_offset + r * 8) == -1) {
    nbdkit_error ("%s: write refcount table: %m", img->path);
    return -1;
  }
  return 0;
}

/* Move the refcount table to the end of the file, grown to hold at
 * least want entries.
 */
static int
grow_refcount_table (struct qcow2_image *img, uint64_t want)
{
  uint64_t cs = img->cluster_size, per_rb = UINT64_C (1) << img->rb_bits;
  uint64_t start = img->file_clusters, entries, n, m, prev_m, i, c;
  uint64_t *rt = NULL, old_off = img->rt_offset;
  uint32_t old_clusters = img->rt_clusters;
  unsigned char *buf = NULL;
  unsigned char hb[12];
  int ret = -1;

  /* Table of n clusters at [start, start + n), then m new blocks at
   * [start + n, start + n + m) counting every cluster of that region
   * whose range has no block yet.  Iterate to a fixed point.
   */
  entries = MAX (want, img->rt_entries * 2);
  m = 0;
  for (;;) {
    uint64_t end, last_r, r;

    n = DIV_ROUND_UP (entries * 8, cs);
    end = start + n + m;
    last_r = (end - 1) / per_rb;
    if (last_r + 1 > entries) {
      entries = last_r + 1;
      continue;
    }
    prev_m = m;
    m = 0;
    for (r = start / per_rb; r <= last_r; ++r)
      if (r >= img->rt_entries || img->rt[r] == 0)
        m++;
    if (m == prev_m)
      break;
  }
  entries = n * cs / 8;
  if (n * cs > QCOW2_MAX_RT_BYTES) {
    nbdkit_error ("%s: refcount table would exceed %d bytes",
                  img->path, QCOW2_MAX_RT_BYTES);
    return -1;
  }

  rt = calloc (entries, sizeof *rt);
  buf = calloc (1, cs);
  if (rt == NULL || buf == NULL) {
    nbdkit_error ("calloc: %m");
    goto out;
  }

  memcpy (rt, img->rt, img->rt_entries * sizeof *rt);

  /* Write the new blocks, each counting the region's clusters in its
   * range.
   */
  c = start + n;
  for (i = start / per_rb; i <= (start + n + m - 1) / per_rb; ++i) {
    uint64_t lo, hi, k, boff;
    unsigned blen;

    if (i < img->rt_entries && img->rt[i] != 0)
      continue;
    memset (buf, 0, cs);
    lo = MAX (i * per_rb, start);
    hi = MIN ((i + 1) * per_rb, start + n + m);
    for (k = lo; k < hi; ++k)
      rb_entry_set (img, buf, k - i * per_rb, 1, &boff, &blen);
    rt[i] = c * cs;
    if (full_pwrite (img->fd, buf, cs, c * cs) == -1) {
      nbdkit_error ("%s: write refcount block: %m", img->path);
      goto out;
    }
    c++;
  }
  /* Clusters of the region in ranges that already had a block. */
  for (c = start; c < start + n + m; ++c) {
    uint64_t r = c / per_rb;
    if (r < img->rt_entries && img->rt[r] != 0)
      if (refcount_set (img, c, 1) == -1)
        goto out;
  }
  /* The new table. */
  for (i = 0; i < entries; i += cs / 8) {
    uint64_t k;
    for (k = 0; k < cs / 8; ++k)
      put_be64 (buf + k * 8, rt[i + k]);
    if (full_pwrite (img->fd, buf, cs, (start + i / (cs / 8)) * cs) == -1) {
      nbdkit_error ("%s: write refcount table: %m", img->path);
      goto out;
    }
  }
  /* Make it durable before the header switches to it. */
  if (fdatasync (img->fd) == -1) {
    nbdkit_error ("%s: fdatasync: %m", img->path);
    goto out;
  }
  put_be64 (hb, start * cs);
  put_be32 (hb + 8, n);
  if (full_pwrite (img->fd, hb, 12, 48) == -1) {
    nbdkit_error ("%s: write header: %m", img->path);
    goto out;
  }
  if (fdatasync (img->fd) == -1) {
    nbdkit_error ("%s: fdatasync: %m", img->path);
    goto out;
  }
  free (img->rt);
  img->rt = rt;
  rt = NULL;
  img->rt_entries = entries;
  img->rt_offset = start * cs;
  img->rt_clusters = n;
  img->file_clusters = start + n + m;
  /* The whole region is the new table and its blocks; the old table
   * is not metadata any more.
   */
  meta_unmark (img, old_off / cs, old_clusters);
  if (meta_mark (img, start, n + m) == -1)
    goto out;
  nbdkit_debug ("%s: refcount table moved to %#" PRIx64 " (%" PRIu64
                " clusters)", img->path, img->rt_offset, n);

  /* The old table is released like any other cluster. */
  for (i = 0; i < old_clusters; ++i) {
    int err;
    if (refcount_defer_free (img, old_off / cs + i, &err) == -1)
      goto out;
  }
  ret = 0;
 out:
  free (rt);
  free (buf);
  return ret;
}

/* Make sure the refcount block counting host cluster hc exists. */
static int
ensure_block (struct qcow2_image *img, uint64_t hc)
{
  uint64_t r = hc >> img->rb_bits, bc, boff;
  unsigned blen;
  unsigned char *buf;

  if (r >= img->rt_entries && grow_refcount_table (img, r + 1) == -1)
    return -1;
  if (img->rt[r] != 0)
    return 0;
  if (r == 0) {
    nbdkit_error ("%s: no refcount block for the header (corrupt image)",
                  img->path);
    return -1;
  }
  bc = r << img->rb_bits;
  {
    int err;
    if (meta_check_alloc (img, bc, &err) == -1)
      return -1;
  }
  buf = calloc (1, img->cluster_size);
  if (buf == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  rb_entry_set (img, buf, 0, 1, &boff, &blen);
  if (full_pwrite (img->fd, buf, img->cluster_size,
                   bc << img->cluster_bits) == -1) {
    nbdkit_error ("%s: write refcount block: %m", img->path);
    free (buf);
    return -1;
  }
  img->rt[r] = bc << img->cluster_bits;
  if (write_rt_entry (img, r) == -1) {
    img->rt[r] = 0;
    free (buf);
    return -1;
  }
  cache_put (img, &img->rb_cache, img->rt[r], buf);
  free (buf);
  img->file_clusters = MAX (img->file_clusters, bc + 1);
  return meta_mark (img, bc, 1);
}

uint64_t
refcount_alloc_cluster (struct qcow2_image *img, int *err)
{
  uint64_t c = img->free_hint, rc;

  for (;;) {
    if (c < img->file_clusters) {
      uint64_t r = c >> img->rb_bits;
      if (r < img->rt_entries && img->rt[r] != 0) {
        if (refcount_get (img, c, &rc) == -1)
          goto err;
        if (rc != 0) {
          c++;
          continue;
        }
      }
    }
    /* c is free; its block may have to be made first, and may land on
     * c itself, or the table may move to where c is.
     */
    if (ensure_block (img, c) == -1)
      goto err;
    if (refcount_get (img, c, &rc) == -1)
      goto err;
    if (rc != 0) {
      c++;
      continue;
    }
    if (meta_check_alloc (img, c, err) == -1)
      return 0;
    if (refcount_set (img, c, 1) == -1)
      goto err;
    img->free_hint = c + 1;
    img->file_clusters = MAX (img->file_clusters, c + 1);
    return c << img->cluster_bits;
  }
 err:
  *err = EIO;
  return 0;
}

int
refcount_defer_free (struct qcow2_image *img, uint64_t hc, int *err)
{
  if (img->npending == img->pending_alloc) {
    size_t n = img->pending_alloc ? img->pending_alloc * 2 : 64;
    uint64_t *p = realloc (img->pending_free, n * sizeof *p);
    if (p == NULL) {
      *err = errno;
      nbdkit_error ("realloc: %m");
      return -1;
    }
    img->pending_free = p;
    img->pending_alloc = n;
  }
  img->pending_free[img->npending++] = hc;
  return 0;
}

int
refcount_defer_free_entry (struct qcow2_image *img, uint64_t e, int *err)
{
  if (e & QCOW2_OFLAG_COMPRESSED) {
    uint64_t off = e & img->coffset_mask;
    uint64_t nb = ((e >> img->csize_shift) & img->csize_mask) + 1;
    uint64_t end = (off & ~UINT64_C (511)) + nb * 512;
    uint64_t hc;

    for (hc = off >> img->cluster_bits;
         hc <= (end - 1) >> img->cluster_bits; ++hc)
      if (refcount_defer_free (img, hc, err) == -1)
        return -1;
    return 0;
  }
  if ((e & QCOW2_OFFSET_MASK) == 0)
    return 0;
  return refcount_defer_free (img, (e & QCOW2_OFFSET_MASK) >> img->cluster_bits,
                              err);
}

int
refcount_commit_frees (struct qcow2_image *img, int *err)
{
  size_t i;
  int ret = 0;

  for (i = 0; i < img->npending; ++i) {
    uint64_t hc = img->pending_free[i], rc;

    if (refcount_get (img, hc, &rc) == -1) {
      ret = -1;
      continue;
    }
    if (rc == 0) {
      /* Already free: the image was inconsistent before we touched it.
       * Leave it; never wrap around.
       */
      nbdkit_debug ("%s: freeing cluster %" PRIu64 " with refcount 0",
                    img->path, hc);
      continue;
    }
    if (refcount_set (img, hc, rc - 1) == -1) {
      ret = -1;
      continue;
    }
    if (rc == 1) {
      img->free_hint = MIN (img->free_hint, hc);
      /* Give the space back; failure only costs space. */
#ifdef FALLOC_FL_PUNCH_HOLE
      if (fallocate (img->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                     hc << img->cluster_bits, img->cluster_size) == -1) {
        /* ignored */
      }
#endif
    }
  }
  img->npending = 0;
  if (ret == -1)
    *err = EIO;
  return ret;
}
