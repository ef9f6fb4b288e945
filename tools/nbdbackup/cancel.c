/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup cancel SOCKET [JOB-ID]
 *
 * job-cancel.  Without JOB-ID, the job that `wait` would pick (the
 * first running one).  It does not wait for the job to end: the
 * server finishes cancelling in the background; `nbdbackup wait`
 * waits for that (and exits 4, since a cancelled job did not
 * complete).
 */

#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json.h>

#include "nbdbackup.h"
#include "control.h"

static void
cancel_usage (const char *cmd)
{
  printf ("Usage: %s [OPTIONS] SOCKET [JOB-ID]\n"
          "\n"
          "Cancel the backup job JOB-ID (default: the first running job) "
          "of the\n"
          "nbdkit server whose control socket is SOCKET.  Use 'nbdbackup "
          "wait'\n"
          "to wait until it has stopped.\n"
          "\n"
          HELP_VERBOSE_HELP
          "\n"
          "Exit status: 0 success, 1 cannot talk to the server, 2 usage "
          "error,\n"
          "3 the server refused (or has no such job).  See nbdbackup(1).\n",
          cmd);
}

/* The arguments of job-cancel. */
static json_object *
id_args (const char *id)
{
  json_object *args = json_object_new_object ();

  json_object_object_add (args, "id", json_object_new_string (id));
  return args;
}

int
cancel_main (int argc, char *argv[])
{
  const char *cmd = argv[0];
  struct control *ctl;
  char *id = NULL;
  int r;

  r = parse_simple_options (argc, argv, cancel_usage);
  if (r != -1)
    return r;
  if (argc - optind < 1)
    return usage_error (cmd, "missing SOCKET");
  if (argc - optind > 2)
    return usage_error (cmd, "unexpected argument '%s' after JOB-ID",
                        argv[optind + 2]);

  /* With an explicit id the server decides whether it exists. */
  if (argc - optind == 2)
    return control_run (argv[optind], "job-cancel",
                        id_args (argv[optind + 1]), NULL);

  catch_signals ();
  ctl = control_connect (argv[optind]);
  if (ctl == NULL)
    return NBDBACKUP_EXIT_FAILED;
  r = job_choose (ctl, NULL, &id);
  if (r == NBDBACKUP_EXIT_OK)
    r = control_command (ctl, "job-cancel", id_args (id), NULL);
  free (id);
  control_close (ctl);
  return r;
}
