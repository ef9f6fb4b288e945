/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Opening and closing images. */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <inttypes.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>

#include <nbdkit-plugin.h>

#include "files.h"
#include "minmax.h"
#include "rounding.h"
#include "qcow2-internal.h"

/* Cache slots: about 16 MiB of tables each, at least 4 slots. */
static unsigned
cache_slots (uint32_t cluster_size, unsigned max)
{
  unsigned n = (16 * 1024 * 1024) / cluster_size;
  return MAX (4u, MIN (n, max));
}

static void
free_image (struct qcow2_image *img)
{
  backing_close (img);
  cache_free (&img->l2_cache);
  cache_free (&img->rb_cache);
  if (img->fd >= 0)
    close (img->fd);
  pthread_mutex_destroy (&img->lock);
  pthread_rwlock_destroy (&img->reuse_lock);
  free (img->l1);
  free (img->rt);
  free (img->pending_free);
  free (img->meta);
  free (img->backing_name);
  free (img->backing_format_name);
  free (img->path);
  free (img);
}

struct qcow2_image *
qcow2_open_depth (const char *path, const struct qcow2_open_options *opts,
                  unsigned depth, struct qcow2_chain *chain)
{
  struct qcow2_image *img;
  struct stat st;
  unsigned char first[112];
  unsigned char *hdr = NULL;
  uint32_t cb;

  img = calloc (1, sizeof *img);
  if (img == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  img->fd = -1;
  img->backing_fd = -1;
  pthread_mutex_init (&img->lock, NULL);
  {
    /* Prefer the writer (flush) so that a steady stream of requests
     * cannot starve it; no thread ever read-locks one image twice.
     */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init (&attr);
    pthread_rwlockattr_setkind_np (&attr,
                                   PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init (&img->reuse_lock, &attr);
    pthread_rwlockattr_destroy (&attr);
  }
  img->readonly = opts->readonly;
  img->path = strdup (path);
  if (img->path == NULL) {
    nbdkit_error ("strdup: %m");
    goto err;
  }
  /* Never blocks on a FIFO (a backing file named by an image could be
   * one); anything but a regular file or a block device is refused.
   */
  if (depth == 0 && opts->target_param)
    img->fd = open_regular_file (opts->target_param, path,
                                 img->readonly ? O_RDONLY : O_RDWR,
                                 OPEN_NOFOLLOW);
  else
    img->fd = open_regular_file (depth == 0 ? "qcow2 image" : "backing file",
                                 path, img->readonly ? O_RDONLY : O_RDWR,
                                 OPEN_ALLOW_BLOCKDEV);
  if (img->fd == -1)
    goto err;
  if (fstat (img->fd, &st) == -1) {
    nbdkit_error ("fstat: %s: %m", path);
    goto err;
  }
  if (S_ISBLK (st.st_mode)) {
    off_t end = lseek (img->fd, 0, SEEK_END);
    if (end == -1) {
      nbdkit_error ("lseek: %s: %m", path);
      goto err;
    }
    st.st_size = end;
  }
  if (qcow2_chain_add (chain, img->fd, path) == -1)
    goto err;

  /* The header lives in the first cluster; read its fixed part to
   * learn the cluster size, then the whole cluster.
   */
  memset (first, 0, sizeof first);
  if (full_pread (img->fd, first, sizeof first, 0) == -1) {
    nbdkit_error ("read: %s: %m", path);
    goto err;
  }
  cb = get_be32 (first + 20);
  if (st.st_size < 72 || get_be32 (first) != QCOW2_MAGIC || cb < 9 ||
      cb > 21) {
    if (qcow2_parse_header (img, first, MIN ((uint64_t) sizeof first,
                                             (uint64_t) st.st_size),
                            st.st_size) == -1)
      goto err;
  }
  hdr = calloc (1, UINT32_C (1) << cb);
  if (hdr == NULL) {
    nbdkit_error ("calloc: %m");
    goto err;
  }
  if (full_pread (img->fd, hdr, MIN ((uint64_t) 1 << cb,
                                     (uint64_t) st.st_size), 0) == -1) {
    nbdkit_error ("read: %s: %m", path);
    goto err;
  }
  if (qcow2_parse_header (img, hdr, MIN ((uint64_t) 1 << cb,
                                         (uint64_t) st.st_size),
                          st.st_size) == -1)
    goto err;
  free (hdr);
  hdr = NULL;

  if (!img->readonly && img->nb_snapshots > 0) {
    nbdkit_error ("%s: image has internal snapshots; writing to it is not "
                  "supported (open it read-only)", path);
    goto err;
  }
  if (qcow2_load_tables (img, st.st_size) == -1 || meta_init (img) == -1)
    goto err;
  if (cache_init (&img->l2_cache, cache_slots (img->cluster_size, 256),
                  img->cluster_size) == -1 ||
      cache_init (&img->rb_cache, cache_slots (img->cluster_size, 64),
                  img->cluster_size) == -1)
    goto err;
  img->file_clusters = DIV_ROUND_UP ((uint64_t) st.st_size,
                                     img->cluster_size);
  img->free_hint = 0;

  /* Autoclear bits name extensions (such as bitmaps) that a writer
   * which does not understand them must disown.
   */
  if (!img->readonly && img->version >= 3 && img->autoclear != 0) {
    if (qcow2_write_header_u64 (img, 88, 0) == -1)
      goto err;
    img->autoclear = 0;
  }

  if (qcow2_open_backing (img, opts, depth, chain) == -1)
    goto err;
  return img;

 err:
  free (hdr);
  free_image (img);
  return NULL;
}

struct qcow2_image *
qcow2_open (const char *path, const struct qcow2_open_options *opts)
{
  struct qcow2_chain chain = { .n = 0 };
  static const struct qcow2_open_options defaults;

  return qcow2_open_depth (path, opts ? opts : &defaults, 0, &chain);
}

int
qcow2_close (struct qcow2_image *img)
{
  int err, r = 0;

  if (img == NULL)
    return 0;
  if (!img->readonly)
    r = qcow2_flush (img, &err);
  free_image (img);
  return r;
}

uint64_t
qcow2_get_size (const struct qcow2_image *img)
{
  return img->size;
}

uint32_t
qcow2_get_cluster_size (const struct qcow2_image *img)
{
  return img->cluster_size;
}

int
qcow2_get_fd (const struct qcow2_image *img)
{
  return img->fd;
}

bool
qcow2_is_readonly (const struct qcow2_image *img)
{
  return img->readonly;
}

bool
qcow2_has_backing (const struct qcow2_image *img)
{
  return img->backing != NULL || img->backing_fd >= 0;
}
