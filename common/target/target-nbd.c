/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The NBD target: any server that speaks NBD (nbdkit, qemu-nbd,
 * qemu-storage-daemon...), reached by URI through libnbd, written in
 * place.
 *
 * Two ways to drive it.  The synchronous ops (the filters' engine and
 * job threads) borrow a free connection from the pool, since a libnbd
 * handle runs one synchronous command at a time.  The aio_* ops
 * (nbdbackup's copier) issue a command on the connection the caller
 * names and leave the polling of t->nbd[] to the caller's loop.  A
 * caller uses one way or the other, except flush, which runs with
 * nothing in flight.
 *
 * A URI cannot be renamed, so unlike the file targets there is no
 * "incomplete" name: the caller's status is the only completion
 * marker.  A complete target is flushed on every connection (without
 * multi-conn a flush covers only its own connection's writes).
 *
 * Zero clusters are sent as NBD_CMD_WRITE_ZEROES (the server may
 * punch holes), never as data; only a server that cannot zero at all
 * gets written zeros.  An export bigger than the disk is fine: the
 * bytes past the disk's end are left as they are.
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

#include "cleanup.h"
#include "minmax.h"
#include "nbdkit-stubs.h"
#include "target-internal.h"

#define NBD_TARGET_MAX_CONNS 64u

/* Largest NBD_CMD_WRITE_ZEROES we send: well inside the protocol's
 * 32-bit length, and a size nbdkit and qemu-nbd handle quickly.
 */
#define NBD_MAX_ZERO (256 * 1024 * 1024)
/* Zeros written as data go in pieces of this size. */
#define ZEROS_SIZE (1024 * 1024)

struct nbd_target {
  struct target t;              /* Must be first. */

  /* Set at open and never changed. */
  bool can_zero, can_flush;
  char *zeros;                  /* ZEROS_SIZE zeros, if !can_zero */

  /* This lock protects busy[] (the synchronous ops' pool). */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool *busy;
};

/* Borrow a free connection (waits for one). */
static unsigned
borrow (struct nbd_target *nt)
{
  unsigned i;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&nt->lock);

  for (;;) {
    for (i = 0; i < nt->t.nr_nbd; ++i)
      if (!nt->busy[i]) {
        nt->busy[i] = true;
        return i;
      }
    pthread_cond_wait (&nt->cond, &nt->lock);
  }
}

/* Borrow connection i itself (waits until it is free). */
static void
borrow_this (struct nbd_target *nt, unsigned i)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&nt->lock);

  while (nt->busy[i])
    pthread_cond_wait (&nt->cond, &nt->lock);
  nt->busy[i] = true;
}

static void
give_back (struct nbd_target *nt, unsigned i)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&nt->lock);
  nt->busy[i] = false;
  pthread_cond_broadcast (&nt->cond);
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
  int r = nbd_pwrite (t->nbd[i], buf, count, offset, 0);

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
    while (count > 0 && r == 0) {
      uint32_t n = MIN (count, (uint32_t) ZEROS_SIZE);
      r = n_pwrite (t, nt->zeros, n, offset);
      count -= n; offset += n;
    }
    return r;
  }
  i = borrow (nt);
  r = nbd_zero (t->nbd[i], count, offset, 0);
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
  int r = nbd_pread (t->nbd[i], buf, count, offset, 0);

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

  if (!nt->can_flush) {
    nbdkit_debug ("%s: the server cannot flush", t->name);
    return 0;
  }
  for (i = 0; i < t->nr_nbd; ++i) {
    int r;

    borrow_this (nt, i);
    r = nbd_flush (t->nbd[i], 0);
    if (r == -1)
      failed (nt, "flush");
    give_back (nt, i);
    if (r == -1)
      return -1;
  }
  return 0;
}

static int
n_finish (struct target *t, bool complete)
{
  unsigned i;

  if (!complete)
    return 0;                   /* The status says it is incomplete. */
  if (n_flush (t) == -1)
    return -1;
  for (i = 0; i < t->nr_nbd; ++i)
    if (nbd_shutdown (t->nbd[i], 0) == -1)
      return failed ((struct nbd_target *) t, "shutdown");
  return 0;
}

static void
n_close (struct target *t)
{
  struct nbd_target *nt = (struct nbd_target *) t;
  unsigned i;

  for (i = 0; i < t->nr_nbd; ++i)
    nbd_close (t->nbd[i]);
  pthread_mutex_destroy (&nt->lock);
  pthread_cond_destroy (&nt->cond);
  free (t->nbd);
  free (nt->busy);
  free (nt->zeros);
  free (t->name);
  free (nt);
}

/* libnbd's user_data for one asynchronous command. */
struct request {
  target_done_fn done;
  void *opaque;
};

static int
request_done (void *user_data, int *error)
{
  struct request *req = user_data;

  req->done (req->opaque, *error);
  return 1;                     /* retire the command */
}

static int
n_aio_pwrite (struct target *t, unsigned lane, const void *buf,
              uint32_t count, uint64_t offset,
              target_done_fn done, void *opaque)
{
  struct request *req = malloc (sizeof *req);
  nbd_completion_callback cb = { .callback = request_done,
                                 .user_data = req, .free = free };

  if (req == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  req->done = done;
  req->opaque = opaque;
  /* libnbd calls cb.free even when this fails. */
  if (nbd_aio_pwrite (t->nbd[lane], buf, count, offset, cb, 0) == -1)
    return failed ((struct nbd_target *) t, "write");
  return 0;
}

static int
n_aio_zero (struct target *t, unsigned lane, uint32_t count,
            uint64_t offset, target_done_fn done, void *opaque)
{
  struct nbd_target *nt = (struct nbd_target *) t;
  struct request *req;
  nbd_completion_callback cb;

  /* max_zero is ZEROS_SIZE then: one write. */
  if (!nt->can_zero)
    return n_aio_pwrite (t, lane, nt->zeros, count, offset, done, opaque);
  req = malloc (sizeof *req);
  if (req == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  req->done = done;
  req->opaque = opaque;
  cb = (nbd_completion_callback) { .callback = request_done,
                                   .user_data = req, .free = free };
  if (nbd_aio_zero (t->nbd[lane], count, offset, cb, 0) == -1)
    return failed (nt, "write zeroes");
  return 0;
}

static const struct target_ops nbd_ops = {
  .kind       = "nbd",
  .pwrite     = n_pwrite,
  .zero       = n_zero,
  .pread      = n_pread,
  .flush      = n_flush,
  .finish     = n_finish,
  .close      = n_close,
  .aio_pwrite = n_aio_pwrite,
  .aio_zero   = n_aio_zero,
};

/* Connect one more handle and check the export. */
static int
connect_one (const char *param, struct nbd_target *nt, const char *uri,
             uint64_t size)
{
  struct nbd_handle *h = nbd_create ();
  int64_t tsize;

  if (h == NULL) {
    nbdkit_error ("%s: nbd_create: %s", param, nbd_get_error ());
    return -1;
  }
  nt->t.nbd[nt->t.nr_nbd++] = h;
  if (nbd_connect_uri (h, uri) == -1) {
    nbdkit_error ("%s: %s: %s", param, uri, nbd_get_error ());
    return -1;
  }
  if (nbd_is_read_only (h) == 1) {
    nbdkit_error ("%s: %s: the export is read-only", param, uri);
    return -1;
  }
  tsize = nbd_get_size (h);
  if (tsize == -1) {
    nbdkit_error ("%s: %s: %s", param, uri, nbd_get_error ());
    return -1;
  }
  if ((uint64_t) tsize < size) {
    nbdkit_error ("%s: %s is %" PRIi64 " bytes but the disk is %" PRIu64
                  " bytes", param, uri, tsize, size);
    return -1;
  }
  if (nt->t.nr_nbd == 1) {
    if ((uint64_t) tsize > size)
      nbdkit_debug ("%s: %s: %" PRIu64 " bytes past the disk's end are "
                    "left as they are", param, uri, tsize - size);
    nt->can_zero = nbd_can_zero (h) == 1;
    nt->can_flush = nbd_can_flush (h) == 1;
  }
  return 0;
}

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
  connections = MIN (MAX (connections, 1u), NBD_TARGET_MAX_CONNS);
  nt->t.nbd = calloc (connections, sizeof *nt->t.nbd);
  nt->busy = calloc (connections, sizeof *nt->busy);
  nt->t.name = strdup (uri);
  if (nt->t.nbd == NULL || nt->busy == NULL || nt->t.name == NULL) {
    nbdkit_error ("calloc: %m");
    goto err;
  }

  for (i = 0; i < connections; ++i)
    if (connect_one (param, nt, uri, size) == -1)
      goto err;
  if (nt->can_zero)
    nt->t.max_zero = NBD_MAX_ZERO;
  else {
    nt->t.max_zero = ZEROS_SIZE;
    nt->zeros = calloc (1, ZEROS_SIZE);
    if (nt->zeros == NULL) {
      nbdkit_error ("calloc: %m");
      goto err;
    }
  }
  nbdkit_debug ("%s: NBD target %s: %u connections, zero %s, flush %s",
                param, uri, nt->t.nr_nbd,
                nt->can_zero ? "yes" : "by writing",
                nt->can_flush ? "yes" : "no");
  return &nt->t;

 err:
  n_close (&nt->t);
  return NULL;
}
