/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Metadata clusters, and the overlap check.
 *
 * A corrupt (or hostile) image can point an L2 entry at the image's
 * own metadata, or count a metadata cluster as free so that the
 * allocator hands it out.  A guest write would then turn the L1
 * table, a refcount block or an L2 table into guest data.  As QEMU's
 * overlap checks do, no data is ever written to a cluster that holds
 * metadata: the request fails with EIO and an error naming the table,
 * the image is marked corrupt (version 3: the corrupt bit, so QEMU
 * and we refuse to write it until it is repaired) and no further
 * write is done to it in this session; reads go on.
 *
 * img->meta has one bit per host cluster, set for every cluster that
 * holds metadata a writer uses: the header, the L1 table, the
 * refcount table, the refcount blocks and the L2 tables that the L1
 * table points to.  It is built at open from the tables (which also
 * finds tables overlapping each other), kept up to date as tables are
 * allocated or moved, and tested per cluster in O(1) before each data
 * write and each allocation.  Which table a hit is, is worked out
 * only then, by looking through the tables.  Its size is one bit per
 * cluster up to the last metadata cluster: a sixteenth of what 16 bit
 * refcounts take.  Read-only images have none (nothing is written).
 * Snapshot tables are not tracked: images with internal snapshots are
 * never opened for writing, and persistent bitmaps are disowned
 * (autoclear) when an image is opened for writing.
 *
 * Separately, a data cluster past the end of the file is an error on
 * reads and writes, never zeros.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <inttypes.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

#include <nbdkit-plugin.h>

#include "minmax.h"
#include "rounding.h"
#include "qcow2-internal.h"

static bool
meta_test (const struct qcow2_image *img, uint64_t hc)
{
  return hc < img->meta_clusters && (img->meta[hc >> 3] & (1u << (hc & 7)));
}

/* Set the bit of host cluster hc; 1 if it was set already, 0, or -1
 * (reported) on allocation failure.
 */
static int
meta_set (struct qcow2_image *img, uint64_t hc)
{
  if (hc >= img->meta_clusters) {
    uint64_t want = MAX (hc + 1, img->meta_clusters * 2);
    uint64_t old = DIV_ROUND_UP (img->meta_clusters, 8);
    uint64_t bytes = DIV_ROUND_UP (want, 8);
    unsigned char *p = realloc (img->meta, bytes);

    if (p == NULL) {
      nbdkit_error ("realloc: %m");
      return -1;
    }
    memset (p + old, 0, bytes - old);
    img->meta = p;
    img->meta_clusters = bytes * 8;
  }
  if (meta_test (img, hc))
    return 1;
  img->meta[hc >> 3] |= 1u << (hc & 7);
  return 0;
}

int
meta_mark (struct qcow2_image *img, uint64_t hc, uint64_t n)
{
  uint64_t i;

  if (img->readonly)
    return 0;
  for (i = 0; i < n; ++i)
    if (meta_set (img, hc + i) == -1)
      return -1;
  return 0;
}

void
meta_unmark (struct qcow2_image *img, uint64_t hc, uint64_t n)
{
  uint64_t i;

  for (i = 0; i < n; ++i)
    if (hc + i < img->meta_clusters)
      img->meta[(hc + i) >> 3] &= ~(1u << ((hc + i) & 7));
}

/* Which table host cluster hc belongs to ("the L1 table"), for
 * messages; NULL if none.  Slow: only on the error path.
 */
static const char *
meta_name (const struct qcow2_image *img, uint64_t hc, uint64_t *start)
{
  uint64_t cb = img->cluster_bits, i;
  uint64_t l1c = DIV_ROUND_UP ((uint64_t) img->l1_size * 8, img->cluster_size);

  *start = hc << cb;
  if (hc == 0) {
    *start = 0;
    return "header";
  }
  if (hc >= img->l1_offset >> cb && hc < (img->l1_offset >> cb) + l1c) {
    *start = img->l1_offset;
    return "L1 table";
  }
  if (hc >= img->rt_offset >> cb &&
      hc < (img->rt_offset >> cb) + img->rt_clusters) {
    *start = img->rt_offset;
    return "refcount table";
  }
  for (i = 0; i < img->rt_entries; ++i)
    if (img->rt[i] != 0 && img->rt[i] >> cb == hc)
      return "refcount block";
  for (i = 0; i < img->l1_size; ++i)
    if ((img->l1[i] & QCOW2_OFFSET_MASK) != 0 &&
        (img->l1[i] & QCOW2_OFFSET_MASK) >> cb == hc)
      return "L2 table";
  return NULL;
}

/* Mark the image corrupt on disk (version 3) and refuse any further
 * write in this session.  Caller holds the lock.
 */
static void
mark_corrupt (struct qcow2_image *img)
{
  if (__atomic_load_n (&img->corrupt, __ATOMIC_RELAXED))
    return;
  __atomic_store_n (&img->corrupt, true, __ATOMIC_RELAXED);
  if (img->version >= 3) {
    img->incompatible |= QCOW2_INCOMPAT_CORRUPT;
    if (qcow2_write_header_u64 (img, 72, img->incompatible) == 0 &&
        fdatasync (img->fd) == -1)
      nbdkit_error ("%s: fdatasync: %m", img->path);
  }
  nbdkit_error ("%s: the image is now marked corrupt: no more writes "
                "(repair it with 'qemu-img check -r all')", img->path);
}

int
meta_init (struct qcow2_image *img)
{
  uint64_t cb = img->cluster_bits, i;
  uint64_t l1c = DIV_ROUND_UP ((uint64_t) img->l1_size * 8, img->cluster_size);
  int r;

  if (img->readonly)
    return 0;
  if (meta_mark (img, 0, 1) == -1 ||
      meta_mark (img, img->l1_offset >> cb, l1c) == -1 ||
      meta_mark (img, img->rt_offset >> cb, img->rt_clusters) == -1)
    return -1;
  for (i = 0; i < img->rt_entries + img->l1_size; ++i) {
    bool rb = i < img->rt_entries;
    uint64_t off = rb ? img->rt[i] :
      img->l1[i - img->rt_entries] & QCOW2_OFFSET_MASK;
    uint64_t start;
    const char *other;

    if (off == 0)
      continue;
    r = meta_set (img, off >> cb);
    if (r == -1)
      return -1;
    if (r == 0)
      continue;
    other = meta_name (img, off >> cb, &start);
    nbdkit_error ("%s: %s at host offset %#" PRIx64 " overlaps the %s "
                  "at host offset %#" PRIx64 "; the image is corrupt "
                  "(open it read-only, or repair it with 'qemu-img "
                  "check -r all')", img->path,
                  rb ? "refcount block" : "L2 table", off,
                  other ? other : "metadata", start);
    return -1;
  }
  return 0;
}

/* The error for a data cluster that would land on metadata. */
static int
overlap_error (struct qcow2_image *img, const char *what, uint64_t guest,
               uint64_t hc, int *err)
{
  uint64_t start;
  const char *name = meta_name (img, hc, &start);

  nbdkit_error ("%s: %s guest offset %#" PRIx64 " would overwrite the %s "
                "at host offset %#" PRIx64, img->path, what, guest,
                name ? name : "metadata", start);
  mark_corrupt (img);
  *err = EIO;
  return -1;
}

int
meta_check_write (struct qcow2_image *img, uint64_t guest, uint64_t host,
                  uint64_t len, int *err)
{
  uint64_t cb = img->cluster_bits, hc;

  if (len == 0)
    return 0;
  if (__atomic_load_n (&img->corrupt, __ATOMIC_RELAXED)) {
    nbdkit_error ("%s: the image was marked corrupt; not writing",
                  img->path);
    *err = EIO;
    return -1;
  }
  for (hc = host >> cb; hc <= (host + len - 1) >> cb; ++hc) {
    if (hc >= img->file_clusters) {
      nbdkit_error ("%s: guest offset %#" PRIx64 ": data cluster at host "
                    "offset %#" PRIx64 " is beyond the end of the file",
                    img->path, guest, hc << cb);
      *err = EIO;
      return -1;
    }
    if (meta_test (img, hc))
      return overlap_error (img, "write to", guest, hc, err);
  }
  return 0;
}

int
meta_check_alloc (struct qcow2_image *img, uint64_t hc, int *err)
{
  uint64_t start;
  const char *name;

  if (!meta_test (img, hc))
    return 0;
  name = meta_name (img, hc, &start);
  nbdkit_error ("%s: the refcounts call the cluster at host offset %#"
                PRIx64 " free, but it holds the %s at host offset %#"
                PRIx64 "; not reusing it", img->path, hc << img->cluster_bits,
                name ? name : "metadata", start);
  mark_corrupt (img);
  *err = EIO;
  return -1;
}

int
meta_check_read (struct qcow2_image *img, uint64_t guest, uint64_t entry,
                 int *err)
{
  enum cluster_kind k;
  uint64_t off;

  if (l2_entry_kind (img, entry, &k) == -1) {
    *err = EIO;
    return -1;
  }
  if (k == CLUSTER_NORMAL)
    off = entry & QCOW2_OFFSET_MASK;
  else if (k == CLUSTER_COMPRESSED)
    off = entry & img->coffset_mask;
  else
    return 0;
  if (off >> img->cluster_bits >= img->file_clusters) {
    nbdkit_error ("%s: guest offset %#" PRIx64 ": %s cluster at host "
                  "offset %#" PRIx64 " is beyond the end of the file",
                  img->path, guest,
                  k == CLUSTER_NORMAL ? "data" : "compressed", off);
    *err = EIO;
    return -1;
  }
  return 0;
}
