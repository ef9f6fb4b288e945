/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The fleecing store.  Each cluster is written at most once (the
 * engine copies a cluster once), so counting the bytes written is an
 * exact measure of the data held, which is what the cap limits.
 * Zero clusters are never written: the file starts empty and sparse
 * (known_zero), and a hole is how the store says "zeros" to extents.
 * Finishing the store (the snapshot ends) truncates it, giving the
 * space back at once, whoever still holds the file open.
 *
 * Discard (fleece-discard-source) punches holes where clusters left
 * the snapshot: their space goes back to the file system at once and
 * stops counting as used, so the cap limits what is held now.  The
 * bytes freed are the data SEEK_DATA finds there, which is what was
 * written (whole clusters, never rewritten).  Where punching is not
 * supported the space stays taken, and counted, until the end.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "files.h"
#include "minmax.h"
#include "store.h"

struct store {
  struct target t;              /* Must be first. */
  int fd;
  bool remove_path;             /* Created at a named path: unlink it. */
  uint64_t limit;
  atomic_uint_fast64_t used;
  atomic_uint_fast64_t peak;    /* The most used has been. */
  atomic_bool no_punch;         /* Punching failed: don't retry. */
};

/* Account count more bytes held. */
static int
add_used (struct store *s, uint64_t count)
{
  uint64_t now = atomic_fetch_add (&s->used, count) + count;
  uint64_t peak = atomic_load (&s->peak);

  if (s->limit && now > s->limit) {
    atomic_fetch_sub (&s->used, count);
    errno = ENOSPC;
    nbdkit_error ("fleece store is full: it may hold %" PRIu64 " bytes",
                  s->limit);
    return -1;
  }
  while (now > peak &&
         !atomic_compare_exchange_weak (&s->peak, &peak, now))
    ;
  return 0;
}

static int
store_pwrite (struct target *t, const void *buf, uint32_t count,
              uint64_t offset)
{
  struct store *s = (struct store *) t;
  const char *p = buf;

  if (add_used (s, count) == -1)
    return -1;

  while (count > 0) {
    ssize_t r = pwrite (s->fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("fleece store: pwrite: %m");
      return -1;
    }
    p += r; count -= r; offset += r;
  }
  return 0;
}

static int
store_zero (struct target *t, uint32_t count, uint64_t offset)
{
  return 0;                     /* Never written: reads as zeros. */
}

static int
store_pread (struct target *t, void *buf, uint32_t count, uint64_t offset)
{
  struct store *s = (struct store *) t;
  char *p = buf;

  while (count > 0) {
    ssize_t r = pread (s->fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("fleece store: pread: %m");
      return -1;
    }
    if (r == 0) {
      memset (p, 0, count);
      return 0;
    }
    p += r; count -= r; offset += r;
  }
  return 0;
}

static int
store_flush (struct target *t)
{
  return 0;                     /* Temporary: durability is not asked. */
}

static int
store_finish (struct target *t, bool complete)
{
  struct store *s = (struct store *) t;

  /* Give the space back now. */
  if (ftruncate (s->fd, 0) == -1) {
    nbdkit_error ("fleece store: ftruncate: %m");
    return -1;
  }
  atomic_store (&s->used, 0);
  return 0;
}

static void
store_close (struct target *t)
{
  struct store *s = (struct store *) t;

  if (s->fd >= 0)
    close (s->fd);
  if (s->remove_path && t->name)
    unlink (t->name);
  free (t->name);
  free (t->working_name);
  free (s);
}

static const struct target_ops store_ops = {
  .kind   = "store",
  .pwrite = store_pwrite,
  .zero   = store_zero,
  .pread  = store_pread,
  .flush  = store_flush,
  .finish = store_finish,
  .close  = store_close,
};

struct target *
target_store_open (const char *param, const char *where, uint64_t size,
                   uint64_t limit)
{
  struct store *s = calloc (1, sizeof *s);
  struct stat st;

  if (s == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  s->t.ops = &store_ops;
  s->t.size = size;
  s->t.known_zero = true;
  s->fd = -1;
  s->limit = limit;
  atomic_init (&s->used, 0);
  atomic_init (&s->peak, 0);
  atomic_init (&s->no_punch, false);

  if (stat (where, &st) == 0 && S_ISDIR (st.st_mode)) {
    s->fd = open (where, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (s->fd == -1 && (errno == EOPNOTSUPP || errno == EISDIR)) {
      /* No O_TMPFILE here: a named file, unlinked at once. */
      char *tmpl;
      if (asprintf (&tmpl, "%s/fleece-store.XXXXXX", where) == -1) {
        nbdkit_error ("asprintf: %m");
        goto err;
      }
      s->fd = mkostemp (tmpl, O_CLOEXEC);
      if (s->fd >= 0)
        unlink (tmpl);
      free (tmpl);
    }
    if (s->fd == -1) {
      nbdkit_error ("%s: cannot make a store in %s: %m", param, where);
      goto err;
    }
    s->t.name = strdup (where);
  }
  else {
    /* A file path: never followed, never blocked on.  A leftover
     * regular file (an earlier run's) is replaced; a symlink, FIFO,
     * socket or device there is refused by name.
     */
    if (lstat (where, &st) == 0 && !S_ISREG (st.st_mode)) {
      nbdkit_error ("%s: %s: is %s, not a regular file or directory",
                    param, where, file_kind (st.st_mode));
      goto err;
    }
    s->fd = create_file_excl (param, where, O_RDWR, 0600);
    if (s->fd == -1)
      goto err;
    s->remove_path = true;
    s->t.name = strdup (where);
  }
  if (s->t.name == NULL) {
    nbdkit_error ("strdup: %m");
    goto err;
  }
  if (ftruncate (s->fd, size) == -1) {
    nbdkit_error ("%s: ftruncate: %m", param);
    goto err;
  }
  return &s->t;

 err:
  store_close (&s->t);
  return NULL;
}

int
target_store_check (const char *param, const char *where)
{
  struct stat st;
  CLEANUP_FREE char *copy = strdup (where);
  const char *dir = where;

  if (copy == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  if (stat (where, &st) == -1 || !S_ISDIR (st.st_mode)) {
    if (lstat (where, &st) == 0 && !S_ISREG (st.st_mode)) {
      nbdkit_error ("%s: %s: is %s, not a regular file or directory",
                    param, where, file_kind (st.st_mode));
      return -1;
    }
    dir = dirname (copy);
  }
  if (access (dir, W_OK | X_OK) == -1) {
    nbdkit_error ("%s: cannot create a store in %s: %m", param, dir);
    return -1;
  }
  return 0;
}

uint64_t
target_store_next_data (void *vs, uint64_t offset, uint64_t end,
                        uint64_t *data_end)
{
  struct store *s = vs;
  off_t d = lseek (s->fd, offset, SEEK_DATA), h;

  if (d == -1 && errno != ENXIO) {
    *data_end = end;            /* No map: all data, as before. */
    return offset;
  }
  if (d == -1 || (uint64_t) d >= end) {
    *data_end = end;            /* ENXIO: no data up to EOF. */
    return end;
  }
  h = lseek (s->fd, d, SEEK_HOLE);
  *data_end = h == -1 ? end : MIN ((uint64_t) h, end);
  return d;
}

uint64_t
target_store_used (struct target *t)
{
  return atomic_load (&((struct store *) t)->used);
}

uint64_t
target_store_peak (struct target *t)
{
  return atomic_load (&((struct store *) t)->peak);
}

/* Bytes of data in [offset, end) of the store's file. */
static uint64_t
data_bytes (struct store *s, uint64_t offset, uint64_t end)
{
  uint64_t n = 0;

  while (offset < end) {
    uint64_t de, d = target_store_next_data (s, offset, end, &de);

    if (d >= end)
      break;
    n += de - d;
    offset = de;
  }
  return n;
}

void
target_store_punch (struct target *t, uint64_t offset, uint64_t len)
{
  struct store *s = (struct store *) t;
  uint64_t n, used;

  if (len == 0 || atomic_load (&s->no_punch))
    return;
  n = data_bytes (s, offset, offset + len);
  if (n == 0)
    return;
  if (fallocate (s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 offset, len) == -1) {
    nbdkit_debug ("fleece store: cannot punch holes (%m): discarded "
                  "clusters keep their space until the snapshot ends");
    atomic_store (&s->no_punch, true);
    return;
  }
  used = atomic_load (&s->used);
  while (!atomic_compare_exchange_weak (&s->used, &used,
                                        used - MIN (n, used)))
    ;
}
