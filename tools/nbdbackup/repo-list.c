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

#include "nbdkit-stubs.h"
#include "nbdbackup.h"
#include "repo.h"

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

int
list_main (int argc, char *argv[])
{
  enum { OPT_JSON = 256 };
  static const struct option long_options[] = {
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
