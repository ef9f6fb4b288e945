/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Backing chains.
 *
 * Policy for a backing file named inside an image (the name is data
 * from the image, so from whoever made it):
 *
 * - same-dir (default): a relative name is taken relative to the
 *   directory of the image that names it; the name, after resolving
 *   every symlink, must lie in that directory or below it.  So an
 *   image cannot make us open /etc/shadow or a device node elsewhere.
 * - any: follow any name (for trusted images).
 * - refuse: an image that names a backing file is refused.
 *
 * The caller can override the top image's backing file by path (no
 * policy check: the caller chose it), or switch it off.  Backing files
 * are opened read-only.  The format comes from the override, else the
 * image's backing format extension, else the file's first bytes
 * (qcow2 magic or raw).  Loops are found by device and inode, and the
 * depth is bounded.
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
#include <limits.h>
#include <libgen.h>
#include <sys/stat.h>

#include <nbdkit-plugin.h>

#include "cleanup.h"
#include "files.h"
#include "minmax.h"
#include "qcow2-internal.h"

int
qcow2_chain_add (struct qcow2_chain *chain, int fd, const char *path)
{
  struct stat st;
  unsigned i;

  if (fstat (fd, &st) == -1) {
    nbdkit_error ("fstat: %s: %m", path);
    return -1;
  }
  for (i = 0; i < chain->n; ++i) {
    if (chain->dev[i] == st.st_dev && chain->ino[i] == st.st_ino) {
      nbdkit_error ("%s: loop in the backing chain", path);
      return -1;
    }
  }
  if (chain->n >= QCOW2_MAX_CHAIN) {
    nbdkit_error ("%s: backing chain is too deep", path);
    return -1;
  }
  chain->dev[chain->n] = st.st_dev;
  chain->ino[chain->n] = st.st_ino;
  chain->n++;
  return 0;
}

/* Resolve a name found in image img under the policy. */
static char *
resolve_name (struct qcow2_image *img, const char *name,
              enum qcow2_backing_policy policy)
{
  CLEANUP_FREE char *imgreal = NULL, *joined = NULL;
  char *real, *dir;

  if (policy == QCOW2_BACKING_REFUSE) {
    nbdkit_error ("%s: image names backing file '%s' and the backing "
                  "policy is refuse", img->path, name);
    return NULL;
  }
  imgreal = realpath (img->path, NULL);
  if (imgreal == NULL) {
    nbdkit_error ("realpath: %s: %m", img->path);
    return NULL;
  }
  dir = dirname (imgreal);      /* modifies imgreal in place */
  if (name[0] == '/')
    joined = strdup (name);
  else if (asprintf (&joined, "%s/%s", dir, name) == -1)
    joined = NULL;
  if (joined == NULL) {
    nbdkit_error ("malloc: %m");
    return NULL;
  }
  real = realpath (joined, NULL);
  if (real == NULL) {
    nbdkit_error ("%s: backing file '%s': %m", img->path, name);
    return NULL;
  }
  if (policy == QCOW2_BACKING_SAME_DIR) {
    size_t dl = strlen (dir);
    bool inside = strncmp (real, dir, dl) == 0 &&
      (real[dl] == '/' || (dl == 1 && dir[0] == '/'));
    if (!inside) {
      nbdkit_error ("%s: backing file '%s' is outside the image's "
                    "directory; refused by the same-dir backing policy "
                    "(override the backing file, or trust the image with "
                    "the any policy)", img->path, name);
      free (real);
      return NULL;
    }
  }
  return real;
}

/* 1 if the file is qcow2, 0 raw, -1 error. */
static int
probe_format (const char *fmt, int fd, const char *path)
{
  if (fmt != NULL) {
    if (strcmp (fmt, "qcow2") == 0)
      return 1;
    if (strcmp (fmt, "raw") == 0)
      return 0;
    nbdkit_error ("%s: unsupported backing format '%s' (raw or qcow2)",
                  path, fmt);
    return -1;
  }
  return qcow2_probe_fd (fd, path, NULL);
}

int
qcow2_open_backing (struct qcow2_image *img,
                    const struct qcow2_open_options *opts,
                    unsigned depth, struct qcow2_chain *chain)
{
  CLEANUP_FREE char *path = NULL;
  const char *fmt;
  unsigned max_depth = opts->max_depth ? opts->max_depth : 64;
  int fd, isq;
  struct stat st;

  if (depth == 0 && opts->backing != NULL) {
    if (opts->backing[0] == '\0')
      return 0;                 /* backing switched off */
    path = strdup (opts->backing);
    if (path == NULL) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
    fmt = opts->backing_format;
  }
  else {
    if (img->backing_name == NULL)
      return 0;
    path = resolve_name (img, img->backing_name, opts->policy);
    if (path == NULL)
      return -1;
    fmt = img->backing_format_name;
  }
  if (depth + 1 >= max_depth) {
    nbdkit_error ("%s: backing chain is deeper than %u", img->path,
                  max_depth);
    return -1;
  }

  /* A raw backing file may be a block device; a FIFO or anything else
   * is refused without blocking.
   */
  fd = open_regular_file ("backing file", path, O_RDONLY,
                          OPEN_ALLOW_BLOCKDEV);
  if (fd == -1)
    return -1;
  isq = probe_format (fmt, fd, path);
  if (isq == -1) {
    close (fd);
    return -1;
  }
  if (isq) {
    struct qcow2_open_options bopts = *opts;

    close (fd);
    bopts.readonly = true;
    bopts.backing = NULL;
    bopts.backing_format = NULL;
    img->backing = qcow2_open_depth (path, &bopts, depth + 1, chain);
    if (img->backing == NULL)
      return -1;
    img->backing_size = img->backing->size;
    return 0;
  }
  if (qcow2_chain_add (chain, fd, path) == -1 || fstat (fd, &st) == -1) {
    close (fd);
    return -1;
  }
  if (S_ISBLK (st.st_mode)) {
    /* A block device's size is where its end is. */
    off_t end = lseek (fd, 0, SEEK_END);
    if (end == -1) {
      nbdkit_error ("lseek: %s: %m", path);
      close (fd);
      return -1;
    }
    st.st_size = end;
  }
  img->backing_fd = fd;
  img->backing_size = st.st_size;
  return 0;
}

void
backing_close (struct qcow2_image *img)
{
  if (img->backing)
    qcow2_close (img->backing);
  img->backing = NULL;
  if (img->backing_fd >= 0)
    close (img->backing_fd);
  img->backing_fd = -1;
}

int
backing_pread (struct qcow2_image *img, void *buf, uint32_t count,
               uint64_t offset, int *err)
{
  uint32_t n = 0;

  if (img->backing == NULL && img->backing_fd < 0) {
    memset (buf, 0, count);
    return 0;
  }
  if (offset < img->backing_size)
    n = MIN ((uint64_t) count, img->backing_size - offset);
  if (n > 0) {
    if (img->backing) {
      if (qcow2_pread (img->backing, buf, n, offset, err) == -1)
        return -1;
    }
    else if (full_pread (img->backing_fd, buf, n, offset) == -1) {
      *err = errno;
      nbdkit_error ("read backing file: %m");
      return -1;
    }
  }
  memset ((char *) buf + n, 0, count - n);
  return 0;
}

int
backing_status (struct qcow2_image *img, uint32_t count, uint64_t offset,
                uint64_t *len, unsigned *flags, int *err)
{
  if ((img->backing == NULL && img->backing_fd < 0) ||
      offset >= img->backing_size) {
    *len = count;
    *flags = QCOW2_BS_ZERO;
    return 0;
  }
  count = MIN ((uint64_t) count, img->backing_size - offset);
  if (img->backing) {
    if (qcow2_block_status (img->backing, count, offset, len, flags,
                            err) == -1)
      return -1;
    *flags = (*flags & (QCOW2_BS_ZERO | QCOW2_BS_DATA)) | QCOW2_BS_BACKING;
    return 0;
  }
  else {
    off_t d = lseek (img->backing_fd, offset, SEEK_DATA);
    if (d == -1 && errno == ENXIO) {
      *len = count;
      *flags = QCOW2_BS_ZERO | QCOW2_BS_BACKING;
    }
    else if (d == -1 || (uint64_t) d == offset) {
      off_t h = d == -1 ? -1 : lseek (img->backing_fd, offset, SEEK_HOLE);
      *len = h == -1 ? count : MIN ((uint64_t) count, (uint64_t) h - offset);
      *flags = QCOW2_BS_DATA | QCOW2_BS_BACKING;
    }
    else {
      *len = MIN ((uint64_t) count, (uint64_t) d - offset);
      *flags = QCOW2_BS_ZERO | QCOW2_BS_BACKING;
    }
    if (*len == 0)
      *len = count;
    return 0;
  }
}
