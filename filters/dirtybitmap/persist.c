/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The sidecar file (dirtybitmap-file=PATH); its format is in format.c.
 *
 * The life of the file:
 *
 *  - at start it is locked (PATH.lock, flock: one server per file),
 *    read and checked (both must be regular files, not symlinks; a
 *    FIFO is refused, never blocked on; both are created 0600); a file that fails any check stops the server
 *    (never guess at a bitmap).  IN_USE set means the last server did
 *    not stop cleanly: every bitmap loads as inconsistent.
 *  - before the first change after start (a write reaching the
 *    filter, or a bitmap command), the file is rewritten with IN_USE
 *    set and no bits; the write waits for that.  It is rewritten again
 *    when a persistent bitmap is added or removed, before the command
 *    returns, so that a crash reports exactly the bitmaps that existed
 *    (inconsistent): a removed one never comes back.
 *  - a clean shutdown writes every persistent bitmap, IN_USE clear.
 *
 * Every write is atomic: a temporary file beside it, fsync, rename
 * over PATH, fsync of the directory.  So PATH is always one whole
 * version of the file.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "dirty.h"
#include "files.h"
#include "format.h"
#include "persist.h"

/* Lock order: see lock-order.h. */

/* This lock serializes writing the file. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *path;                      /* NULL: no file configured. */
static int lock_fd = -1;                /* Holds PATH.lock's flock. */
/* The file on disk says in use.  Read without the lock on the write
 * fast path; set only with the lock held, after the file is durable.
 */
static atomic_bool in_use_on_disk;

static int
add_record (const struct dirty_record *r, void *opaque)
{
  struct format_writer *w = opaque;

  if (!r->persistent)
    return 0;
  return format_add (w, r->name, r->granularity, r->recording,
                     r->inconsistent, r->bits, r->bits_len);
}

/* Write the file (lock held).  0 or -1 with errno set. */
static int
write_file (bool in_use)
{
  struct format_writer w;
  int r = -1, saved;

  errno = ENOMEM;
  if (format_begin (&w, in_use, dirty_disk_size ()) == 0 &&
      dirty_foreach_record (add_record, &w) == 0 &&
      format_end (&w) == 0) {
    r = replace_file_atomically (path, w.p, w.len);
    if (r == 0)
      nbdkit_debug ("dirtybitmap: wrote %s: %" PRIu32 " bitmaps, %s",
                    path, w.nr, in_use ? "in use" : "closed cleanly");
  }
  saved = errno;
  format_free (&w);
  errno = saved;
  return r;
}

bool
persist_enabled (void)
{
  return path != NULL;
}

static int
load_record (const struct format_record *r, void *opaque)
{
  const char *file = opaque;
  CLEANUP_FREE char *name = strndup (r->name, r->name_len);
  struct control_error err = { 0 };
  struct dirty_new n = {
    .name = name,
    .granularity = r->granularity,
    .recording = r->recording,
    .persistent = true,
    .inconsistent = r->inconsistent,
    .data = r->data,
    .data_len = r->data_len,
  };

  if (name == NULL) {
    nbdkit_error ("strndup: %m");
    return -1;
  }
  if (dirty_add (&n, &err) == NULL) {
    nbdkit_error ("dirtybitmap-file: %s: bitmap %s: %s", file, name,
                  err.desc);
    return -1;
  }
  return 0;
}

/* Read all of fd.  NULL with errno set on error. */
static uint8_t *
read_all (int fd, size_t *len)
{
  struct stat st;
  uint8_t *p;
  size_t got = 0;

  if (fstat (fd, &st) == -1)
    return NULL;
  p = malloc (st.st_size ? st.st_size : 1);
  if (p == NULL)
    return NULL;
  while (got < (size_t) st.st_size) {
    ssize_t r = read (fd, p + got, st.st_size - got);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0) {
      if (r == 0)
        break;                  /* Shrank under us: treat as is. */
      free (p);
      return NULL;
    }
    got += r;
  }
  *len = got;
  return p;
}

int
persist_load (const char *p)
{
  CLEANUP_FREE char *lock_path = NULL;
  CLEANUP_FREE char *dir_copy = NULL;
  CLEANUP_FREE uint8_t *buf = NULL;
  CLEANUP_CLOSE int fd = -1;
  char problem[256];
  size_t len = 0;
  bool in_use = false;
  uint64_t disk_size = 0;

  dir_copy = strdup (p);
  if (dir_copy == NULL ||
      asprintf (&lock_path, "%s.lock", p) == -1) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  if (access (dirname (dir_copy), W_OK | X_OK) == -1) {
    nbdkit_error ("dirtybitmap-file: cannot write files in the directory "
                  "of %s: %m", p);
    return -1;
  }
  /* The lock file is never removed (another server may hold it), so
   * an existing one is opened, but only if it is a regular file:
   * never through a symlink, never blocking on a FIFO.
   */
  lock_fd = open (lock_path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW |
                  O_CLOEXEC, 0600);
  if (lock_fd == -1 && errno == EEXIST)
    lock_fd = open_regular_file ("dirtybitmap-file: lock file", lock_path,
                                 O_RDWR, OPEN_NOFOLLOW);
  else if (lock_fd == -1)
    nbdkit_error ("dirtybitmap-file: lock file %s: %m", lock_path);
  if (lock_fd == -1)
    return -1;
  if (flock (lock_fd, LOCK_EX | LOCK_NB) == -1) {
    if (errno == EWOULDBLOCK)
      nbdkit_error ("dirtybitmap-file: %s is in use by another nbdkit "
                    "server (one server per bitmap file)", p);
    else
      nbdkit_error ("dirtybitmap-file: flock: %s: %m", lock_path);
    close (lock_fd);
    lock_fd = -1;
    return -1;
  }

  {
    struct stat st;

    if (lstat (p, &st) == -1 && errno == ENOENT) {
      nbdkit_debug ("dirtybitmap: %s does not exist yet: no bitmaps", p);
      goto ok;
    }
  }
  fd = open_regular_file ("dirtybitmap-file", p, O_RDONLY, OPEN_NOFOLLOW);
  if (fd == -1)
    return -1;
  buf = read_all (fd, &len);
  if (buf == NULL) {
    nbdkit_error ("dirtybitmap-file: reading %s: %m", p);
    return -1;
  }
  if (format_parse (buf, len, &in_use, &disk_size, NULL, NULL,
                     problem, sizeof problem) == -1) {
    nbdkit_error ("dirtybitmap-file: %s: %s; to start over, move the file "
                  "aside: every bitmap in it is then lost, and the next "
                  "backup must be a full one", p, problem);
    return -1;
  }
  dirty_set_disk_size (disk_size);
  if (format_parse (buf, len, &in_use, &disk_size, load_record,
                     (void *) p, problem, sizeof problem) == -1)
    return -1;
  if (in_use) {
    /* The file already says in use, and our bitmaps are all
     * inconsistent: nothing a crash could make worse.
     */
    atomic_store (&in_use_on_disk, true);
    nbdkit_debug ("dirtybitmap: %s was not closed cleanly (the server "
                  "crashed or was killed): every bitmap in it is "
                  "inconsistent", p);
  }
  nbdkit_debug ("dirtybitmap: loaded %s", p);
 ok:
  /* Only a file that loaded is ever written (a bad one is kept). */
  path = strdup (p);
  if (path == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  return 0;
}

int
persist_mark_in_use (void)
{
  if (path == NULL || atomic_load (&in_use_on_disk))
    return 0;
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

    if (atomic_load (&in_use_on_disk))
      return 0;
    if (write_file (true) == -1)
      return -1;
    atomic_store (&in_use_on_disk, true);
  }
  return 0;
}

int
persist_update_in_use (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (path == NULL)
    return 0;
  if (write_file (true) == -1)
    return -1;
  atomic_store (&in_use_on_disk, true);
  return 0;
}

int
persist_save (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (path == NULL)
    return 0;
  if (write_file (false) == -1) {
    nbdkit_error ("dirtybitmap-file: saving the bitmaps to %s: %m "
                  "(the file still says in use: they will load as "
                  "inconsistent)", path);
    return -1;
  }
  atomic_store (&in_use_on_disk, false);
  return 0;
}

void
persist_close (void)
{
  if (lock_fd >= 0)
    close (lock_fd);
  lock_fd = -1;
  free (path);
  path = NULL;
}
