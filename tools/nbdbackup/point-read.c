/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Reading a point in time: serve it, copy it, check its digests.
 *
 * Notes on the design: restore and verify are the same read, with a
 * target (restore) or without (verify, which only wants the digest
 * check): the point is served read-only by nbdkit (serve.c) in a
 * private directory, and pull's copy engine reads it with many
 * requests in flight and checks every chunk against the expected
 * digest list (copy.h, expect) from the bytes it read, before they
 * are written.  Chunks that read as zeros are checked as the zero
 * digest without reading them.
 *
 * The order at the end matters: every chunk must have been checked
 * before a restored file is published (renamed from .incomplete), and
 * every NBD connection is closed politely before the server is
 * stopped.
 */

#include <config.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ispowerof2.h"
#include "nbdkit-stubs.h"
#include "copy.h"
#include "disconnect.h"
#include "nbdbackup.h"
#include "point.h"
#include "serve.h"
#include "source.h"
#include "target.h"

struct mismatch_state {
  const struct point *p;
  struct point_read *pr;
};

/* copy.h's mismatch callback: report (the first max_report), note the
 * offset, go on unless restoring.
 */
static int
on_mismatch (void *opaque, uint64_t offset, uint32_t len)
{
  struct mismatch_state *ms = opaque;
  struct point_read *pr = ms->pr;

  if (pr->nr_offsets < pr->max_report) {
    pr->offsets[pr->nr_offsets++] = offset;
    nbdkit_error ("backup %s: offset %" PRIu64 ": data differs from the "
                  "recorded digest", ms->p->id, offset);
  }
  return pr->stop_at_mismatch ? -1 : 0;
}

/* The copy from the served point to tgt (NULL: only read).  0 or -1
 * (reported).
 */
static int
copy_point (const struct point *p, struct source *src, struct target *tgt,
            struct point_read *pr, struct copy_options *opts,
            struct copy_stats *stats, struct copy **cp)
{
  struct mismatch_state ms = { .p = p, .pr = pr };
  int r;

  if (pr->check) {
    opts->expect = pr->check;
    opts->mismatch = on_mismatch;
    opts->mismatch_opaque = &ms;
    /* Reads must be whole digest chunks. */
    if (opts->chunk < pr->check->chunk)
      opts->chunk = pr->check->chunk;
  }
  *cp = copy_new (src, tgt, opts);
  if (*cp == NULL)
    return -1;
  r = copy_run (*cp, stats);
  pr->mismatches = stats->mismatches;
  if (pr->check)
    pr->checked = stats->copied + stats->zero;
  if (r == -1)
    return -1;
  if (tgt == NULL)
    return 0;
  if (tgt->ops->flush (tgt) == -1)
    return -1;
  if (interrupted_by != 0) {
    nbdkit_error ("interrupted by signal %d", (int) interrupted_by);
    return -1;
  }
  return tgt->ops->finish (tgt, true);
}

int
point_read (const struct point *p, struct point_read *pr,
            struct copy_options *opts, struct copy_stats *stats)
{
  struct source src = { 0 };
  struct server *s = NULL;
  struct target *tgt = NULL;
  struct copy *c = NULL;
  char *dir = NULL;
  int r = -1;

  pr->mismatches = pr->checked = 0;
  pr->nr_offsets = 0;
  if (pr->max_report > POINT_MAX_REPORT)
    pr->max_report = POINT_MAX_REPORT;
  dir = private_dir_new ();
  if (dir == NULL)
    return -1;
  s = serve_start (&(struct serve_options) {
      .file = p->file, .size = p->size, .dir = dir });
  if (s == NULL)
    goto out;
  if (source_open (&src, serve_uri (s), pr->connections) == -1)
    goto out;
  stats->total = src.size;
  if (src.size != p->size) {
    nbdkit_error ("backup %s: served with size %" PRIu64 ", the catalog "
                  "says %" PRIu64, p->id, src.size, p->size);
    goto out;
  }
  if (opts->chunk > src.max_request)
    opts->chunk = UINT32_C (1) << log_2_bits (src.max_request);
  if (pr->open_target) {
    tgt = pr->open_target (pr->opaque, src.size);
    if (tgt == NULL)
      goto out;
  }
  r = copy_point (p, &src, tgt, pr, opts, stats, &c);

 out:
  if (tgt)
    disconnect_all (tgt->nbd, tgt->nr_nbd, "target");
  disconnect_all (src.nbd, src.nr_nbd, "source");
  if (tgt)
    tgt->ops->close (tgt);
  source_close (&src);
  copy_free (c);
  if (s) {
    /* A read that failed: nbdkit tells the client only an errno, its
     * log says why.
     */
    if (r == -1 && pr->mismatches == 0 && interrupted_by == 0)
      serve_report_log (s);
    if (serve_stop (s) == -1)
      r = -1;
  }
  private_dir_remove (dir);
  free (dir);
  return r;
}
