/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Incremental backups: the bridge between a dirty bitmap and the
 * copy-before-write engine.
 *
 * Granularity and cluster size may differ.  At the start a cluster is
 * protected if any dirty granule overlaps it (a 4K granule dirties its
 * whole 64K cluster; a 1M granule dirties 16 clusters), so every
 * changed byte is copied.  At the end, for mode "always" after a
 * failure, a granule is cleared only if every cluster it overlaps is
 * on the target: a granule half copied stays dirty.
 *
 * Lock order: the bitmap set's lock, then the engine's (only in
 * all_copied); writers never hold both.
 */

#include <config.h>

#include <inttypes.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "incremental.h"
#include "registry.h"

/* Lock order: see lock-order.h. */

int
incremental_parse_mode (const char *s, enum dirty_mode *mode)
{
  if (strcmp (s, "on-success") == 0)
    *mode = DIRTY_MODE_ON_SUCCESS;
  else if (strcmp (s, "never") == 0)
    *mode = DIRTY_MODE_NEVER;
  else if (strcmp (s, "always") == 0)
    *mode = DIRTY_MODE_ALWAYS;
  else
    return -1;
  return 0;
}

int
incremental_check (const char *name, struct control_error *err)
{
  if (!registry_has_filter ("dirtybitmap"))
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "an incremental backup needs "
                         "nbdkit-dirtybitmap-filter in the same server, "
                         "below this filter (--filter=dirtybitmap after it)");
  return dirty_backup_check (name, err);
}

struct dirty_bitmap *
incremental_begin (struct engine *e, const char *name,
                   struct control_error *err)
{
  struct dirty_bitmap *b;
  uint64_t size = engine_size (e);
  uint64_t pos = 0, start, len, bytes = 0;

  b = dirty_backup_begin (name, size, err);
  if (b == NULL)
    return NULL;
  while (dirty_next_range (b, pos, size, &start, &len)) {
    engine_protect_bytes (e, start, len);
    bytes += len;
    pos = start + len;
  }
  nbdkit_debug ("%s: sync=incremental: bitmap %s has %" PRIu64
                " dirty bytes of %" PRIu64, engine_name (e), name, bytes,
                size);
  return b;
}

/* Is every cluster of [offset, offset+len) on the target? */
static bool
all_copied (void *opaque, uint64_t offset, uint64_t len)
{
  return engine_range_copied (opaque, offset, len);
}

void
incremental_end (struct dirty_bitmap *b, struct engine *e, bool success,
                 enum dirty_mode mode)
{
  dirty_backup_end (b, success, mode, e ? all_copied : NULL, e);
}
