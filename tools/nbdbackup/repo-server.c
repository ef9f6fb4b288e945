/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The repository commands' side of the control protocol
 * (nbdkit-backup-control(7), nbdkit-dirtybitmap-filter(1)).  Replies
 * are read defensively: a member of the wrong type reads as absent,
 * and a bitmap without a name is ignored.
 */

#include <config.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json.h>
#include <libnbd.h>

#include "nbdkit-stubs.h"
#include "disconnect.h"
#include "nbdbackup.h"
#include "repo-server.h"
#include "source.h"

/* The filter list of query-status has name. */
static bool
has_filter (json_object *filters, const char *name)
{
  size_t i, n;

  if (filters == NULL || !json_object_is_type (filters, json_type_array))
    return false;
  n = json_object_array_length (filters);
  for (i = 0; i < n; ++i) {
    json_object *f = json_object_array_get_idx (filters, i);

    if (json_object_is_type (f, json_type_string) &&
        strcmp (json_object_get_string (f), name) == 0)
      return true;
  }
  return false;
}

int
server_check (struct control *c)
{
  json_object *ret = NULL, *filters = NULL;
  const char *missing = NULL;
  int r;

  r = control_command (c, "query-status", NULL, &ret);
  if (r != NBDBACKUP_EXIT_OK)
    return r;
  if (ret)
    json_object_object_get_ex (ret, "filters", &filters);
  if (!has_filter (filters, "dirtybitmap"))
    missing = "dirtybitmap";
  else if (!has_filter (filters, "fleece"))
    missing = "fleece";
  if (missing) {
    nbdkit_error ("control socket %s: the server does not load the %s "
                  "filter: a repository needs a server with "
                  "--filter=dirtybitmap --filter=fleece (see nbdbackup(1))",
                  control_path (c), missing);
    r = NBDBACKUP_EXIT_REFUSED;
  }
  json_object_put (ret);
  return r;
}

void
server_bitmaps_free (struct server_bitmaps *l)
{
  size_t i;

  for (i = 0; i < l->n; ++i) {
    free (l->b[i].name);
    free (l->b[i].inconsistent_reason);
  }
  free (l->b);
  l->b = NULL;
  l->n = 0;
}

static bool
get_bool (json_object *o, const char *key)
{
  json_object *v;

  return json_object_object_get_ex (o, key, &v) &&
    json_object_is_type (v, json_type_boolean) && json_object_get_boolean (v);
}

int
server_get_bitmaps (struct control *c, struct server_bitmaps *l)
{
  json_object *ret = NULL;
  size_t i, n;
  int r;

  l->b = NULL;
  l->n = 0;
  r = control_command (c, "query-bitmaps", NULL, &ret);
  if (r != NBDBACKUP_EXIT_OK)
    return r;
  if (ret == NULL || !json_object_is_type (ret, json_type_array)) {
    nbdkit_error ("control socket %s: query-bitmaps did not return an "
                  "array", control_path (c));
    json_object_put (ret);
    return NBDBACKUP_EXIT_FAILED;
  }
  n = json_object_array_length (ret);
  l->b = calloc (n ? n : 1, sizeof *l->b);
  if (l->b == NULL) {
    nbdkit_error ("calloc: %m");
    json_object_put (ret);
    return NBDBACKUP_EXIT_FAILED;
  }
  for (i = 0; i < n; ++i) {
    json_object *o = json_object_array_get_idx (ret, i);
    struct server_bitmap *b = &l->b[l->n];
    const char *name = json_get_string (o, "name", NULL);
    const char *why = json_get_string (o, "inconsistent-reason", NULL);

    if (name == NULL)
      continue;
    b->name = strdup (name);
    b->inconsistent_reason = why ? strdup (why) : NULL;
    if (b->name == NULL || (why && b->inconsistent_reason == NULL)) {
      nbdkit_error ("strdup: %m");
      json_object_put (ret);
      server_bitmaps_free (l);
      return NBDBACKUP_EXIT_FAILED;
    }
    b->count = json_get_int64 (o, "count", 0);
    b->granularity = json_get_int64 (o, "granularity", 0);
    b->recording = get_bool (o, "recording");
    b->busy = get_bool (o, "busy");
    b->inconsistent = get_bool (o, "inconsistent");
    l->n++;
  }
  json_object_put (ret);
  return NBDBACKUP_EXIT_OK;
}

const struct server_bitmap *
server_bitmap_find (const struct server_bitmaps *l, const char *name)
{
  size_t i;

  if (name == NULL)
    return NULL;
  for (i = 0; i < l->n; ++i)
    if (strcmp (l->b[i].name, name) == 0)
      return &l->b[i];
  return NULL;
}

int
action_add (json_object *actions, const char *type, json_object *data)
{
  json_object *a = json_object_new_object ();

  if (a == NULL || (data == NULL && (data = json_object_new_object ()) == NULL)) {
    nbdkit_error ("json: out of memory");
    json_object_put (a);
    return -1;
  }
  json_object_object_add (a, "type", json_object_new_string (type));
  json_object_object_add (a, "data", data);
  json_object_array_add (actions, a);
  return 0;
}

json_object *
name_arg (const char *name)
{
  json_object *o = json_object_new_object ();

  if (o)
    json_object_object_add (o, "name", json_object_new_string (name));
  return o;
}

int
server_transaction (struct control *c, json_object *actions,
                    const char *what)
{
  struct control_error err = { 0 };
  json_object *args, *ret = NULL;
  int r;

  if (json_object_array_length (actions) == 0) {
    json_object_put (actions);
    return NBDBACKUP_EXIT_OK;
  }
  args = json_object_new_object ();
  if (args == NULL) {
    json_object_put (actions);
    nbdkit_error ("json: out of memory");
    return NBDBACKUP_EXIT_FAILED;
  }
  json_object_object_add (args, "actions", actions);
  nbdkit_debug ("transaction (%s): %s", what,
                json_object_to_json_string_ext (args, JSON_C_TO_STRING_PLAIN));
  r = control_execute (c, "transaction", args, &ret, &err);
  json_object_put (ret);
  if (r == 1) {
    nbdkit_error ("%s: the server refused: %s", what, err.desc);
    control_error_free (&err);
    return NBDBACKUP_EXIT_REFUSED;
  }
  return r == 0 ? NBDBACKUP_EXIT_OK : NBDBACKUP_EXIT_FAILED;
}

int
server_disk_size (const char *uri, uint64_t *size)
{
  struct source src = { 0 };

  if (source_open (&src, uri, 1) == -1)
    return -1;
  *size = src.size;
  disconnect_all (src.nbd, src.nr_nbd, "source");
  source_close (&src);
  return 0;
}
