/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* group.json (nbdbackup(1), REPOSITORY, "Group repositories"):
 *
 *   { "format": "nbdkit-backup-group", "version": 1,
 *     "created": "2026-12-03T07:45:12Z",
 *     "disks": [ "db", "log" ],
 *     "backups": [ { "id": ID, "instant": "...Z",
 *                    "gate-closed-p50-us": N,
 *                    "gate-closed-max-us": N }, ... ] }
 *
 * Each disk NAME is the one-disk repository REPO/NAME/.  A group
 * backup is named here only once every disk's catalog names a backup
 * with its id (the last write of a group backup), so the ids listed
 * are complete in every disk.  Like catalog.json, it is read with
 * every member checked: disk names are short words, never paths.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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
#include "nbdkit-stubs.h"
#include "nbdbackup.h"
#include "group-repo.h"

const char *repo_disk;

bool
group_repo_is (const char *path)
{
  CLEANUP_FREE char *file = NULL;
  struct stat st;

  if (asprintf (&file, "%s/%s", path, GROUP_CATALOG) == -1)
    return false;
  return lstat (file, &st) == 0;
}

bool
group_name_ok (const char *name)
{
  size_t len = strlen (name);

  if (len == 0 || len > GROUP_MAX_NAME)
    return false;
  return strspn (name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                 "0123456789_-") == len;
}

void
group_repo_close (struct group_repo *g)
{
  size_t i;

  if (g == NULL)
    return;
  repo_close (g->dir);
  free (g->created);
  for (i = 0; i < g->nr_disks; ++i)
    free (g->disks[i]);
  free (g->disks);
  for (i = 0; i < g->nr_backups; ++i) {
    free (g->backups[i].id);
    free (g->backups[i].instant);
  }
  free (g->backups);
  free (g);
}

char *
group_disk_path (const struct group_repo *g, const char *name)
{
  return repo_file (g->dir, name);
}

const struct group_backup *
group_find (const struct group_repo *g, const char *id)
{
  size_t i;

  for (i = 0; i < g->nr_backups; ++i)
    if (strcmp (g->backups[i].id, id) == 0)
      return &g->backups[i];
  return NULL;
}

int
group_add_backup (struct group_repo *g, const char *id, const char *instant,
                  int64_t p50_us, int64_t max_us)
{
  struct group_backup *b = realloc (g->backups,
                                    (g->nr_backups + 1) * sizeof *b);

  if (b == NULL) {
    nbdkit_error ("realloc: %m");
    return -1;
  }
  g->backups = b;
  b = &g->backups[g->nr_backups];
  memset (b, 0, sizeof *b);
  if (repo_set_string (&b->id, id) == -1 ||
      repo_set_string (&b->instant, instant) == -1) {
    free (b->id);
    return -1;
  }
  b->closed_p50_us = p50_us;
  b->closed_max_us = max_us;
  g->nr_backups++;
  return 0;
}

/* A member of o of type t (optional: may be absent or null).  0, or
 * -1 (reported).
 */
static int
get (const char *file, json_object *o, const char *key, json_type t,
     bool optional, json_object **v)
{
  *v = NULL;
  if (!json_object_object_get_ex (o, key, v) || *v == NULL) {
    *v = NULL;
    if (optional)
      return 0;
    nbdkit_error ("%s: \"%s\" is missing", file, key);
    return -1;
  }
  if (!json_object_is_type (*v, t)) {
    nbdkit_error ("%s: \"%s\" has the wrong type", file, key);
    return -1;
  }
  return 0;
}

static int
load (struct group_repo *g)
{
  CLEANUP_FREE char *file = repo_file (g->dir, GROUP_CATALOG);
  CLEANUP_CLOSE int fd = -1;
  json_object *top = NULL, *v, *disks, *backups;
  size_t i, j, n;
  int ret = -1;

  if (file == NULL)
    return -1;
  fd = open_regular_file ("group catalog", file, O_RDONLY, OPEN_NOFOLLOW);
  if (fd == -1)
    return -1;
  top = json_object_from_fd (fd);
  if (top == NULL || !json_object_is_type (top, json_type_object)) {
    nbdkit_error ("%s: not a JSON object: %s", file,
                  json_util_get_last_err () ? json_util_get_last_err () :
                  "wrong type");
    goto out;
  }
  if (get (file, top, "format", json_type_string, false, &v) == -1)
    goto out;
  if (strcmp (json_object_get_string (v), GROUP_FORMAT) != 0) {
    nbdkit_error ("%s: not a group catalog (format \"%s\")", file,
                  json_object_get_string (v));
    goto out;
  }
  if (get (file, top, "version", json_type_int, false, &v) == -1)
    goto out;
  if (json_object_get_int64 (v) != GROUP_VERSION) {
    nbdkit_error ("%s: version %" PRIi64 " is not supported (this "
                  "nbdbackup reads version %d)", file,
                  json_object_get_int64 (v), GROUP_VERSION);
    goto out;
  }
  if (get (file, top, "created", json_type_string, false, &v) == -1 ||
      repo_set_string (&g->created, json_object_get_string (v)) == -1 ||
      get (file, top, "disks", json_type_array, false, &disks) == -1 ||
      get (file, top, "backups", json_type_array, false, &backups) == -1)
    goto out;
  n = json_object_array_length (disks);
  if (n == 0 || n > GROUP_MAX_DISKS) {
    nbdkit_error ("%s: \"disks\" must name 1 to %d disks", file,
                  GROUP_MAX_DISKS);
    goto out;
  }
  g->disks = calloc (n, sizeof *g->disks);
  if (g->disks == NULL) {
    nbdkit_error ("calloc: %m");
    goto out;
  }
  for (i = 0; i < n; ++i) {
    json_object *d = json_object_array_get_idx (disks, i);
    const char *name = json_object_get_string (d);

    if (!json_object_is_type (d, json_type_string) || !group_name_ok (name)) {
      nbdkit_error ("%s: disk %zu: not a disk name (1 to %d of "
                    "A-Z a-z 0-9 _ -)", file, i + 1, GROUP_MAX_NAME);
      goto out;
    }
    for (j = 0; j < i; ++j)
      if (strcmp (g->disks[j], name) == 0) {
        nbdkit_error ("%s: disk '%s' is named twice", file, name);
        goto out;
      }
    if (repo_set_string (&g->disks[i], name) == -1)
      goto out;
    g->nr_disks++;
  }
  n = json_object_array_length (backups);
  for (i = 0; i < n; ++i) {
    json_object *b = json_object_array_get_idx (backups, i), *id, *inst;
    json_object *p50, *max;

    if (!json_object_is_type (b, json_type_object) ||
        get (file, b, "id", json_type_string, false, &id) == -1 ||
        get (file, b, "instant", json_type_string, false, &inst) == -1 ||
        get (file, b, "gate-closed-p50-us", json_type_int, true, &p50) == -1 ||
        get (file, b, "gate-closed-max-us", json_type_int, true, &max) == -1) {
      nbdkit_error ("%s: backup %zu is not well-formed", file, i + 1);
      goto out;
    }
    if (!repo_id_ok (json_object_get_string (id)) ||
        group_find (g, json_object_get_string (id))) {
      nbdkit_error ("%s: backup %zu: bad or repeated id '%s'", file, i + 1,
                    json_object_get_string (id));
      goto out;
    }
    if (group_add_backup (g, json_object_get_string (id),
                          json_object_get_string (inst),
                          p50 ? json_object_get_int64 (p50) : -1,
                          max ? json_object_get_int64 (max) : -1) == -1)
      goto out;
  }
  ret = 0;
 out:
  json_object_put (top);
  return ret;
}

int
group_repo_open (const char *path, enum repo_lock_mode mode,
                 const char *cmd, struct group_repo **ret)
{
  struct group_repo *g = calloc (1, sizeof *g);
  int e;

  if (g == NULL) {
    nbdkit_error ("calloc: %m");
    return NBDBACKUP_EXIT_FAILED;
  }
  e = repo_lock_dir (path, false, mode, cmd, &g->dir);
  if (e == NBDBACKUP_EXIT_OK && load (g) == -1)
    e = NBDBACKUP_EXIT_FAILED;
  if (e != NBDBACKUP_EXIT_OK) {
    group_repo_close (g);
    return e;
  }
  *ret = g;
  return NBDBACKUP_EXIT_OK;
}

int
group_repo_create (const char *path, char **disks, size_t n,
                   const char *cmd, struct group_repo **ret)
{
  struct group_repo *g = calloc (1, sizeof *g);
  time_t t = time (NULL);
  struct tm tm;
  char created[32];
  size_t i;
  int e;

  if (g == NULL || (g->disks = calloc (n, sizeof *g->disks)) == NULL) {
    free (g);
    nbdkit_error ("calloc: %m");
    return NBDBACKUP_EXIT_FAILED;
  }
  e = repo_lock_dir (path, true, REPO_LOCK_EXCLUSIVE, cmd, &g->dir);
  if (e != NBDBACKUP_EXIT_OK) {
    group_repo_close (g);
    return e;
  }
  gmtime_r (&t, &tm);
  strftime (created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (repo_set_string (&g->created, created) == -1)
    goto err;
  for (i = 0; i < n; ++i) {
    if (repo_set_string (&g->disks[i], disks[i]) == -1)
      goto err;
    g->nr_disks++;
  }
  *ret = g;
  return NBDBACKUP_EXIT_OK;

 err:
  group_repo_close (g);
  return NBDBACKUP_EXIT_FAILED;
}

int
group_repo_save (const struct group_repo *g)
{
  CLEANUP_FREE char *file = repo_file (g->dir, GROUP_CATALOG);
  CLEANUP_FREE char *text = NULL;
  json_object *o = json_object_new_object ();
  json_object *disks = json_object_new_array ();
  json_object *backups = json_object_new_array ();
  const char *s;
  size_t i;
  int ret = -1;

  if (file == NULL || o == NULL || disks == NULL || backups == NULL) {
    json_object_put (disks);
    json_object_put (backups);
    goto out;
  }
  json_object_object_add (o, "format", json_object_new_string (GROUP_FORMAT));
  json_object_object_add (o, "version", json_object_new_int (GROUP_VERSION));
  json_object_object_add (o, "created", json_object_new_string (g->created));
  for (i = 0; i < g->nr_disks; ++i)
    json_object_array_add (disks, json_object_new_string (g->disks[i]));
  json_object_object_add (o, "disks", disks);
  for (i = 0; i < g->nr_backups; ++i) {
    const struct group_backup *b = &g->backups[i];
    json_object *e = json_object_new_object ();

    if (e == NULL)
      continue;
    json_object_object_add (e, "id", json_object_new_string (b->id));
    json_object_object_add (e, "instant",
                            json_object_new_string (b->instant));
    if (b->closed_p50_us >= 0)
      json_object_object_add (e, "gate-closed-p50-us",
                              json_object_new_int64 (b->closed_p50_us));
    if (b->closed_max_us >= 0)
      json_object_object_add (e, "gate-closed-max-us",
                              json_object_new_int64 (b->closed_max_us));
    json_object_array_add (backups, e);
  }
  json_object_object_add (o, "backups", backups);
  s = json_object_to_json_string_ext (o, JSON_C_TO_STRING_PRETTY |
                                      JSON_C_TO_STRING_SPACED |
                                      JSON_C_TO_STRING_NOSLASHESCAPE);
  if (s == NULL || asprintf (&text, "%s\n", s) == -1) {
    text = NULL;
    nbdkit_error ("group catalog: out of memory");
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
 out:
  if (ret == -1 && o == NULL)
    nbdkit_error ("group catalog: out of memory");
  json_object_put (o);
  return ret;
}

int
group_each_disk (const char *path, bool quiet,
                 int (*fn) (const char *disk_path, const char *name,
                            void *opaque),
                 void *opaque)
{
  struct group_repo *g = NULL;
  size_t i;
  int e, ret;

  /* Only read: each disk's repository is locked by fn. */
  e = group_repo_open (path, REPO_LOCK_SHARED, "nbdbackup", &g);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  ret = NBDBACKUP_EXIT_OK;
  for (i = 0; i < g->nr_disks; ++i) {
    CLEANUP_FREE char *p = group_disk_path (g, g->disks[i]);

    if (p == NULL) {
      ret = NBDBACKUP_EXIT_FAILED;
      break;
    }
    if (!quiet) {
      printf ("disk %s:\n", g->disks[i]);
      fflush (stdout);
    }
    e = fn (p, g->disks[i], opaque);
    if (e != NBDBACKUP_EXIT_OK && ret == NBDBACKUP_EXIT_OK)
      ret = e;
  }
  group_repo_close (g);
  return ret;
}

int
group_forget_missing (const char *path, const char *cmd)
{
  struct group_repo *g = NULL;
  size_t i, j, kept = 0;
  int e;

  e = group_repo_open (path, REPO_LOCK_EXCLUSIVE, cmd, &g);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  for (i = 0; i < g->nr_backups; ++i) {
    bool everywhere = true;

    for (j = 0; everywhere && j < g->nr_disks; ++j) {
      CLEANUP_FREE char *sub = group_disk_path (g, g->disks[j]);
      struct repo *r = NULL;

      if (sub == NULL ||
          (e = repo_open (sub, REPO_LOCK_SHARED, cmd, &r)) !=
          NBDBACKUP_EXIT_OK) {
        group_repo_close (g);
        return sub ? e : NBDBACKUP_EXIT_FAILED;
      }
      everywhere = repo_find (r, g->backups[i].id) != NULL;
      repo_close (r);
    }
    if (everywhere)
      g->backups[kept++] = g->backups[i];
    else {
      free (g->backups[i].id);
      free (g->backups[i].instant);
    }
  }
  e = NBDBACKUP_EXIT_OK;
  if (kept != g->nr_backups) {
    g->nr_backups = kept;
    if (group_repo_save (g) == -1)
      e = NBDBACKUP_EXIT_FAILED;
  }
  group_repo_close (g);
  return e;
}
