/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Which level a backup can be, and why (nbdbackup(1), backup
 * --level).  auto takes a full backup when an incremental cannot be
 * trusted or made: no backup yet, no bitmap tracked, the bitmap
 * missing on the server or inconsistent (it may have missed writes,
 * after a crash), or the disk's size changed; else an incremental.
 * An explicit inc or diff that cannot be made is refused with the
 * same reason, never silently upgraded to a full.
 */

#include <config.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdkit-stubs.h"
#include "nbdbackup.h"
#include "repo-level.h"

/* Why bitmap name cannot be used, or NULL if it can (malloc'd in
 * *why; -1 out of memory).
 */
static int
bitmap_problem (const struct server_bitmaps *bm, const char *name,
                const char *what, char **why)
{
  const struct server_bitmap *b = server_bitmap_find (bm, name);
  int r = 0;

  *why = NULL;
  if (name == NULL)
    r = asprintf (why, "the repository tracks no %s bitmap", what);
  else if (b == NULL)
    r = asprintf (why, "bitmap '%s' is missing on the server", name);
  else if (b->inconsistent)
    r = asprintf (why, "bitmap '%s' is inconsistent (%s)", name,
                  b->inconsistent_reason ? b->inconsistent_reason :
                  "the server did not stop cleanly while it was in use, "
                  "so it may have missed writes");
  return r == -1 ? -1 : 0;
}

int
repo_level_problem (const struct repo *r, const struct server_bitmaps *bm,
               uint64_t disk_size, bool diff, char **why)
{
  const struct repo_entry *base = diff ? repo_last_full (r) : repo_last (r);

  *why = NULL;
  if (repo_last (r) == NULL)
    return asprintf (why, "the repository has no backup yet") == -1 ? -1 : 0;
  if (base == NULL)
    return asprintf (why, "the repository has no full backup") == -1 ? -1 : 0;
  if (base->size != disk_size)
    return asprintf (why, "the disk's size changed from %" PRIu64 " to %"
                     PRIu64 " bytes since %s", base->size, disk_size,
                     base->id) == -1 ? -1 : 0;
  return bitmap_problem (bm, diff ? r->tracking_diff : r->tracking_inc,
                         diff ? "diff" : "inc", why);
}

int
repo_choose_level (const struct repo *r, const struct server_bitmaps *bm,
                   uint64_t disk_size, int requested,
                   struct level_choice *ch)
{
  char *why = NULL, changed[32];
  const struct server_bitmap *b;
  bool diff = requested == REPO_DIFF;

  memset (ch, 0, sizeof *ch);
  if (requested == REPO_FULL) {
    ch->level = REPO_FULL;
    ch->reason = strdup ("requested with --level=full");
    goto out;
  }
  if (repo_level_problem (r, bm, disk_size, diff, &why) == -1)
    goto nomem;
  if (why) {
    if (requested != LEVEL_AUTO) {
      nbdkit_error ("cannot take a%s %s backup: %s",
                    diff ? "" : "n", diff ? "diff" : "inc", why);
      free (why);
      return NBDBACKUP_EXIT_REFUSED;
    }
    ch->level = REPO_FULL;
    ch->reason = why;
    if (repo_last (r) == NULL) {
      free (why);
      ch->reason = strdup ("first backup in the repository");
    }
    goto out;
  }
  ch->level = diff ? REPO_DIFF : REPO_INC;
  ch->parent = diff ? repo_last_full (r) : repo_last (r);
  b = server_bitmap_find (bm, diff ? r->tracking_diff : r->tracking_inc);
  format_size (changed, sizeof changed, b->count);
  if (asprintf (&ch->reason, "%s changed since %s%s", changed,
                diff ? "the full backup " : "", ch->parent->id) == -1)
    ch->reason = NULL;
 out:
  if (ch->reason == NULL)
    goto nomem;
  return NBDBACKUP_EXIT_OK;

 nomem:
  nbdkit_error ("malloc: %m");
  return NBDBACKUP_EXIT_FAILED;
}
