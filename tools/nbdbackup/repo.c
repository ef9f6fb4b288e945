/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Notes on the repository directory (nbdbackup(1), REPOSITORY):
 *
 * REPO is a directory, mode 0700, holding catalog.json, a lock file,
 * and per backup ID.qcow2 and ID.digests.  Only a real directory with
 * our catalog is opened: a symlink at REPO, a file of another kind, or
 * a directory without catalog.json (someone else's) is refused, and
 * init takes only a path that does not exist or an empty directory.
 *
 * The lock.  REPO/lock is flock'd for the whole command: exclusive for
 * the commands that write (init, backup, prune), shared for those that
 * only read (list, estimate, verify, restore, mount), never waiting: a
 * busy repository is refused at once (NBDBACKUP_EXIT_BUSY) with the
 * holder's line, which the exclusive holder writes into the file.  The
 * lock file is opened O_NOFOLLOW and must be a regular file; a missing
 * one is created O_EXCL (never by unlinking whatever is there, which
 * would let two commands lock two different files).
 *
 * The catalog is read whole and checked on every command (catalog.c);
 * a write replaces it atomically.
 */

#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "cleanup.h"
#include "files.h"
#include "minmax.h"
#include "nbdkit-stubs.h"
#include "nbdbackup.h"
#include "repo.h"
#include "group-repo.h"
#include "prune.h"

const char *
repo_level_name (enum repo_level l)
{
  switch (l) {
  case REPO_FULL: return "full";
  case REPO_INC: return "inc";
  case REPO_DIFF: return "diff";
  }
  return "?";
}

int
repo_parse_level (const char *s, enum repo_level *l)
{
  if (strcmp (s, "full") == 0)      *l = REPO_FULL;
  else if (strcmp (s, "inc") == 0)  *l = REPO_INC;
  else if (strcmp (s, "diff") == 0) *l = REPO_DIFF;
  else return -1;
  return 0;
}

bool
repo_id_ok (const char *id)
{
  size_t i;

  for (i = 0; i < 15; ++i) {
    if (i == 8 ? id[i] != '-' : (id[i] < '0' || id[i] > '9'))
      return false;
  }
  if (id[15] == '\0')
    return true;
  if (id[15] != '.' || id[16] < '2' || id[16] > '9')
    return false;
  for (i = 17; id[i] != '\0'; ++i)
    if (id[i] < '0' || id[i] > '9' || i > 24)
      return false;
  return true;
}

int
repo_set_string (char **p, const char *s)
{
  char *copy = NULL;

  if (s && (copy = strdup (s)) == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  free (*p);
  *p = copy;
  return 0;
}

char *
repo_file (const struct repo *r, const char *name)
{
  char *s;

  if (asprintf (&s, "%s/%s", r->path, name) == -1) {
    nbdkit_error ("asprintf: %m");
    return NULL;
  }
  return s;
}

void
repo_entry_clear (struct repo_entry *e)
{
  free (e->id);
  free (e->parent);
  free (e->reason);
  free (e->instant);
  free (e->bitmap);
  free (e->file);
  free (e->digests);
  memset (e, 0, sizeof *e);
}

void
repo_pending_free (struct repo_pending *p)
{
  size_t i;

  if (p == NULL)
    return;
  free (p->op);
  for (i = 0; i < p->nr_fold; ++i)
    free (p->fold[i]);
  free (p->fold);
  for (i = 0; i < p->nr_drop; ++i)
    free (p->drop[i]);
  free (p->drop);
  free (p->id);
  free (p->file);
  for (i = 0; i < p->nr_added; ++i)
    free (p->added[i]);
  free (p->added);
  free (p->disabled);
  free (p);
}

/* Free the catalog fields of r. */
static void
free_catalog (struct repo *r)
{
  size_t i;

  free (r->uuid);
  free (r->created);
  free (r->uri);
  free (r->control);
  free (r->snapshot_export);
  free (r->bitmap_prefix);
  free (r->tracking_inc);
  free (r->tracking_diff);
  repo_pending_free (r->pending);
  for (i = 0; i < r->nr_entries; ++i)
    repo_entry_clear (&r->entries[i]);
  free (r->entries);
}

void
repo_close (struct repo *r)
{
  if (r == NULL)
    return;
  if (r->lock_fd >= 0) {
    /* The holder's line goes with the lock. */
    if (r->lock_mode == REPO_LOCK_EXCLUSIVE &&
        ftruncate (r->lock_fd, 0) == -1)
      nbdkit_debug ("%s/lock: ftruncate: %m", r->path);
    close (r->lock_fd);           /* releases the flock */
  }
  free_catalog (r);
  free (r->path);
  free (r);
}

/* "2026-12-03T07:45:12Z" for now. */
static void
utc_now (char *buf, size_t len)
{
  time_t t = time (NULL);
  struct tm tm;

  gmtime_r (&t, &tm);
  strftime (buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Read the holder's line from the lock file, for the busy message. */
static void
read_holder (int fd, char *buf, size_t len)
{
  ssize_t n = pread (fd, buf, len - 1, 0);
  char *nl;

  if (n <= 0)
    n = 0;
  buf[n] = '\0';
  nl = strchr (buf, '\n');
  if (nl)
    *nl = '\0';
}

/* Open (or create) REPO/lock and take it.  Returns an exit status. */
static int
take_lock (struct repo *r, enum repo_lock_mode mode, const char *cmd)
{
  CLEANUP_FREE char *path = repo_file (r, REPO_LOCK);
  struct stat st;
  char holder[256];
  int fd = -1, tries;

  if (path == NULL)
    return NBDBACKUP_EXIT_FAILED;
  for (tries = 0; fd == -1 && tries < 2; ++tries) {
    if (lstat (path, &st) == -1 && errno == ENOENT) {
      fd = open (path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                 0600);
      if (fd == -1 && errno == EEXIST)
        continue;               /* made meanwhile: open that one */
      if (fd == -1) {
        nbdkit_error ("lock file %s: %m", path);
        return NBDBACKUP_EXIT_FAILED;
      }
    }
    else {
      fd = open_regular_file ("lock file", path, O_RDWR, OPEN_NOFOLLOW);
      if (fd == -1)
        return NBDBACKUP_EXIT_FAILED;
    }
  }
  if (fd == -1) {
    nbdkit_error ("lock file %s: cannot be opened", path);
    return NBDBACKUP_EXIT_FAILED;
  }

  if (flock (fd, (mode == REPO_LOCK_EXCLUSIVE ? LOCK_EX : LOCK_SH) |
             LOCK_NB) == -1) {
    if (errno != EWOULDBLOCK) {
      nbdkit_error ("lock file %s: flock: %m", path);
      close (fd);
      return NBDBACKUP_EXIT_FAILED;
    }
    /* Exclusive refused but shared granted: only readers hold it. */
    if (mode == REPO_LOCK_EXCLUSIVE && flock (fd, LOCK_SH | LOCK_NB) == 0)
      nbdkit_error ("repository %s is busy: in use by another nbdbackup "
                    "command that reads it (list, estimate, verify, "
                    "restore or mount)", r->path);
    else {
      read_holder (fd, holder, sizeof holder);
      nbdkit_error ("repository %s is busy: locked by %s", r->path,
                    holder[0] ? holder : "another nbdbackup command");
    }
    close (fd);
    return NBDBACKUP_EXIT_BUSY;
  }

  if (mode == REPO_LOCK_EXCLUSIVE) {
    char host[256] = "?", since[32], line[512];
    int len;

    gethostname (host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    utc_now (since, sizeof since);
    len = snprintf (line, sizeof line, "pid %ld on host %s, %s, since %s\n",
                    (long) getpid (), host, cmd, since);
    if (ftruncate (fd, 0) == -1 ||
        pwrite (fd, line, MIN (len, (int) sizeof line - 1), 0) == -1)
      nbdkit_debug ("lock file %s: writing the holder: %m", path);
  }
  r->lock_fd = fd;
  r->lock_mode = mode;
  return NBDBACKUP_EXIT_OK;
}

static struct repo *
repo_alloc (const char *path)
{
  struct repo *r = calloc (1, sizeof *r);

  if (r == NULL || (r->path = strdup (path)) == NULL) {
    nbdkit_error ("calloc: %m");
    free (r);
    return NULL;
  }
  r->lock_fd = -1;
  return r;
}

static int make_dir (const char *path, bool *created);

/* REPO must be a real directory. */
static int
check_dir (const char *path)
{
  struct stat st;

  if (lstat (path, &st) == -1) {
    nbdkit_error ("repository %s: %m", path);
    return -1;
  }
  if (S_ISLNK (st.st_mode)) {
    nbdkit_error ("repository %s: is a symbolic link: give the real "
                  "directory", path);
    return -1;
  }
  if (!S_ISDIR (st.st_mode)) {
    nbdkit_error ("repository %s: is %s, not a directory", path,
                  file_kind (st.st_mode));
    return -1;
  }
  return 0;
}

/* repo_open of a group repository: the disk chosen with --disk. */
static int
open_group_disk (const char *path, enum repo_lock_mode mode, const char *cmd,
                 struct repo **ret)
{
  struct group_repo *g = NULL;
  CLEANUP_FREE char *names = NULL, *sub = NULL;
  size_t i, len = 0;
  bool found = false;
  int e;

  e = group_repo_open (path, REPO_LOCK_SHARED, cmd, &g);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  for (i = 0; i < g->nr_disks; ++i) {
    len += strlen (g->disks[i]) + 2;
    found |= repo_disk && strcmp (repo_disk, g->disks[i]) == 0;
  }
  names = calloc (1, len + 1);
  if (names == NULL) {
    nbdkit_error ("calloc: %m");
    group_repo_close (g);
    return NBDBACKUP_EXIT_FAILED;
  }
  for (i = 0; i < g->nr_disks; ++i) {
    if (i)
      strcat (names, ", ");
    strcat (names, g->disks[i]);
  }
  if (repo_disk == NULL)
    nbdkit_error ("repository %s is a group of disks (%s): choose one "
                  "with --disk=NAME", path, names);
  else if (!found)
    nbdkit_error ("repository %s has no disk '%s' (its disks: %s)", path,
                  repo_disk, names);
  else
    sub = group_disk_path (g, repo_disk);
  group_repo_close (g);
  if (sub == NULL)
    return NBDBACKUP_EXIT_FAILED;
  return repo_open (sub, mode, cmd, ret);
}

int
repo_lock_dir (const char *path, bool create, enum repo_lock_mode mode,
               const char *cmd, struct repo **ret)
{
  struct repo *r;
  bool made = false;
  int e;

  if (create ? make_dir (path, &made) == -1 : check_dir (path) == -1)
    return NBDBACKUP_EXIT_FAILED;
  r = repo_alloc (path);
  if (r == NULL) {
    if (made)
      rmdir (path);
    return NBDBACKUP_EXIT_FAILED;
  }
  e = take_lock (r, mode, cmd);
  if (e != NBDBACKUP_EXIT_OK) {
    repo_close (r);
    return e;
  }
  *ret = r;
  return NBDBACKUP_EXIT_OK;
}

int
repo_open (const char *path, enum repo_lock_mode mode, const char *cmd,
           struct repo **ret)
{
  struct repo *r;
  CLEANUP_FREE char *catalog = NULL;
  struct stat st;
  int e;

  if (check_dir (path) == -1)
    return NBDBACKUP_EXIT_FAILED;
  r = repo_alloc (path);
  if (r == NULL)
    return NBDBACKUP_EXIT_FAILED;
  catalog = repo_file (r, REPO_CATALOG);
  if (catalog == NULL)
    goto err;
  if (lstat (catalog, &st) == -1 && errno == ENOENT &&
      group_repo_is (path)) {
    repo_close (r);
    return open_group_disk (path, mode, cmd, ret);
  }
  if (lstat (catalog, &st) == -1 && errno == ENOENT) {
    nbdkit_error ("repository %s: not an nbdbackup repository (it has no "
                  "%s; make one with nbdbackup init)", path, REPO_CATALOG);
    goto err;
  }
  e = take_lock (r, mode, cmd);
  if (e != NBDBACKUP_EXIT_OK) {
    repo_close (r);
    return e;
  }
  if (catalog_load (r) == -1)
    goto err;
  /* An interrupted prune is finished before anything else (prune.c). */
  if (r->pending && strcmp (r->pending->op, "prune") == 0 &&
      prune_finish_interrupted (r, mode, cmd) == -1)
    goto err;
  *ret = r;
  return NBDBACKUP_EXIT_OK;

 err:
  repo_close (r);
  return NBDBACKUP_EXIT_FAILED;
}

/* A random (version 4) UUID. */
static int
new_uuid (char out[37])
{
  unsigned char b[16];

  if (getrandom (b, sizeof b, 0) != sizeof b) {
    nbdkit_error ("getrandom: %m");
    return -1;
  }
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  snprintf (out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
            "%02x%02x%02x%02x%02x%02x",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
            b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return 0;
}

/* init's directory: create it, or take an empty one. */
static int
make_dir (const char *path, bool *created)
{
  struct stat st;
  DIR *d;
  struct dirent *ent;
  bool empty = true;

  *created = false;
  if (mkdir (path, 0700) == 0) {
    *created = true;
    return 0;
  }
  if (errno != EEXIST) {
    nbdkit_error ("repository %s: mkdir: %m", path);
    return -1;
  }
  if (check_dir (path) == -1)
    return -1;
  d = opendir (path);
  if (d == NULL) {
    nbdkit_error ("repository %s: %m", path);
    return -1;
  }
  while ((ent = readdir (d)) != NULL)
    if (strcmp (ent->d_name, ".") != 0 && strcmp (ent->d_name, "..") != 0) {
      empty = false;
      break;
    }
  closedir (d);
  if (!empty) {
    CLEANUP_FREE char *cat = NULL;

    if (asprintf (&cat, "%s/%s", path, REPO_CATALOG) != -1 &&
        lstat (cat, &st) == 0) {
      nbdkit_error ("repository %s: is already a repository", path);
      return -1;
    }
    nbdkit_error ("repository %s: the directory is not empty: give a new "
                  "or empty directory", path);
    return -1;
  }
  if (chmod (path, 0700) == -1) {
    nbdkit_error ("repository %s: chmod: %m", path);
    return -1;
  }
  return 0;
}

int
repo_create (const char *path, const struct repo_params *p,
             const char *cmd, struct repo **ret)
{
  struct repo *r;
  char uuid[37], created[32];
  bool made;
  int e;

  if (make_dir (path, &made) == -1)
    return NBDBACKUP_EXIT_FAILED;
  r = repo_alloc (path);
  if (r == NULL)
    goto err;
  e = take_lock (r, REPO_LOCK_EXCLUSIVE, cmd);
  if (e != NBDBACKUP_EXIT_OK) {
    repo_close (r);
    return e;
  }
  if (new_uuid (uuid) == -1)
    goto err;
  utc_now (created, sizeof created);
  r->chunk_size = p->chunk_size;
  r->next_bitmap = 1;
  if (repo_set_string (&r->uuid, uuid) == -1 ||
      repo_set_string (&r->created, created) == -1 ||
      repo_set_string (&r->uri, p->uri) == -1 ||
      repo_set_string (&r->control, p->control) == -1 ||
      repo_set_string (&r->snapshot_export, p->snapshot_export) == -1)
    goto err;
  if (asprintf (&r->bitmap_prefix, "nbdbackup-%.8s-", uuid) == -1) {
    r->bitmap_prefix = NULL;
    nbdkit_error ("asprintf: %m");
    goto err;
  }
  if (repo_save (r) == -1)
    goto err;
  *ret = r;
  return NBDBACKUP_EXIT_OK;

 err:
  /* Leave nothing of ours behind: the lock file, and the directory
   * if we made it.
   */
  if (r) {
    CLEANUP_FREE char *lock = repo_file (r, REPO_LOCK);

    if (lock)
      unlink (lock);
    repo_close (r);
  }
  if (made)
    rmdir (path);
  return NBDBACKUP_EXIT_FAILED;
}

int
repo_save (struct repo *r)
{
  return catalog_save (r);
}

const struct repo_entry *
repo_find (const struct repo *r, const char *id)
{
  size_t i;

  for (i = 0; i < r->nr_entries; ++i)
    if (strcmp (r->entries[i].id, id) == 0)
      return &r->entries[i];
  return NULL;
}

const struct repo_entry *
repo_last (const struct repo *r)
{
  return r->nr_entries ? &r->entries[r->nr_entries - 1] : NULL;
}

const struct repo_entry *
repo_last_full (const struct repo *r)
{
  size_t i;

  for (i = r->nr_entries; i > 0; --i)
    if (r->entries[i - 1].level == REPO_FULL)
      return &r->entries[i - 1];
  return NULL;
}

int
repo_chain (const struct repo *r, const char *id,
            const struct repo_entry ***chain, size_t *n)
{
  const struct repo_entry *e = repo_find (r, id), **a;
  size_t len = 0, i;

  if (e == NULL) {
    nbdkit_error ("repository %s: no backup with id '%s'", r->path, id);
    return -1;
  }
  /* The catalog's parents come earlier (catalog.c), so this ends. */
  for (; e; e = e->parent ? repo_find (r, e->parent) : NULL)
    len++;
  a = malloc (len * sizeof *a);
  if (a == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  i = len;
  for (e = repo_find (r, id); e; e = e->parent ? repo_find (r, e->parent) : NULL)
    a[--i] = e;
  *chain = a;
  *n = len;
  return 0;
}

char *
repo_new_id (const struct repo *r, time_t t)
{
  struct tm tm;
  char base[32], *id;
  unsigned n;

  gmtime_r (&t, &tm);
  strftime (base, sizeof base, "%Y%m%d-%H%M%S", &tm);
  for (n = 1; n < 100000; ++n) {
    CLEANUP_FREE char *file = NULL;
    struct stat st;

    if (n == 1)
      id = strdup (base);
    else if (asprintf (&id, "%s.%u", base, n) == -1)
      id = NULL;
    if (id == NULL) {
      nbdkit_error ("malloc: %m");
      return NULL;
    }
    if (asprintf (&file, "%s/%s.qcow2", r->path, id) == -1) {
      free (id);
      nbdkit_error ("malloc: %m");
      return NULL;
    }
    if (repo_find (r, id) == NULL && lstat (file, &st) == -1 &&
        errno == ENOENT)
      return id;
    free (id);
  }
  nbdkit_error ("repository %s: no free backup id for %s", r->path, base);
  return NULL;
}

char *
repo_new_bitmap (struct repo *r)
{
  char *s;

  if (asprintf (&s, "%s%" PRIu64, r->bitmap_prefix, r->next_bitmap) == -1) {
    nbdkit_error ("asprintf: %m");
    return NULL;
  }
  r->next_bitmap++;
  return s;
}

int
repo_add_entry (struct repo *r, struct repo_entry *e)
{
  struct repo_entry *p = realloc (r->entries,
                                  (r->nr_entries + 1) * sizeof *p);

  if (p == NULL) {
    nbdkit_error ("realloc: %m");
    return -1;
  }
  r->entries = p;
  r->entries[r->nr_entries++] = *e;
  memset (e, 0, sizeof *e);
  return 0;
}
