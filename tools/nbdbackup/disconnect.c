/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Every way out of a copy, success, error or signal, ends here before
 * the handles are closed: each connection that is still up gets
 * NBD_CMD_DISC and we wait for the server to close it.  A server then
 * logs "client sent NBD_CMD_DISC" instead of a dropped client, and,
 * since copy.c has waited for the requests in flight first, it never
 * has replies left to send to a closed socket, which is what makes
 * nbdkit 1.32.4 and 1.32.5 abort (nbdbackup(1), BUGS).
 *
 * nbd_shutdown would do the same but waits for ever; a server that
 * hangs must not hang us, so this waits at most DISC_SECONDS, or until
 * a second SIGINT/SIGTERM.
 */

#include <config.h>

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>

#include <libnbd.h>

#include "files.h"
#include "nbdkit-stubs.h"
#include "disconnect.h"
#include "nbdbackup.h"

#define DISC_SECONDS 30
#define POLL_MS 100

static bool
still_open (struct nbd_handle *h)
{
  return nbd_aio_is_closed (h) != 1 && nbd_aio_is_dead (h) != 1;
}

void
disconnect_all (struct nbd_handle **h, unsigned n, const char *what)
{
  struct pollfd *fds;
  unsigned i, waiting = 0;
  double start;

  for (i = 0; i < n; ++i) {
    if (nbd_aio_is_ready (h[i]) != 1 && nbd_aio_is_processing (h[i]) != 1)
      continue;
    if (nbd_aio_in_flight (h[i]) > 0)
      nbdkit_debug ("%s: disconnecting with %d request(s) in flight", what,
                    nbd_aio_in_flight (h[i]));
    if (nbd_aio_disconnect (h[i], 0) == -1)
      nbdkit_debug ("%s: disconnect: %s", what, nbd_get_error ());
    else
      waiting++;
  }
  if (waiting == 0)
    return;

  fds = calloc (n, sizeof *fds);
  if (fds == NULL)
    return;                     /* nbd_close will simply hang up */
  start = monotonic_seconds ();
  while (waiting > 0) {
    if (signal_count >= 2 || monotonic_seconds () - start > DISC_SECONDS) {
      nbdkit_debug ("%s: %u server(s) did not close the connection",
                    what, waiting);
      break;
    }
    for (i = 0; i < n; ++i) {
      unsigned dir = still_open (h[i]) ? nbd_aio_get_direction (h[i]) : 0;

      fds[i].fd = dir ? nbd_aio_get_fd (h[i]) : -1;
      fds[i].events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
        ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
      fds[i].revents = 0;
    }
    if (poll (fds, n, POLL_MS) == -1 && errno != EINTR) {
      nbdkit_debug ("%s: poll: %m", what);
      break;
    }
    waiting = 0;
    for (i = 0; i < n; ++i) {
      if (fds[i].fd >= 0) {
        if (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
          nbd_aio_notify_read (h[i]);
        else if (fds[i].revents & POLLOUT)
          nbd_aio_notify_write (h[i]);
      }
      if (still_open (h[i]) && nbd_aio_get_direction (h[i]) != 0)
        waiting++;
    }
  }
  free (fds);
}
