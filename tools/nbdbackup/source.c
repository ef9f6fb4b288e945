/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Connecting to the source export.
 *
 * Every connection asks for base:allocation; only the first is used
 * for block status, the others only read.  The copy reads from a
 * point-in-time snapshot export, which nobody writes, so several
 * connections see the same data whether or not the server advertises
 * multi-conn.  (Pulling from a live export is not point-in-time
 * anyway.)
 */

#include <config.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include <libnbd.h>

#include "nbdkit-stubs.h"
#include "source.h"

/* The largest read we send when the server names no maximum: the NBD
 * protocol's conventional limit, which nbdkit and qemu-nbd accept.
 */
#define DEFAULT_MAX_REQUEST (32 * 1024 * 1024)

static struct nbd_handle *
connect_one (const char *uri)
{
  struct nbd_handle *nbd;

  nbd = nbd_create ();
  if (nbd == NULL) {
    nbdkit_error ("%s", nbd_get_error ());
    return NULL;
  }
  /* Buffers are only used after a successful read: don't pay for
   * zeroing them first.
   */
  nbd_set_pread_initialize (nbd, false);
  if (nbd_add_meta_context (nbd, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
      nbd_connect_uri (nbd, uri) == -1) {
    nbdkit_error ("source %s: %s", uri, nbd_get_error ());
    nbd_close (nbd);
    return NULL;
  }
  return nbd;
}

int
source_open (struct source *src, const char *uri, unsigned nr)
{
  int64_t size, max;
  unsigned i;

  src->uri = uri;
  src->nr_nbd = 0;
  src->nbd = calloc (nr, sizeof *src->nbd);
  if (src->nbd == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }

  for (i = 0; i < nr; ++i) {
    src->nbd[i] = connect_one (uri);
    if (src->nbd[i] == NULL)
      goto err;
    src->nr_nbd++;
  }

  size = nbd_get_size (src->nbd[0]);
  if (size == -1) {
    nbdkit_error ("source %s: %s", uri, nbd_get_error ());
    goto err;
  }
  src->size = size;
  src->have_extents =
    nbd_can_meta_context (src->nbd[0], LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  if (!src->have_extents)
    nbdkit_debug ("source %s: no base:allocation, copying every byte", uri);

  max = nbd_get_block_size (src->nbd[0], LIBNBD_SIZE_MAXIMUM);
  src->max_request = max > 0 ? (uint64_t) max : DEFAULT_MAX_REQUEST;
  nbdkit_debug ("source %s: %" PRIu64 " bytes, %u connection(s), "
                "max request %" PRIu64, uri, src->size, nr, src->max_request);
  return 0;

 err:
  source_close (src);
  return -1;
}

void
source_close (struct source *src)
{
  unsigned i;

  for (i = 0; i < src->nr_nbd; ++i) {
    /* The source is only read: a plain close is enough, but say
     * goodbye politely so the server doesn't log a dropped client.
     * Not with requests in flight (an abandoned copy): nbd_shutdown
     * would wait for them, and the server may be what hangs.
     */
    if (nbd_aio_is_ready (src->nbd[i]) == 1 &&
        nbd_aio_in_flight (src->nbd[i]) == 0)
      nbd_shutdown (src->nbd[i], 0);
    nbd_close (src->nbd[i]);
  }
  free (src->nbd);
  src->nbd = NULL;
  src->nr_nbd = 0;
}
