/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup set-speed SOCKET JOB-ID RATE
 *
 * job-set-speed: change a running job's background copy limit.  RATE
 * is bytes per second with an optional K, M, G or T suffix, 0 for no
 * limit, as the server's "speed" argument.
 */

#include <config.h>

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>

#include <json.h>

#include "parse.h"
#include "nbdbackup.h"
#include "control.h"

static void
set_speed_usage (const char *cmd)
{
  printf ("Usage: %s [OPTIONS] SOCKET JOB-ID RATE\n"
          "\n"
          "Limit the background copy of backup job JOB-ID to RATE bytes "
          "per\n"
          "second (K, M, G or T suffixes; 0 for no limit).  Copies "
          "before guest\n"
          "writes are never limited.\n"
          "\n"
          HELP_VERBOSE_HELP
          HELP_EXIT_REFUSED,
          cmd);
}

int
set_speed_main (int argc, char *argv[])
{
  const char *cmd = argv[0];
  json_object *args;
  uint64_t speed;
  int r;

  r = parse_simple_options (argc, argv, set_speed_usage);
  if (r != -1)
    return r;
  if (argc - optind < 3)
    return usage_error (cmd, "missing %s",
                        argc - optind == 0 ? "SOCKET, JOB-ID and RATE" :
                        argc - optind == 1 ? "JOB-ID and RATE" : "RATE");
  if (argc - optind > 3)
    return usage_error (cmd, "unexpected argument '%s' after RATE",
                        argv[optind + 3]);
  if (!parse_size (argv[optind + 2], &speed) || speed > INT64_MAX)
    return usage_error (cmd, "RATE: expected bytes per second with an "
                        "optional K, M, G or T suffix, got '%s'",
                        argv[optind + 2]);

  args = json_object_new_object ();
  json_object_object_add (args, "id",
                          json_object_new_string (argv[optind + 1]));
  json_object_object_add (args, "speed", json_object_new_int64 (speed));
  return control_run (argv[optind], "job-set-speed", args, NULL);
}
