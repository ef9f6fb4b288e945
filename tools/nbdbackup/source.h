/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The source of a copy: one or more connections to an NBD export. */

#ifndef NBDBACKUP_SOURCE_H
#define NBDBACKUP_SOURCE_H

#include <stdbool.h>
#include <stdint.h>

#include <libnbd.h>

struct source {
  const char *uri;
  struct nbd_handle **nbd;      /* nr_nbd connections */
  unsigned nr_nbd;
  uint64_t size;                /* export size in bytes */
  bool have_extents;            /* base:allocation was negotiated */
  uint64_t max_request;         /* largest read the server accepts */
};

/* Connect nr connections to uri, all asking for base:allocation.
 * 0, or -1 with the error reported (and nothing left open).
 */
extern int source_open (struct source *src, const char *uri, unsigned nr);

/* After source_open failed: if the server is up but refused the
 * export, say which exports it serves (NBD_OPT_LIST) and, with a
 * control socket path (may be NULL), why it refused (query-export):
 * nbdkit sends the client only an errno, not its reason.  Prints
 * nothing if the server cannot be reached at all.
 */
extern void source_explain_refusal (const char *uri, const char *control);

/* Disconnect and free (safe on a source that failed to open). */
extern void source_close (struct source *src);

#endif /* NBDBACKUP_SOURCE_H */
