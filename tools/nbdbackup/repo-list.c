/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup list REPO [--json]
 *
 * The backups of a repository, oldest first: a table for people, or
 * the catalog as JSON (with "repository": REPO) for scripts.  Takes
 * the shared lock, so it runs beside verify, restore and mount, but
 * not in the middle of a backup's catalog changes.
 */

#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json.h>

#include "cleanup.h"
#include "nbdkit-stubs.h"
#include "nbdbackup.h"
#include "repo.h"
#include "group-repo.h"

static void
list_usage (const char *cmd)
{
  printf ("Usage: %s [--json] REPO\n"
          "\n"
          "List the backups of repository REPO, oldest first: id, level, "
          "parent,\n"
          "the disk's size, bytes copied, and why that level was chosen.\n"
          "\n"
          "      --json                print the catalog as JSON\n"
          "      --disk=NAME           a disk of a group repository (without "
          "it: the\n"
          "                            group backups, each disk's level)\n"
          HELP_VERBOSE_HELP
          "\n"
          "Exit status: 0 success, 1 failure, 2 usage error, 5 the "
          "repository is busy.\n"
          "See nbdbackup(1).\n",
          cmd);
}

static int
print_json (const struct repo *r)
{
  json_object *o = catalog_to_json (r);

  if (o == NULL)
    return NBDBACKUP_EXIT_FAILED;
  json_object_object_add (o, "repository", json_object_new_string (r->path));
  printf ("%s\n", json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN |
                                                  JSON_C_TO_STRING_NOSLASHESCAPE));
  json_object_put (o);
  return NBDBACKUP_EXIT_OK;
}

static void
print_table (const struct repo *r)
{
  size_t i;

  printf ("%-18s %-5s %-18s %10s %10s  %s\n",
          "ID", "LEVEL", "PARENT", "SIZE", "COPIED", "REASON");
  for (i = 0; i < r->nr_entries; ++i) {
    const struct repo_entry *e = &r->entries[i];
    char size[32], copied[32];

    format_size (size, sizeof size, e->size);
    format_size (copied, sizeof copied, e->bytes_copied);
    printf ("%-18s %-5s %-18s %10s %10s  %s\n", e->id,
            repo_level_name (e->level), e->parent ? e->parent : "-",
            size, copied, e->reason);
  }
  if (r->pending && strcmp (r->pending->op, "finish") == 0)
    printf ("(backup %s is complete; the next backup stops its snapshot "
            "and removes the old bitmaps)\n", r->pending->id);
  else if (r->pending)
    printf ("(backup %s was interrupted: the next backup rolls it back)\n",
            r->pending->id);
}

/* A group repository without --disk: its group backups, with each
 * disk's level (--json: one object with the disks and the backups).
 */
static int
list_group (const char *path, bool json)
{
  struct group_repo *g = NULL;
  struct repo **d;
  size_t i, j;
  int e;

  e = group_repo_open (path, REPO_LOCK_SHARED, "nbdbackup list", &g);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  d = calloc (g->nr_disks, sizeof *d);
  if (d == NULL) {
    nbdkit_error ("calloc: %m");
    group_repo_close (g);
    return NBDBACKUP_EXIT_FAILED;
  }
  for (i = 0; i < g->nr_disks && e == NBDBACKUP_EXIT_OK; ++i) {
    CLEANUP_FREE char *sub = group_disk_path (g, g->disks[i]);

    e = sub ? repo_open (sub, REPO_LOCK_SHARED, "nbdbackup list", &d[i]) :
      NBDBACKUP_EXIT_FAILED;
  }
  if (e != NBDBACKUP_EXIT_OK)
    goto out;

  if (json) {
    json_object *o = json_object_new_object ();
    json_object *disks = json_object_new_array ();
    json_object *backups = json_object_new_array ();

    for (i = 0; i < g->nr_disks; ++i)
      json_object_array_add (disks, json_object_new_string (g->disks[i]));
    for (i = 0; i < g->nr_backups; ++i) {
      const struct group_backup *b = &g->backups[i];
      json_object *e1 = json_object_new_object ();
      json_object *levels = json_object_new_object ();

      json_object_object_add (e1, "id", json_object_new_string (b->id));
      json_object_object_add (e1, "instant",
                              json_object_new_string (b->instant));
      json_object_object_add (e1, "gate-closed-p50-us",
                              json_object_new_int64 (b->closed_p50_us));
      json_object_object_add (e1, "gate-closed-max-us",
                              json_object_new_int64 (b->closed_max_us));
      for (j = 0; j < g->nr_disks; ++j) {
        const struct repo_entry *x = repo_find (d[j], b->id);

        json_object_object_add (levels, g->disks[j],
                                x ? json_object_new_string
                                (repo_level_name (x->level)) : NULL);
      }
      json_object_object_add (e1, "levels", levels);
      json_object_array_add (backups, e1);
    }
    json_object_object_add (o, "repository", json_object_new_string (path));
    json_object_object_add (o, "group", json_object_new_boolean (1));
    json_object_object_add (o, "disks", disks);
    json_object_object_add (o, "backups", backups);
    printf ("%s\n", json_object_to_json_string_ext
            (o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put (o);
    goto out;
  }

  printf ("%-18s %-24s %-22s %s\n", "ID", "INSTANT", "GATES P50/MAX (MS)",
          "LEVELS");
  for (i = 0; i < g->nr_backups; ++i) {
    const struct group_backup *b = &g->backups[i];
    char gates[64];

    snprintf (gates, sizeof gates, "%.3f/%.3f", b->closed_p50_us / 1000.0,
              b->closed_max_us / 1000.0);
    printf ("%-18s %-24s %-22s", b->id, b->instant, gates);
    for (j = 0; j < g->nr_disks; ++j) {
      const struct repo_entry *x = repo_find (d[j], b->id);

      printf (" %s=%s", g->disks[j], x ? repo_level_name (x->level) : "?");
    }
    putchar ('\n');
  }
  for (j = 0; j < g->nr_disks; ++j)
    if (d[j]->pending)
      printf ("(disk %s: backup %s is pending: the next backup %s it)\n",
              g->disks[j], d[j]->pending->id,
              strcmp (d[j]->pending->op, "finish") == 0 ? "finishes" :
              "rolls back");

 out:
  for (i = 0; i < g->nr_disks; ++i)
    repo_close (d[i]);
  free (d);
  group_repo_close (g);
  return e;
}

int
list_main (int argc, char *argv[])
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
  struct repo *r;
  bool json = false;
  int opt, e;

  while ((opt = getopt_long (argc, argv, "hv", long_options, NULL)) != -1) {
    if (opt == OPT_JSON)
      json = true;
    else if ((e = common_option (opt, cmd, list_usage)) != -1)
      return e;
  }
  if (argc - optind < 1)
    return usage_error (cmd, "missing REPO");
  if (argc - optind > 1)
    return usage_error (cmd, "unexpected argument '%s' after REPO",
                        argv[optind + 1]);
  stub_program_name = cmd;

  if (repo_disk == NULL && group_repo_is (argv[optind]))
    return list_group (argv[optind], json);
  e = repo_open (argv[optind], REPO_LOCK_SHARED, cmd, &r);
  if (e != NBDBACKUP_EXIT_OK)
    return e;
  if (json)
    e = print_json (r);
  else
    print_table (r);
  repo_close (r);
  return e;
}
