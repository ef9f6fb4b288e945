/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup snapshot start|stop SOCKET
 *
 * snapshot-start and snapshot-stop of nbdkit-fleece-filter.  Quiet on
 * success; a refusal (a snapshot already active, none to stop) is the
 * server's message and exit status 3.
 */

#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "nbdbackup.h"
#include "control.h"

static void
snapshot_usage (const char *cmd)
{
  printf ("Usage: %s start|stop [OPTIONS] SOCKET\n"
          "\n"
          "Take a point-in-time snapshot now (start), or end it and free "
          "its\n"
          "store (stop), on the nbdkit server whose control socket is "
          "SOCKET\n"
          "(nbdkit-fleece-filter with fleece-snapshot=on-command).\n"
          "\n"
          HELP_VERBOSE_HELP
          HELP_EXIT_REFUSED,
          cmd);
}

int
snapshot_main (int argc, char *argv[])
{
  const char *cmd = argv[0], *command;
  int r;

  r = parse_simple_options (argc, argv, snapshot_usage);
  if (r != -1)
    return r;
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
  if (argc - optind > 2)
    return usage_error (cmd, "unexpected argument '%s' after SOCKET",
                        argv[optind + 2]);

  return control_run (argv[optind + 1], command, NULL, NULL);
}
