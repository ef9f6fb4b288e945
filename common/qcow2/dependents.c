/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Finding the images that use a file as their backing file.
 *
 * Replacing a full backup that incremental overlays name as their
 * backing file silently breaks every one of them: they still open,
 * but read another disk's clusters under their own.  Before a file is
 * replaced, its directory is scanned for qcow2 images whose backing
 * file is that file, directly or through other images of the same
 * directory (inc2 on inc1 on full: replacing full breaks both).  The
 * directory is where backup chains live (nbdbackup and qemu-img store
 * relative backing names), so it is the one place looked at.
 *
 * Identity is by device and inode, not by name: a backing name is
 * resolved as QEMU resolves it, relative to the directory of the
 * image that names it (so through any symlinks it contains), and
 * compared with the stat of the file to replace.  A name that does
 * not resolve (a missing file, a protocol such as "nbd:" or "json:")
 * names nothing here.
 *
 * The scan treats the directory as hostile: an entry is looked at
 * only if lstat says it is a regular file, opened with O_NOFOLLOW and
 * O_NONBLOCK (a symlink or FIFO swapped in meanwhile can neither
 * redirect nor block us), and fstat must then show the same regular
 * file.  Only the header's first 20 bytes and the backing name are
 * read; anything that is not a qcow2 header is skipped, and so is
 * every file we cannot read.
 */

#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-plugin.h>

#include "cleanup.h"
#include "dependents.h"
#include "qcow2-internal.h"

/* QEMU refuses longer backing file names. */
#define MAX_BACKING_NAME 1023

/* One qcow2 image of the directory that names a backing file. */
struct entry {
  char *name;
  dev_t dev;                    /* the image itself */
  ino_t ino;
  dev_t bdev;                   /* its backing file, resolved */
  ino_t bino;
  bool depends;
};

/* Read the backing file name of the qcow2 image open on fd (size
 * bytes).  1 and *name (malloc'd) if it names one, 0 if the file is
 * not a qcow2 image or names none, -1 on a read error.
 */
static int
read_backing_name (int fd, uint64_t size, char **name)
{
  unsigned char h[20];
  uint32_t version, len;
  uint64_t offset;
  char *s;

  if (size < sizeof h || full_pread (fd, h, sizeof h, 0) == -1)
    return size < sizeof h ? 0 : -1;
  version = get_be32 (h + 4);
  if (get_be32 (h) != QCOW2_MAGIC || (version != 2 && version != 3))
    return 0;
  offset = get_be64 (h + 8);
  len = get_be32 (h + 16);
  if (offset == 0 || len == 0 || len > MAX_BACKING_NAME ||
      offset > size || len > size - offset)
    return 0;
  s = malloc (len + 1);
  if (s == NULL)
    return -1;
  if (full_pread (fd, s, len, offset) == -1) {
    free (s);
    return -1;
  }
  s[len] = '\0';
  if (strlen (s) != len) {      /* a NUL inside: not a file name */
    free (s);
    return 0;
  }
  *name = s;
  return 1;
}

/* Look at one directory entry: 1 and *e filled if it is a qcow2 image
 * whose backing file resolves to an existing file, 0 to skip it, -1
 * (reported) if out of memory.
 */
static int
look_at (int dfd, const char *dir, const char *name, struct entry *e)
{
  struct stat st, fst, bst;
  CLEANUP_CLOSE int fd = -1;
  CLEANUP_FREE char *backing = NULL;
  int r;

  if (fstatat (dfd, name, &st, AT_SYMLINK_NOFOLLOW) == -1 ||
      !S_ISREG (st.st_mode))
    return 0;
  fd = openat (dfd, name,
               O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd == -1) {
    nbdkit_debug ("%s/%s: skipped: %m", dir, name);
    return 0;
  }
  if (fstat (fd, &fst) == -1 || !S_ISREG (fst.st_mode) ||
      fst.st_dev != st.st_dev || fst.st_ino != st.st_ino)
    return 0;
  r = read_backing_name (fd, fst.st_size, &backing);
  if (r == -1) {
    if (errno == ENOMEM) {
      nbdkit_error ("malloc: %m");
      return -1;
    }
    nbdkit_debug ("%s/%s: skipped: read: %m", dir, name);
    return 0;
  }
  if (r == 0)
    return 0;
  /* Relative to the image's directory, as QEMU opens it; an absolute
   * name ignores dfd.  stat, not lstat: a symlink as backing name is
   * followed by QEMU too.
   */
  if (fstatat (dfd, backing, &bst, 0) == -1) {
    nbdkit_debug ("%s/%s: backing file %s: %m", dir, name, backing);
    return 0;
  }
  e->name = strdup (name);
  if (e->name == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  e->dev = fst.st_dev;
  e->ino = fst.st_ino;
  e->bdev = bst.st_dev;
  e->bino = bst.st_ino;
  e->depends = false;
  return 1;
}

static void
free_entries (struct entry *es, size_t n)
{
  size_t i;

  for (i = 0; i < n; ++i)
    free (es[i].name);
  free (es);
}

/* Collect the qcow2 images of dir that name a backing file. */
static int
scan_dir (const char *dir, struct entry **ret, size_t *nret)
{
  DIR *d;
  struct dirent *de;
  struct entry *es = NULL, e;
  size_t n = 0, cap = 0;
  int r = -1;

  d = opendir (dir);
  if (d == NULL) {
    nbdkit_error ("%s: %m", dir);
    return -1;
  }
  for (;;) {
    errno = 0;
    de = readdir (d);
    if (de == NULL) {
      if (errno != 0) {
        nbdkit_error ("%s: readdir: %m", dir);
        goto out;
      }
      break;
    }
    if (strcmp (de->d_name, ".") == 0 || strcmp (de->d_name, "..") == 0)
      continue;
    switch (look_at (dirfd (d), dir, de->d_name, &e)) {
    case -1:
      goto out;
    case 0:
      continue;
    }
    if (n == cap) {
      size_t c = cap ? cap * 2 : 16;
      struct entry *p = realloc (es, c * sizeof *p);

      if (p == NULL) {
        nbdkit_error ("realloc: %m");
        free (e.name);
        goto out;
      }
      es = p;
      cap = c;
    }
    es[n++] = e;
  }
  r = 0;

 out:
  closedir (d);
  if (r == -1) {
    free_entries (es, n);
    return -1;
  }
  *ret = es;
  *nret = n;
  return 0;
}

static int
compare_names (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

/* Mark every entry whose chain reaches dev/ino, to a fixed point. */
static size_t
mark_dependents (struct entry *es, size_t n, dev_t dev, ino_t ino)
{
  size_t i, j, count = 0;
  bool changed = true;

  while (changed) {
    changed = false;
    for (i = 0; i < n; ++i) {
      if (es[i].depends || (es[i].dev == dev && es[i].ino == ino))
        continue;
      if (es[i].bdev == dev && es[i].bino == ino)
        es[i].depends = true;
      for (j = 0; j < n && !es[i].depends; ++j)
        if (es[j].depends &&
            es[i].bdev == es[j].dev && es[i].bino == es[j].ino)
          es[i].depends = true;
      if (es[i].depends) {
        changed = true;
        count++;
      }
    }
  }
  return count;
}

int
qcow2_find_dependents (const char *path, char ***names, size_t *n)
{
  CLEANUP_FREE char *copy = NULL;
  struct entry *es = NULL;
  struct stat st;
  size_t nes = 0, count, i, k;
  char **list;

  *names = NULL;
  *n = 0;
  if (stat (path, &st) == -1) {
    if (errno != ENOENT) {
      nbdkit_error ("%s: %m", path);
      return -1;
    }
    *names = calloc (1, sizeof *list);
    if (*names == NULL) {
      nbdkit_error ("calloc: %m");
      return -1;
    }
    return 0;
  }
  copy = strdup (path);
  if (copy == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  if (scan_dir (dirname (copy), &es, &nes) == -1)
    return -1;

  count = mark_dependents (es, nes, st.st_dev, st.st_ino);
  list = calloc (count + 1, sizeof *list);
  if (list == NULL) {
    nbdkit_error ("calloc: %m");
    free_entries (es, nes);
    return -1;
  }
  for (i = k = 0; i < nes; ++i)
    if (es[i].depends) {
      list[k++] = es[i].name;
      es[i].name = NULL;
    }
  free_entries (es, nes);
  qsort (list, count, sizeof *list, compare_names);
  *names = list;
  *n = count;
  return 0;
}

void
qcow2_free_names (char **names)
{
  size_t i;

  if (names == NULL)
    return;
  for (i = 0; names[i] != NULL; ++i)
    free (names[i]);
  free (names);
}
