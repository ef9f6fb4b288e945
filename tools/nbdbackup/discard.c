/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* pull --discard-source: give the source back what the target has, as
 * QEMU 9.1's backup job with discard-source does on a fleecing
 * snapshot (nbdkit-fleece-filter with fleece-discard-source=true).
 * The server then stops protecting those clusters and frees their
 * copies in its store.
 *
 * When.  A range is trimmed once its writes to the target were
 * acknowledged, not flushed.  Flushing first would buy nothing: a
 * trimmed range can never be read from the snapshot again, so a pull
 * that fails after a trim, whether before or after some flush, cannot
 * be retried from that snapshot anyway, and the target is still only
 * published after the final flush (no silent half-backups).  Nor
 * would a flush help after a crash: the snapshot does not survive its
 * server.  So the rule is QEMU's: trim once the write has completed.
 *
 * What.  Ranges complete out of order (many requests in flight, on
 * several connections).  The watermark is the end of the done prefix
 * of the disk; ranges done beyond it wait in a sorted list.  What is
 * trimmed is always [trimmed, watermark) cut down to a multiple of
 * the server's preferred block size (fleece advertises its cluster
 * size), so every trim starts and ends on a cluster boundary and no
 * cluster is left half discarded, which the server could not free.
 * The last trim runs to the end of the disk.
 *
 * Whom.  Trim on a live disk destroys data, and NBD cannot say "this
 * export takes trim but no writes": the source must accept trim and
 * describe itself as a snapshot readers may discard
 * (snapshot-export.h), as nbdkit-fleece-filter's does.
 *
 * How.  One trim in flight at a time, on connection 0, issued from
 * the copy loop (never from a libnbd callback, which must not call
 * libnbd on its own handle); while it is in flight the watermark runs
 * ahead, so the next trim covers everything done meanwhile.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "minmax.h"
#include "nbdkit-stubs.h"
#include "snapshot-export.h"
#include "discard.h"
#include "nbdbackup.h"

/* Used when the server names no preferred block size. */
#define DEFAULT_GRANULE (64 * 1024)

/* Largest single trim (a multiple of any granule). */
#define MAX_TRIM (UINT64_C (1) << 30)

struct range {
  uint64_t offset, len;
};

struct discard {
  /* Set by discard_new and never changed. */
  struct source *src;
  uint64_t granule;             /* power of 2 */

  /* All in the copy's one thread. */
  uint64_t watermark;           /* [0, watermark) is on the target */
  uint64_t trimmed;             /* [0, trimmed) was trimmed or issued */
  struct range *ahead;          /* done beyond the watermark, sorted */
  size_t nr_ahead, cap_ahead;
  bool in_flight;
  uint64_t flight_len;          /* bytes of the trim in flight */
  bool stopped;                 /* a trim failed: trim no more */
  uint64_t bytes;               /* trimmed, acknowledged */
};

struct discard *
discard_new (struct source *src)
{
  struct discard *d;
  int64_t pref;

  char *desc;
  bool snapshot;

  if (nbd_can_trim (src->nbd[0]) != 1) {
    nbdkit_error ("--discard-source: the source %s does not accept trim "
                  "(a snapshot export of nbdkit-fleece-filter needs "
                  "fleece-discard-source=true)", src->uri);
    return NULL;
  }
  /* Trim on a live disk would destroy data: only a snapshot export
   * that says readers may discard is trimmed.
   */
  desc = nbd_get_export_description (src->nbd[0]);
  snapshot = desc && strcmp (desc, SNAPSHOT_EXPORT_DESCRIPTION_DISCARD) == 0;
  free (desc);
  if (!snapshot) {
    nbdkit_error ("--discard-source: the source %s accepts trim but is not "
                  "a snapshot export that readers may discard (its "
                  "description is not \"%s\"): refusing to trim what may "
                  "be a live disk", src->uri,
                  SNAPSHOT_EXPORT_DESCRIPTION_DISCARD);
    return NULL;
  }
  d = calloc (1, sizeof *d);
  if (d == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  d->src = src;
  pref = nbd_get_block_size (src->nbd[0], LIBNBD_SIZE_PREFERRED);
  d->granule = DEFAULT_GRANULE;
  if (pref > 0 && (pref & (pref - 1)) == 0 && (uint64_t) pref <= MAX_TRIM)
    d->granule = pref;
  nbdkit_debug ("--discard-source: trimming %s in multiples of %" PRIu64
                " bytes", src->uri, d->granule);
  return d;
}

int
discard_done (struct discard *d, uint64_t offset, uint64_t len)
{
  size_t i;

  if (len == 0)
    return 0;
  if (offset == d->watermark) {
    d->watermark += len;
    /* Swallow what was waiting for it. */
    for (i = 0; i < d->nr_ahead && d->ahead[i].offset == d->watermark; ++i)
      d->watermark += d->ahead[i].len;
    d->nr_ahead -= i;
    memmove (d->ahead, d->ahead + i, d->nr_ahead * sizeof *d->ahead);
    return 0;
  }
  if (d->nr_ahead == d->cap_ahead) {
    size_t n = d->cap_ahead ? d->cap_ahead * 2 : 64;
    struct range *p = realloc (d->ahead, n * sizeof *p);

    if (p == NULL) {
      nbdkit_error ("realloc: %m");
      return -1;
    }
    d->ahead = p;
    d->cap_ahead = n;
  }
  for (i = d->nr_ahead; i > 0 && d->ahead[i - 1].offset > offset; --i)
    ;
  memmove (d->ahead + i + 1, d->ahead + i,
           (d->nr_ahead - i) * sizeof *d->ahead);
  d->ahead[i] = (struct range) { offset, len };
  d->nr_ahead++;
  return 0;
}

/* libnbd completion of the trim (inside the loop's notify calls). */
static int
trim_done (void *user_data, int *error)
{
  struct discard *d = user_data;

  d->in_flight = false;
  if (*error) {
    if (!d->stopped)
      warning ("--discard-source: trimming the source failed (%s): the "
               "rest of it is not discarded; the copy goes on",
               strerror (*error));
    d->stopped = true;
  }
  else
    d->bytes += d->flight_len;
  return 1;                     /* retire the command */
}

/* Where the next trim may end: the watermark, cut to a granule except
 * at the end of the disk.
 */
static uint64_t
trim_end (const struct discard *d)
{
  if (d->watermark >= d->src->size)
    return d->src->size;
  return d->watermark & ~(d->granule - 1);
}

void
discard_kick (struct discard *d)
{
  uint64_t end = trim_end (d), len;
  nbd_completion_callback cb = { .callback = trim_done, .user_data = d };

  if (d->in_flight || d->stopped || end <= d->trimmed)
    return;
  len = MIN (end - d->trimmed, MAX_TRIM);
  if (nbd_aio_trim (d->src->nbd[0], len, d->trimmed, cb, 0) == -1) {
    warning ("--discard-source: trimming the source failed (%s): the "
             "rest of it is not discarded; the copy goes on",
             nbd_get_error ());
    d->stopped = true;
    return;
  }
  d->in_flight = true;
  d->flight_len = len;
  d->trimmed += len;
}

bool
discard_busy (const struct discard *d)
{
  return d->in_flight;
}

bool
discard_caught_up (const struct discard *d)
{
  return !d->in_flight && (d->stopped || d->trimmed >= trim_end (d));
}

uint64_t
discard_bytes (const struct discard *d)
{
  return d->bytes;
}

void
discard_free (struct discard *d)
{
  if (d == NULL)
    return;
  free (d->ahead);
  free (d);
}
