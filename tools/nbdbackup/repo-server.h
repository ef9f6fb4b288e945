/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* What the repository commands ask of the disk's server over its
 * control socket: that it is one they can use, its dirty bitmaps,
 * and the transactions of the backup protocol.  See repo-server.c.
 */

#ifndef NBDBACKUP_REPO_SERVER_H
#define NBDBACKUP_REPO_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json.h>

#include "control.h"

/* One bitmap of query-bitmaps. */
struct server_bitmap {
  char *name;
  uint64_t count;               /* dirty bytes */
  uint64_t granularity;
  bool recording;
  bool busy;
  bool inconsistent;
  char *inconsistent_reason;    /* the server's, if it says (or NULL) */
};

struct server_bitmaps {
  struct server_bitmap *b;
  size_t n;
};

/* The server answers query-status and loads the dirtybitmap and
 * fleece filters.  Returns an exit status (reported).
 */
extern int server_check (struct control *c);

/* query-bitmaps.  Returns an exit status; *list on success. */
extern int server_get_bitmaps (struct control *c, struct server_bitmaps *l);
extern void server_bitmaps_free (struct server_bitmaps *l);

/* The bitmap called name, or NULL. */
extern const struct server_bitmap *
server_bitmap_find (const struct server_bitmaps *l, const char *name);

/* Append an action {"type": type, "data": data} to the array actions
 * (data may be NULL: {}; its reference is taken over).  0 or -1.
 */
extern int action_add (json_object *actions, const char *type,
                       json_object *data);

/* {"name": name}, for the bitmap actions. */
extern json_object *name_arg (const char *name);

/* Run a transaction of actions (the reference is taken over).  An
 * empty one is not sent.  Returns an exit status: NBDBACKUP_EXIT_OK,
 * _REFUSED (the server's message reported, prefixed with what) or
 * _FAILED.
 */
extern int server_transaction (struct control *c, json_object *actions,
                               const char *what);

/* The live disk's size, by connecting to uri.  0 or -1 (reported). */
extern int server_disk_size (const char *uri, uint64_t *size);

#endif /* NBDBACKUP_REPO_SERVER_H */
