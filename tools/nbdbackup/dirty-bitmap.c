/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup bitmap add|remove|clear|enable|disable|merge|list SOCKET ...
 *
 * The dirty bitmaps of nbdkit-dirtybitmap-filter(1), one command each
 * over the control socket: block-dirty-bitmap-add and friends, and
 * query-bitmaps for list.  Each action is a small function that checks
 * its operands (a usage error sends nothing) and builds the command's
 * arguments; the server checks names and granularities, so that its
 * messages are the only ones (exit 3).  Transactions are not here:
 * `nbdbackup control` sends those as they are.
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

#include "parse.h"
#include "nbdbackup.h"
#include "control.h"

/* cmd may be "nbdbackup bitmap ACTION": the help is of them all. */
static void
bitmap_usage (const char *cmd)
{
  cmd = PROGRAM_NAME " bitmap";
  printf ("Usage: %s add [OPTIONS] SOCKET NAME\n"
          "       %s remove|clear|enable|disable SOCKET NAME\n"
          "       %s merge SOCKET TARGET SOURCE...\n"
          "       %s list [--json] SOCKET\n"
          "\n"
          "Manage the dirty bitmaps of the nbdkit server whose control "
          "socket is\n"
          "SOCKET (nbdkit-dirtybitmap-filter): add a bitmap, remove it, "
          "clear its\n"
          "bits, start or stop its recording, merge SOURCE bitmaps into "
          "TARGET,\n"
          "or list every bitmap (name, granularity, recording, count of "
          "dirty\n"
          "bytes, busy, inconsistent).\n"
          "\n"
          "      --granularity=SIZE    add: bytes per bit (K, M, G "
          "suffixes; default:\n"
          "                            the server's "
          "dirtybitmap-granularity)\n"
          "      --disabled            add: do not record writes until "
          "enabled\n"
          "      --persistent          add: save it in the bitmap file "
          "(default when\n"
          "                            the server has one)\n"
          "      --no-persistent       add: keep it in memory only\n"
          "      --json                list: print the server's "
          "query-bitmaps reply\n"
          HELP_VERBOSE_HELP
          HELP_EXIT_REFUSED,
          cmd, cmd, cmd, cmd);
}

/* The options of every action; each action refuses those not its own. */
struct bitmap_opts {
  const char *granularity;      /* NULL: not given */
  int persistent;               /* -1: not given */
  bool disabled;
  bool json;
};

/* One action: its name, the command it sends (NULL for list), and how
 * many operands it takes after SOCKET (max -1: no limit).
 */
struct action {
  const char *name;
  const char *command;
  int min, max;
  const char *operands;         /* for "missing ..." */
};

static const struct action actions[] = {
  { "add", "block-dirty-bitmap-add", 1, 1, "NAME" },
  { "remove", "block-dirty-bitmap-remove", 1, 1, "NAME" },
  { "clear", "block-dirty-bitmap-clear", 1, 1, "NAME" },
  { "enable", "block-dirty-bitmap-enable", 1, 1, "NAME" },
  { "disable", "block-dirty-bitmap-disable", 1, 1, "NAME" },
  { "merge", "block-dirty-bitmap-merge", 2, -1, "TARGET and SOURCE" },
  { "list", NULL, 0, 0, NULL },
  { NULL, NULL, 0, 0, NULL }
};

/* Parse the options; -1 to go on (optind is the first operand). */
static int
parse_bitmap_options (int argc, char *argv[], struct bitmap_opts *opts)
{
  enum { OPT_GRANULARITY = 256, OPT_DISABLED, OPT_PERSISTENT,
         OPT_NO_PERSISTENT, OPT_JSON };
  static const struct option long_options[] = {
    { "disabled",      no_argument,       NULL, OPT_DISABLED },
    { "granularity",   required_argument, NULL, OPT_GRANULARITY },
    { "help",          no_argument,       NULL, 'h' },
    { "json",          no_argument,       NULL, OPT_JSON },
    { "no-persistent", no_argument,       NULL, OPT_NO_PERSISTENT },
    { "persistent",    no_argument,       NULL, OPT_PERSISTENT },
    { "verbose",       no_argument,       NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  int c, r;

  while ((c = getopt_long (argc, argv, "hv", long_options, NULL)) != -1) {
    switch (c) {
    case OPT_GRANULARITY: opts->granularity = optarg; break;
    case OPT_DISABLED: opts->disabled = true; break;
    case OPT_PERSISTENT: opts->persistent = 1; break;
    case OPT_NO_PERSISTENT: opts->persistent = 0; break;
    case OPT_JSON: opts->json = true; break;
    default:
      r = common_option (c, argv[0], bitmap_usage);
      if (r != -1)
        return r;
    }
  }
  return -1;
}

/* Refuse the options that action a does not take. */
static int
check_options (const char *cmd, const struct action *a,
               const struct bitmap_opts *opts)
{
  const char *bad = NULL;

  if (strcmp (a->name, "add") != 0) {
    if (opts->granularity)
      bad = "--granularity";
    else if (opts->disabled)
      bad = "--disabled";
    else if (opts->persistent == 1)
      bad = "--persistent";
    else if (opts->persistent == 0)
      bad = "--no-persistent";
  }
  if (bad == NULL && opts->json && strcmp (a->name, "list") != 0)
    bad = "--json";
  if (bad)
    return usage_error (cmd, "%s is not an option of '%s'", bad, a->name);
  return -1;
}

/* The arguments of the add command, or NULL after a usage error
 * (*status set).
 */
static json_object *
add_args (const char *cmd, const char *name, const struct bitmap_opts *opts,
          int *status)
{
  json_object *args;
  uint64_t g = 0;

  if (opts->granularity &&
      (!parse_size (opts->granularity, &g) || g > INT64_MAX)) {
    *status = usage_error (cmd, "--granularity: expected a size in bytes "
                           "with an optional K, M or G suffix, got '%s'",
                           opts->granularity);
    return NULL;
  }
  args = json_object_new_object ();
  json_object_object_add (args, "name", json_object_new_string (name));
  if (opts->granularity)
    json_object_object_add (args, "granularity", json_object_new_int64 (g));
  if (opts->persistent != -1)
    json_object_object_add (args, "persistent",
                            json_object_new_boolean (opts->persistent));
  if (opts->disabled)
    json_object_object_add (args, "disabled", json_object_new_boolean (1));
  return args;
}

/* The arguments of merge: TARGET and the SOURCE bitmaps. */
static json_object *
merge_args (char **operands, int n)
{
  json_object *args = json_object_new_object ();
  json_object *list = json_object_new_array ();
  int i;

  json_object_object_add (args, "target",
                          json_object_new_string (operands[0]));
  for (i = 1; i < n; ++i)
    json_object_array_add (list, json_object_new_string (operands[i]));
  json_object_object_add (args, "bitmaps", list);
  return args;
}

static bool
get_bool (json_object *o, const char *key)
{
  json_object *v;

  return json_object_object_get_ex (o, key, &v) &&
    json_object_get_boolean (v);
}

/* Print query-bitmaps' reply as a table, or "bitmaps: none". */
static void
print_bitmap_table (json_object *list)
{
  size_t i, n = json_object_array_length (list);
  int w = 4;                    /* strlen ("NAME") */

  if (n == 0) {
    printf ("bitmaps: none\n");
    return;
  }
  for (i = 0; i < n; ++i) {
    const char *name = json_get_string (json_object_array_get_idx (list, i),
                                        "name", "?");
    if ((int) strlen (name) > w)
      w = strlen (name);
  }
  printf ("%-*s  %11s  %-9s  %14s  %-4s  %s\n", w, "NAME", "GRANULARITY",
          "RECORDING", "COUNT", "BUSY", "INCONSISTENT");
  for (i = 0; i < n; ++i) {
    json_object *b = json_object_array_get_idx (list, i);

    printf ("%-*s  %11" PRIi64 "  %-9s  %14" PRIi64 "  %-4s  %s\n",
            w, json_get_string (b, "name", "?"),
            json_get_int64 (b, "granularity", 0),
            get_bool (b, "recording") ? "yes" : "no",
            json_get_int64 (b, "count", 0),
            get_bool (b, "busy") ? "yes" : "no",
            get_bool (b, "inconsistent") ? "yes" : "no");
  }
  /* Why, under the table: a reason is a sentence. */
  for (i = 0; i < n; ++i) {
    json_object *b = json_object_array_get_idx (list, i);

    if (get_bool (b, "inconsistent"))
      printf ("%s: inconsistent: %s\n", json_get_string (b, "name", "?"),
              json_get_string (b, "inconsistent-reason", "reason unknown"));
  }
}

static int
list_bitmaps (const char *path, bool json)
{
  json_object *ret = NULL;
  int r;

  r = control_run (path, "query-bitmaps", NULL, &ret);
  if (r == NBDBACKUP_EXIT_OK) {
    if (json)
      printf ("%s\n", json_object_to_json_string_ext
              (ret, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    else if (json_object_is_type (ret, json_type_array))
      print_bitmap_table (ret);
  }
  json_object_put (ret);
  return r;
}

/* Check the operands of action a (argv[optind] on is SOCKET and
 * them); -1 to go on.
 */
static int
check_operands (const char *cmd, const struct action *a, int n,
                char *argv[])
{
  if (n < 1)
    return usage_error (cmd, "missing SOCKET");
  if (n - 1 < a->min)
    return usage_error (cmd, "missing %s",
                        a->min == 2 && n == 2 ? "SOURCE" : a->operands);
  if (a->max != -1 && n - 1 > a->max)
    return usage_error (cmd, "unexpected argument '%s' after %s",
                        argv[optind + 1 + a->max],
                        a->max == 0 ? "SOCKET" : "NAME");
  return -1;
}

int
bitmap_main (int argc, char *argv[])
{
  struct bitmap_opts opts = { .persistent = -1 };
  const struct action *a;
  const char *cmd = argv[0];
  char *sub_cmd = NULL;
  json_object *args;
  int r, n;

  /* The action comes first, so that its options follow it. */
  if (argc >= 2 && (strcmp (argv[1], "--help") == 0 ||
                    strcmp (argv[1], "-h") == 0)) {
    bitmap_usage (cmd);
    return NBDBACKUP_EXIT_OK;
  }
  if (argc < 2)
    return usage_error (cmd, "missing add, remove, clear, enable, disable, "
                        "merge or list");
  for (a = actions; a->name != NULL; ++a)
    if (strcmp (a->name, argv[1]) == 0)
      break;
  if (a->name == NULL)
    return usage_error (cmd, "unknown action '%s' (expected add, remove, "
                        "clear, enable, disable, merge or list)", argv[1]);

  if (asprintf (&sub_cmd, "%s %s", cmd, a->name) == -1) {
    perror ("asprintf");
    return NBDBACKUP_EXIT_FAILED;
  }
  argv[1] = sub_cmd;
  r = parse_bitmap_options (argc - 1, argv + 1, &opts);
  if (r == -1)
    r = check_options (sub_cmd, a, &opts);
  n = argc - 1 - optind;
  if (r == -1)
    r = check_operands (sub_cmd, a, n, argv + 1);
  if (r != -1)
    goto out;

  argv += 1 + optind;           /* argv[0] is SOCKET */
  if (a->command == NULL) {
    r = list_bitmaps (argv[0], opts.json);
    goto out;
  }
  if (strcmp (a->name, "add") == 0) {
    args = add_args (sub_cmd, argv[1], &opts, &r);
    if (args == NULL)
      goto out;
  }
  else if (strcmp (a->name, "merge") == 0)
    args = merge_args (argv + 1, n - 1);
  else {
    args = json_object_new_object ();
    json_object_object_add (args, "name", json_object_new_string (argv[1]));
  }
  r = control_run (argv[0], a->command, args, NULL);

 out:
  free (sub_cmd);
  return r;
}
