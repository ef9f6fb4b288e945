/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Creating empty qcow2 images.
 *
 * Layout: cluster 0 holds the header, its extensions and the backing
 * file name; then the refcount table, the refcount blocks that count
 * all of this metadata, and the L1 table (all entries zero).
 * Refcounts are 16 bits wide (order 4) in both versions.
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

#include "cleanup.h"
#include "rounding.h"
#include "qcow2-internal.h"

int
qcow2_create (const char *path, const struct qcow2_create_options *opts)
{
  unsigned cb = opts->cluster_bits ? opts->cluster_bits : 16;
  unsigned version = opts->version ? opts->version : 3;
  uint64_t cs, l1_entries, l1_clusters, rt_clusters, rb_clusters, total;
  uint64_t per_rb, i, pos, hdr_len;
  CLEANUP_FREE unsigned char *buf = NULL;
  CLEANUP_CLOSE int fd = -1;
  size_t blen = 0;

  if (cb < 9 || cb > 21) {
    nbdkit_error ("%s: cluster size must be a power of 2 from 512 to 2M",
                  path);
    return -1;
  }
  if (version != 2 && version != 3) {
    nbdkit_error ("%s: qcow2 version must be 2 (compat 0.10) or 3 "
                  "(compat 1.1)", path);
    return -1;
  }
  if (opts->size > QCOW2_MAX_SIZE) {
    nbdkit_error ("%s: size %" PRIu64 " is too large", path, opts->size);
    return -1;
  }
  if (opts->backing) {
    blen = strlen (opts->backing);
    if (blen == 0 || blen > 1023) {
      nbdkit_error ("%s: backing file name must be 1 to 1023 bytes", path);
      return -1;
    }
    if (opts->backing_format == NULL ||
        (strcmp (opts->backing_format, "raw") != 0 &&
         strcmp (opts->backing_format, "qcow2") != 0)) {
      nbdkit_error ("%s: backing format must be raw or qcow2", path);
      return -1;
    }
  }

  cs = UINT64_C (1) << cb;
  per_rb = cs * 8 / 16;
  l1_entries = DIV_ROUND_UP (opts->size, cs << (cb - 3));
  if (l1_entries * 8 > QCOW2_MAX_L1_BYTES) {
    nbdkit_error ("%s: size %" PRIu64 " is too large for cluster size %"
                  PRIu64, path, opts->size, cs);
    return -1;
  }
  l1_clusters = DIV_ROUND_UP (l1_entries * 8, cs);
  rb_clusters = 1;
  for (;;) {
    uint64_t rb;
    rt_clusters = DIV_ROUND_UP (rb_clusters * 8, cs);
    total = 1 + rt_clusters + rb_clusters + l1_clusters;
    rb = DIV_ROUND_UP (total, per_rb);
    if (rb <= rb_clusters)
      break;
    rb_clusters = rb;
  }

  /* Header cluster. */
  hdr_len = version == 3 ? 112 : 72;
  buf = calloc (1, cs);
  if (buf == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  put_be32 (buf, QCOW2_MAGIC);
  put_be32 (buf + 4, version);
  put_be32 (buf + 20, cb);
  put_be64 (buf + 24, opts->size);
  put_be32 (buf + 36, l1_entries);
  put_be64 (buf + 40, (1 + rt_clusters + rb_clusters) * cs);
  put_be64 (buf + 48, cs);
  put_be32 (buf + 56, rt_clusters);
  if (version == 3) {
    put_be32 (buf + 96, 4);
    put_be32 (buf + 100, hdr_len);
  }
  pos = hdr_len;
  if (opts->backing) {
    size_t flen = strlen (opts->backing_format);
    put_be32 (buf + pos, QCOW2_EXT_BACKING_FORMAT);
    put_be32 (buf + pos + 4, flen);
    memcpy (buf + pos + 8, opts->backing_format, flen);
    pos += 8 + ROUND_UP ((uint64_t) flen, 8);
  }
  pos += 8;                     /* end of extensions (zeros) */
  if (opts->backing) {
    if (pos + blen > cs) {
      nbdkit_error ("%s: backing file name does not fit in the header "
                    "cluster", path);
      return -1;
    }
    put_be64 (buf + 8, pos);
    put_be32 (buf + 16, blen);
    memcpy (buf + pos, opts->backing, blen);
  }

  fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
             0600);
  if (fd == -1) {
    nbdkit_error ("open: %s: %m", path);
    return -1;
  }
  if (full_pwrite (fd, buf, cs, 0) == -1)
    goto write_err;

  /* Refcount table. */
  for (i = 0; i < rt_clusters; ++i) {
    uint64_t k;
    memset (buf, 0, cs);
    for (k = 0; k < cs / 8; ++k) {
      uint64_t r = i * (cs / 8) + k;
      if (r < rb_clusters)
        put_be64 (buf + k * 8, (1 + rt_clusters + r) * cs);
    }
    if (full_pwrite (fd, buf, cs, (1 + i) * cs) == -1)
      goto write_err;
  }
  /* Refcount blocks: every metadata cluster has refcount 1. */
  for (i = 0; i < rb_clusters; ++i) {
    uint64_t k;
    memset (buf, 0, cs);
    for (k = 0; k < per_rb; ++k) {
      if (i * per_rb + k < total) {
        buf[k * 2] = 0;
        buf[k * 2 + 1] = 1;
      }
    }
    if (full_pwrite (fd, buf, cs, (1 + rt_clusters + i) * cs) == -1)
      goto write_err;
  }
  /* The L1 table is all zeros: extend the file over it. */
  if (ftruncate (fd, total * cs) == -1)
    goto write_err;
  if (fsync (fd) == -1)
    goto write_err;
  return 0;

 write_err:
  nbdkit_error ("%s: write: %m", path);
  unlink (path);
  return -1;
}
