/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* An NBD export as target: written in place, asynchronously, over one
 * connection per source connection ("lane").
 *
 * Nothing is known about what the export holds, so it is not
 * zero_initialized: ranges that read as zeros are written as zeros,
 * with NBD_CMD_WRITE_ZEROES when the server supports it (the server
 * may then punch holes), else as ordinary writes from a buffer of
 * zeros.  Flush goes to every connection: without multi-conn a flush
 * only covers writes made on its own connection.
 *
 * There is no TARGET.incomplete here: the export is the user's.  A
 * pull that fails leaves it partly written and says so (exit 1).
 */

#include <config.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include <libnbd.h>

#include "nbdkit-stubs.h"
#include "target.h"

/* Largest NBD_CMD_WRITE_ZEROES we send: well inside the protocol's
 * 32-bit length, and a size nbdkit and qemu-nbd handle quickly.
 */
#define NBD_MAX_ZERO (256 * 1024 * 1024)

struct nbd_target {
  struct target t;              /* must be first */
  const char *uri;
  bool can_zero;
  bool can_flush;
  char *zeros;                  /* max_zero bytes of zeros, if !can_zero */
};

/* libnbd's user_data for one command. */
struct request {
  struct target *t;
  void *opaque;
};

static int
request_done (void *user_data, int *error)
{
  struct request *req = user_data;

  req->t->done (req->opaque, *error);
  return 1;                     /* retire the command */
}

static nbd_completion_callback
new_request (struct target *t, void *opaque)
{
  struct request *req = malloc (sizeof *req);
  nbd_completion_callback cb = { .callback = request_done,
                                 .user_data = req, .free = free };

  if (req == NULL)
    cb.callback = NULL;
  else {
    req->t = t;
    req->opaque = opaque;
  }
  return cb;
}

static int
n_write (struct target *t, unsigned lane, const void *buf,
         uint32_t len, uint64_t offset, void *opaque)
{
  struct nbd_target *nt = (struct nbd_target *) t;
  nbd_completion_callback cb = new_request (t, opaque);

  if (cb.callback == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  /* libnbd calls cb.free even when this fails. */
  if (nbd_aio_pwrite (t->nbd[lane], buf, len, offset, cb, 0) == -1) {
    nbdkit_error ("target %s: %s", nt->uri, nbd_get_error ());
    return -1;
  }
  return 0;
}

static int
n_zero (struct target *t, unsigned lane, uint32_t len, uint64_t offset,
        void *opaque)
{
  struct nbd_target *nt = (struct nbd_target *) t;
  nbd_completion_callback cb;
  int64_t r;

  if (!nt->can_zero)
    return n_write (t, lane, nt->zeros, len, offset, opaque);

  cb = new_request (t, opaque);
  if (cb.callback == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  r = nbd_aio_zero (t->nbd[lane], len, offset, cb, 0);
  if (r == -1) {
    nbdkit_error ("target %s: %s", nt->uri, nbd_get_error ());
    return -1;
  }
  return 0;
}

static int
n_flush (struct target *t)
{
  struct nbd_target *nt = (struct nbd_target *) t;
  unsigned i;

  if (!nt->can_flush) {
    nbdkit_debug ("target %s: the server cannot flush", nt->uri);
    return 0;
  }
  for (i = 0; i < t->nr_nbd; ++i) {
    if (nbd_flush (t->nbd[i], 0) == -1) {
      nbdkit_error ("target %s: flush: %s", nt->uri, nbd_get_error ());
      return -1;
    }
  }
  return 0;
}

static int
n_commit (struct target *t)
{
  struct nbd_target *nt = (struct nbd_target *) t;
  unsigned i;

  for (i = 0; i < t->nr_nbd; ++i) {
    if (nbd_shutdown (t->nbd[i], 0) == -1) {
      nbdkit_error ("target %s: %s", nt->uri, nbd_get_error ());
      return -1;
    }
  }
  return 0;
}

static void
n_close (struct target *t)
{
  struct nbd_target *nt = (struct nbd_target *) t;
  unsigned i;

  for (i = 0; i < t->nr_nbd; ++i)
    nbd_close (t->nbd[i]);
  free (t->nbd);
  free (nt->zeros);
  free (nt);
}

static const struct target_ops nbd_ops = {
  .write = n_write,
  .zero = n_zero,
  .flush = n_flush,
  .commit = n_commit,
  .close = n_close,
};

struct target *
nbd_target_open (const char *uri, uint64_t size, unsigned nr_lanes,
                 uint32_t chunk)
{
  struct nbd_target *nt;
  struct nbd_handle *nbd;
  int64_t tsize;
  unsigned i;

  nt = calloc (1, sizeof *nt);
  if (nt == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  nt->t.ops = &nbd_ops;
  nt->t.format = "nbd";
  nt->t.zero_initialized = false;
  nt->uri = uri;
  nt->t.nbd = calloc (nr_lanes, sizeof *nt->t.nbd);
  if (nt->t.nbd == NULL) {
    nbdkit_error ("calloc: %m");
    goto err;
  }

  for (i = 0; i < nr_lanes; ++i) {
    nbd = nbd_create ();
    if (nbd == NULL) {
      nbdkit_error ("%s", nbd_get_error ());
      goto err;
    }
    if (nbd_connect_uri (nbd, uri) == -1) {
      nbdkit_error ("target %s: %s", uri, nbd_get_error ());
      nbd_close (nbd);
      goto err;
    }
    nt->t.nbd[nt->t.nr_nbd++] = nbd;
  }

  nbd = nt->t.nbd[0];
  if (nbd_is_read_only (nbd) == 1) {
    nbdkit_error ("target %s: the export is read-only", uri);
    goto err;
  }
  tsize = nbd_get_size (nbd);
  if (tsize == -1) {
    nbdkit_error ("target %s: %s", uri, nbd_get_error ());
    goto err;
  }
  if ((uint64_t) tsize < size) {
    nbdkit_error ("target %s: the export (%" PRIi64 " bytes) is smaller "
                  "than the source (%" PRIu64 " bytes)", uri, tsize, size);
    goto err;
  }
  if ((uint64_t) tsize > size)
    nbdkit_debug ("target %s: %" PRIu64 " bytes past the source's end "
                  "are left as they are", uri, tsize - size);

  nt->can_zero = nbd_can_zero (nbd) == 1;
  nt->can_flush = nbd_can_flush (nbd) == 1;
  if (nt->can_zero)
    nt->t.max_zero = NBD_MAX_ZERO;
  else {
    /* Zeros go as writes, no bigger than the data writes. */
    nt->t.max_zero = chunk;
    nt->zeros = calloc (1, chunk);
    if (nt->zeros == NULL) {
      nbdkit_error ("calloc: %m");
      goto err;
    }
  }
  nbdkit_debug ("target %s: %u connection(s), zero %s, flush %s", uri,
                nr_lanes, nt->can_zero ? "yes" : "by writing",
                nt->can_flush ? "yes" : "no");
  return &nt->t;

 err:
  n_close (&nt->t);
  return NULL;
}
