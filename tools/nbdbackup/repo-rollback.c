/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Rolling back a backup (nbdbackup(1), REPOSITORY, "The backup
 * protocol").
 *
 * Before its transaction, a backup writes a "pending" record naming
 * the bitmaps it is about to add, the tracking bitmap it disables,
 * and its files.  A failure rolls back at once; a backup killed (or a
 * machine that went down) leaves the record, and the next command
 * that takes the exclusive lock rolls it back.  Either way the same
 * function runs, and it undoes only what exists, since the backup may
 * have stopped anywhere: before its transaction (the new bitmaps do
 * not exist, the old one still records), during the copy, or after
 * publishing ID.qcow2 but before the catalog named it.
 *
 * The bitmaps: in one transaction, the disabled bitmap is enabled
 * again and the new one (which recorded every write since the
 * instant) merged into it, then every bitmap made is removed.  So the
 * old bitmap ends up with all the changes since the last backup that
 * succeeded, as if the failed backup never happened: no change is
 * lost from tracking.  A bitmap still busy (the killed client's dirty
 * export not yet closed by the server) makes the transaction fail:
 * pending stays, and the next command tries again.
 */

#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json.h>

#include "cleanup.h"
#include "nbdkit-stubs.h"
#include "publish.h"
#include "nbdbackup.h"
#include "repo-rollback.h"
#include "repo-server.h"

/* Remove REPO/name if it is there. */
static int
remove_file (const struct repo *r, const char *name)
{
  CLEANUP_FREE char *path = repo_file (r, name);

  if (path == NULL)
    return -1;
  if (unlink (path) == -1 && errno != ENOENT) {
    nbdkit_error ("%s: unlink: %m", path);
    return -1;
  }
  return 0;
}

/* The files of the pending backup: ID.qcow2.incomplete and the
 * digest list's, and, since the catalog does not name the backup,
 * ID.qcow2 and ID.digests if they were published.
 */
static int
remove_backup_files (const struct repo *r, const struct repo_pending *pd)
{
  CLEANUP_FREE char *qi = NULL, *d = NULL, *di = NULL;

  if (repo_find (r, pd->id) != NULL)
    return 0;                   /* catalog.c refuses this anyway */
  if (asprintf (&qi, "%s.incomplete", pd->file) == -1 ||
      asprintf (&d, "%s.digests", pd->id) == -1 ||
      asprintf (&di, "%s.digests.incomplete", pd->id) == -1) {
    nbdkit_error ("asprintf: %m");
    return -1;
  }
  if (remove_file (r, qi) == -1 || remove_file (r, pd->file) == -1 ||
      remove_file (r, d) == -1 || remove_file (r, di) == -1)
    return -1;
  return 0;
}

/* The bitmap transaction of a rollback, over what exists. */
static int
rollback_bitmaps (const struct repo_pending *pd, struct control *c)
{
  struct server_bitmaps bm;
  const struct server_bitmap *old, *new_inc;
  json_object *actions;
  size_t i;
  int e;

  e = server_get_bitmaps (c, &bm);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  actions = json_object_new_array ();
  if (actions == NULL) {
    server_bitmaps_free (&bm);
    nbdkit_error ("json: out of memory");
    return NBDBACKUP_EXIT_FAILED;
  }
  old = server_bitmap_find (&bm, pd->disabled);
  new_inc = pd->nr_added ? server_bitmap_find (&bm, pd->added[0]) : NULL;
  if (old && !old->inconsistent) {
    if (!old->recording &&
        action_add (actions, "block-dirty-bitmap-enable",
                    name_arg (old->name)) == -1)
      goto nomem;
    if (new_inc && !new_inc->inconsistent) {
      json_object *args = json_object_new_object ();
      json_object *srcs = json_object_new_array ();

      if (args == NULL || srcs == NULL) {
        json_object_put (args);
        json_object_put (srcs);
        goto nomem;
      }
      json_object_array_add (srcs, json_object_new_string (new_inc->name));
      json_object_object_add (args, "target",
                              json_object_new_string (old->name));
      json_object_object_add (args, "bitmaps", srcs);
      if (action_add (actions, "block-dirty-bitmap-merge", args) == -1)
        goto nomem;
    }
  }
  for (i = 0; i < pd->nr_added; ++i)
    if (server_bitmap_find (&bm, pd->added[i]) &&
        action_add (actions, "block-dirty-bitmap-remove",
                    name_arg (pd->added[i])) == -1)
      goto nomem;
  server_bitmaps_free (&bm);
  return server_transaction (c, actions, "rolling back the bitmaps");

 nomem:
  nbdkit_error ("json: out of memory");
  json_object_put (actions);
  server_bitmaps_free (&bm);
  return NBDBACKUP_EXIT_FAILED;
}

int
repo_rollback (struct repo *r, struct control *c)
{
  struct repo_pending *pd = r->pending;
  struct control_error err = { 0 };
  json_object *ret = NULL;
  int e;

  if (pd->snapshot) {
    /* "no snapshot is active" is fine: it never started, or the
     * server was restarted.
     */
    if (control_execute (c, "snapshot-stop", NULL, &ret, &err) == -1)
      return NBDBACKUP_EXIT_FAILED;
    json_object_put (ret);
    if (err.desc)
      nbdkit_debug ("rollback: snapshot-stop: %s", err.desc);
    control_error_free (&err);
  }
  e = rollback_bitmaps (pd, c);
  if (e != NBDBACKUP_EXIT_OK) {
    nbdkit_error ("could not roll back backup %s: the repository keeps "
                  "it pending, and the next backup tries again", pd->id);
    return e;
  }
  if (remove_backup_files (r, pd) == -1)
    return NBDBACKUP_EXIT_FAILED;
  r->pending = NULL;
  if (repo_save (r) == -1) {
    r->pending = pd;
    return NBDBACKUP_EXIT_FAILED;
  }
  repo_pending_free (pd);
  return NBDBACKUP_EXIT_OK;
}

int
repo_finish_pending (struct repo *r, struct control *c)
{
  struct repo_pending *pd = r->pending;
  size_t i;

  for (i = 0; i <= pd->nr_added; ++i) {
    struct control_error err = { 0 };
    json_object *ret = NULL;
    bool stop = i == 0;
    const char *name = stop ? NULL : pd->added[i - 1];

    if (stop && !pd->snapshot)
      continue;
    if (control_execute (c, stop ? "snapshot-stop" :
                         "block-dirty-bitmap-remove",
                         stop ? NULL : name_arg (name), &ret, &err) == -1) {
      nbdkit_error ("could not finish backup %s: the repository keeps it "
                    "pending, and the next command tries again", pd->id);
      return NBDBACKUP_EXIT_FAILED;
    }
    json_object_put (ret);
    /* Done already (the server restarted, or the crash came later). */
    if (err.desc)
      nbdkit_debug ("finish %s: %s: %s", pd->id,
                    stop ? "snapshot-stop" : name, err.desc);
    control_error_free (&err);
  }
  r->pending = NULL;
  if (repo_save (r) == -1) {
    r->pending = pd;
    return NBDBACKUP_EXIT_FAILED;
  }
  repo_pending_free (pd);
  return NBDBACKUP_EXIT_OK;
}

void
repo_remove_stale_bitmaps (struct repo *r, struct control *c)
{
  struct server_bitmaps bm;
  size_t i, j, len = strlen (r->bitmap_prefix);

  if (server_get_bitmaps (c, &bm) != NBDBACKUP_EXIT_OK)
    return;
  for (i = 0; i < bm.n; ++i) {
    const char *name = bm.b[i].name;
    struct control_error err = { 0 };
    json_object *ret = NULL;
    bool ours = false;

    if (strncmp (name, r->bitmap_prefix, len) != 0 ||
        (r->tracking_inc && strcmp (name, r->tracking_inc) == 0) ||
        (r->tracking_diff && strcmp (name, r->tracking_diff) == 0))
      continue;
    for (j = 0; r->pending && j < r->pending->nr_added; ++j)
      ours |= strcmp (name, r->pending->added[j]) == 0;
    if (ours || (r->pending && r->pending->disabled &&
                 strcmp (name, r->pending->disabled) == 0))
      continue;
    switch (control_execute (c, "block-dirty-bitmap-remove",
                             name_arg (name), &ret, &err)) {
    case 0:
      nbdkit_debug ("removed stale bitmap '%s'", name);
      break;
    case 1:
      warning ("could not remove stale bitmap '%s': %s", name, err.desc);
      control_error_free (&err);
      break;
    }
    json_object_put (ret);
  }
  server_bitmaps_free (&bm);
}

char *
uri_with_export (const char *uri, const char *name)
{
  static const char hex[] = "0123456789ABCDEF";
  const char *auth, *path, *rest;
  char *out, *p;
  size_t i;

  auth = strstr (uri, "://");
  if (auth == NULL) {
    nbdkit_error ("'%s' is not an NBD URI", uri);
    return NULL;
  }
  path = auth + 3 + strcspn (auth + 3, "/?#");
  rest = path + strcspn (path, "?#");
  out = malloc ((path - uri) + 1 + 3 * strlen (name) + strlen (rest) + 1);
  if (out == NULL) {
    nbdkit_error ("malloc: %m");
    return NULL;
  }
  memcpy (out, uri, path - uri);
  p = out + (path - uri);
  *p++ = '/';
  for (i = 0; name[i]; ++i) {
    unsigned char ch = name[i];

    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
        (ch >= '0' && ch <= '9') || strchr ("-._~:@!$&'()*+,;=", ch))
      *p++ = ch;
    else {
      *p++ = '%';
      *p++ = hex[ch >> 4];
      *p++ = hex[ch & 15];
    }
  }
  strcpy (p, rest);
  return out;
}
