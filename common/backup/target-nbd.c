/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The NBD target: any server that speaks NBD (nbdkit, qemu-nbd,
 * qemu-storage-daemon...), reached by URI through libnbd.
 *
 * A libnbd handle runs one synchronous command at a time, so the
 * target keeps a small pool of connections and each call borrows a
 * free one.  A URI cannot be renamed, so unlike the file targets
 * there is no "incomplete" name: the status file, the debug log and
 * control-socket events are the only completion marker.  A complete
 * target is flushed on every connection before the job says so.
 *
 * Zero clusters are sent as NBD_CMD_WRITE_ZEROES (the server may
 * punch holes), never as data; only a server that cannot zero at all
 * gets written zeros.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "minmax.h"
#include "target.h"

#define NBD_TARGET_MAX_CONNS 16u

struct nbd_target {
  struct target t;              /* Must be first. */

  /* Set at open and never changed. */
  unsigned nr;
  struct nbd_handle *h[NBD_TARGET_MAX_CONNS];
  bool can_zero, can_flush;

  /* This lock protects busy[]. */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool busy[NBD_TARGET_MAX_CONNS];
};

/* Borrow a free connection (waits for one). */
static unsigned
borrow (struct nbd_target *nt)
{
  unsigned i;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&nt->lock);

  for (;;) {
    for (i = 0; i < nt->nr; ++i)
      if (!nt->busy[i]) {
        nt->busy[i] = true;
        return i;
      }
    pthread_cond_wait (&nt->cond, &nt->lock);
  }
}

static void
give_back (struct nbd_target *nt, unsigned i)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&nt->lock);
  nt->busy[i] = false;
  pthread_cond_signal (&nt->cond);
}

/* Report the libnbd error of the last call and set errno. */
static int
failed (struct nbd_target *nt, const char *what)
{
  int e = nbd_get_errno ();

  nbdkit_error ("%s: %s: %s", nt->t.name, what, nbd_get_error ());
  errno = e ? e : EIO;
  return -1;
}

static int
n_pwrite (struct target *t, const void *buf, uint32_t count,
          uint64_t offset)
{
  struct nbd_target *nt = (struct nbd_target *) t;
  unsigned i = borrow (nt);
  int r = nbd_pwrite (nt->h[i], buf, count, offset, 0);

  if (r == -1)
    failed (nt, "write");
  give_back (nt, i);
  return r == -1 ? -1 : 0;
}

static int
n_zero (struct target *t, uint32_t count, uint64_t offset)
{
  struct nbd_target *nt = (struct nbd_target *) t;
  unsigned i;
  int r = 0;

  if (!nt->can_zero) {
    /* XXX A server without WRITE_ZEROES gets zeros as data: there is
     * no other way to make the range read as zeros.
     */
    static const char zeroes[65536];
    while (count > 0 && r == 0) {
      uint32_t n = MIN (count, (uint32_t) sizeof zeroes);
      r = n_pwrite (t, zeroes, n, offset);
      count -= n; offset += n;
    }
    return r;
  }
  i = borrow (nt);
  r = nbd_zero (nt->h[i], count, offset, 0);
  if (r == -1)
    failed (nt, "write zeroes");
  give_back (nt, i);
  return r == -1 ? -1 : 0;
}

static int
n_pread (struct target *t, void *buf, uint32_t count, uint64_t offset)
{
  struct nbd_target *nt = (struct nbd_target *) t;
  unsigned i = borrow (nt);
  int r = nbd_pread (nt->h[i], buf, count, offset, 0);

  if (r == -1)
    failed (nt, "read");
  give_back (nt, i);
  return r == -1 ? -1 : 0;
}

static int
n_flush (struct target *t)
{
  struct nbd_target *nt = (struct nbd_target *) t;
  unsigned i;

  if (!nt->can_flush)
    return 0;
  /* Without multi-conn, a flush covers only its own connection's
   * writes: flush them all (in turn, each borrowed).
   */
  for (i = 0; i < nt->nr; ++i) {
    int r;
    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&nt->lock);
      while (nt->busy[i])
        pthread_cond_wait (&nt->cond, &nt->lock);
      nt->busy[i] = true;
    }
    r = nbd_flush (nt->h[i], 0);
    if (r == -1)
      failed (nt, "flush");
    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&nt->lock);
      nt->busy[i] = false;
      pthread_cond_broadcast (&nt->cond);
    }
    if (r == -1)
      return -1;
  }
  return 0;
}

static int
n_finish (struct target *t, bool complete)
{
  struct nbd_target *nt = (struct nbd_target *) t;
  unsigned i;

  if (!complete)
    return 0;                   /* The status says it is incomplete. */
  if (n_flush (t) == -1)
    return -1;
  for (i = 0; i < nt->nr; ++i)
    nbd_shutdown (nt->h[i], 0);
  return 0;
}

static void
n_close (struct target *t)
{
  struct nbd_target *nt = (struct nbd_target *) t;
  unsigned i;

  for (i = 0; i < nt->nr; ++i)
    nbd_close (nt->h[i]);
  pthread_mutex_destroy (&nt->lock);
  pthread_cond_destroy (&nt->cond);
  free (t->name);
  free (nt);
}

static const struct target_ops nbd_ops = {
  .kind   = "nbd",
  .pwrite = n_pwrite,
  .zero   = n_zero,
  .pread  = n_pread,
  .flush  = n_flush,
  .finish = n_finish,
  .close  = n_close,
};

struct target *
target_nbd_open (const char *param, const char *uri, uint64_t size,
                 unsigned connections)
{
  struct nbd_target *nt;
  unsigned i;

  nt = calloc (1, sizeof *nt);
  if (nt == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  nt->t.ops = &nbd_ops;
  nt->t.size = size;
  nt->t.known_zero = false;     /* We cannot know what the server holds. */
  pthread_mutex_init (&nt->lock, NULL);
  pthread_cond_init (&nt->cond, NULL);
  if ((nt->t.name = strdup (uri)) == NULL) {
    nbdkit_error ("strdup: %m");
    goto err;
  }

  connections = MIN (MAX (connections, 1u), NBD_TARGET_MAX_CONNS);
  for (i = 0; i < connections; ++i) {
    struct nbd_handle *h = nbd_create ();
    int64_t tsize;

    if (h == NULL) {
      nbdkit_error ("%s: nbd_create: %s", param, nbd_get_error ());
      goto err;
    }
    nt->h[nt->nr++] = h;
    if (nbd_connect_uri (h, uri) == -1) {
      nbdkit_error ("%s: %s: %s", param, uri, nbd_get_error ());
      goto err;
    }
    if (nbd_is_read_only (h) == 1) {
      nbdkit_error ("%s: %s: the export is read-only", param, uri);
      goto err;
    }
    tsize = nbd_get_size (h);
    if (tsize == -1) {
      nbdkit_error ("%s: %s: %s", param, uri, nbd_get_error ());
      goto err;
    }
    if ((uint64_t) tsize != size) {
      nbdkit_error ("%s: %s is %" PRIi64 " bytes but the disk is %" PRIu64
                    " bytes", param, uri, tsize, size);
      goto err;
    }
    if (i == 0) {
      nt->can_zero = nbd_can_zero (h) == 1;
      nt->can_flush = nbd_can_flush (h) == 1;
    }
  }
  nbdkit_debug ("%s: NBD target %s: %u connections, zero %s, flush %s",
                param, uri, nt->nr, nt->can_zero ? "yes" : "no",
                nt->can_flush ? "yes" : "no");
  return &nt->t;

 err:
  n_close (&nt->t);
  return NULL;
}
