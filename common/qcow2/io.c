/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Reads, writes, zeroes, trims, flush and block status.
 *
 * Notes on the design:
 *
 * Locking (lock order: see common/backup/lock-order.h, item 12).
 * img->lock protects the metadata (L1, caches, refcounts).
 * Lookups copy L2 entries out under it; reads and writes of data in
 * clusters that are already allocated and owned (COPIED) then happen
 * without it.  Writes that must allocate or copy a cluster (first
 * write, write into a compressed, zero-flagged or shared cluster) do
 * the whole cluster under the lock: the copy must be atomic with
 * respect to other writers of the same cluster, and holding the lock is
 * the simple way to get that (QEMU tracks in-flight allocations
 * instead).  Every data request also holds img->reuse_lock for
 * reading; a cluster freed by trim or a copy is only released at the
 * next flush, which takes it for writing, so no request can touch a
 * host cluster after it was given to another guest cluster.
 *
 * Order of updates, so that a crash at any point is repairable by
 * 'qemu-img check -r all' without losing flushed data:
 *  1. a new cluster is counted in its refcount block;
 *  2. its contents (data, zeroed L2 table) are written;
 *  3. the L2 (or L1) entry is written to point at it;
 *  4. freed clusters are queued; at flush: fdatasync (data and the
 *     entries of step 3 become durable), then the refcounts of queued
 *     clusters are decremented (a crash here only leaks clusters).
 * All metadata writes are write-through (no dirty cache), so a process
 * crash always sees this order.  A power loss between two flushes may
 * reorder 1 and 3, which check -r all repairs by recounting; data that
 * was flushed is never pointed at by anything else, because a cluster
 * is never reused before the flush after it was freed.
 *
 * Version 2 images have no zero flag: zeroes and trims that must not
 * expose the backing file write zeros instead.  Without a backing file,
 * trimmed clusters become unallocated (they read as zeros); with one
 * (in version 3) they get the zero flag.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <inttypes.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/stat.h>

#include <nbdkit-plugin.h>

#include "cleanup.h"
#include "minmax.h"
#include "rounding.h"
#include "qcow2-internal.h"

#define LOOKUP_MAX 512

/* Read-lock reuse_lock until the end of the current scope. */
static void
cleanup_rwlock_unlock (pthread_rwlock_t **l)
{
  pthread_rwlock_unlock (*l);
}
#define HOLD_REUSE_LOCK(img)                                            \
  __attribute__ ((cleanup (cleanup_rwlock_unlock)))                     \
  pthread_rwlock_t *_reuse = &(img)->reuse_lock;                        \
  pthread_rwlock_rdlock (_reuse)

static int
check_request (struct qcow2_image *img, uint32_t count, uint64_t offset,
               bool write, int *err)
{
  if (write && img->readonly) {
    nbdkit_error ("%s: image is read-only", img->path);
    *err = EROFS;
    return -1;
  }
  if (write && __atomic_load_n (&img->corrupt, __ATOMIC_RELAXED)) {
    nbdkit_error ("%s: the image was marked corrupt; not writing",
                  img->path);
    *err = EIO;
    return -1;
  }
  if (offset > img->size || count > img->size - offset) {
    nbdkit_error ("%s: request beyond the end of the disk", img->path);
    *err = EINVAL;
    return -1;
  }
  return 0;
}

/* Clusters that a qcow2 reader would take from a backing file: the
 * image names one (even if we were told not to open it) or we opened
 * one.
 */
static bool
backing_visible (struct qcow2_image *img)
{
  return img->header_names_backing || qcow2_has_backing (img);
}

static enum cluster_kind
kind_of (struct qcow2_image *img, uint64_t e)
{
  enum cluster_kind k = CLUSTER_UNALLOCATED;
  l2_entry_kind (img, e, &k);   /* entries were checked at lookup */
  return k;
}

int
qcow2_pread (struct qcow2_image *img, void *bufv, uint32_t count,
             uint64_t offset, int *err)
{
  unsigned char *buf = bufv;
  uint64_t entries[LOOKUP_MAX];
  uint64_t cs = img->cluster_size;

  if (check_request (img, count, offset, false, err) == -1)
    return -1;
  HOLD_REUSE_LOCK (img);

  while (count > 0) {
    uint64_t vc = offset >> img->cluster_bits, in = offset & (cs - 1);
    uint64_t span = DIV_ROUND_UP (in + count, cs), run, len;
    enum cluster_kind k;
    int n;

    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);
      n = l2_lookup (img, vc, MIN (span, (uint64_t) LOOKUP_MAX), entries, err);
      for (run = 0; n > 0 && run < (uint64_t) n; ++run)
        if (meta_check_read (img, (vc + run) * cs, entries[run], err) == -1)
          return -1;
    }
    if (n == -1)
      return -1;
    k = kind_of (img, entries[0]);
    for (run = 1; run < (uint64_t) n; ++run) {
      if (kind_of (img, entries[run]) != k || k == CLUSTER_COMPRESSED)
        break;
      if (k == CLUSTER_NORMAL &&
          (entries[run] & QCOW2_OFFSET_MASK) !=
          (entries[0] & QCOW2_OFFSET_MASK) + run * cs)
        break;
    }
    len = MIN (run * cs - in, (uint64_t) count);

    switch (k) {
    case CLUSTER_UNALLOCATED:
      if (backing_pread (img, buf, len, offset, err) == -1)
        return -1;
      break;
    case CLUSTER_ZERO:
    case CLUSTER_ZERO_ALLOC:
      memset (buf, 0, len);
      break;
    case CLUSTER_NORMAL:
      if (full_pread (img->fd, buf, len,
                      (entries[0] & QCOW2_OFFSET_MASK) + in) == -1) {
        *err = errno;
        nbdkit_error ("%s: read: %m", img->path);
        return -1;
      }
      break;
    case CLUSTER_COMPRESSED: {
      CLEANUP_FREE unsigned char *c = malloc (cs);
      if (c == NULL) {
        *err = errno;
        nbdkit_error ("malloc: %m");
        return -1;
      }
      if (qcow2_read_compressed (img, entries[0], c, err) == -1)
        return -1;
      memcpy (buf, c + in, len);
      break;
    }
    }
    buf += len;
    offset += len;
    count -= len;
  }
  return 0;
}

/* The current contents of guest cluster vc whose entry is e, into c.
 * Caller holds the lock.
 */
static int
read_old_cluster (struct qcow2_image *img, uint64_t vc, uint64_t e,
                  unsigned char *c, int *err)
{
  uint64_t cs = img->cluster_size;

  if (meta_check_read (img, vc * cs, e, err) == -1)
    return -1;
  switch (kind_of (img, e)) {
  case CLUSTER_UNALLOCATED:
    return backing_pread (img, c, cs, vc * cs, err);
  case CLUSTER_ZERO:
  case CLUSTER_ZERO_ALLOC:
    memset (c, 0, cs);
    return 0;
  case CLUSTER_COMPRESSED:
    return qcow2_read_compressed (img, e, c, err);
  case CLUSTER_NORMAL:
    if (full_pread (img->fd, c, cs, e & QCOW2_OFFSET_MASK) == -1) {
      *err = errno;
      nbdkit_error ("%s: read: %m", img->path);
      return -1;
    }
    return 0;
  }
  return 0;
}

/* Write [in, in + len) of guest cluster vc from buf (NULL = zeros),
 * allocating or copying the cluster.  Caller holds the lock.
 */
static int
write_cluster_slow (struct qcow2_image *img, uint64_t vc,
                    const unsigned char *buf, uint64_t in, uint64_t len,
                    int *err)
{
  uint64_t cs = img->cluster_size, toff, idx, e, host, ne;
  unsigned char *table;
  CLEANUP_FREE unsigned char *c = NULL;
  const unsigned char *data;
  enum cluster_kind k;

  if (l2_get_table (img, vc, true, &table, &toff, &idx, err) == -1)
    return -1;
  e = get_be64 (table + idx * 8);
  if (l2_entry_kind (img, e, &k) == -1) {
    *err = EIO;
    return -1;
  }
  host = e & QCOW2_OFFSET_MASK;
  if (k == CLUSTER_NORMAL && (e & QCOW2_OFLAG_COPIED)) {
    /* Someone allocated it meanwhile. */
    if (meta_check_write (img, vc * cs + in, host + in, len, err) == -1)
      return -1;
    if (buf)
      return full_pwrite (img->fd, buf, len, host + in) == -1 ?
        (*err = errno, nbdkit_error ("%s: write: %m", img->path), -1) : 0;
  }

  if (buf && in == 0 && len == cs)
    data = buf;                 /* All of it: written as it is. */
  else {
    c = malloc (cs);
    if (c == NULL) {
      *err = errno;
      nbdkit_error ("malloc: %m");
      return -1;
    }
    if (in != 0 || len != cs) {
      if (read_old_cluster (img, vc, e, c, err) == -1)
        return -1;
    }
    if (buf)
      memcpy (c + in, buf, len);
    else
      memset (c + in, 0, len);
    data = c;
  }

  if (k == CLUSTER_ZERO_ALLOC && (e & QCOW2_OFLAG_COPIED)) {
    /* Preallocated and owned: fill it, then drop the zero flag. */
  }
  else if (k == CLUSTER_NORMAL && (e & QCOW2_OFLAG_COPIED)) {
    /* owned normal cluster being zeroed: write in place */
  }
  else {
    host = refcount_alloc_cluster (img, err);
    if (host == 0)
      return -1;
  }
  if (meta_check_write (img, vc * cs + in, host, cs, err) == -1)
    return -1;
  if (full_pwrite (img->fd, data, cs, host) == -1) {
    *err = errno;
    nbdkit_error ("%s: write: %m", img->path);
    return -1;
  }
  ne = host | QCOW2_OFLAG_COPIED;
  if (ne != e) {
    put_be64 (table + idx * 8, ne);
    if (l2_write_entries (img, table, toff, idx, 1, err) == -1)
      return -1;
    if ((e & ~QCOW2_OFLAG_ZERO) != ne &&
        refcount_defer_free_entry (img, e, err) == -1)
      return -1;
  }
  return 0;
}

/* Write with reuse_lock already held. */
static int
do_pwrite (struct qcow2_image *img, const unsigned char *buf,
           uint32_t count, uint64_t offset, int *err)
{
  uint64_t entries[LOOKUP_MAX];
  uint64_t cs = img->cluster_size;

  while (count > 0) {
    uint64_t vc = offset >> img->cluster_bits, in = offset & (cs - 1);
    uint64_t span = DIV_ROUND_UP (in + count, cs), run, len, host;
    int n;

    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);
      n = l2_lookup (img, vc, MIN (span, (uint64_t) LOOKUP_MAX), entries,
                     err);
      if (n == -1)
        return -1;
      if (kind_of (img, entries[0]) != CLUSTER_NORMAL ||
          !(entries[0] & QCOW2_OFLAG_COPIED)) {
        len = MIN (cs - in, (uint64_t) count);
        if (write_cluster_slow (img, vc, buf, in, len, err) == -1)
          return -1;
        goto next;
      }
      /* Fast path: owned clusters, contiguous on the host, none of
       * them metadata.
       */
      host = entries[0] & QCOW2_OFFSET_MASK;
      for (run = 1; run < (uint64_t) n; ++run)
        if (kind_of (img, entries[run]) != CLUSTER_NORMAL ||
            !(entries[run] & QCOW2_OFLAG_COPIED) ||
            (entries[run] & QCOW2_OFFSET_MASK) != host + run * cs)
          break;
      len = MIN (run * cs - in, (uint64_t) count);
      if (meta_check_write (img, offset, host + in, len, err) == -1)
        return -1;
    }
    if (buf) {
      if (full_pwrite (img->fd, buf, len, host + in) == -1) {
        *err = errno;
        nbdkit_error ("%s: write: %m", img->path);
        return -1;
      }
    }
    else {
      CLEANUP_FREE unsigned char *z = calloc (1, len);
      if (z == NULL || full_pwrite (img->fd, z, len, host + in) == -1) {
        *err = errno;
        nbdkit_error ("%s: write: %m", img->path);
        return -1;
      }
    }
  next:
    if (buf)
      buf += len;
    offset += len;
    count -= len;
  }
  return 0;
}

int
qcow2_pwrite (struct qcow2_image *img, const void *buf, uint32_t count,
              uint64_t offset, int *err)
{
  if (check_request (img, count, offset, true, err) == -1)
    return -1;
  HOLD_REUSE_LOCK (img);
  return do_pwrite (img, buf, count, offset, err);
}

enum zero_mode { ZERO_KEEP, ZERO_UNMAP };

/* New L2 entry for a whole cluster being zeroed, or 1 << 1 (an
 * impossible entry) when the cluster must be written with zeros.
 */
#define NEEDS_WRITE (UINT64_C (1) << 1)
static uint64_t
zeroed_entry (struct qcow2_image *img, uint64_t e, enum zero_mode mode)
{
  enum cluster_kind k = kind_of (img, e);
  bool owned = (e & QCOW2_OFLAG_COPIED) &&
    (k == CLUSTER_NORMAL || k == CLUSTER_ZERO_ALLOC);

  if (k == CLUSTER_ZERO || (k == CLUSTER_ZERO_ALLOC && owned))
    return e;                   /* already zero */
  if (!backing_visible (img)) {
    if (mode == ZERO_UNMAP || k == CLUSTER_UNALLOCATED)
      return 0;
    if (img->version >= 3)
      return owned ? (e & QCOW2_OFFSET_MASK) | QCOW2_OFLAG_COPIED |
        QCOW2_OFLAG_ZERO : QCOW2_OFLAG_ZERO;
    return owned ? NEEDS_WRITE : 0;
  }
  if (img->version >= 3) {
    if (mode == ZERO_KEEP && owned)
      return (e & QCOW2_OFFSET_MASK) | QCOW2_OFLAG_COPIED | QCOW2_OFLAG_ZERO;
    return QCOW2_OFLAG_ZERO;
  }
  return NEEDS_WRITE;           /* v2 with a backing file */
}

static int
zero_range (struct qcow2_image *img, uint32_t count, uint64_t offset,
            enum zero_mode mode, int *err)
{
  uint64_t cs = img->cluster_size;
  uint64_t per = UINT64_C (1) << img->l2_bits;

  if (check_request (img, count, offset, true, err) == -1)
    return -1;
  HOLD_REUSE_LOCK (img);

  while (count > 0) {
    uint64_t vc = offset >> img->cluster_bits, in = offset & (cs - 1);
    uint64_t cend = MIN ((vc + 1) * cs, img->size);
    uint64_t len, nfull, i, toff, idx;
    unsigned char *table;

    if (in != 0 || offset + count < cend) {
      /* Part of a cluster: write zeros unless it reads as zeros. */
      uint64_t e;
      enum cluster_kind k;
      int n;

      len = MIN (cend - offset, (uint64_t) count);
      {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);
        n = l2_lookup (img, vc, 1, &e, err);
      }
      if (n == -1)
        return -1;
      k = kind_of (img, e);
      if (!(k == CLUSTER_ZERO || k == CLUSTER_ZERO_ALLOC ||
            (k == CLUSTER_UNALLOCATED && !backing_visible (img))))
        if (do_pwrite (img, NULL, len, offset, err) == -1)
          return -1;
      offset += len;
      count -= len;
      continue;
    }

    /* Whole clusters, up to the end of this L2 table. */
    /* The short last cluster of the disk counts as whole. */
    nfull = offset + count == img->size ? DIV_ROUND_UP (count, cs)
      : count / cs;
    nfull = MIN (nfull, per - (vc & (per - 1)));
    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);
      uint64_t lo = UINT64_MAX, hi = 0;

      if (l2_get_table (img, vc, false, &table, &toff, &idx, err) == -1)
        return -1;
      if (table != NULL &&
          !(img->l1[vc >> img->l2_bits] & QCOW2_OFLAG_COPIED)) {
        nbdkit_error ("%s: L2 table at %#" PRIx64 " is shared (no copied "
                      "flag); cannot write", img->path, toff);
        *err = EIO;
        return -1;
      }
      if (table == NULL) {
        /* No L2 table: all unallocated. */
        if (zeroed_entry (img, 0, mode) != 0 &&
            l2_get_table (img, vc, true, &table, &toff, &idx, err) == -1)
          return -1;
      }
      for (i = 0; table && i < nfull; ++i) {
        uint64_t e = get_be64 (table + (idx + i) * 8), ne;
        enum cluster_kind k;

        if (l2_entry_kind (img, e, &k) == -1) {
          *err = EIO;
          return -1;
        }
        ne = zeroed_entry (img, e, mode);
        if (ne == NEEDS_WRITE) {
          /* Flush pending entry changes first: the slow path writes
           * this table's entry itself.
           */
          if (lo <= hi) {
            if (l2_write_entries (img, table, toff, lo, hi - lo + 1,
                                  err) == -1)
              return -1;
            lo = UINT64_MAX; hi = 0;
          }
          if (write_cluster_slow (img, vc + i, NULL, 0, cs, err) == -1)
            return -1;
          /* Re-fetch: the table is still cached (no L2 eviction in
           * between), but be safe.
           */
          if (l2_get_table (img, vc, false, &table, &toff, &idx, err) == -1)
            return -1;
          continue;
        }
        if (ne == e)
          continue;
        put_be64 (table + (idx + i) * 8, ne);
        lo = MIN (lo, idx + i);
        hi = MAX (hi, idx + i);
        if ((ne & QCOW2_OFFSET_MASK) != (e & QCOW2_OFFSET_MASK) ||
            k == CLUSTER_COMPRESSED)
          if (refcount_defer_free_entry (img, e, err) == -1)
            return -1;
      }
      if (lo <= hi &&
          l2_write_entries (img, table, toff, lo, hi - lo + 1, err) == -1)
        return -1;
    }
    len = MIN (nfull * cs, (uint64_t) count);
    offset += len;
    count -= len;
  }
  return 0;
}

int
qcow2_zero (struct qcow2_image *img, uint32_t count, uint64_t offset,
            bool may_unmap, int *err)
{
  return zero_range (img, count, offset, may_unmap ? ZERO_UNMAP : ZERO_KEEP,
                     err);
}

int
qcow2_trim (struct qcow2_image *img, uint32_t count, uint64_t offset,
            int *err)
{
  /* Trimmed ranges read as zeros: only whole clusters are unmapped,
   * and parts of clusters are zeroed.
   */
  return zero_range (img, count, offset, ZERO_UNMAP, err);
}

int
qcow2_flush (struct qcow2_image *img, int *err)
{
  bool pending;

  if (img->readonly)
    return 0;
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);
    pending = img->npending > 0;
  }
  if (!pending) {
    if (fdatasync (img->fd) == -1) {
      *err = errno;
      nbdkit_error ("%s: fdatasync: %m", img->path);
      return -1;
    }
    return 0;
  }

  /* Wait for every request doing data I/O, so that no one still uses
   * a cluster about to be released.
   */
  pthread_rwlock_wrlock (&img->reuse_lock);
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);
    if (fdatasync (img->fd) == -1) {
      *err = errno;
      nbdkit_error ("%s: fdatasync: %m", img->path);
      pthread_rwlock_unlock (&img->reuse_lock);
      return -1;
    }
    if (refcount_commit_frees (img, err) == -1) {
      pthread_rwlock_unlock (&img->reuse_lock);
      return -1;
    }
  }
  pthread_rwlock_unlock (&img->reuse_lock);
  return 0;
}

/* Whether the image looks preallocated with metadata only: many more
 * clusters are counted than the file has blocks.  QEMU decides this
 * once per open, the same way, and then reports normal clusters whose
 * host range is a hole in the file as zeros; so do we, so that the
 * extents match qemu-nbd's.  Caller holds the lock.
 */
static bool
metadata_preallocated (struct qcow2_image *img)
{
  struct stat st;
  uint64_t real, threshold, counted = 0, hc, end, rc;

  if (img->prealloc_checked)
    return img->prealloc;
  img->prealloc_checked = true;
  if (fstat (img->fd, &st) == -1 || !S_ISREG (st.st_mode))
    return false;
  real = (uint64_t) st.st_blocks * 512 / img->cluster_size;
  threshold = MAX (real * 10 / 9, real + 2);
  end = DIV_ROUND_UP ((uint64_t) st.st_size, img->cluster_size);
  for (hc = 0; hc < end && counted < threshold; ++hc) {
    if (refcount_get (img, hc, &rc) == -1)
      return false;
    counted += rc != 0;
  }
  img->prealloc = counted >= threshold;
  if (img->prealloc)
    nbdkit_debug ("%s: metadata preallocation: holes in the file read "
                  "as zeros", img->path);
  return img->prealloc;
}

/* A run of host-contiguous normal clusters at host offset pos of
 * length *len, in a metadata-preallocated image: shorten *len to the
 * first hole or data boundary; true if that part is a hole (zeros).
 */
static bool
host_hole (struct qcow2_image *img, uint64_t pos, uint64_t *len)
{
  off_t d = lseek (img->fd, pos, SEEK_DATA), h;

  if (d == -1)
    return errno == ENXIO;      /* past the last data: zeros */
  if ((uint64_t) d > pos) {
    *len = MIN (*len, (uint64_t) d - pos);
    return true;
  }
  h = lseek (img->fd, pos, SEEK_HOLE);
  if (h != -1 && (uint64_t) h > pos)
    *len = MIN (*len, (uint64_t) h - pos);
  return false;
}

int
qcow2_block_status (struct qcow2_image *img, uint32_t count, uint64_t offset,
                    uint64_t *lenp, unsigned *flags, int *err)
{
  bool prealloc;
  uint64_t entries[LOOKUP_MAX];
  uint64_t cs = img->cluster_size;
  uint64_t vc = offset >> img->cluster_bits, in = offset & (cs - 1);
  uint64_t span, run, len;
  enum cluster_kind k;
  int n;

  if (check_request (img, count, offset, false, err) == -1)
    return -1;
  if (count == 0) {
    *lenp = 0;
    *flags = 0;
    return 0;
  }
  span = DIV_ROUND_UP (in + count, cs);
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);
    n = l2_lookup (img, vc, MIN (span, (uint64_t) LOOKUP_MAX), entries, err);
    prealloc = n > 0 && metadata_preallocated (img);
  }
  if (n == -1)
    return -1;
  k = kind_of (img, entries[0]);
  for (run = 1; run < (uint64_t) n; ++run) {
    enum cluster_kind k2 = kind_of (img, entries[run]);
    bool same;

    if (prealloc && k == CLUSTER_NORMAL) {
      /* Host holes are looked up in one contiguous run. */
      if (k2 != CLUSTER_NORMAL ||
          (entries[run] & QCOW2_OFFSET_MASK) !=
          (entries[0] & QCOW2_OFFSET_MASK) + run * cs)
        break;
      continue;
    }
    same = k2 == k ||
      ((k2 == CLUSTER_ZERO || k2 == CLUSTER_ZERO_ALLOC) &&
       (k == CLUSTER_ZERO || k == CLUSTER_ZERO_ALLOC)) ||
      ((k2 == CLUSTER_NORMAL || k2 == CLUSTER_COMPRESSED) &&
       (k == CLUSTER_NORMAL || k == CLUSTER_COMPRESSED));
    if (!same)
      break;
  }
  len = MIN (run * cs - in, (uint64_t) count);

  switch (k) {
  case CLUSTER_UNALLOCATED:
    if (backing_status (img, len, offset, lenp, flags, err) == -1)
      return -1;
    *lenp = MIN (*lenp, len);
    return 0;
  case CLUSTER_ZERO:
  case CLUSTER_ZERO_ALLOC:
    *flags = QCOW2_BS_ALLOCATED | QCOW2_BS_ZERO;
    break;
  case CLUSTER_NORMAL:
  case CLUSTER_COMPRESSED:
    *flags = QCOW2_BS_ALLOCATED | QCOW2_BS_DATA;
    if (prealloc && k == CLUSTER_NORMAL &&
        host_hole (img, (entries[0] & QCOW2_OFFSET_MASK) + in, &len))
      *flags |= QCOW2_BS_ZERO;
    break;
  }
  *lenp = len;
  return 0;
}
