/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Hanging up politely on NBD servers.  See disconnect.c. */

#ifndef NBDBACKUP_DISCONNECT_H
#define NBDBACKUP_DISCONNECT_H

#include <libnbd.h>

/* Send NBD_CMD_DISC on each of the n connections that is still
 * connected and wait (boundedly) until the servers have closed them.
 * Connections already closed or dead are left alone.  The handles
 * still need nbd_close.  Never fails: what goes wrong is a debug
 * message.
 */
extern void disconnect_all (struct nbd_handle **h, unsigned n,
                            const char *what);

#endif /* NBDBACKUP_DISCONNECT_H */
