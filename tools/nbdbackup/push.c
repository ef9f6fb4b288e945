/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup push SOCKET --target=T [OPTIONS] [--wait]
 *
 * backup-start on nbdkit-cbw-filter's control socket: a push backup
 * that the server runs.  Each option becomes the argument of the same
 * name, and only options given are sent, so the server's defaults
 * apply to the rest.  The tool checks only the form of the values
 * (a number, one of a list); the server decides what it accepts.
 *
 * A relative file target is made absolute here, since the server
 * resolves paths from its own working directory, not ours.  --backing
 * is sent as given: like qemu-img's -b, it is relative to the
 * target's directory.
 *
 * --wait: wait for the job as `nbdbackup wait` does, naming the job
 * by the id that backup-start returns (the server picks a new one
 * unless --job-id is given).
 */

#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json.h>

#include "cleanup.h"
#include "nbd-uri.h"
#include "nbdkit-stubs.h"
#include "parse.h"
#include "nbdbackup.h"
#include "control.h"

static void
push_usage (const char *cmd)
{
  printf ("Usage: %s [OPTIONS] SOCKET --target=TARGET\n"
          "\n"
          "Start a backup job (copy-before-write, nbdkit-cbw-filter) on "
          "the nbdkit\n"
          "server whose control socket is SOCKET.  Options not given are "
          "left to\n"
          "the server's defaults.\n"
          "\n"
          "  -t, --target=FILE|URI     back up into this file (relative "
          "to the\n"
          "                            current directory) or NBD URI\n"
          "  -s, --sync=full|top|none|incremental\n"
          "                            what to copy\n"
          "  -f, --format=raw|qcow2    format of a file target\n"
          "  -b, --backing=FILE        backing file of a new qcow2 target "
          "(relative\n"
          "                            to the target's directory)\n"
          "  -F, --backing-format=raw|qcow2\n"
          "                            format of the backing file\n"
          "      --cluster-size=SIZE   copy granularity\n"
          "      --speed=RATE          background copy limit in bytes/s "
          "(0: none)\n"
          "      --workers=N           parallel copy threads\n"
          "      --on-error=break-snapshot|fail-write\n"
          "                            what a failed copy before a write "
          "breaks\n"
          "      --copy-timeout=SECS   time limit of a copy before a write "
          "(0: none)\n"
          "      --bitmap=NAME         dirty bitmap for sync=incremental\n"
          "      --bitmap-mode=on-success|never|always\n"
          "                            when to clear the bitmap\n"
          "  -j, --job-id=ID           name the job (default: the server "
          "picks)\n"
          "\n"
          "  -w, --wait                wait for the job to end, as "
          "'nbdbackup wait'\n"
          "      --progress, --no-progress, --json\n"
          "                            with --wait, as for 'nbdbackup wait'\n"
          HELP_VERBOSE_HELP
          "\n"
          "SIZE and RATE take K, M, G or T suffixes.\n"
          "\n"
          "Exit status: 0 success (with --wait: the job completed), 1 cannot "
          "talk to\n"
          "the server, 2 usage error, 3 the server refused, 4 the job failed "
          "or was\n"
          "cancelled (--wait).  See nbdbackup(1).\n",
          cmd);
}

/* Is str one of the NULL-terminated list? */
static bool
one_of (const char *str, const char *const *list)
{
  for (; *list; ++list)
    if (strcmp (str, *list) == 0)
      return true;
  return false;
}

static int
add_string (json_object *args, const char *key, const char *value)
{
  json_object *v = json_object_new_string (value);

  if (v == NULL)
    return -1;
  return json_object_object_add (args, key, v);
}

/* Make a relative file target absolute.  NULL on error (reported). */
static char *
absolute_target (const char *target)
{
  CLEANUP_FREE char *cwd = NULL;
  char *r;

  if (target[0] == '/' || is_nbd_uri (target))
    return strdup (target);
  cwd = getcwd (NULL, 0);
  if (cwd == NULL) {
    nbdkit_error ("getcwd: %m");
    return NULL;
  }
  if (asprintf (&r, "%s/%s", cwd, target) == -1) {
    nbdkit_error ("asprintf: %m");
    return NULL;
  }
  return r;
}

/* The job id in backup-start's reply ({"id": ID}), copied to *ret.
 * Returns an exit status.
 */
static int
started_job_id (struct control *ctl, json_object *reply, char **ret)
{
  const char *id = json_get_string (reply, "id", NULL);

  if (id == NULL) {
    nbdkit_error ("control socket %s: backup-start did not say which job "
                  "it started (a server older than this tool?): give "
                  "--job-id", control_path (ctl));
    return NBDBACKUP_EXIT_FAILED;
  }
  *ret = strdup (id);
  if (*ret == NULL) {
    nbdkit_error ("strdup: %m");
    return NBDBACKUP_EXIT_FAILED;
  }
  return NBDBACKUP_EXIT_OK;
}

int
push_main (int argc, char *argv[])
{
  enum {
    OPT_CLUSTER_SIZE = 256, OPT_SPEED, OPT_WORKERS, OPT_ON_ERROR,
    OPT_COPY_TIMEOUT, OPT_BITMAP, OPT_BITMAP_MODE, OPT_JSON, OPT_PROGRESS,
    OPT_NO_PROGRESS,
  };
  static const char short_options[] = "b:F:f:hj:s:t:vw";
  static const struct option long_options[] = {
    { "backing",      required_argument, NULL, 'b' },
    { "backing-format", required_argument, NULL, 'F' },
    { "bitmap",       required_argument, NULL, OPT_BITMAP },
    { "bitmap-mode",  required_argument, NULL, OPT_BITMAP_MODE },
    { "cluster-size", required_argument, NULL, OPT_CLUSTER_SIZE },
    { "copy-timeout", required_argument, NULL, OPT_COPY_TIMEOUT },
    { "format",       required_argument, NULL, 'f' },
    { "help",         no_argument,       NULL, 'h' },
    { "job-id",       required_argument, NULL, 'j' },
    { "json",         no_argument,       NULL, OPT_JSON },
    { "no-progress",  no_argument,       NULL, OPT_NO_PROGRESS },
    { "on-error",     required_argument, NULL, OPT_ON_ERROR },
    { "progress",     no_argument,       NULL, OPT_PROGRESS },
    { "speed",        required_argument, NULL, OPT_SPEED },
    { "sync",         required_argument, NULL, 's' },
    { "target",       required_argument, NULL, 't' },
    { "verbose",      no_argument,       NULL, 'v' },
    { "wait",         no_argument,       NULL, 'w' },
    { "workers",      required_argument, NULL, OPT_WORKERS },
    { NULL, 0, NULL, 0 }
  };
  static const char *const syncs[] =
    { "full", "top", "none", "incremental", NULL };
  static const char *const formats[] = { "raw", "qcow2", NULL };
  static const char *const on_errors[] =
    { "break-snapshot", "fail-write", NULL };
  static const char *const bitmap_modes[] =
    { "on-success", "never", "always", NULL };
  const char *cmd = argv[0];
  const char *target = NULL, *sync = NULL, *format = NULL;
  const char *backing = NULL, *backing_format = NULL;
  const char *on_error = NULL, *bitmap = NULL;
  const char *bitmap_mode = NULL, *job_id = NULL;
  uint64_t cluster_size = 0, speed = 0;
  bool have_cluster_size = false, have_speed = false;
  unsigned workers = 0;
  double copy_timeout = -1;
  bool wait = false, json = false;
  int progress = -1, c, r;
  struct control *ctl = NULL;
  json_object *args = NULL, *reply = NULL;
  CLEANUP_FREE char *abs_target = NULL;
  CLEANUP_FREE char *new_id = NULL;

  while ((c = getopt_long (argc, argv, short_options, long_options,
                           NULL)) != -1) {
    switch (c) {
    case 't':
      if (*optarg == '\0')
        return usage_error (cmd, "--target: empty");
      target = optarg;
      break;
    case 's':
      if (!one_of (optarg, syncs))
        return usage_error (cmd, "--sync: expected full, top, none or "
                            "incremental, got '%s'", optarg);
      sync = optarg;
      break;
    case 'f':
      if (!one_of (optarg, formats))
        return usage_error (cmd, "--format: expected raw or qcow2, got '%s'",
                            optarg);
      format = optarg;
      break;
    case 'b':
      if (*optarg == '\0')
        return usage_error (cmd, "--backing: empty file name");
      backing = optarg;
      break;
    case 'F':
      if (!one_of (optarg, formats))
        return usage_error (cmd, "--backing-format: expected raw or qcow2, "
                            "got '%s'", optarg);
      backing_format = optarg;
      break;
    case OPT_CLUSTER_SIZE:
      if (!parse_size (optarg, &cluster_size) || cluster_size == 0 ||
          cluster_size > INT64_MAX)
        return usage_error (cmd, "--cluster-size: expected a size, got '%s'",
                            optarg);
      have_cluster_size = true;
      break;
    case OPT_SPEED:
      if (!parse_size (optarg, &speed) || speed > INT64_MAX)
        return usage_error (cmd, "--speed: expected bytes per second with "
                            "an optional K, M, G or T suffix, got '%s'",
                            optarg);
      have_speed = true;
      break;
    case OPT_WORKERS:
      if (!parse_unsigned (optarg, 1, INT_MAX, &workers))
        return usage_error (cmd, "--workers: expected a positive integer, "
                            "got '%s'", optarg);
      break;
    case OPT_ON_ERROR:
      if (!one_of (optarg, on_errors))
        return usage_error (cmd, "--on-error: expected break-snapshot or "
                            "fail-write, got '%s'", optarg);
      on_error = optarg;
      break;
    case OPT_COPY_TIMEOUT: {
      char *end;

      errno = 0;
      copy_timeout = strtod (optarg, &end);
      if (errno != 0 || end == optarg || *end != '\0' ||
          !(copy_timeout >= 0) || copy_timeout > 1e9)
        return usage_error (cmd, "--copy-timeout: expected a number of "
                            "seconds, got '%s'", optarg);
      break;
    }
    case OPT_BITMAP:
      if (*optarg == '\0')
        return usage_error (cmd, "--bitmap: empty name");
      bitmap = optarg;
      break;
    case OPT_BITMAP_MODE:
      if (!one_of (optarg, bitmap_modes))
        return usage_error (cmd, "--bitmap-mode: expected on-success, never "
                            "or always, got '%s'", optarg);
      bitmap_mode = optarg;
      break;
    case 'j':
      if (*optarg == '\0')
        return usage_error (cmd, "--job-id: empty");
      job_id = optarg;
      break;
    case 'w': wait = true; break;
    case OPT_JSON: json = true; break;
    case OPT_PROGRESS: progress = 1; break;
    case OPT_NO_PROGRESS: progress = 0; break;
    default:
      r = common_option (c, cmd, push_usage);
      if (r != -1)
        return r;
    }
  }
  if (argc - optind < 1)
    return usage_error (cmd, "missing SOCKET");
  if (argc - optind > 1)
    return usage_error (cmd, "unexpected argument '%s' after SOCKET",
                        argv[optind + 1]);
  if (target == NULL)
    return usage_error (cmd, "missing --target");
  if (bitmap_mode && bitmap == NULL)
    return usage_error (cmd, "--bitmap-mode needs --bitmap");
  if (sync && strcmp (sync, "incremental") == 0 && bitmap == NULL)
    return usage_error (cmd, "--sync=incremental needs --bitmap");
  if (!wait && (json || progress != -1))
    return usage_error (cmd, "--json, --progress and --no-progress need "
                        "--wait");
  if (progress == -1)
    progress = isatty (STDERR_FILENO);

  abs_target = absolute_target (target);
  if (abs_target == NULL)
    return NBDBACKUP_EXIT_FAILED;

  args = json_object_new_object ();
  if (args == NULL ||
      add_string (args, "target", abs_target) == -1 ||
      (sync && add_string (args, "sync", sync) == -1) ||
      (format && add_string (args, "format", format) == -1) ||
      (backing && add_string (args, "backing", backing) == -1) ||
      (backing_format &&
       add_string (args, "backing-format", backing_format) == -1) ||
      (have_cluster_size &&
       json_object_object_add (args, "cluster-size",
                               json_object_new_int64 (cluster_size)) == -1) ||
      (have_speed &&
       json_object_object_add (args, "speed",
                               json_object_new_int64 (speed)) == -1) ||
      (workers &&
       json_object_object_add (args, "workers",
                               json_object_new_int64 (workers)) == -1) ||
      (on_error && add_string (args, "on-error", on_error) == -1) ||
      (copy_timeout >= 0 &&
       json_object_object_add (args, "copy-timeout",
                               copy_timeout == (double) (int64_t) copy_timeout
                               ? json_object_new_int64 (copy_timeout)
                               : json_object_new_double (copy_timeout))
       == -1) ||
      (bitmap && add_string (args, "bitmap", bitmap) == -1) ||
      (bitmap_mode && add_string (args, "bitmap-mode", bitmap_mode) == -1) ||
      (job_id && add_string (args, "job-id", job_id) == -1)) {
    nbdkit_error ("out of memory");
    json_object_put (args);
    return NBDBACKUP_EXIT_FAILED;
  }

  catch_signals ();
  ctl = control_connect (argv[optind]);
  if (ctl == NULL) {
    json_object_put (args);
    return NBDBACKUP_EXIT_FAILED;
  }
  r = control_command (ctl, "backup-start", args, &reply);
  if (r != NBDBACKUP_EXIT_OK || !wait)
    goto out;

  /* Wait on the id the server gave the job: ids are never reused, so
   * this is tonight's job, not last night's.
   */
  r = started_job_id (ctl, reply, &new_id);
  if (r != NBDBACKUP_EXIT_OK)
    goto out;
  job_id = new_id;
  r = job_wait (ctl, job_id, json, progress);

 out:
  json_object_put (reply);
  control_close (ctl);
  return r;
}
