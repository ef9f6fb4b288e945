/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* catalog.json (nbdbackup(1), REPOSITORY): read with every member
 * checked, written atomically.
 *
 * The catalog is input we do not trust blindly: a user may edit it, a
 * disk may corrupt it, and it names files we open and bitmaps we
 * remove on a live server.  So every member's type and range is
 * checked, ids are well-formed and unique, parents exist and come
 * earlier (so a chain always ends in a full backup), file names are
 * exactly ID.qcow2 and ID.digests (never a path: no '/' or ".."), and
 * every bitmap it names carries the repository's prefix (a hostile
 * catalog cannot make a rollback remove someone else's bitmap).  A
 * catalog of a newer version is refused; unknown members are ignored
 * (and not kept when the catalog is rewritten).
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <json.h>

#include "cleanup.h"
#include "files.h"
#include "ispowerof2.h"
#include "nbd-uri.h"
#include "nbdkit-stubs.h"
#include "repo.h"

/* A catalog larger than this is not ours. */
#define MAX_CATALOG (64 * 1024 * 1024)

struct parse {
  const char *file;             /* REPO/catalog.json */
  const char *where;            /* "", "pending: ", "backup 3: " */
  const struct repo *r;
};

static void __attribute__ ((format (printf, 2, 3)))
bad (const struct parse *p, const char *fs, ...)
{
  va_list args;
  CLEANUP_FREE char *msg = NULL;

  va_start (args, fs);
  if (vasprintf (&msg, fs, args) == -1)
    msg = NULL;
  va_end (args);
  nbdkit_error ("%s: %s%s", p->file, p->where, msg ? msg : fs);
}

/* Member key of o with type t (or JSON null if nullable: *v = NULL).
 * 0, or -1 (reported).
 */
static int
member (const struct parse *p, json_object *o, const char *key,
        json_type t, bool nullable, json_object **v)
{
  static const char *const names[] = {
    [json_type_null] = "null", [json_type_boolean] = "a boolean",
    [json_type_double] = "a number", [json_type_int] = "an integer",
    [json_type_object] = "an object", [json_type_array] = "an array",
    [json_type_string] = "a string",
  };

  if (!json_object_object_get_ex (o, key, v)) {
    bad (p, "\"%s\" is missing", key);
    return -1;
  }
  if (*v == NULL && nullable)
    return 0;
  /* An integer is a fine number. */
  if (*v != NULL &&
      (json_object_is_type (*v, t) ||
       (t == json_type_double && json_object_is_type (*v, json_type_int))))
    return 0;
  bad (p, "\"%s\" must be %s%s", key, names[t], nullable ? " or null" : "");
  return -1;
}

/* A string member, copied into *out (NULL for null if nullable). */
static int
get_string (const struct parse *p, json_object *o, const char *key,
            bool nullable, char **out)
{
  json_object *v;

  if (member (p, o, key, json_type_string, nullable, &v) == -1)
    return -1;
  if (v == NULL)
    return repo_set_string (out, NULL);
  if (json_object_get_string_len (v) == 0 ||
      strlen (json_object_get_string (v)) !=
      (size_t) json_object_get_string_len (v)) {
    bad (p, "\"%s\" must not be empty or contain NUL", key);
    return -1;
  }
  return repo_set_string (out, json_object_get_string (v));
}

/* An integer member from min to max. */
static int
get_uint (const struct parse *p, json_object *o, const char *key,
          uint64_t min, uint64_t max, uint64_t *out)
{
  json_object *v;
  int64_t i;

  if (member (p, o, key, json_type_int, false, &v) == -1)
    return -1;
  errno = 0;
  i = json_object_get_int64 (v);
  if (errno != 0 || i < 0 || (uint64_t) i < min || (uint64_t) i > max) {
    bad (p, "\"%s\" is out of range (%" PRIu64 " to %" PRIu64 ")", key,
         min, max);
    return -1;
  }
  *out = i;
  return 0;
}

/* name (member key) must be a bitmap of this repository. */
static int
check_bitmap (const struct parse *p, const char *key, const char *name)
{
  if (strncmp (name, p->r->bitmap_prefix,
               strlen (p->r->bitmap_prefix)) != 0) {
    bad (p, "\"%s\": bitmap '%s' is not this repository's (its names "
         "start with '%s')", key, name, p->r->bitmap_prefix);
    return -1;
  }
  return 0;
}

/* A bitmap name of this repository (or null if nullable). */
static int
get_bitmap (const struct parse *p, json_object *o, const char *key,
            bool nullable, char **out)
{
  if (get_string (p, o, key, nullable, out) == -1)
    return -1;
  return *out ? check_bitmap (p, key, *out) : 0;
}

/* "ID" + suffix must be exactly what member key says. */
static int
check_name (const struct parse *p, const char *key, const char *got,
            const char *id, const char *suffix)
{
  CLEANUP_FREE char *want = NULL;

  if (asprintf (&want, "%s%s", id, suffix) == -1) {
    nbdkit_error ("asprintf: %m");
    return -1;
  }
  if (strcmp (got, want) != 0) {
    bad (p, "\"%s\" is '%s', expected '%s' (a file name in the "
         "repository, never a path)", key, got, want);
    return -1;
  }
  return 0;
}

static int
get_level (const struct parse *p, json_object *o, enum repo_level *l)
{
  CLEANUP_FREE char *s = NULL;

  if (get_string (p, o, "level", false, &s) == -1)
    return -1;
  if (repo_parse_level (s, l) == -1) {
    bad (p, "\"level\" is '%s', expected full, inc or diff", s);
    return -1;
  }
  return 0;
}

static int
get_id (const struct parse *p, json_object *o, const char *key,
        bool nullable, char **out)
{
  if (get_string (p, o, key, nullable, out) == -1)
    return -1;
  if (*out && !repo_id_ok (*out)) {
    bad (p, "\"%s\" is '%s', not a backup id (YYYYMMDD-HHMMSS[.N])",
         key, *out);
    return -1;
  }
  return 0;
}

/* An array of backup ids (a pending prune's).  0 or -1 (reported). */
static int
get_ids (const struct parse *p, json_object *o, const char *key,
         char ***out, size_t *nr)
{
  json_object *a;
  size_t i, n;

  if (member (p, o, key, json_type_array, false, &a) == -1)
    return -1;
  n = json_object_array_length (a);
  *out = calloc (n ? n : 1, sizeof **out);
  if (*out == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  for (i = 0; i < n; ++i) {
    json_object *v = json_object_array_get_idx (a, i);
    const char *s = json_object_is_type (v, json_type_string) ?
      json_object_get_string (v) : NULL;

    if (s == NULL || !repo_id_ok (s)) {
      bad (p, "\"%s\" must be an array of backup ids", key);
      return -1;
    }
    if (repo_set_string (&(*out)[i], s) == -1)
      return -1;
    (*nr)++;
  }
  return 0;
}

static int
parse_entry (struct parse *p, json_object *o, struct repo_entry *e,
             size_t index)
{
  const struct repo *r = p->r;
  const struct repo_entry *parent = NULL;
  json_object *v;
  CLEANUP_FREE char *digest = NULL;
  size_t i;

  if (!json_object_is_type (o, json_type_object)) {
    bad (p, "must be an object");
    return -1;
  }
  if (get_id (p, o, "id", false, &e->id) == -1 ||
      get_level (p, o, &e->level) == -1 ||
      get_id (p, o, "parent", true, &e->parent) == -1 ||
      get_string (p, o, "reason", false, &e->reason) == -1 ||
      get_string (p, o, "instant", false, &e->instant) == -1 ||
      get_uint (p, o, "size", 0, INT64_MAX, &e->size) == -1 ||
      get_bitmap (p, o, "bitmap", true, &e->bitmap) == -1 ||
      get_string (p, o, "file", false, &e->file) == -1 ||
      get_string (p, o, "digests", false, &e->digests) == -1 ||
      get_string (p, o, "digest", false, &digest) == -1 ||
      get_uint (p, o, "bytes-copied", 0, INT64_MAX, &e->bytes_copied) == -1 ||
      get_uint (p, o, "bytes-zero", 0, INT64_MAX, &e->bytes_zero) == -1 ||
      get_uint (p, o, "bytes-skipped", 0, INT64_MAX,
                &e->bytes_skipped) == -1 ||
      member (p, o, "seconds", json_type_double, false, &v) == -1)
    return -1;
  e->seconds = json_object_get_double (v);
  if (!isfinite (e->seconds) || e->seconds < 0) {
    bad (p, "\"seconds\" must not be negative");
    return -1;
  }
  if (check_name (p, "file", e->file, e->id, ".qcow2") == -1 ||
      check_name (p, "digests", e->digests, e->id, ".digests") == -1)
    return -1;
  if (strlen (digest) != DIGEST_HEX_LEN ||
      strspn (digest, "0123456789abcdef") != DIGEST_HEX_LEN) {
    bad (p, "\"digest\" must be 64 lower-case hex digits");
    return -1;
  }
  strcpy (e->digest, digest);

  for (i = 0; i < index; ++i) {
    if (strcmp (r->entries[i].id, e->id) == 0) {
      bad (p, "id '%s' appears twice", e->id);
      return -1;
    }
    if (e->parent && strcmp (r->entries[i].id, e->parent) == 0)
      parent = &r->entries[i];
  }
  if (e->level == REPO_FULL) {
    if (e->parent || e->bitmap) {
      bad (p, "a full backup has no \"parent\" and no \"bitmap\"");
      return -1;
    }
  }
  else {
    if (parent == NULL) {
      bad (p, "parent '%s' is not an earlier backup",
           e->parent ? e->parent : "null");
      return -1;
    }
    if (e->level == REPO_DIFF && parent->level != REPO_FULL) {
      bad (p, "the parent of a diff backup must be a full one");
      return -1;
    }
    if (parent->size != e->size) {
      bad (p, "size %" PRIu64 " differs from its parent's", e->size);
      return -1;
    }
  }
  return 0;
}

static int
parse_pending (struct parse *p, json_object *o, struct repo_pending **out)
{
  struct repo_pending *pd;
  json_object *v, *a;
  size_t i, n;

  *out = NULL;
  if (o == NULL)
    return 0;
  pd = calloc (1, sizeof *pd);
  if (pd == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  *out = pd;
  p->where = "pending: ";
  if (get_string (p, o, "op", false, &pd->op) == -1)
    return -1;
  if (strcmp (pd->op, "prune") == 0)
    return get_ids (p, o, "fold", &pd->fold, &pd->nr_fold) == -1 ||
      get_ids (p, o, "drop", &pd->drop, &pd->nr_drop) == -1 ? -1 : 0;
  if (strcmp (pd->op, "finish") == 0) {
    /* A backup recorded in the catalog whose snapshot-stop and bitmap
     * removals ("remove", kept in pd->added) did not happen yet.
     */
    if (get_id (p, o, "id", false, &pd->id) == -1 ||
        member (p, o, "remove", json_type_array, false, &a) == -1 ||
        member (p, o, "snapshot", json_type_boolean, false, &v) == -1)
      return -1;
  }
  else if (strcmp (pd->op, "backup") != 0) {
    bad (p, "unknown operation '%s'", pd->op);
    return -1;
  }
  else if (get_id (p, o, "id", false, &pd->id) == -1 ||
           get_level (p, o, &pd->level) == -1 ||
           get_string (p, o, "file", false, &pd->file) == -1 ||
           check_name (p, "file", pd->file, pd->id, ".qcow2") == -1 ||
           member (p, o, "added", json_type_array, false, &a) == -1 ||
           get_bitmap (p, o, "disabled", true, &pd->disabled) == -1 ||
           member (p, o, "snapshot", json_type_boolean, false, &v) == -1)
    return -1;
  pd->snapshot = json_object_get_boolean (v);
  n = json_object_array_length (a);
  pd->added = calloc (n ? n : 1, sizeof *pd->added);
  if (pd->added == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  for (i = 0; i < n; ++i) {
    json_object *b = json_object_array_get_idx (a, i);

    if (!json_object_is_type (b, json_type_string)) {
      bad (p, "\"added\" must be an array of strings");
      return -1;
    }
    if (check_bitmap (p, "added", json_object_get_string (b)) == -1 ||
        repo_set_string (&pd->added[i], json_object_get_string (b)) == -1)
      return -1;
    pd->nr_added++;
  }
  return 0;
}

static int
parse_catalog (struct parse *p, json_object *top, struct repo *r)
{
  json_object *v, *tracking, *pending, *backups;
  CLEANUP_FREE char *format = NULL;
  uint64_t u;
  size_t i, n;

  if (!json_object_is_type (top, json_type_object)) {
    bad (p, "not a JSON object");
    return -1;
  }
  if (get_string (p, top, "format", false, &format) == -1)
    return -1;
  if (strcmp (format, REPO_FORMAT) != 0) {
    bad (p, "\"format\" is '%s': not an nbdbackup repository", format);
    return -1;
  }
  if (member (p, top, "version", json_type_int, false, &v) == -1)
    return -1;
  if (json_object_get_int64 (v) > REPO_VERSION) {
    bad (p, "version %" PRIi64 " is newer than this nbdbackup reads (%d): "
         "use a newer nbdbackup", json_object_get_int64 (v), REPO_VERSION);
    return -1;
  }
  if (json_object_get_int64 (v) < 1) {
    bad (p, "\"version\" must be 1");
    return -1;
  }
  if (get_string (p, top, "uuid", false, &r->uuid) == -1 ||
      get_string (p, top, "created", false, &r->created) == -1 ||
      get_uint (p, top, "chunk-size", DIGEST_MIN_CHUNK, DIGEST_MAX_CHUNK,
                &u) == -1)
    return -1;
  if (strlen (r->uuid) != 36 ||
      strspn (r->uuid, "0123456789abcdef-") != 36) {
    bad (p, "\"uuid\" is not a UUID");
    return -1;
  }
  if (!is_power_of_2 (u)) {
    bad (p, "\"chunk-size\" must be a power of 2");
    return -1;
  }
  r->chunk_size = u;
  if (get_string (p, top, "uri", false, &r->uri) == -1 ||
      get_string (p, top, "control", false, &r->control) == -1 ||
      get_string (p, top, "snapshot-export", false,
                  &r->snapshot_export) == -1 ||
      get_string (p, top, "bitmap-prefix", false, &r->bitmap_prefix) == -1 ||
      get_uint (p, top, "next-bitmap", 1, INT64_MAX, &r->next_bitmap) == -1 ||
      member (p, top, "tracking", json_type_object, false, &tracking) == -1 ||
      get_bitmap (p, tracking, "inc", true, &r->tracking_inc) == -1 ||
      get_bitmap (p, tracking, "diff", true, &r->tracking_diff) == -1 ||
      member (p, top, "pending", json_type_object, true, &pending) == -1 ||
      member (p, top, "backups", json_type_array, false, &backups) == -1)
    return -1;
  if (!is_nbd_uri (r->uri)) {
    bad (p, "\"uri\" is not an NBD URI");
    return -1;
  }
  if (r->control[0] != '/') {
    bad (p, "\"control\" must be an absolute path");
    return -1;
  }
  if (parse_pending (p, pending, &r->pending) == -1)
    return -1;

  n = json_object_array_length (backups);
  r->entries = calloc (n ? n : 1, sizeof *r->entries);
  if (r->entries == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  for (i = 0; i < n; ++i) {
    char where[64];

    snprintf (where, sizeof where, "backups[%zu]: ", i);
    p->where = where;
    r->nr_entries = i + 1;      /* so that it is freed */
    if (parse_entry (p, json_object_array_get_idx (backups, i),
                     &r->entries[i], i) == -1)
      return -1;
  }
  p->where = "";
  return 0;
}

int
catalog_load (struct repo *r)
{
  CLEANUP_FREE char *file = repo_file (r, REPO_CATALOG);
  CLEANUP_FREE char *buf = NULL;
  CLEANUP_CLOSE int fd = -1;
  struct parse p = { .file = file, .where = "", .r = r };
  struct json_tokener *tok;
  json_object *top;
  struct stat st;
  size_t len = 0;
  int ret;

  if (file == NULL)
    return -1;
  fd = open_regular_file ("catalog", file, O_RDONLY, OPEN_NOFOLLOW);
  if (fd == -1)
    return -1;
  if (fstat (fd, &st) == -1) {
    nbdkit_error ("%s: fstat: %m", file);
    return -1;
  }
  if (st.st_size > MAX_CATALOG) {
    nbdkit_error ("%s: too large to be a catalog", file);
    return -1;
  }
  buf = malloc (st.st_size + 1);
  if (buf == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  while (len < (size_t) st.st_size) {
    ssize_t n = read (fd, buf + len, st.st_size - len);

    if (n == -1 && errno == EINTR)
      continue;
    if (n == -1) {
      nbdkit_error ("%s: read: %m", file);
      return -1;
    }
    if (n == 0)
      break;
    len += n;
  }
  buf[len] = '\0';

  tok = json_tokener_new ();
  if (tok == NULL) {
    nbdkit_error ("json_tokener_new: out of memory");
    return -1;
  }
  top = json_tokener_parse_ex (tok, buf, len);
  if (top == NULL || tok->char_offset != (int) len) {
    enum json_tokener_error e = json_tokener_get_error (tok);

    nbdkit_error ("%s: not valid JSON (%s at byte %zu)", file,
                  e == json_tokener_success ? "trailing data" :
                  e == json_tokener_continue ? "unexpected end" :
                  json_tokener_error_desc (e),
                  (size_t) tok->char_offset);
    json_tokener_free (tok);
    json_object_put (top);
    return -1;
  }
  json_tokener_free (tok);
  /* bitmap_prefix is needed by get_bitmap before tracking is read:
   * parse_catalog reads it first.
   */
  ret = parse_catalog (&p, top, r);
  json_object_put (top);
  return ret;
}

static json_object *
str_or_null (const char *s)
{
  return s ? json_object_new_string (s) : NULL;
}

static json_object *
entry_json (const struct repo_entry *e)
{
  json_object *o = json_object_new_object ();
  char secs[32];

  if (o == NULL)
    return NULL;
  json_object_object_add (o, "id", json_object_new_string (e->id));
  json_object_object_add (o, "level",
                          json_object_new_string (repo_level_name (e->level)));
  json_object_object_add (o, "parent", str_or_null (e->parent));
  json_object_object_add (o, "reason", json_object_new_string (e->reason));
  json_object_object_add (o, "instant", json_object_new_string (e->instant));
  json_object_object_add (o, "size", json_object_new_int64 (e->size));
  json_object_object_add (o, "bitmap", str_or_null (e->bitmap));
  json_object_object_add (o, "file", json_object_new_string (e->file));
  json_object_object_add (o, "digests", json_object_new_string (e->digests));
  json_object_object_add (o, "digest", json_object_new_string (e->digest));
  json_object_object_add (o, "bytes-copied",
                          json_object_new_int64 (e->bytes_copied));
  json_object_object_add (o, "bytes-zero",
                          json_object_new_int64 (e->bytes_zero));
  json_object_object_add (o, "bytes-skipped",
                          json_object_new_int64 (e->bytes_skipped));
  snprintf (secs, sizeof secs, "%.3f", e->seconds);
  json_object_object_add (o, "seconds",
                          json_object_new_double_s (e->seconds, secs));
  return o;
}

static json_object *
pending_json (const struct repo_pending *pd)
{
  json_object *o, *a;
  size_t i;

  if (pd == NULL)
    return NULL;
  o = json_object_new_object ();
  a = json_object_new_array ();
  if (o == NULL || a == NULL) {
    json_object_put (o);
    json_object_put (a);
    return NULL;
  }
  if (strcmp (pd->op, "prune") == 0) {
    json_object *drop = json_object_new_array ();

    for (i = 0; i < pd->nr_fold; ++i)
      json_object_array_add (a, json_object_new_string (pd->fold[i]));
    for (i = 0; drop && i < pd->nr_drop; ++i)
      json_object_array_add (drop, json_object_new_string (pd->drop[i]));
    json_object_object_add (o, "op", json_object_new_string (pd->op));
    json_object_object_add (o, "fold", a);
    json_object_object_add (o, "drop", drop);
    return o;
  }
  for (i = 0; i < pd->nr_added; ++i)
    json_object_array_add (a, json_object_new_string (pd->added[i]));
  json_object_object_add (o, "op", json_object_new_string (pd->op));
  json_object_object_add (o, "id", json_object_new_string (pd->id));
  if (strcmp (pd->op, "finish") == 0) {
    json_object_object_add (o, "remove", a);
    json_object_object_add (o, "snapshot",
                            json_object_new_boolean (pd->snapshot));
    return o;
  }
  json_object_object_add (o, "level",
                          json_object_new_string
                          (repo_level_name (pd->level)));
  json_object_object_add (o, "file", json_object_new_string (pd->file));
  json_object_object_add (o, "added", a);
  json_object_object_add (o, "disabled", str_or_null (pd->disabled));
  json_object_object_add (o, "snapshot",
                          json_object_new_boolean (pd->snapshot));
  return o;
}

json_object *
catalog_to_json (const struct repo *r)
{
  json_object *o, *t, *a, *pd = NULL;
  size_t i;

  o = json_object_new_object ();
  t = json_object_new_object ();
  a = json_object_new_array ();
  if (o == NULL || t == NULL || a == NULL ||
      (r->pending && (pd = pending_json (r->pending)) == NULL))
    goto nomem;
  json_object_object_add (o, "format", json_object_new_string (REPO_FORMAT));
  json_object_object_add (o, "version", json_object_new_int (REPO_VERSION));
  json_object_object_add (o, "uuid", json_object_new_string (r->uuid));
  json_object_object_add (o, "created", json_object_new_string (r->created));
  json_object_object_add (o, "chunk-size",
                          json_object_new_int64 (r->chunk_size));
  json_object_object_add (o, "uri", json_object_new_string (r->uri));
  json_object_object_add (o, "control", json_object_new_string (r->control));
  json_object_object_add (o, "snapshot-export",
                          json_object_new_string (r->snapshot_export));
  json_object_object_add (o, "bitmap-prefix",
                          json_object_new_string (r->bitmap_prefix));
  json_object_object_add (o, "next-bitmap",
                          json_object_new_int64 (r->next_bitmap));
  json_object_object_add (t, "inc", str_or_null (r->tracking_inc));
  json_object_object_add (t, "diff", str_or_null (r->tracking_diff));
  json_object_object_add (o, "tracking", t);
  t = NULL;
  json_object_object_add (o, "pending", pd);
  pd = NULL;
  for (i = 0; i < r->nr_entries; ++i) {
    json_object *e = entry_json (&r->entries[i]);

    if (e == NULL)
      goto nomem;
    json_object_array_add (a, e);
  }
  json_object_object_add (o, "backups", a);
  return o;

 nomem:
  nbdkit_error ("catalog: out of memory");
  json_object_put (o);
  json_object_put (t);
  json_object_put (a);
  json_object_put (pd);
  return NULL;
}

int
catalog_save (const struct repo *r)
{
  CLEANUP_FREE char *file = repo_file (r, REPO_CATALOG);
  CLEANUP_FREE char *text = NULL;
  json_object *o;
  const char *s;
  int ret = -1;

  if (file == NULL)
    return -1;
  o = catalog_to_json (r);
  if (o == NULL)
    return -1;
  s = json_object_to_json_string_ext (o, JSON_C_TO_STRING_PRETTY |
                                      JSON_C_TO_STRING_SPACED |
                                      JSON_C_TO_STRING_NOSLASHESCAPE);
  if (s == NULL || asprintf (&text, "%s\n", s) == -1) {
    text = NULL;
    nbdkit_error ("catalog: out of memory");
  }
  else if (replace_file_atomically (file, text, strlen (text)) == -1) {
    if (errno == EEXIST)
      nbdkit_error ("%s: is not a regular file: refusing to replace it",
                    file);
    else
      nbdkit_error ("%s: %m", file);
  }
  else
    ret = 0;
  json_object_put (o);
  return ret;
}
