/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Reading compressed clusters: raw deflate (zlib, compression type 0)
 * and zstd (type 1).  The descriptor gives a byte offset and a number
 * of 512-byte sectors; the stream may be followed by garbage, so we
 * stop as soon as a whole cluster has been produced.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <inttypes.h>
#include <string.h>
#include <errno.h>

#include <zlib.h>
#include <zstd.h>

#include <nbdkit-plugin.h>

#include "qcow2-internal.h"

static int
inflate_cluster (struct qcow2_image *img, unsigned char *in, size_t inlen,
                 unsigned char *out)
{
  z_stream s;
  int r;

  memset (&s, 0, sizeof s);
  if (inflateInit2 (&s, -12) != Z_OK) {
    nbdkit_error ("%s: inflateInit2 failed", img->path);
    return -1;
  }
  s.next_in = in;
  s.avail_in = inlen;
  s.next_out = out;
  s.avail_out = img->cluster_size;
  r = inflate (&s, Z_FINISH);
  inflateEnd (&s);
  if ((r != Z_STREAM_END && r != Z_BUF_ERROR) || s.avail_out != 0) {
    nbdkit_error ("%s: corrupt deflate-compressed cluster", img->path);
    return -1;
  }
  return 0;
}

static int
zstd_cluster (struct qcow2_image *img, unsigned char *in, size_t inlen,
              unsigned char *out)
{
  ZSTD_DCtx *dctx = ZSTD_createDCtx ();
  ZSTD_inBuffer ib = { in, inlen, 0 };
  ZSTD_outBuffer ob = { out, img->cluster_size, 0 };
  int ret = -1;

  if (dctx == NULL) {
    nbdkit_error ("ZSTD_createDCtx failed");
    return -1;
  }
  while (ob.pos < ob.size) {
    size_t last = ib.pos + ob.pos;
    size_t r = ZSTD_decompressStream (dctx, &ob, &ib);
    if (ZSTD_isError (r)) {
      nbdkit_error ("%s: corrupt zstd-compressed cluster: %s",
                    img->path, ZSTD_getErrorName (r));
      goto out;
    }
    if (ib.pos + ob.pos == last)        /* no progress: input ran out */
      break;
  }
  if (ob.pos != ob.size) {
    nbdkit_error ("%s: truncated zstd-compressed cluster", img->path);
    goto out;
  }
  ret = 0;
 out:
  ZSTD_freeDCtx (dctx);
  return ret;
}

int
qcow2_read_compressed (struct qcow2_image *img, uint64_t e,
                       unsigned char *out, int *err)
{
  uint64_t off = e & img->coffset_mask;
  uint64_t nb = ((e >> img->csize_shift) & img->csize_mask) + 1;
  size_t len = nb * 512 - (off & 511);
  unsigned char *in;
  int r;

  in = malloc (len);
  if (in == NULL) {
    *err = errno;
    nbdkit_error ("malloc: %m");
    return -1;
  }
  if (full_pread (img->fd, in, len, off) == -1) {
    *err = errno;
    nbdkit_error ("%s: read compressed cluster: %m", img->path);
    free (in);
    return -1;
  }
  if (img->compression_type == 0)
    r = inflate_cluster (img, in, len, out);
  else
    r = zstd_cluster (img, in, len, out);
  free (in);
  if (r == -1)
    *err = EIO;
  return r;
}
