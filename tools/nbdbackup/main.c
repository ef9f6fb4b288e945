/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup: the suite's command-line tool.
 *
 * Notes on the design:
 *
 * `nbdbackup [--help|--version] SUBCOMMAND [OPTIONS] ARGS...`.  main
 * only knows the table of subcommands below; each subcommand lives in
 * its own file, parses its own options with getopt_long and returns
 * an exit status from the table in nbdbackup.h.  To add one, write
 * NAME_main in NAME.c, declare it in nbdbackup.h, add a row here and
 * a section to man/nbdbackup.pod.
 *
 * pull talks NBD.  The others talk to a server's control socket
 * through control.c; their first operand is always SOCKET.
 *
 * The subcommand sees argv[0] = "nbdbackup NAME", so getopt's own
 * messages ("nbdbackup pull: unrecognized option '--bad'") name it.
 *
 * Signals: SIGINT and SIGTERM only set a flag.  The subcommand
 * notices, stops, waits for its requests in flight, says goodbye to
 * every NBD server (NBD_CMD_DISC), leaves its target visibly
 * incomplete and returns; a second signal stops the waiting.  main
 * then re-raises the signal with the default action, so the caller
 * sees "killed by SIGINT" (status 130 in a shell) as usual.
 */

#include <config.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdbackup.h"

struct subcommand {
  const char *name;
  subcommand_fn fn;
  const char *summary;
};

static const struct subcommand subcommands[] = {
  { "init", init_main,
    "make a backup repository for one disk" },
  { "backup", backup_main,
    "back up a disk into its repository (full, inc, diff or auto)" },
  { "list", list_main,
    "list the backups of a repository" },
  { "estimate", estimate_main,
    "estimate what the next backups of a repository would copy" },
  { "verify", verify_main,
    "check the backups of a repository against their digests" },
  { "restore", restore_main,
    "write a backup of a repository to a file or an NBD URI" },
  { "mount", mount_main,
    "serve a backup of a repository over NBD" },
  { "prune", prune_main,
    "keep the newest backups of a repository, remove the others" },
  { "pull", pull_main,
    "copy an NBD export to a raw file, a qcow2 image or an NBD URI" },
  { "status", status_main,
    "print a server's version, filters, jobs, snapshots, bitmaps" },
  { "snapshot", snapshot_main,
    "start or stop a point-in-time snapshot (fleece filter)" },
  { "push", push_main,
    "start a backup job on the server (cbw filter)" },
  { "wait", wait_main,
    "wait for a backup job to end, with a progress bar" },
  { "cancel", cancel_main,
    "cancel a backup job" },
  { "set-speed", set_speed_main,
    "change a backup job's speed limit" },
  { "bitmap", bitmap_main,
    "add, remove, clear, enable, disable, merge or list dirty bitmaps" },
  { "control", control_main,
    "send raw JSON requests to a control socket, print the replies" },
  { NULL, NULL, NULL }
};

volatile sig_atomic_t interrupted_by = 0;
volatile sig_atomic_t signal_count = 0;

static void
on_signal (int sig)
{
  if (interrupted_by == 0)
    interrupted_by = sig;
  if (signal_count < 2)
    signal_count++;
}

void
catch_signals (void)
{
  struct sigaction sa;

  memset (&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset (&sa.sa_mask);
  sa.sa_flags = 0;              /* no SA_RESTART: poll returns EINTR */
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);
}

static void
usage (FILE *fp)
{
  const struct subcommand *s;

  fprintf (fp,
           "Usage: %s SUBCOMMAND [OPTIONS] ARGS...\n"
           "       %s --help | --version\n"
           "       %s SUBCOMMAND --help\n"
           "\n"
           "Back up disks served by nbdkit.\n"
           "\n"
           "Subcommands:\n",
           PROGRAM_NAME, PROGRAM_NAME, PROGRAM_NAME);
  for (s = subcommands; s->name != NULL; ++s)
    fprintf (fp, "  %-10s %s\n", s->name, s->summary);
  fprintf (fp,
           "\n"
           "Exit status:\n"
           "  0  success\n"
           "  1  the operation failed (I/O error, source or target "
           "problem)\n"
           "  2  usage error (bad option, missing argument)\n"
           "  3  the server refused the command (control subcommands)\n"
           "  4  the job waited for failed or was cancelled (control "
           "subcommands)\n"
           "  5  the repository is busy: another command holds its lock\n"
           "  128+N  killed by signal N (the target is left incomplete)\n"
           "\n"
           "See nbdbackup(1).\n");
}

int
main (int argc, char *argv[])
{
  const struct subcommand *s;
  const char *name;
  char *prog;
  int r;

  log_init ();
  if (argc < 2) {
    usage (stderr);
    return NBDBACKUP_EXIT_USAGE;
  }
  name = argv[1];
  if (strcmp (name, "--help") == 0 || strcmp (name, "-h") == 0) {
    usage (stdout);
    return NBDBACKUP_EXIT_OK;
  }
  if (strcmp (name, "--version") == 0 || strcmp (name, "-V") == 0) {
    printf ("%s %s\n", PROGRAM_NAME, PACKAGE_VERSION);
    return NBDBACKUP_EXIT_OK;
  }
  if (name[0] == '-')
    return usage_error (PROGRAM_NAME, "unrecognized option '%s' "
                        "(options go after the subcommand)", name);

  for (s = subcommands; s->name != NULL; ++s)
    if (strcmp (s->name, name) == 0)
      break;
  if (s->name == NULL)
    return usage_error (PROGRAM_NAME, "unknown subcommand '%s'", name);

  if (asprintf (&prog, "%s %s", PROGRAM_NAME, s->name) == -1) {
    perror ("asprintf");
    return NBDBACKUP_EXIT_FAILED;
  }
  argv[1] = prog;
  r = s->fn (argc - 1, argv + 1);
  free (prog);

  if (fflush (stdout) == EOF) {
    perror ("stdout");
    if (r == NBDBACKUP_EXIT_OK)
      r = NBDBACKUP_EXIT_FAILED;
  }
  /* A signal that stopped the command: die of it.  One that came too
   * late to stop anything (the work was done) changes nothing.
   */
  if (interrupted_by != 0 && r != NBDBACKUP_EXIT_OK) {
    signal (interrupted_by, SIG_DFL);
    raise (interrupted_by);
  }
  return r;
}
