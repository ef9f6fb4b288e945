/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* A point in time of a repository: a backup and the chain under it.
 *
 * Notes on the design: before anything serves a backup, every file
 * of its chain is checked here, because the files are data from the
 * disk (anyone who could write the repository directory could plant
 * them), while the catalog only says what they should be.  Each file
 * is opened with O_NOFOLLOW|O_NONBLOCK as a regular file (a symlink,
 * a FIFO, a device is refused without blocking), must be a qcow2
 * image that the suite's qcow2 library opens and checks (header,
 * tables, refcounts as far as opening goes) on its own, with the
 * recorded size (rounded up to 512 bytes, as qcow2 sizes are), and must name as backing file exactly its parent's
 * file name (relative, same directory; a full names none).  Serving
 * then follows the same names under the plugin's same-dir policy, so
 * what was checked is what is served.
 */

#include <config.h>

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "files.h"
#include "nbdkit-stubs.h"
#include "qcow2.h"
#include "rounding.h"
#include "point.h"
#include "repo.h"

/* Check one file of the chain: e's, whose parent is parent (NULL for
 * a full).  0 or -1 (reported).
 */
static int
check_file (const struct repo *r, const struct repo_entry *e,
            const struct repo_entry *parent)
{
  char *path = repo_file (r, e->file), *backing = NULL;
  struct qcow2_image *img = NULL;
  int fd = -1, isq, ret = -1;

  if (path == NULL)
    return -1;
  fd = open_regular_file ("backup", path, O_RDONLY, OPEN_NOFOLLOW);
  if (fd == -1)
    goto out;
  isq = qcow2_probe_fd (fd, path, &backing);
  if (isq == -1)
    goto out;
  if (isq == 0) {
    nbdkit_error ("backup %s: %s is not a qcow2 image", e->id, path);
    goto out;
  }
  if (parent == NULL && backing != NULL) {
    nbdkit_error ("backup %s: %s names backing file '%s', but a full "
                  "backup has none", e->id, path, backing);
    goto out;
  }
  if (parent != NULL &&
      (backing == NULL || strcmp (backing, parent->file) != 0)) {
    nbdkit_error ("backup %s: %s names backing file %s%s%s, but its "
                  "parent %s is '%s'", e->id, path,
                  backing ? "'" : "", backing ? backing : "none",
                  backing ? "'" : "", parent->id, parent->file);
    goto out;
  }
  /* The library's own checks of this image alone. */
  img = qcow2_open (path, &(struct qcow2_open_options) {
      .readonly = true, .backing = "", .target_param = "backup file" });
  if (img == NULL) {
    nbdkit_error ("backup %s: %s is not a valid qcow2 image", e->id, path);
    goto out;
  }
  /* A qcow2 image's size is a multiple of 512: a disk of another size
   * is stored rounded up, and only its own bytes are read back.
   */
  if (qcow2_get_size (img) != ROUND_UP (e->size, 512)) {
    nbdkit_error ("backup %s: %s has size %" PRIu64 ", the catalog says %"
                  PRIu64, e->id, path, qcow2_get_size (img), e->size);
    goto out;
  }
  ret = 0;
 out:
  if (img)
    qcow2_close (img);
  if (fd >= 0)
    close (fd);
  free (backing);
  free (path);
  return ret;
}

const struct repo_entry *
point_find (const struct repo *r, const char *id)
{
  const struct repo_entry *e;

  if (id == NULL) {
    e = repo_last (r);
    if (e == NULL)
      nbdkit_error ("repository %s has no backups yet", r->path);
    return e;
  }
  e = repo_find (r, id);
  if (e == NULL)
    nbdkit_error ("repository %s has no backup '%s'", r->path, id);
  return e;
}

int
point_open (struct repo *r, const struct repo_entry *e, struct point *p)
{
  const struct repo_entry **chain = NULL;
  size_t n = 0, i;
  char *real = NULL;
  int ret = -1;

  memset (p, 0, sizeof *p);
  p->entry = e;
  p->id = e->id;
  p->size = e->size;
  if (repo_chain (r, e->id, &chain, &n) == -1)
    return -1;

  /* Check every file, the point's first, reporting each problem. */
  ret = 0;
  for (i = n; i-- > 0; )
    if (check_file (r, chain[i], i > 0 ? chain[i - 1] : NULL) == -1)
      ret = -1;
  if (ret == -1)
    goto out;
  ret = -1;

  real = realpath (r->path, NULL);
  if (real == NULL) {
    nbdkit_error ("realpath: %s: %m", r->path);
    goto out;
  }
  p->file = repo_file (r, e->file);
  p->digests_file = repo_file (r, e->digests);
  if (p->file == NULL || p->digests_file == NULL)
    goto out;
  if (asprintf (&p->abs_file, "%s/%s", real, e->file) == -1) {
    p->abs_file = NULL;
    nbdkit_error ("asprintf: %m");
    goto out;
  }
  ret = 0;
 out:
  free (real);
  free (chain);
  if (ret == -1)
    point_close (p);
  return ret;
}

int
point_load_digests (const struct point *p, struct digests *d)
{
  if (digests_load (p->digests_file, d, p->entry->digest) == -1)
    return -1;
  if (d->size != p->size) {
    nbdkit_error ("backup %s: digest list %s is for %" PRIu64 " bytes, "
                  "the catalog says %" PRIu64, p->id, p->digests_file,
                  d->size, p->size);
    digests_free (d);
    return -1;
  }
  return 0;
}

void
point_close (struct point *p)
{
  free (p->file);
  free (p->abs_file);
  free (p->digests_file);
  memset (p, 0, sizeof *p);
}
