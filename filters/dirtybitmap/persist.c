/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The sidecar file (dirtybitmap-file=PATH).
 *
 * Format, version 1.  Integers are little-endian.
 *
 *   Header, 40 bytes:
 *     0   8  magic "NBDKDIRT"
 *     8   4  version: 1
 *    12   4  flags: bit 0 IN_USE; the other bits are zero
 *    16   8  file size: every byte, checksum included
 *    24   8  disk size in bytes
 *    32   4  number of bitmaps
 *    36   4  reserved, zero
 *   Then each bitmap: a 24-byte record, its name, its bits:
 *     0   4  name length, 1 to 1023 (the name has no NUL byte)
 *     4   4  flags: bit 0 RECORDING, bit 1 INCONSISTENT; others zero
 *     8   4  granularity: a power of two from 512 to 2^31
 *    12   4  reserved, zero
 *    16   8  bits length: ceil (ceil (disk size / granularity) / 8),
 *            or 0 for an inconsistent bitmap and in an in-use file
 *    24      the name, then the bits (bit i of byte j: granule 8j+i)
 *   Then a CRC-32 (zlib's crc32) of every byte before it, 4 bytes.
 *
 * The life of the file:
 *
 *  - at start it is locked (PATH.lock, flock: one server per file),
 *    read and checked; a file that fails any check stops the server
 *    (never guess at a bitmap).  IN_USE set means the last server did
 *    not stop cleanly: every bitmap loads as inconsistent.
 *  - before the first change after start (a write reaching the
 *    filter, or a bitmap command), the file is rewritten with IN_USE
 *    set and no bits; the write waits for that.  It is rewritten again
 *    when a persistent bitmap is added, so that a crash also reports
 *    the new one as inconsistent.
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
#include <endian.h>

#include <zlib.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "dirty.h"
#include "files.h"
#include "ispowerof2.h"
#include "persist.h"

#define MAGIC "NBDKDIRT"
#define FILE_VERSION 1
#define HEADER_SIZE 40
#define RECORD_SIZE 24
#define CRC_SIZE 4
#define FILE_IN_USE 1u
#define BM_RECORDING 1u
#define BM_INCONSISTENT 2u

/* This lock serializes writing the file. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *path;                      /* NULL: no file configured. */
static int lock_fd = -1;                /* Holds PATH.lock's flock. */
/* The file on disk says in use.  Read without the lock on the write
 * fast path; set only with the lock held, after the file is durable.
 */
static atomic_bool in_use_on_disk;

static uint32_t
get32 (const uint8_t *p)
{
  uint32_t v;
  memcpy (&v, p, 4);
  return le32toh (v);
}

static uint64_t
get64 (const uint8_t *p)
{
  uint64_t v;
  memcpy (&v, p, 8);
  return le64toh (v);
}

static uint64_t
bits_len_for (uint64_t disk_size, uint32_t granularity)
{
  uint64_t granules = disk_size / granularity +
    (disk_size % granularity != 0);
  return granules / 8 + (granules % 8 != 0);
}

#define PROBLEM(...) \
  do { snprintf (problem, problem_len, __VA_ARGS__); return -1; } while (0)

/* Walk the records of a checked header.  With fn NULL, only check. */
static int
walk (const uint8_t *buf, size_t len, bool in_use, uint64_t disk_size,
      uint32_t nr,
      int (*fn) (const struct persist_record *r, void *opaque),
      void *opaque, char *problem, size_t problem_len)
{
  uint64_t pos = HEADER_SIZE, end = len - CRC_SIZE;
  uint32_t i, j;

  for (i = 0; i < nr; ++i) {
    struct persist_record r;
    uint32_t name_len, flags;
    uint64_t bits_len;

    if (end - pos < RECORD_SIZE)
      PROBLEM ("bitmap record %" PRIu32 " runs past the end of the file",
               i);
    name_len = get32 (buf + pos);
    flags = get32 (buf + pos + 4);
    r.granularity = get32 (buf + pos + 8);
    bits_len = get64 (buf + pos + 16);
    if (name_len < 1 || name_len > DIRTY_MAX_NAME)
      PROBLEM ("bitmap record %" PRIu32 ": bad name length %" PRIu32, i,
               name_len);
    if (flags & ~(BM_RECORDING | BM_INCONSISTENT))
      PROBLEM ("bitmap record %" PRIu32 ": unknown flags 0x%" PRIx32, i,
               flags);
    if (get32 (buf + pos + 12) != 0)
      PROBLEM ("bitmap record %" PRIu32 ": reserved field is not zero", i);
    if (r.granularity < DIRTY_MIN_GRANULARITY ||
        r.granularity > DIRTY_MAX_GRANULARITY ||
        !is_power_of_2 (r.granularity))
      PROBLEM ("bitmap record %" PRIu32 ": bad granularity %" PRIu32, i,
               r.granularity);
    r.recording = flags & BM_RECORDING;
    r.inconsistent = in_use || (flags & BM_INCONSISTENT);
    if ((in_use || (flags & BM_INCONSISTENT)) ? bits_len != 0
        : bits_len != bits_len_for (disk_size, r.granularity))
      PROBLEM ("bitmap record %" PRIu32 ": bits length %" PRIu64
               " does not match the disk size", i, bits_len);
    pos += RECORD_SIZE;
    if (end - pos < name_len || end - pos - name_len < bits_len)
      PROBLEM ("bitmap record %" PRIu32 " runs past the end of the file",
               i);
    r.name = (const char *) buf + pos;
    r.name_len = name_len;
    if (memchr (r.name, '\0', name_len))
      PROBLEM ("bitmap record %" PRIu32 ": the name holds a NUL byte", i);
    pos += name_len;
    r.data = r.inconsistent ? NULL : buf + pos;
    r.data_len = bits_len;
    pos += bits_len;

    if (fn == NULL) {
      /* Names are unique: compare with every earlier record. */
      uint64_t q = HEADER_SIZE;
      for (j = 0; j < i; ++j) {
        uint32_t nl = get32 (buf + q);
        uint64_t bl = get64 (buf + q + 16);
        if (nl == name_len &&
            memcmp (buf + q + RECORD_SIZE, r.name, nl) == 0)
          PROBLEM ("bitmap records %" PRIu32 " and %" PRIu32
                   " have the same name", j, i);
        q += RECORD_SIZE + nl + bl;
      }
    }
    else if (fn (&r, opaque) == -1)
      return -1;
  }
  if (pos != end)
    PROBLEM ("%" PRIu64 " bytes after the last bitmap record",
             end - pos);
  return 0;
}

int
persist_parse (const uint8_t *buf, size_t len, bool *in_use,
               uint64_t *disk_size,
               int (*fn) (const struct persist_record *r, void *opaque),
               void *opaque, char *problem, size_t problem_len)
{
  uint32_t version, flags, nr;
  uint64_t file_size;

  if (len < HEADER_SIZE + CRC_SIZE) {
    if (len >= 8 && memcmp (buf, MAGIC, 8) != 0)
      PROBLEM ("not a dirty bitmap file (bad magic)");
    PROBLEM ("truncated: %zu bytes, too short for a dirty bitmap file",
             len);
  }
  if (memcmp (buf, MAGIC, 8) != 0)
    PROBLEM ("not a dirty bitmap file (bad magic)");
  version = get32 (buf + 8);
  if (version != FILE_VERSION)
    PROBLEM ("version %" PRIu32 " is not supported (this filter reads "
             "version %d)", version, FILE_VERSION);
  file_size = get64 (buf + 16);
  if (len < file_size)
    PROBLEM ("truncated: %zu of %" PRIu64 " bytes", len, file_size);
  if (len > file_size)
    PROBLEM ("%zu bytes but its header says %" PRIu64 ": the file is "
             "corrupt", len, file_size);
  if (crc32 (0, buf, len - CRC_SIZE) != get32 (buf + len - CRC_SIZE))
    PROBLEM ("checksum mismatch: the file is corrupt");
  flags = get32 (buf + 12);
  if (flags & ~FILE_IN_USE)
    PROBLEM ("unknown flags 0x%" PRIx32, flags);
  if (get32 (buf + 36) != 0)
    PROBLEM ("reserved header field is not zero");
  nr = get32 (buf + 32);
  *in_use = flags & FILE_IN_USE;
  *disk_size = get64 (buf + 24);
  if (walk (buf, len, *in_use, *disk_size, nr, NULL, NULL,
            problem, problem_len) == -1)
    return -1;
  if (fn)
    return walk (buf, len, *in_use, *disk_size, nr, fn, opaque,
                 problem, problem_len);
  return 0;
}

/* A growing buffer for writing the file. */
struct buf {
  uint8_t *p;
  size_t len, cap;
};

static int
append (struct buf *b, const void *data, size_t n)
{
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    uint8_t *p;

    while (cap < b->len + n)
      cap *= 2;
    p = realloc (b->p, cap);
    if (p == NULL)
      return -1;
    b->p = p;
    b->cap = cap;
  }
  if (data)
    memcpy (b->p + b->len, data, n);
  else
    memset (b->p + b->len, 0, n);
  b->len += n;
  return 0;
}

static int
append32 (struct buf *b, uint32_t v)
{
  v = htole32 (v);
  return append (b, &v, 4);
}

static int
append64 (struct buf *b, uint64_t v)
{
  v = htole64 (v);
  return append (b, &v, 8);
}

struct build {
  struct buf b;
  bool with_bits;
  uint64_t disk_size;
  uint32_t nr;
};

static int
add_record (const struct dirty_record *r, void *opaque)
{
  struct build *w = opaque;
  bool bits = w->with_bits && !r->inconsistent;
  size_t name_len = strlen (r->name);
  uint64_t bits_len = bits ? bits_len_for (w->disk_size, r->granularity) : 0;

  if (!r->persistent)
    return 0;
  if (bits && bits_len > r->bits_len) {
    errno = EINVAL;             /* A bug: the bitmap is too short. */
    return -1;
  }
  if (append32 (&w->b, name_len) == -1 ||
      append32 (&w->b, (r->recording ? BM_RECORDING : 0) |
                (r->inconsistent ? BM_INCONSISTENT : 0)) == -1 ||
      append32 (&w->b, r->granularity) == -1 ||
      append32 (&w->b, 0) == -1 ||
      append64 (&w->b, bits_len) == -1 ||
      append (&w->b, r->name, name_len) == -1 ||
      (bits_len && append (&w->b, r->bits, bits_len) == -1))
    return -1;
  w->nr++;
  return 0;
}

/* Write the file (lock held).  0 or -1 with errno set. */
static int
write_file (bool in_use)
{
  struct build w = { .with_bits = !in_use, .disk_size = dirty_disk_size () };
  uint32_t v32;
  uint64_t v64;
  int r = -1, saved;

  if (append (&w.b, MAGIC, 8) == -1 ||
      append32 (&w.b, FILE_VERSION) == -1 ||
      append32 (&w.b, in_use ? FILE_IN_USE : 0) == -1 ||
      append64 (&w.b, 0) == -1 ||           /* File size, below. */
      append64 (&w.b, w.disk_size) == -1 ||
      append32 (&w.b, 0) == -1 ||           /* Count, below. */
      append32 (&w.b, 0) == -1)
    goto out;
  if (dirty_foreach_record (add_record, &w) == -1)
    goto out;
  v64 = htole64 (w.b.len + CRC_SIZE);
  memcpy (w.b.p + 16, &v64, 8);
  v32 = htole32 (w.nr);
  memcpy (w.b.p + 32, &v32, 4);
  if (append32 (&w.b, crc32 (0, w.b.p, w.b.len)) == -1)
    goto out;
  r = replace_file_atomically (path, w.b.p, w.b.len);
  if (r == 0)
    nbdkit_debug ("dirtybitmap: wrote %s: %" PRIu32 " bitmaps, %s",
                  path, w.nr, in_use ? "in use" : "closed cleanly");
 out:
  saved = errno;
  free (w.b.p);
  errno = saved;
  return r;
}

bool
persist_enabled (void)
{
  return path != NULL;
}

static int
load_record (const struct persist_record *r, void *opaque)
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
  lock_fd = open (lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd == -1) {
    nbdkit_error ("dirtybitmap-file: %s: %m", lock_path);
    return -1;
  }
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

  fd = open (p, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    if (errno == ENOENT) {
      nbdkit_debug ("dirtybitmap: %s does not exist yet: no bitmaps", p);
      goto ok;
    }
    nbdkit_error ("dirtybitmap-file: %s: %m", p);
    return -1;
  }
  buf = read_all (fd, &len);
  if (buf == NULL) {
    nbdkit_error ("dirtybitmap-file: reading %s: %m", p);
    return -1;
  }
  if (persist_parse (buf, len, &in_use, &disk_size, NULL, NULL,
                     problem, sizeof problem) == -1) {
    nbdkit_error ("dirtybitmap-file: %s: %s; to start over, move the file "
                  "aside: every bitmap in it is then lost, and the next "
                  "backup must be a full one", p, problem);
    return -1;
  }
  dirty_set_disk_size (disk_size);
  if (persist_parse (buf, len, &in_use, &disk_size, load_record,
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

  if (path == NULL || !atomic_load (&in_use_on_disk))
    return 0;
  return write_file (true);
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
