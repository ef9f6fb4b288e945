/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Control commands for bitmaps.
 *
 * Every bitmap command is a transaction action, so a rotation (add a
 * new bitmap, disable the old one, start a snapshot) is one atomic
 * step against writes.  Actions apply their change in prepare (with
 * the write gate closed, so no write sees a half-done transaction)
 * and keep what abort needs to undo it; commit only drops that.  This
 * way a later action in the same transaction sees the earlier ones
 * (merge into a bitmap added just before), as in QMP.
 *
 * Arguments follow QMP: "node" is accepted and ignored (a server has
 * one disk), unknown arguments are refused.
 */

#include <config.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include <nbdkit-filter.h>

#include "commands.h"
#include "control.h"
#include "dirty.h"
#include "persist.h"

/* Lock order: see lock-order.h. */

static uint32_t default_granularity = 65536;

/* What an action did, for abort. */
struct undo {
  struct dirty_bitmap *b;       /* Added, or being removed. */
  struct dirty_saved *saved;    /* Bits and flags before the change. */
};

/* Refuse arguments not in allowed (a NULL-terminated list). */
static int
check_args (json_object *args, const char *cmd, const char *const *allowed,
            struct control_error *err)
{
  json_object_object_foreach (args, key, val) {
    const char *const *a;
    (void) val;
    for (a = allowed; *a; ++a)
      if (strcmp (*a, key) == 0)
        break;
    if (*a == NULL)
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "%s: unknown argument '%s'", cmd, key);
  }
  return 0;
}

/* A required string argument. */
static const char *
get_string (json_object *args, const char *cmd, const char *key,
            struct control_error *err)
{
  json_object *v;

  if (!json_object_object_get_ex (args, key, &v) ||
      !json_object_is_type (v, json_type_string)) {
    control_fail (err, CONTROL_GENERIC_ERROR,
                  "%s: '%s' must be given as a string", cmd, key);
    return NULL;
  }
  return json_object_get_string (v);
}

/* An optional boolean argument.  0 or -1. */
static int
get_bool (json_object *args, const char *cmd, const char *key, bool *r,
          struct control_error *err)
{
  json_object *v;

  if (!json_object_object_get_ex (args, key, &v))
    return 0;
  if (!json_object_is_type (v, json_type_boolean))
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: '%s' must be true or false", cmd, key);
  *r = json_object_get_boolean (v);
  return 0;
}

/* An optional unsigned integer argument.  0 or -1. */
static int
get_uint64 (json_object *args, const char *cmd, const char *key,
            uint64_t *r, struct control_error *err)
{
  json_object *v;

  if (!json_object_object_get_ex (args, key, &v))
    return 0;
  if (!json_object_is_type (v, json_type_int) ||
      json_object_get_int64 (v) < 0)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: '%s' must be a non-negative integer", cmd, key);
  *r = json_object_get_int64 (v);
  return 0;
}

static int
check_node (json_object *args, const char *cmd, struct control_error *err)
{
  json_object *v;

  if (json_object_object_get_ex (args, "node", &v) &&
      !json_object_is_type (v, json_type_string))
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: 'node' must be a string", cmd);
  return 0;
}

/* The named bitmap, or NULL with err filled. */
static struct dirty_bitmap *
lookup (const char *cmd, const char *name, struct control_error *err)
{
  struct dirty_bitmap *b = dirty_find (name);

  if (b == NULL)
    control_fail (err, CONTROL_NOT_FOUND, "%s: bitmap '%s' not found",
                  cmd, name);
  return b;
}

/* Set the sidecar's in-use flag before a change. */
static int
before_change (const char *cmd, struct control_error *err)
{
  if (dirty_before_change () == -1)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: cannot mark the bitmap file in use: %m", cmd);
  return 0;
}

static struct undo *
new_undo (struct control_error *err)
{
  struct undo *u = calloc (1, sizeof *u);

  if (u == NULL)
    control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
  return u;
}

/* Commit and abort for actions that changed bits or flags. */
static void
saved_commit (void *state, void *opaque)
{
  struct undo *u = state;

  dirty_saved_free (u->saved);
  free (u);
}

static void
saved_abort (void *state, void *opaque)
{
  struct undo *u = state;
  struct dirty_info info;

  dirty_restore (u->saved);
  dirty_get_info (u->b, &info);
  if (info.persistent && persist_update_in_use () == -1)
    nbdkit_error ("dirtybitmap: undoing a change to bitmap %s: cannot "
                  "update the bitmap file: %m", dirty_name (u->b));
  free (u);
}

/* After a change to bitmap b's bits or flags: a persistent bitmap's
 * flags and bits are rewritten in the file before the command
 * returns, so a crash finds them as they are now.  0 or -1.
 */
static int
after_change (const char *cmd, struct dirty_bitmap *b,
              struct control_error *err)
{
  struct dirty_info info;

  dirty_get_info (b, &info);
  if (info.persistent && persist_update_in_use () == -1)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: cannot update the bitmap file: %m", cmd);
  return 0;
}

/* block-dirty-bitmap-add {name, granularity?, persistent?, disabled?} */
static int
add_prepare (json_object *args, void **state, struct control_error *err,
             void *opaque)
{
  static const char *const allowed[] =
    { "node", "name", "granularity", "persistent", "disabled", NULL };
  const char *cmd = "block-dirty-bitmap-add";
  struct dirty_new n = { .recording = true };
  uint64_t granularity = default_granularity;
  bool disabled = false;
  struct undo *u;

  n.persistent = persist_enabled ();
  if (check_args (args, cmd, allowed, err) == -1 ||
      check_node (args, cmd, err) == -1 ||
      (n.name = get_string (args, cmd, "name", err)) == NULL ||
      get_uint64 (args, cmd, "granularity", &granularity, err) == -1 ||
      get_bool (args, cmd, "persistent", &n.persistent, err) == -1 ||
      get_bool (args, cmd, "disabled", &disabled, err) == -1)
    return -1;
  if (granularity < DIRTY_MIN_GRANULARITY ||
      granularity > DIRTY_MAX_GRANULARITY ||
      (granularity & (granularity - 1)) != 0)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: granularity %" PRIu64 " must be a power of "
                         "two from 512 to 2147483648", cmd, granularity);
  n.granularity = granularity;
  n.recording = !disabled;
  if (n.persistent && !persist_enabled ())
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: a persistent bitmap needs a bitmap file: "
                         "start the server with dirtybitmap-file=PATH", cmd);
  if (dirty_check_name (n.name, err) == -1 ||
      before_change (cmd, err) == -1)
    return -1;
  u = new_undo (err);
  if (u == NULL)
    return -1;
  u->b = dirty_add (&n, err);
  if (u->b == NULL) {
    free (u);
    return -1;
  }
  /* After a crash the new bitmap must show up, inconsistent. */
  if (n.persistent && persist_update_in_use () == -1) {
    control_fail (err, CONTROL_GENERIC_ERROR,
                  "%s: cannot update the bitmap file: %m", cmd);
    dirty_discard (u->b);
    free (u);
    return -1;
  }
  *state = u;
  return 0;
}

static void
add_commit (void *state, void *opaque)
{
  free (state);
}

static void
add_abort (void *state, void *opaque)
{
  struct undo *u = state;

  dirty_discard (u->b);
  free (u);
}

static void
remove_commit (void *state, void *opaque)
{
  struct undo *u = state;

  dirty_remove_commit (u->b);
  free (u);
}

/* The bitmap is back: so is it in the file (if it was written). */
static void
remove_abort (void *state, void *opaque)
{
  struct undo *u = state;
  struct dirty_info info;

  dirty_remove_abort (u->b);
  dirty_get_info (u->b, &info);
  if (info.persistent && persist_update_in_use () == -1)
    nbdkit_error ("block-dirty-bitmap-remove: undoing the removal of %s: "
                  "cannot update the bitmap file: %m (after a crash it "
                  "would be missing)", dirty_name (u->b));
  free (u);
}

/* block-dirty-bitmap-remove {name} */
static int
remove_prepare (json_object *args, void **state, struct control_error *err,
                void *opaque)
{
  static const char *const allowed[] = { "node", "name", NULL };
  const char *cmd = "block-dirty-bitmap-remove";
  const char *name;
  struct dirty_bitmap *b;
  struct dirty_info info;
  struct undo *u;

  if (check_args (args, cmd, allowed, err) == -1 ||
      check_node (args, cmd, err) == -1 ||
      (name = get_string (args, cmd, "name", err)) == NULL ||
      (b = lookup (cmd, name, err)) == NULL)
    return -1;
  dirty_get_info (b, &info);
  u = new_undo (err);
  if (u == NULL)
    return -1;
  if (dirty_remove_prepare (b, err) == -1) {
    free (u);
    return -1;
  }
  u->b = b;
  /* Durable once it returns: the file stops naming the bitmap now,
   * so a crash can never bring it back.
   */
  if (info.persistent && persist_update_in_use () == -1) {
    control_fail (err, CONTROL_GENERIC_ERROR,
                  "%s: cannot update the bitmap file: %m", cmd);
    dirty_remove_abort (b);     /* The file still names it. */
    free (u);
    return -1;
  }
  *state = u;
  return 0;
}

/* clear, enable and disable: {name}. */
enum simple_op { OP_CLEAR, OP_ENABLE, OP_DISABLE };

static const char *const simple_cmd[] = {
  "block-dirty-bitmap-clear",
  "block-dirty-bitmap-enable",
  "block-dirty-bitmap-disable",
};
static const char *const simple_verb[] = { "cleared", "enabled", "disabled" };

static int
simple_prepare (json_object *args, void **state, struct control_error *err,
                void *opaque)
{
  static const char *const allowed[] = { "node", "name", NULL };
  enum simple_op op = (enum simple_op) (intptr_t) opaque;
  const char *cmd = simple_cmd[op];
  const char *name;
  struct dirty_bitmap *b;
  struct undo *u;

  if (check_args (args, cmd, allowed, err) == -1 ||
      check_node (args, cmd, err) == -1 ||
      (name = get_string (args, cmd, "name", err)) == NULL ||
      (b = lookup (cmd, name, err)) == NULL)
    return -1;
  if (dirty_check_changeable (b, simple_verb[op], err) == -1 ||
      before_change (cmd, err) == -1)
    return -1;
  u = new_undo (err);
  if (u == NULL)
    return -1;
  u->saved = dirty_save (b);
  if (u->saved == NULL) {
    free (u);
    return control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
  }
  u->b = b;
  switch (op) {
  case OP_CLEAR:   dirty_clear (b); break;
  case OP_ENABLE:  dirty_set_recording (b, true); break;
  case OP_DISABLE: dirty_set_recording (b, false); break;
  }
  if (after_change (cmd, b, err) == -1) {
    saved_abort (u, NULL);
    return -1;
  }
  *state = u;
  return 0;
}

/* block-dirty-bitmap-merge {target, bitmaps: [name | {node, name}]} */
static int
merge_prepare (json_object *args, void **state, struct control_error *err,
               void *opaque)
{
  static const char *const allowed[] = { "node", "target", "bitmaps", NULL };
  const char *cmd = "block-dirty-bitmap-merge";
  const char *name;
  json_object *list;
  struct dirty_bitmap *target, **sources;
  struct undo *u;
  size_t i, n;

  if (check_args (args, cmd, allowed, err) == -1 ||
      check_node (args, cmd, err) == -1 ||
      (name = get_string (args, cmd, "target", err)) == NULL ||
      (target = lookup (cmd, name, err)) == NULL)
    return -1;
  if (!json_object_object_get_ex (args, "bitmaps", &list) ||
      !json_object_is_type (list, json_type_array) ||
      json_object_array_length (list) == 0)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: 'bitmaps' must be a non-empty array of "
                         "bitmap names", cmd);
  if (dirty_check_changeable (target, "merged into", err) == -1)
    return -1;
  n = json_object_array_length (list);
  sources = calloc (n, sizeof *sources);
  if (sources == NULL)
    return control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
  for (i = 0; i < n; ++i) {
    json_object *e = json_object_array_get_idx (list, i), *v;
    struct dirty_info info;
    const char *src = NULL;

    if (json_object_is_type (e, json_type_string))
      src = json_object_get_string (e);
    else if (json_object_is_type (e, json_type_object) &&
             json_object_object_get_ex (e, "name", &v) &&
             json_object_is_type (v, json_type_string))
      src = json_object_get_string (v);
    if (src == NULL) {
      free (sources);
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "%s: 'bitmaps' element %zu must be a name or "
                           "{\"node\": ..., \"name\": ...}", cmd, i);
    }
    sources[i] = lookup (cmd, src, err);
    if (sources[i] == NULL) {
      free (sources);
      return -1;
    }
    dirty_get_info (sources[i], &info);
    if (info.inconsistent) {
      free (sources);
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "%s: bitmap '%s' is inconsistent: it cannot be "
                           "merged from, only removed", cmd, src);
    }
  }
  if (before_change (cmd, err) == -1 || (u = new_undo (err)) == NULL) {
    free (sources);
    return -1;
  }
  u->saved = dirty_save (target);
  if (u->saved == NULL) {
    free (sources);
    free (u);
    return control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
  }
  u->b = target;
  dirty_merge (target, sources, n);
  free (sources);
  if (after_change (cmd, target, err) == -1) {
    saved_abort (u, NULL);
    return -1;
  }
  *state = u;
  return 0;
}

/* query-dirty-ranges {name, offset?, length?, max-ranges?}: the dirty
 * byte ranges, merged across granules, as
 * {"name", "granularity", "disk-size", "ranges": [{"offset",
 * "length"}...], "next-offset"} where next-offset (only when the
 * answer stopped at max-ranges) is where to ask again.
 */
static int
ranges_cmd (json_object *args, json_object **ret, struct control_error *err,
            void *opaque)
{
  static const char *const allowed[] =
    { "node", "name", "offset", "length", "max-ranges", NULL };
  const char *cmd = "query-dirty-ranges";
  const char *name;
  struct dirty_bitmap *b;
  struct dirty_info info;
  uint64_t size = dirty_disk_size ();
  uint64_t offset = 0, length = UINT64_MAX, max = 100000, end, n = 0;
  uint64_t start, len;
  json_object *o, *list;

  if (check_args (args, cmd, allowed, err) == -1 ||
      check_node (args, cmd, err) == -1 ||
      (name = get_string (args, cmd, "name", err)) == NULL ||
      get_uint64 (args, cmd, "offset", &offset, err) == -1 ||
      get_uint64 (args, cmd, "length", &length, err) == -1 ||
      get_uint64 (args, cmd, "max-ranges", &max, err) == -1 ||
      (b = lookup (cmd, name, err)) == NULL)
    return -1;
  if (max == 0)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: 'max-ranges' must be at least 1", cmd);
  dirty_get_info (b, &info);
  if (info.inconsistent)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "%s: bitmap '%s' is inconsistent (%s): its ranges "
                         "are unknown; a full backup is needed", cmd, name,
                         info.reason);
  end = length > size - (offset < size ? offset : size)
    ? size : offset + length;

  list = json_object_new_array ();
  o = json_object_new_object ();
  json_object_object_add (o, "name", json_object_new_string (name));
  json_object_object_add (o, "granularity",
                          json_object_new_int64 (info.granularity));
  json_object_object_add (o, "disk-size", json_object_new_int64 (size));
  while (offset < end && dirty_next_range (b, offset, end, &start, &len)) {
    json_object *r;

    if (n == max)
      break;
    r = json_object_new_object ();
    json_object_object_add (r, "offset", json_object_new_int64 (start));
    json_object_object_add (r, "length", json_object_new_int64 (len));
    json_object_array_add (list, r);
    n++;
    offset = start + len;
  }
  json_object_object_add (o, "ranges", list);
  if (offset < end && n == max && dirty_next_range (b, offset, end,
                                                    &start, &len))
    json_object_object_add (o, "next-offset", json_object_new_int64 (offset));
  *ret = o;
  return 0;
}

static const struct control_action actions[] = {
  { .type = "block-dirty-bitmap-add", .prepare = add_prepare,
    .commit = add_commit, .abort = add_abort },
  { .type = "block-dirty-bitmap-remove", .prepare = remove_prepare,
    .commit = remove_commit, .abort = remove_abort },
  { .type = "block-dirty-bitmap-clear", .prepare = simple_prepare,
    .commit = saved_commit, .abort = saved_abort,
    .opaque = (void *) (intptr_t) OP_CLEAR },
  { .type = "block-dirty-bitmap-enable", .prepare = simple_prepare,
    .commit = saved_commit, .abort = saved_abort,
    .opaque = (void *) (intptr_t) OP_ENABLE },
  { .type = "block-dirty-bitmap-disable", .prepare = simple_prepare,
    .commit = saved_commit, .abort = saved_abort,
    .opaque = (void *) (intptr_t) OP_DISABLE },
  { .type = "block-dirty-bitmap-merge", .prepare = merge_prepare,
    .commit = saved_commit, .abort = saved_abort },
};

int
commands_register (uint32_t granularity)
{
  size_t i;

  default_granularity = granularity;
  for (i = 0; i < sizeof actions / sizeof actions[0]; ++i)
    if (control_register_action (&actions[i]) == -1)
      return -1;
  return control_register ("query-dirty-ranges", ranges_cmd, NULL);
}
