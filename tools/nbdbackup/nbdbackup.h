/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* What every nbdbackup subcommand shares: exit statuses, the
 * subcommand entry points, option parsing helpers and messages.
 */

#ifndef NBDBACKUP_H
#define NBDBACKUP_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROGRAM_NAME "nbdbackup"

/* Exit statuses.  The table is part of the interface: it is printed
 * by `nbdbackup --help` and documented in nbdbackup(1).  Never
 * renumber; add new codes at the end.
 */
enum {
  NBDBACKUP_EXIT_OK = 0,          /* the command did what was asked */
  NBDBACKUP_EXIT_FAILED = 1,      /* I/O error, source or target problem */
  NBDBACKUP_EXIT_USAGE = 2,       /* bad option or missing argument */
  NBDBACKUP_EXIT_REFUSED = 3,     /* the server answered with an error */
  NBDBACKUP_EXIT_JOB_FAILED = 4,  /* the job waited for failed/cancelled */
  NBDBACKUP_EXIT_BUSY = 5,        /* another command holds the repository */
};

/* A subcommand: argv[0] is "nbdbackup NAME" (so that getopt's own
 * messages name the subcommand), and it returns an exit status.
 */
typedef int (*subcommand_fn) (int argc, char *argv[]);

/* pull.c */
extern int pull_main (int argc, char *argv[]);

/* The control subcommands, one per file (status.c, snapshot.c, ...). */
extern int status_main (int argc, char *argv[]);
extern int snapshot_main (int argc, char *argv[]);
extern int push_main (int argc, char *argv[]);
extern int cancel_main (int argc, char *argv[]);
extern int set_speed_main (int argc, char *argv[]);
extern int wait_main (int argc, char *argv[]);
extern int control_main (int argc, char *argv[]);
extern int bitmap_main (int argc, char *argv[]);  /* dirty-bitmap.c */

/* The repository subcommands (repo-*.c). */
extern int init_main (int argc, char *argv[]);
extern int list_main (int argc, char *argv[]);
extern int backup_main (int argc, char *argv[]);
extern int estimate_main (int argc, char *argv[]);

/* The commands that read a point in time (restore.c, verify.c,
 * mount.c; served by serve.c, checked by point.c).
 */
extern int restore_main (int argc, char *argv[]);
extern int verify_main (int argc, char *argv[]);
extern int mount_main (int argc, char *argv[]);
extern int prune_main (int argc, char *argv[]);

/* wait.c: jobs, shared with backup --wait and cancel. */
struct control;

/* Find the id of the job to act on: id itself if the server has such
 * a job, else (id NULL) the first running job, else the first job.
 * Returns an exit status; on NBDBACKUP_EXIT_OK *ret is the id
 * (malloc'd).  No such job is NBDBACKUP_EXIT_REFUSED (reported).
 */
extern int job_choose (struct control *c, const char *id, char **ret);

/* Wait until job id is completed, failed or cancelled, drawing the
 * progress bar if progress, and print the outcome (the job's last
 * query-jobs object if json).  Returns NBDBACKUP_EXIT_OK if it
 * completed, _JOB_FAILED if it failed or was cancelled, or the status
 * of a command or connection that failed.
 */
extern int job_wait (struct control *c, const char *id, bool json,
                     bool progress);

/* options.c: option helpers.  Numbers are parsed with common/utils'
 * parse.h, which prints nothing; the caller names the option in its
 * usage error.
 */

/* A size for people: "512 B", "64.0 KiB", "1.5 GiB". */
extern void format_size (char *buf, size_t len, uint64_t size);

/* The options every subcommand has, for the default case of its
 * getopt_long loop: c is 'v' (--verbose: sets log_verbose and returns
 * -1 to go on), 'h' (--help: prints usage_fn's help and returns
 * NBDBACKUP_EXIT_OK), or anything else, an error getopt_long has
 * reported (points to --help and returns NBDBACKUP_EXIT_USAGE).
 */
extern int common_option (int c, const char *cmd,
                          void (*usage_fn) (const char *cmd));

/* Parse the options of a subcommand that has only -h/--help and
 * -v/--verbose; usage_fn prints its --help.  Returns -1 to go on
 * (optind is the first operand), else an exit status.
 */
extern int parse_simple_options (int argc, char *argv[],
                                 void (*usage_fn) (const char *cmd));

/* Lines of --help that most subcommands share: -v and -h, and the
 * exit statuses of a subcommand that sends one command.
 */
#define HELP_VERBOSE_HELP \
  "  -v, --verbose             print debug messages\n" \
  "  -h, --help                print this help\n"
#define HELP_EXIT_REFUSED \
  "\n" \
  "Exit status: 0 success, 1 cannot talk to the server, 2 usage error,\n" \
  "3 the server refused.  See nbdbackup(1).\n"

/* Print "nbdbackup CMD: MESSAGE" and a pointer to --help on stderr;
 * returns NBDBACKUP_EXIT_USAGE.  cmd is argv[0] of the subcommand.
 */
extern int usage_error (const char *cmd, const char *fs, ...)
  __attribute__ ((format (printf, 2, 3)));

/* log.c: messages.  Errors and debug messages go through
 * nbdkit_error and nbdkit_debug (common/utils' nbdkit-stubs.h), like
 * the common/ libraries' own.  Anything that prints to stderr calls
 * stub_before_message first, which the progress bar sets to clear its
 * line.
 */

/* Point the stubs' hooks at the functions below.  main calls it
 * first.
 */
extern void log_init (void);

/* Print debug messages (--verbose or NBDBACKUP_DEBUG in the env). */
extern bool log_verbose;

/* The first error reported since the program started, or NULL: the
 * root cause, for the JSON summary.
 */
extern const char *log_first_error (void);

/* Print a warning ("nbdbackup: warning: ..."). */
extern void warning (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2)));

/* main.c: signals.  The first SIGINT or SIGTERM sets this; long
 * operations poll it, stop, clean up and return.  main then re-raises
 * the signal so that the shell sees how the program ended.
 */
extern volatile sig_atomic_t interrupted_by;

/* How many of those signals arrived (counts up to 2): a second one
 * means "stop waiting, now".
 */
extern volatile sig_atomic_t signal_count;

/* Catch SIGINT and SIGTERM (without SA_RESTART, so poll returns). */
extern void catch_signals (void);

#endif /* NBDBACKUP_H */
