/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The sidecar file (dirtybitmap-file=PATH); its format is in format.c,
 * its mapping and syncs in persist-map.c.
 *
 * The life of the file:
 *
 *  - at start it is locked (PATH.lock, flock: one server per file),
 *    read and checked (both must be regular files, not symlinks; a
 *    FIFO is refused, never blocked on; both are created 0600); a file
 *    that fails any check stops the server (never guess at a bitmap).
 *  - before the first change after start (a write reaching the
 *    filter, or a bitmap command), the file is rewritten with IN_USE
 *    set and every bitmap's bits, and mapped: from then on a write's
 *    bits are set in the mapping before it goes down (and in power
 *    mode are durable first).  It is rewritten again, before the
 *    command returns, whenever a command adds, removes or changes a
 *    persistent bitmap, so a crash finds the set as it was.
 *  - a clean shutdown writes every persistent bitmap, IN_USE clear,
 *    with the disk file's size, mtime and inode as left.
 *
 * Every rewrite is atomic (a temporary file beside it, fsync, rename
 * over PATH, fsync of the directory), so PATH is always one whole
 * version, and bumps the file's generation, which is then also
 * written to PATH.lock.
 *
 * When the last server did not stop cleanly (IN_USE set), the bits of
 * the mapping are kept: they hold every write that went down.  What
 * still makes the bitmaps of a file load inconsistent, with the
 * reason:
 *  - the host restarted since (its boot id changed) and the server
 *    ran in process mode: pages not yet written back may be lost;
 *  - the disk file is not as the last server left it: another inode,
 *    another size or mtime after a clean stop, or smaller after a
 *    crash (a qcow2 file grows under its own server's writes);
 *  - the file is not the one this server's lock file names: another
 *    UUID, or an older generation (restored from an older copy);
 *  - a version 1 file left in use (that version kept no bits then).
 * While running, a storage failure (a failed sync in power mode)
 * makes the persistent bitmaps inconsistent, and the file says so.
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
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "dirty.h"
#include "files.h"
#include "format.h"
#include "persist.h"

/* Lock order: see lock-order.h. */

#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"
#define LOCK_RECORD 64

/* This lock serializes writing the file, and protects the fields
 * below that change after start (generation).
 */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* Set by persist_load and never changed until persist_close. */
static char *path;                      /* NULL: no file configured. */
static char *disk;                      /* The plugin's disk file. */
static bool power;
static int lock_fd = -1;                /* Holds PATH.lock's flock. */
static uint8_t uuid[16];
static uint8_t boot_id[16];
/* Protected by lock. */
static uint64_t generation;
/* The file on disk says in use.  Read without the lock on the write
 * fast path; set only with the lock held, after the file is durable.
 */
static atomic_bool in_use_on_disk;
/* The file's storage failed and the file could not yet be rewritten
 * to say so: every write retries, and fails until it can.
 */
static atomic_bool broken;

static void
uuid_text (const uint8_t *u, char *s)
{
  static const int dash[] = { 4, 6, 8, 10 };
  int i, d = 0;

  for (i = 0; i < 16; ++i) {
    if (d < 4 && i == dash[d]) {
      *s++ = '-';
      d++;
    }
    s += sprintf (s, "%02x", u[i]);
  }
}

/* Read 32 hex digits (dashes skipped) into u.  0 or -1. */
static int
uuid_parse (const char *s, uint8_t *u)
{
  int i = 0;

  while (i < 32 && *s) {
    unsigned v;

    if (*s == '-') {
      s++;
      continue;
    }
    if (sscanf (s, "%1x", &v) != 1)
      return -1;
    u[i / 2] = (i & 1) ? (u[i / 2] | v) : (v << 4);
    i++;
    s++;
  }
  return i == 32 ? 0 : -1;
}

/* The host's boot id, or zeroes if it cannot be read. */
static void
read_boot_id (uint8_t *id)
{
  char buf[64] = "";
  int fd = open (BOOT_ID_PATH, O_RDONLY | O_CLOEXEC);
  ssize_t r = -1;

  if (fd >= 0) {
    r = read (fd, buf, sizeof buf - 1);
    close (fd);
  }
  if (r <= 0 || uuid_parse (buf, id) == -1) {
    nbdkit_debug ("dirtybitmap: cannot read %s: a host restart cannot be "
                  "told from a server crash", BOOT_ID_PATH);
    memset (id, 0, 16);
  }
}

/* The disk file's state.  0, or -1 (no disk file, or not a regular
 * file: nothing to check).
 */
static int
disk_state (struct format_header *h, bool with_mtime)
{
  struct stat st;

  if (disk == NULL || stat (disk, &st) == -1 || !S_ISREG (st.st_mode))
    return -1;
  h->disk_stat = true;
  h->disk_mtime = with_mtime;
  h->disk_file_size = st.st_size;
  h->disk_mtime_ns = (uint64_t) st.st_mtim.tv_sec * 1000000000 +
    st.st_mtim.tv_nsec;
  h->disk_ino = st.st_ino;
  return 0;
}

/* PATH.lock's record: "UUID GENERATION", padded. */
static void
write_lock_record (void)
{
  char rec[LOCK_RECORD + 1], u[40];

  uuid_text (uuid, u);
  snprintf (rec, sizeof rec, "%s %-*" PRIu64, u,
            (int) (LOCK_RECORD - strlen (u) - 2), generation);
  rec[LOCK_RECORD - 1] = '\n';
  if (pwrite (lock_fd, rec, LOCK_RECORD, 0) != LOCK_RECORD ||
      fdatasync (lock_fd) == -1)
    nbdkit_debug ("dirtybitmap: writing the lock file's record: %m");
}

/* PATH.lock's record, if it has one.  0 or -1. */
static int
read_lock_record (uint8_t *u, uint64_t *gen)
{
  char rec[LOCK_RECORD + 1] = "";
  char *sp;

  if (pread (lock_fd, rec, LOCK_RECORD, 0) != LOCK_RECORD)
    return -1;
  sp = strchr (rec, ' ');
  if (sp == NULL || uuid_parse (rec, u) == -1 ||
      sscanf (sp, " %" SCNu64, gen) != 1)
    return -1;
  return 0;
}

static int
add_record (const struct dirty_record *r, void *opaque)
{
  struct format_writer *w = opaque;

  if (!r->persistent)
    return 0;
  return format_add (w, r->name, r->granularity, r->recording,
                     r->inconsistent, r->reason, r->bits, r->bits_len);
}

/* Write the file (lock held), and map it if in use.  0 or -1 with
 * errno set.
 */
static int
write_file (bool in_use)
{
  struct format_writer w;
  struct format_header h = {
    .in_use = in_use,
    .power = power,
    .disk_size = dirty_disk_size (),
    .generation = generation + 1,
  };
  int r = -1, saved, fd = -1;
  char u[40];

  memcpy (h.uuid, uuid, 16);
  memcpy (h.boot_id, boot_id, 16);
  disk_state (&h, !in_use);
  errno = ENOMEM;
  if (format_begin (&w, &h) == 0 &&
      dirty_foreach_record (add_record, &w) == 0 &&
      format_end (&w) == 0) {
    r = replace_file_atomically_keep (path, w.p, w.len, &fd);
    if (r == 0) {
      generation++;
      write_lock_record ();
      uuid_text (uuid, u);
      dirty_set_sidecar (u, generation);
      nbdkit_debug ("dirtybitmap: wrote %s: %" PRIu32 " bitmaps, "
                    "generation %" PRIu64 ", %s", path, w.nr, generation,
                    in_use ? "in use" : "closed cleanly");
      if (!in_use) {
        close (fd);
        fd = -1;
      }
      r = persist_map_install (fd, w.len, power);
      /* Without mirrors the new file must not be relied on: the next
       * change writes it again first.
       */
      if (r == -1)
        atomic_store (&in_use_on_disk, false);
    }
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

/* What load_record needs. */
struct load_ctx {
  const char *file;
  const char *why;              /* Every bitmap is inconsistent: why. */
};

static int
load_record (const struct format_record *r, void *opaque)
{
  struct load_ctx *c = opaque;
  CLEANUP_FREE char *name = strndup (r->name, r->name_len);
  CLEANUP_FREE char *reason = NULL;
  struct control_error err = { 0 };
  struct dirty_new n = {
    .name = name,
    .granularity = r->granularity,
    .recording = r->recording,
    .persistent = true,
    .inconsistent = r->inconsistent || c->why,
    .data = r->data,
    .data_len = r->data_len,
  };

  if (name == NULL) {
    nbdkit_error ("strndup: %m");
    return -1;
  }
  if (r->inconsistent && r->reason) {
    reason = strndup (r->reason, r->reason_len);
    if (reason == NULL) {
      nbdkit_error ("strndup: %m");
      return -1;
    }
    n.reason = reason;
  }
  else if (c->why)
    n.reason = c->why;
  if (n.inconsistent)
    n.data = NULL;
  if (dirty_add (&n, &err) == NULL) {
    nbdkit_error ("dirtybitmap-file: %s: bitmap %s: %s", c->file, name,
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

/* Can the bitmaps of a file with header h be trusted?  NULL, or why
 * not (in why, why_len bytes).
 */
static const char *
distrust (const struct format_header *h, char *why, size_t why_len)
{
  static const uint8_t zero[16];
  struct format_header now = { 0 };
  uint8_t lu[16];
  uint64_t lgen;
  char a[40], b[40];

  if (h->version >= 2 && read_lock_record (lu, &lgen) == 0) {
    if (memcmp (lu, h->uuid, 16) != 0) {
      uuid_text (h->uuid, a);
      uuid_text (lu, b);
      snprintf (why, why_len, "the bitmap file was replaced: its UUID is "
                "%s, but this server last wrote %s", a, b);
      return why;
    }
    if (lgen > h->generation) {
      snprintf (why, why_len, "the bitmap file was restored from an older "
                "copy: it is generation %" PRIu64 ", but this server last "
                "wrote generation %" PRIu64, h->generation, lgen);
      return why;
    }
  }
  if (h->in_use && h->version >= 2 && !h->power &&
      (memcmp (h->boot_id, boot_id, 16) != 0 ||
       memcmp (boot_id, zero, 16) == 0)) {
    snprintf (why, why_len, "the host restarted while the last server "
              "ran with dirtybitmap-durability=process: bits not yet "
              "written back may have been lost");
    return why;
  }
  if (h->disk_stat && disk) {
    errno = 0;
    if (disk_state (&now, false) == -1)
      snprintf (why, why_len, "the disk file %s cannot be checked: %s", disk,
                errno ? strerror (errno) : "it is not a regular file");
    else if (now.disk_ino != h->disk_ino)
      snprintf (why, why_len, "the disk file %s was replaced while no "
                "server tracked it (it is another file)", disk);
    else if (h->in_use ? now.disk_file_size < h->disk_file_size
             : now.disk_file_size != h->disk_file_size)
      snprintf (why, why_len, "the disk file %s changed size while no "
                "server tracked it (%" PRIu64 " bytes; the last server "
                "left %" PRIu64 ")", disk, now.disk_file_size,
                h->disk_file_size);
    else if (h->disk_mtime && now.disk_mtime_ns != h->disk_mtime_ns)
      snprintf (why, why_len, "the disk file %s was modified while no "
                "server tracked it (its mtime is not the one the last "
                "server left)", disk);
    else
      return NULL;
    return why;
  }
  return NULL;
}

/* Take PATH.lock (created 0600 if missing).  0 or -1 (reported). */
static int
take_lock (const char *p)
{
  CLEANUP_FREE char *lock_path = NULL;

  if (asprintf (&lock_path, "%s.lock", p) == -1) {
    nbdkit_error ("asprintf: %m");
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
  return 0;
}

int
persist_load (const char *p, const char *disk_path, bool power_mode)
{
  CLEANUP_FREE char *dir_copy = NULL;
  CLEANUP_FREE uint8_t *buf = NULL;
  CLEANUP_CLOSE int fd = -1;
  char problem[256], why[512];
  struct format_header h;
  struct load_ctx c = { .file = p };
  size_t len = 0;
  char u[40];

  dir_copy = strdup (p);
  if (dir_copy == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  if (access (dirname (dir_copy), W_OK | X_OK) == -1) {
    nbdkit_error ("dirtybitmap-file: cannot write files in the directory "
                  "of %s: %m", p);
    return -1;
  }
  if (take_lock (p) == -1)
    return -1;
  power = power_mode;
  read_boot_id (boot_id);
  if (disk_path && (disk = strdup (disk_path)) == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }

  {
    struct stat st;

    if (lstat (p, &st) == -1 && errno == ENOENT) {
      nbdkit_debug ("dirtybitmap: %s does not exist yet: no bitmaps", p);
      if (getrandom (uuid, sizeof uuid, 0) != sizeof uuid) {
        nbdkit_error ("getrandom: %m");
        return -1;
      }
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
  if (format_parse (buf, len, &h, NULL, NULL,
                    problem, sizeof problem) == -1) {
    nbdkit_error ("dirtybitmap-file: %s: %s; to start over, move the file "
                  "aside: every bitmap in it is then lost, and the next "
                  "backup must be a full one", p, problem);
    return -1;
  }
  /* A version 1 file gets its identity now (written at the first
   * rewrite, which writes version 2).
   */
  if (h.version == 1) {
    if (getrandom (uuid, sizeof uuid, 0) != sizeof uuid) {
      nbdkit_error ("getrandom: %m");
      return -1;
    }
  }
  else
    memcpy (uuid, h.uuid, 16);
  generation = h.generation;
  c.why = distrust (&h, why, sizeof why);
  if (c.why)
    nbdkit_debug ("dirtybitmap: %s: every bitmap is inconsistent: %s",
                  p, c.why);
  dirty_set_disk_size (h.disk_size);
  if (format_parse (buf, len, &h, load_record, &c,
                    problem, sizeof problem) == -1)
    return -1;
  if (h.in_use)
    nbdkit_debug ("dirtybitmap: %s was not closed cleanly (the server "
                  "crashed or was killed)%s", p,
                  c.why || h.version == 1 ? ""
                  : ": its bits hold every write that went down");
  nbdkit_debug ("dirtybitmap: loaded %s: version %" PRIu32 ", generation %"
                PRIu64, p, h.version, h.generation);
 ok:
  /* Only a file that loaded is ever written (a bad one is kept). */
  path = strdup (p);
  if (path == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  uuid_text (uuid, u);
  dirty_set_sidecar (u, generation);
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

/* Rewrite the file so that it says what memory says (after a bitmap
 * became inconsistent).  0 or -1 with errno set.
 */
static int
repair (void)
{
  if (persist_update_in_use () == -1) {
    int saved = errno;

    atomic_store (&broken, true);
    nbdkit_error ("dirtybitmap-file: %s: cannot record that the bitmaps "
                  "are inconsistent: %m; writes fail until it can be "
                  "written", path);
    errno = saved;
    return -1;
  }
  atomic_store (&broken, false);
  return 0;
}

int
persist_after_mark (uint64_t seq)
{
  if (path == NULL)
    return 0;
  if (power && seq > 0 && persist_map_sync (seq) == -1) {
    char why[256];

    snprintf (why, sizeof why, "the bitmap file's storage failed "
              "(fdatasync: %s)", strerror (errno));
    nbdkit_error ("dirtybitmap-file: %s: %s: every persistent bitmap is "
                  "now inconsistent", path, why);
    dirty_invalidate_persistent (why);
    dirty_take_rewrite_request ();
    return repair ();
  }
  if (atomic_load (&broken) || dirty_take_rewrite_request ())
    return repair ();
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
                  "(the file still says in use, with the bits of the "
                  "last mapping)", path);
    return -1;
  }
  atomic_store (&in_use_on_disk, false);
  return 0;
}

void
persist_close (void)
{
  persist_map_install (-1, 0, false);
  if (lock_fd >= 0)
    close (lock_fd);
  lock_fd = -1;
  free (path);
  path = NULL;
  free (disk);
  disk = NULL;
}
