/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Export name claims (see exports.h).
 *
 * Lock order: check functions run without this file's lock held (they
 * take the owning filter's locks), so no lock of ours is ever held
 * while another is taken.
 */

#include <config.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "cleanup.h"
#include "exports.h"
#include "nbdkit-stubs.h"
#include "registry.h"

#define MAX_CLAIMS 16

struct claim {
  const char *filter;           /* Static strings, owned by the caller. */
  const char *name;
  const char *what;
  bool prefix;
  exports_check_fn *check;
};

/* This lock protects the claims. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct claim claims[MAX_CLAIMS];
static size_t nr_claims;
/* Only touched from .get_ready, before any thread runs. */
static bool command_registered;
/* Set in .config (one thread): the plugin parameter that may make
 * it serve one disk per export name, or NULL.
 */
static const char *multi_export_key;

void
exports_note_plugin_key (const char *key)
{
  static const char *const keys[] = { "dir", "dirfd", NULL };
  size_t i;

  for (i = 0; keys[i]; ++i)
    if (strcmp (key, keys[i]) == 0)
      multi_export_key = keys[i];
}

/* Is the plugin one that serves a disk per export name with dir=?
 * nbdkit tells a filter neither the plugin's name nor what it serves,
 * and the plugin cannot be asked outside a connection (that is the
 * crash), so nbdkit's command line is read: the plugin is named by a
 * word "file" or "ondemand", or by the path of its .so.  dir= alone
 * is not enough: floppy, iso and linuxdisk take dir= to build one
 * disk from a directory, and are fine.
 */
static bool
multi_export_plugin (void)
{
  static const char *const names[] = {
    "file", "ondemand",
    "nbdkit-file-plugin.so", "nbdkit-ondemand-plugin.so", NULL
  };
  char buf[65536];
  ssize_t n;
  size_t off;
  int fd;

  if (strcmp (multi_export_key, "dirfd") == 0)
    return true;                /* Only the file plugin has it. */
  fd = open ("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return true;                /* Cannot tell: refuse, not crash. */
  n = read (fd, buf, sizeof buf - 1);
  close (fd);
  if (n <= 0)
    return true;
  buf[n] = '\0';
  for (off = 0; off < (size_t) n; off += strlen (buf + off) + 1) {
    const char *arg = buf + off, *base = strrchr (arg, '/');
    size_t i;

    base = base ? base + 1 : arg;
    for (i = 0; names[i]; ++i)
      if (strcmp (arg, names[i]) == 0 || strcmp (base, names[i]) == 0)
        return true;
  }
  return false;
}

int
exports_refuse_multi_export (const char *filter, const char *keeps)
{
  if (multi_export_key == NULL || !multi_export_plugin ())
    return 0;
  nbdkit_error ("%s: the plugin was given %s=, so it serves one disk per "
                "export name; %s keeps %s per server and would mix them: "
                "serve each disk from its own nbdkit (and snapshot them "
                "together with a group transaction, see "
                "nbdkit-backup-control(7))", filter, multi_export_key,
                filter, keeps);
  return -1;
}

int
exports_claim (const char *filter, const char *name, bool prefix,
               const char *what, exports_check_fn *check)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (nr_claims == MAX_CLAIMS) {
    nbdkit_error ("%s: too many export names claimed", filter);
    return -1;
  }
  claims[nr_claims++] = (struct claim) {
    .filter = filter, .name = name, .prefix = prefix,
    .what = what ? what : "", .check = check,
  };
  return 0;
}

void
exports_unclaim (const char *filter)
{
  size_t i, j;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  for (i = j = 0; i < nr_claims; ++i)
    if (strcmp (claims[i].filter, filter) != 0)
      claims[j++] = claims[i];
  nr_claims = j;
}

static bool
matches (const struct claim *c, const char *name)
{
  if (c->prefix)
    return strncmp (name, c->name, strlen (c->name)) == 0;
  return strcmp (name, c->name) == 0;
}

/* The claim for name, copied out, or false. */
static bool
find (const char *name, struct claim *ret)
{
  size_t i;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  for (i = 0; i < nr_claims; ++i)
    if (matches (&claims[i], name)) {
      *ret = claims[i];
      return true;
    }
  return false;
}

bool
exports_served_below (const char *filter, const char *name)
{
  struct claim c;
  int me = registry_filter_position (filter);
  int it;

  if (!find (name, &c))
    return false;
  it = registry_filter_position (c.filter);
  return it >= 0 && me >= 0 && it < me;
}

void
exports_describe (char *buf, size_t len)
{
  size_t i, n;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  n = snprintf (buf, len, "'' (the live disk)");
  for (i = 0; i < nr_claims && n < len; ++i)
    n += snprintf (buf + n, len - n, ", '%s%s'", claims[i].name,
                   claims[i].what);
}

int
exports_check (const char *name, struct control_error *err)
{
  struct claim c;
  char list[512];

  if (name[0] == '\0')
    return 1;                   /* The plugin's default: the live disk. */
  if (!find (name, &c)) {
    exports_describe (list, sizeof list);
    control_fail (err, CONTROL_NOT_FOUND,
                  "no export named '%s' (this server serves %s)",
                  name, list);
    return -1;
  }
  if (c.check && c.check (name, err) == -1)
    return 0;
  return 1;
}

int
exports_parse_policy (const char *param, const char *value,
                      bool *passthrough)
{
  if (strcmp (value, "strict") == 0)
    *passthrough = false;
  else if (strcmp (value, "passthrough") == 0)
    *passthrough = true;
  else {
    nbdkit_error ("%s: unknown value '%s' (expecting strict or "
                  "passthrough)", param, value);
    return -1;
  }
  return 0;
}

/* query-export {"name": NAME} */
static int
query_export_cmd (json_object *args, json_object **ret,
                  struct control_error *err, void *opaque)
{
  struct control_error why = { 0 };
  json_object *v, *o;
  const char *name;
  struct claim c;
  int r;

  json_object_object_foreach (args, key, val) {
    (void) val;
    if (strcmp (key, "name") != 0)
      return control_fail (err, CONTROL_GENERIC_ERROR,
                           "query-export: unknown argument '%s'", key);
  }
  if (!json_object_object_get_ex (args, "name", &v) ||
      !json_object_is_type (v, json_type_string))
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "query-export: 'name' must be given as a string");
  name = json_object_get_string (v);
  r = exports_check (name, &why);
  o = json_object_new_object ();
  json_object_object_add (o, "name", json_object_new_string (name));
  json_object_object_add (o, "served-by",
                          find (name, &c)
                          ? json_object_new_string (c.filter) : NULL);
  json_object_object_add (o, "available", json_object_new_boolean (r == 1));
  json_object_object_add (o, "reason",
                          r == 1 ? NULL : json_object_new_string (why.desc));
  *ret = o;
  return 0;
}

int
exports_register_command (void)
{
  if (command_registered)
    return 0;
  if (control_register ("query-export", query_export_cmd, NULL) == -1)
    return -1;
  command_registered = true;
  return 0;
}
