/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The sidecar file's shared mapping, and the syncs of power mode.
 *
 * Each in-use version of the file is mapped MAP_SHARED, and every
 * persistent, consistent bitmap's bits in it become that bitmap's
 * mirror (dirty.h): dirty_mark sets a bit there, under dirty_lock,
 * before the write it covers goes down.  A process that dies leaves
 * those pages in the kernel's page cache, which writes them back: so
 * after kill -9 the file holds every bit that was set.
 *
 * Power mode also makes a new bit durable before its write goes
 * down.  Group commit: a writer that set a new bit got a sequence
 * number (dirty_mark_seq); it waits until durable_seq reaches it.  The
 * first waiter becomes the syncer: it reads the current sequence
 * number, then fdatasyncs the file (on Linux that writes back the
 * pages dirtied through the mapping), and every change numbered up to
 * what it read is then durable.  Writers that arrive meanwhile wait
 * and share the next sync.  A write to a granule already dirty set no
 * new bit and never waits.
 *
 * Installing a new version waits for a sync in progress, then blocks
 * syncs (syncing = true) while the mirrors move to the new mapping
 * (a copy of the in-memory bits, under dirty_lock), and in power mode
 * syncs the new file before anyone may rely on it.
 */

#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "dirty.h"
#include "format.h"
#include "minmax.h"
#include "persist.h"

/* Lock order: see lock-order.h (sync_lock is a leaf). */

/* This lock protects the fields below. */
static pthread_mutex_t sync_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sync_cond = PTHREAD_COND_INITIALIZER;
static bool syncing;                    /* A sync or an install runs. */
static uint64_t durable_seq;            /* Changes durable up to here. */
static int map_fd = -1;
static uint8_t *map;
static size_t map_len;

/* Take the right to sync or install (sync_lock held). */
static void
claim_locked (void)
{
  while (syncing)
    pthread_cond_wait (&sync_cond, &sync_lock);
  syncing = true;
}

static void
release (uint64_t durable)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&sync_lock);

  syncing = false;
  durable_seq = MAX (durable_seq, durable);
  pthread_cond_broadcast (&sync_cond);
}

/* The places of a mapped file's bitmaps, for dirty_install_mirrors. */
struct place {
  char name[FORMAT_MAX_NAME + 1];
  uint8_t *data;
  size_t len;
};
struct places {
  struct place *p;
  size_t n;
};

static int
collect (const struct format_record *r, void *opaque)
{
  struct places *ps = opaque;
  struct place *np;

  if (r->inconsistent)
    return 0;
  np = realloc (ps->p, (ps->n + 1) * sizeof *np);
  if (np == NULL)
    return -1;
  ps->p = np;
  memcpy (np[ps->n].name, r->name, r->name_len);
  np[ps->n].name[r->name_len] = '\0';
  /* The record points into the mapping: writable. */
  np[ps->n].data = map + r->data_offset;
  np[ps->n].len = r->data_len;
  ps->n++;
  return 0;
}

static uint8_t *
lookup (const char *name, size_t *len, void *opaque)
{
  struct places *ps = opaque;
  size_t i;

  for (i = 0; i < ps->n; ++i)
    if (strcmp (ps->p[i].name, name) == 0) {
      *len = ps->p[i].len;
      return ps->p[i].data;
    }
  return NULL;
}

int
persist_map_install (int fd, size_t len, bool power)
{
  struct places ps = { 0 };
  struct format_header h;
  char problem[256];
  uint8_t *old_map;
  size_t old_len;
  int old_fd, r = 0, saved = 0;
  uint64_t seq;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&sync_lock);
    claim_locked ();
  }
  old_map = map;
  old_len = map_len;
  old_fd = map_fd;
  map = NULL;
  map_len = 0;
  map_fd = -1;
  if (fd >= 0) {
    map = mmap (NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
      saved = errno;
      map = NULL;
      close (fd);
      r = -1;
    }
    else {
      map_len = len;
      map_fd = fd;
      if (format_parse (map, len, &h, collect, &ps, problem,
                        sizeof problem) == -1) {
        /* We wrote it a moment ago: only memory can fail here. */
        nbdkit_debug ("dirtybitmap: mapping the file: %s", problem);
        saved = ENOMEM;
        r = -1;
      }
    }
  }
  dirty_install_mirrors (r == 0 && map ? lookup : NULL, &ps);
  free (ps.p);
  if (old_map)
    munmap (old_map, old_len);
  if (old_fd >= 0)
    close (old_fd);
  if (r == -1 && map) {
    munmap (map, map_len);
    close (map_fd);
    map = NULL;
    map_fd = -1;
  }
  /* The bits copied in are changes too: in power mode they are made
   * durable before a writer may rely on them.
   */
  seq = dirty_mirror_seq ();
  if (r == 0 && power && map_fd >= 0 && fdatasync (map_fd) == -1) {
    saved = errno;
    r = -1;
  }
  release (r == 0 ? seq : 0);
  errno = saved;
  return r;
}

int
persist_map_sync (uint64_t seq)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&sync_lock);

  while (durable_seq < seq) {
    uint64_t target;
    int fd, r, saved;

    if (syncing) {
      pthread_cond_wait (&sync_cond, &sync_lock);
      continue;
    }
    syncing = true;
    target = dirty_mirror_seq ();
    fd = map_fd;
    pthread_mutex_unlock (&sync_lock);
    r = fd >= 0 ? fdatasync (fd) : 0;
    saved = errno;
    pthread_mutex_lock (&sync_lock);
    syncing = false;
    pthread_cond_broadcast (&sync_cond);
    if (r == -1) {
      errno = saved;
      return -1;
    }
    durable_seq = MAX (durable_seq, target);
  }
  return 0;
}
