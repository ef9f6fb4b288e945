/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup snapshot start|stop SOCKET
 * nbdbackup snapshot start --group SOCKET SOCKET...
 *
 * snapshot-start and snapshot-stop of nbdkit-fleece-filter.  Quiet on
 * success; a refusal (a snapshot already active, none to stop) is the
 * server's message and exit status 3.
 *
 * With --group, one snapshot on every server at one instant, through
 * a group transaction (group.c).
 */

#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <json.h>

#include "cleanup.h"
#include "nbdkit-stubs.h"
#include "parse.h"
#include "nbdbackup.h"
#include "control.h"
#include "group.h"

#define DEFAULT_DEADLINE_MS 10000

static void
snapshot_usage (const char *cmd)
{
  printf ("Usage: %s start|stop [OPTIONS] SOCKET\n"
          "       %s start --group [OPTIONS] SOCKET SOCKET...\n"
          "\n"
          "Take a point-in-time snapshot now (start), or end it and free "
          "its\n"
          "store (stop), on the nbdkit server whose control socket is "
          "SOCKET\n"
          "(nbdkit-fleece-filter with fleece-snapshot=on-command).\n"
          "With --group, take one snapshot on every server at one "
          "instant\n"
          "(a group transaction), or on none of them.\n"
          "\n"
          "  --group                   snapshot every SOCKET at one "
          "instant\n"
          "  --group-id=ID             name of the group transaction\n"
          "                            (default: nbdbackup-PID-TIME)\n"
          "  --deadline=MS             servers abort by themselves after "
          "MS\n"
          "                            milliseconds (default %d)\n"
          "  --before-commit=COMMAND   run COMMAND (sh -c) while every "
          "gate is\n"
          "                            closed; if it fails, abort\n"
          "  --json                    print the group's outcome as JSON\n"
          HELP_VERBOSE_HELP
          HELP_EXIT_REFUSED,
          cmd, cmd, DEFAULT_DEADLINE_MS);
}

static int
run_before_commit (void *opaque)
{
  const char *command = opaque;
  int r;

  fflush (stdout);
  r = system (command);
  if (r == -1) {
    nbdkit_error ("--before-commit: %m");
    return -1;
  }
  if (!WIFEXITED (r) || WEXITSTATUS (r) != 0) {
    nbdkit_error ("--before-commit: the command failed (wait status %d): "
                  "aborting the group", r);
    return -1;
  }
  return 0;
}

static void
print_group_json (const struct group_member *m, size_t n,
                  const struct group_result *res, int status)
{
  json_object *o = json_object_new_object ();
  json_object *t = json_object_new_object ();
  json_object *list = json_object_new_array ();
  size_t i;

  json_object_object_add (o, "group", json_object_new_string (res->id));
  json_object_object_add (o, "committed",
                          json_object_new_boolean (status == 0));
  json_object_object_add (t, "seconds",
                          json_object_new_int64 (res->instant.tv_sec));
  json_object_object_add (t, "microseconds",
                          json_object_new_int64 (res->instant.tv_nsec / 1000));
  json_object_object_add (o, "instant", t);
  json_object_object_add (o, "gate-closed-p50-us",
                          json_object_new_int64 (res->closed_p50_us));
  json_object_object_add (o, "gate-closed-max-us",
                          json_object_new_int64 (res->closed_max_us));
  for (i = 0; i < n; ++i) {
    json_object *s = json_object_new_object ();

    json_object_object_add (s, "socket", json_object_new_string (m[i].socket));
    json_object_object_add (s, "prepared",
                            json_object_new_boolean (m[i].prepared));
    json_object_object_add (s, "committed",
                            json_object_new_boolean (m[i].committed));
    json_object_object_add (s, "prepare-us",
                            json_object_new_int64 (m[i].prepare_us));
    json_object_object_add (s, "gate-closed-us",
                            json_object_new_int64 (m[i].gate_closed_us));
    json_object_array_add (list, s);
  }
  json_object_object_add (o, "servers", list);
  printf ("%s\n", json_object_to_json_string_ext
          (o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
  json_object_put (o);
}

static int
group_start (char **sockets, size_t n, const struct group_options *opts,
             bool json)
{
  CLEANUP_FREE struct group_member *m = calloc (n, sizeof *m);
  json_object *actions = json_object_new_array ();
  json_object *a = json_object_new_object ();
  struct group_result res;
  size_t i;
  int r;

  if (m == NULL) {
    nbdkit_error ("calloc: %m");
    json_object_put (actions);
    json_object_put (a);
    return NBDBACKUP_EXIT_FAILED;
  }
  json_object_object_add (a, "type", json_object_new_string ("snapshot-start"));
  json_object_array_add (actions, a);
  for (i = 0; i < n; ++i) {
    m[i].socket = sockets[i];
    m[i].actions = actions;
  }
  catch_signals ();
  r = group_transaction (m, n, opts, &res);
  if (json)
    print_group_json (m, n, &res, r);
  json_object_put (actions);
  return r;
}

int
snapshot_main (int argc, char *argv[])
{
  static const struct option long_options[] = {
    { "group",         no_argument,       NULL, 'g' },
    { "group-id",      required_argument, NULL, 'i' },
    { "deadline",      required_argument, NULL, 'd' },
    { "before-commit", required_argument, NULL, 'b' },
    { "json",          no_argument,       NULL, 'j' },
    { "help",          no_argument,       NULL, 'h' },
    { "verbose",       no_argument,       NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  const char *cmd = argv[0], *command;
  struct group_options opts = { .deadline_ms = DEFAULT_DEADLINE_MS };
  bool group = false, json = false, group_only = false;
  int c, r;

  while ((c = getopt_long (argc, argv, "hv", long_options, NULL)) != -1) {
    switch (c) {
    case 'g':
      group = true;
      break;
    case 'i':
      opts.id = optarg;
      group_only = true;
      break;
    case 'd':
      if (!parse_unsigned (optarg, 1, 600000, &opts.deadline_ms))
        return usage_error (cmd, "--deadline: '%s' is not a number of "
                            "milliseconds from 1 to 600000", optarg);
      group_only = true;
      break;
    case 'b':
      opts.before_commit = run_before_commit;
      opts.opaque = optarg;
      group_only = true;
      break;
    case 'j':
      json = true;
      group_only = true;
      break;
    default:
      r = common_option (c, cmd, snapshot_usage);
      if (r != -1)
        return r;
    }
  }
  if (group_only && !group)
    return usage_error (cmd, "--group-id, --deadline, --before-commit and "
                        "--json go with --group");
  if (argc - optind < 1)
    return usage_error (cmd, "missing 'start' or 'stop', and SOCKET");
  if (strcmp (argv[optind], "start") == 0)
    command = "snapshot-start";
  else if (strcmp (argv[optind], "stop") == 0)
    command = "snapshot-stop";
  else
    return usage_error (cmd, "expected 'start' or 'stop', got '%s'",
                        argv[optind]);
  if (argc - optind < 2)
    return usage_error (cmd, "missing SOCKET");
  if (group) {
    if (strcmp (command, "snapshot-start") != 0)
      return usage_error (cmd, "--group goes with 'start' (stop each "
                          "snapshot by itself)");
    return group_start (&argv[optind + 1], argc - optind - 1, &opts, json);
  }
  if (argc - optind > 2)
    return usage_error (cmd, "unexpected argument '%s' after SOCKET "
                        "(several sockets need --group)",
                        argv[optind + 2]);

  return control_run (argv[optind + 1], command, NULL, NULL);
}
