/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup estimate REPO [--json]
 *
 * What the next backups would copy, without taking a snapshot: the
 * dirty bytes of the tracked bitmaps (query-bitmaps' count) and, of
 * those, the bytes the disk holds as data now (the bitmap's dirty
 * ranges against the live disk's extents): a dirty range that reads
 * as zero now is written as zeros (or not at all), never copied.  A
 * full backup would copy the disk's data.  Writes that land before
 * the next backup's instant add to all of it: it is an estimate.
 */

#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json.h>
#include <libnbd.h>

#include "minmax.h"
#include "nbdkit-stubs.h"
#include "control.h"
#include "disconnect.h"
#include "nbdbackup.h"
#include "repo.h"
#include "group-repo.h"
#include "repo-level.h"
#include "repo-server.h"
#include "source.h"

/* The live disk's data extents (not ZERO), in order. */
struct data_map {
  uint64_t (*r)[2];             /* offset, length */
  size_t n, cap;
  uint64_t total;               /* bytes of data */
  uint64_t end;                 /* end of the extents seen */
};

static int
map_add (struct data_map *m, uint64_t off, uint64_t len)
{
  if (m->n > 0 && m->r[m->n - 1][0] + m->r[m->n - 1][1] == off)
    m->r[m->n - 1][1] += len;
  else {
    if (m->n == m->cap) {
      size_t cap = m->cap ? 2 * m->cap : 64;
      uint64_t (*p)[2] = realloc (m->r, cap * sizeof *p);

      if (p == NULL)
        return -1;
      m->r = p;
      m->cap = cap;
    }
    m->r[m->n][0] = off;
    m->r[m->n++][1] = len;
  }
  m->total += len;
  return 0;
}

static int
map_cb (void *opaque, const char *context, uint64_t offset,
        uint32_t *entries, size_t nr, int *error)
{
  struct data_map *m = opaque;
  size_t i;

  if (strcmp (context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0 ||
      offset != m->end)
    return 0;
  for (i = 0; i + 1 < nr; i += 2) {
    if (!(entries[i + 1] & LIBNBD_STATE_ZERO) &&
        map_add (m, offset, entries[i]) == -1) {
      *error = ENOMEM;
      return -1;
    }
    offset += entries[i];
  }
  m->end = offset;
  return 0;
}

/* Fill m from the live disk; *size gets its size.  0 or -1. */
static int
read_map (const char *uri, struct data_map *m, uint64_t *size)
{
  struct source src = { 0 };
  nbd_extent_callback cb = { .callback = map_cb, .user_data = m };
  int r = -1;

  if (source_open (&src, uri, 1) == -1)
    return -1;
  *size = src.size;
  if (!src.have_extents) {
    if (map_add (m, 0, src.size) == -1)
      goto nomem;
    m->end = src.size;
  }
  while (m->end < src.size) {
    uint64_t before = m->end;

    if (nbd_block_status (src.nbd[0], MIN (src.size - m->end,
                                           UINT64_C (1) << 30),
                          m->end, cb, 0) == -1) {
      nbdkit_error ("%s: block status: %s", uri, nbd_get_error ());
      goto out;
    }
    if (m->end == before) {
      nbdkit_error ("%s: block status at %" PRIu64 " returned no extents",
                    uri, before);
      goto out;
    }
  }
  r = 0;
  goto out;
 nomem:
  nbdkit_error ("realloc: %m");
 out:
  disconnect_all (src.nbd, src.nr_nbd, "source");
  source_close (&src);
  return r;
}

/* Bytes of [off, off+len) that are data in m. */
static uint64_t
data_in (const struct data_map *m, uint64_t off, uint64_t len)
{
  size_t lo = 0, hi = m->n;
  uint64_t sum = 0, end = off + len;

  /* The first extent that ends after off. */
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;

    if (m->r[mid][0] + m->r[mid][1] <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  for (; lo < m->n && m->r[lo][0] < end; ++lo)
    sum += MIN (end, m->r[lo][0] + m->r[lo][1]) - MAX (off, m->r[lo][0]);
  return sum;
}

/* The dirty bytes of bitmap name that are data now.  0 or -1. */
static int
dirty_data (struct control *c, const char *name, const struct data_map *m,
            uint64_t *ret)
{
  int64_t offset = 0;

  *ret = 0;
  for (;;) {
    json_object *args = name_arg (name), *reply = NULL, *ranges, *next;
    size_t i, n;
    int e;

    if (args == NULL) {
      nbdkit_error ("json: out of memory");
      return -1;
    }
    json_object_object_add (args, "offset", json_object_new_int64 (offset));
    e = control_command (c, "query-dirty-ranges", args, &reply);
    if (e != NBDBACKUP_EXIT_OK)
      return -1;
    if (!json_object_object_get_ex (reply, "ranges", &ranges) ||
        !json_object_is_type (ranges, json_type_array)) {
      nbdkit_error ("query-dirty-ranges: no \"ranges\" in the reply");
      json_object_put (reply);
      return -1;
    }
    n = json_object_array_length (ranges);
    for (i = 0; i < n; ++i) {
      json_object *r = json_object_array_get_idx (ranges, i);
      int64_t o = json_get_int64 (r, "offset", -1);
      int64_t l = json_get_int64 (r, "length", -1);

      if (o >= 0 && l > 0)
        *ret += data_in (m, o, l);
    }
    if (json_object_object_get_ex (reply, "next-offset", &next) &&
        json_object_is_type (next, json_type_int) &&
        json_object_get_int64 (next) > offset)
      offset = json_object_get_int64 (next);
    else
      offset = -1;
    json_object_put (reply);
    if (offset == -1)
      return 0;
  }
}

/* One level's estimate. */
struct level_estimate {
  const char *name;             /* "inc", "diff" */
  char *why_not;                /* NULL if it can be taken */
  const char *since;            /* the backup it is relative to */
  uint64_t dirty, data;
};

static int
estimate_level (struct repo *r, struct control *c,
                const struct server_bitmaps *bm, const struct data_map *m,
                uint64_t size, bool diff, struct level_estimate *le)
{
  const char *name = diff ? r->tracking_diff : r->tracking_inc;

  le->name = diff ? "diff" : "inc";
  if (repo_level_problem (r, bm, size, diff, &le->why_not) == -1)
    return -1;
  if (le->why_not)
    return 0;
  le->since = diff ? repo_last_full (r)->id : repo_last (r)->id;
  le->dirty = server_bitmap_find (bm, name)->count;
  return dirty_data (c, name, m, &le->data);
}

static void
print_level (const struct level_estimate *le)
{
  char dirty[32], data[32];

  if (le->why_not) {
    printf ("next %-5s not possible: %s\n", le->name, le->why_not);
    return;
  }
  format_size (dirty, sizeof dirty, le->dirty);
  format_size (data, sizeof data, le->data);
  printf ("next %-5s %s to copy (%s changed since %s%s)\n", le->name,
          data, dirty, le->name[0] == 'd' ? "the full backup " : "",
          le->since);
}

static json_object *
level_json (const struct level_estimate *le)
{
  json_object *o = json_object_new_object ();

  if (o == NULL)
    return NULL;
  json_object_object_add (o, "possible",
                          json_object_new_boolean (le->why_not == NULL));
  json_object_object_add (o, "reason", le->why_not ?
                          json_object_new_string (le->why_not) : NULL);
  json_object_object_add (o, "since", le->since ?
                          json_object_new_string (le->since) : NULL);
  json_object_object_add (o, "bytes_dirty", le->why_not ? NULL :
                          json_object_new_int64 (le->dirty));
  json_object_object_add (o, "bytes_to_copy", le->why_not ? NULL :
                          json_object_new_int64 (le->data));
  return o;
}

static void
estimate_usage (const char *cmd)
{
  printf ("Usage: %s [--json] REPO\n"
          "\n"
          "Estimate what the next incremental and differential backups of "
          "REPO\n"
          "would copy (the tracked bitmaps' dirty bytes that are data on "
          "the disk\n"
          "now), and a full one (the disk's data), without taking a "
          "snapshot.\n"
          "\n"
          "      --json                print the estimate as JSON\n"
          "      --disk=NAME           one disk of a group repository "
          "(default:\n"
          "                            every disk in turn)\n"
          HELP_VERBOSE_HELP
          "\n"
          "Exit status: 0 success, 1 failure, 2 usage error, 3 the server "
          "refused,\n"
          "5 the repository is busy.  See nbdbackup(1).\n",
          cmd);
}

/* Estimate under the shared lock.  Returns an exit status. */
static int
run_estimate (struct repo *r, bool json)
{
  struct control *c;
  struct server_bitmaps bm = { 0 };
  struct data_map m = { 0 };
  struct level_estimate inc = { 0 }, diff = { 0 };
  uint64_t size = 0;
  char sz[32], data[32];
  int e = NBDBACKUP_EXIT_FAILED;

  c = control_connect (r->control);
  if (c == NULL)
    return NBDBACKUP_EXIT_FAILED;
  if (read_map (r->uri, &m, &size) == -1)
    goto out;
  e = server_get_bitmaps (c, &bm);
  if (e != NBDBACKUP_EXIT_OK)
    goto out;
  e = NBDBACKUP_EXIT_FAILED;
  if (estimate_level (r, c, &bm, &m, size, false, &inc) == -1 ||
      estimate_level (r, c, &bm, &m, size, true, &diff) == -1)
    goto out;
  e = NBDBACKUP_EXIT_OK;
  if (json) {
    json_object *o = json_object_new_object ();

    if (o == NULL) {
      e = NBDBACKUP_EXIT_FAILED;
      goto out;
    }
    json_object_object_add (o, "repository", json_object_new_string (r->path));
    json_object_object_add (o, "disk_size", json_object_new_int64 (size));
    json_object_object_add (o, "bytes_data", json_object_new_int64 (m.total));
    json_object_object_add (o, "next_auto", json_object_new_string
                            (inc.why_not ? "full" : "inc"));
    json_object_object_add (o, "inc", level_json (&inc));
    json_object_object_add (o, "diff", level_json (&diff));
    printf ("%s\n", json_object_to_json_string_ext
            (o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put (o);
  }
  else {
    format_size (sz, sizeof sz, size);
    format_size (data, sizeof data, m.total);
    print_level (&inc);
    print_level (&diff);
    printf ("next full  %s to copy (the data of the %s disk)\n", data, sz);
    printf ("next auto  %s\n", inc.why_not ? "full" : "inc");
  }
 out:
  free (inc.why_not);
  free (diff.why_not);
  free (m.r);
  server_bitmaps_free (&bm);
  control_close (c);
  return e;
}

/* estimate of one disk's repository.  Returns an exit status. */
static int
estimate_disk (const char *path, const char *name, void *opaque)
{
  const bool *json = opaque;
  struct repo *r;
  int e;

  e = repo_open (path, REPO_LOCK_SHARED, "nbdbackup estimate", &r);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  e = run_estimate (r, *json);
  repo_close (r);
  return e;
}

int
estimate_main (int argc, char *argv[])
{
  enum { OPT_JSON = 256 };
  static const struct option long_options[] = {
    DISK_OPTION,
    { "help",    no_argument, NULL, 'h' },
    { "json",    no_argument, NULL, OPT_JSON },
    { "verbose", no_argument, NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  const char *cmd = argv[0];
  bool json = false;
  int opt, e;

  while ((opt = getopt_long (argc, argv, "hv", long_options, NULL)) != -1) {
    if (opt == OPT_JSON)
      json = true;
    else if ((e = common_option (opt, cmd, estimate_usage)) != -1)
      return e;
  }
  if (argc - optind < 1)
    return usage_error (cmd, "missing REPO");
  if (argc - optind > 1)
    return usage_error (cmd, "unexpected argument '%s' after REPO",
                        argv[optind + 1]);
  stub_program_name = cmd;
  catch_signals ();
  if (repo_disk == NULL && group_repo_is (argv[optind]))
    return group_each_disk (argv[optind], json, estimate_disk, &json);
  return estimate_disk (argv[optind], NULL, &json);
}
