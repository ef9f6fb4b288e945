/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup status SOCKET [--json]
 *
 * query-status, printed for people (version, filters, jobs,
 * snapshots, bitmaps) or, with --json, as the server's return value.  The
 * human form shows only the members it knows and skips missing ones,
 * so it keeps working when filters add members.
 */

#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <json.h>

#include "nbdbackup.h"
#include "control.h"

static void
status_usage (const char *cmd)
{
  printf ("Usage: %s [OPTIONS] SOCKET\n"
          "\n"
          "Print the state of the nbdkit server whose control socket is "
          "SOCKET:\n"
          "its version and filters, every backup job, snapshot and dirty "
          "bitmap.\n"
          "\n"
          "      --json                print the server's query-status "
          "reply as JSON\n"
          HELP_VERBOSE_HELP
          HELP_EXIT_REFUSED,
          cmd);
}

static void
print_job (json_object *j)
{
  const char *id = json_get_string (j, "id", "?");
  const char *status = json_get_string (j, "status", "?");
  const char *err = json_get_string (j, "error", NULL);
  const char *sync = json_get_string (j, "sync", NULL);
  const char *target = json_get_string (j, "target", NULL);
  int64_t cur = json_get_int64 (j, "current-progress", -1);
  int64_t tot = json_get_int64 (j, "total-progress", -1);
  int64_t speed = json_get_int64 (j, "speed", -1);
  double rate = json_get_double (j, "rate-mib-per-second", -1);
  char a[32], b[32];

  printf ("job %s: %s", id, status);
  if (cur >= 0 && tot >= 0) {
    format_size (a, sizeof a, cur);
    format_size (b, sizeof b, tot);
    printf (", %s of %s (%d%%)", a, b,
            tot > 0 ? (int) (cur * 100.0 / tot) : 100);
  }
  if (rate >= 0)
    printf (", %.1f MiB/s", rate);
  putchar ('\n');
  if (sync || target) {
    printf ("  ");
    if (sync)
      printf ("sync %s%s", sync, target ? ", " : "");
    if (target)
      printf ("target %s", target);
    putchar ('\n');
  }
  if (speed > 0) {
    format_size (a, sizeof a, speed);
    printf ("  speed limit %s/s\n", a);
  }
  if (err)
    printf ("  error: %s\n", err);
}

static void
print_snapshot (json_object *s)
{
  const char *export = json_get_string (s, "export", "?");
  const char *err = json_get_string (s, "error", NULL);
  json_object *v;
  bool active = false, broken = false;
  int64_t used = json_get_int64 (s, "store-used", -1);
  char a[32];

  if (json_object_object_get_ex (s, "active", &v))
    active = json_object_get_boolean (v);
  if (json_object_object_get_ex (s, "broken", &v))
    broken = json_object_get_boolean (v);

  printf ("snapshot %s: %s", export,
          !active ? "inactive" : broken ? "broken" : "active");
  if (active && used >= 0) {
    format_size (a, sizeof a, used);
    printf (", store used %s", a);
  }
  putchar ('\n');
  if (err)
    printf ("  error: %s\n", err);
}

static void
print_bitmap (json_object *b)
{
  json_object *v;
  bool recording = false, busy = false, inconsistent = false;
  int64_t count = json_get_int64 (b, "count", -1);
  int64_t gran = json_get_int64 (b, "granularity", -1);
  char a[32];

  if (json_object_object_get_ex (b, "recording", &v))
    recording = json_object_get_boolean (v);
  if (json_object_object_get_ex (b, "busy", &v))
    busy = json_object_get_boolean (v);
  if (json_object_object_get_ex (b, "inconsistent", &v))
    inconsistent = json_object_get_boolean (v);

  printf ("bitmap %s: %s", json_get_string (b, "name", "?"),
          recording ? "recording" : "disabled");
  if (count >= 0) {
    format_size (a, sizeof a, count);
    printf (", %s dirty", a);
  }
  if (gran >= 0) {
    format_size (a, sizeof a, gran);
    printf (", granularity %s", a);
  }
  if (busy)
    printf (", busy");
  if (inconsistent)
    printf (", inconsistent: %s",
            json_get_string (b, "inconsistent-reason", "reason unknown"));
  putchar ('\n');
}

/* Print each element of array member key of o with fn, or "KEY:
 * none".
 */
static void
print_list (json_object *o, const char *key, void (*fn) (json_object *))
{
  json_object *a;
  size_t i, n;

  if (!json_object_object_get_ex (o, key, &a) ||
      !json_object_is_type (a, json_type_array))
    return;
  n = json_object_array_length (a);
  if (n == 0)
    printf ("%s: none\n", key);
  for (i = 0; i < n; ++i)
    fn (json_object_array_get_idx (a, i));
}

static void
print_status (json_object *o)
{
  json_object *f;
  int64_t pid = json_get_int64 (o, "pid", -1);
  int64_t wif = json_get_int64 (o, "writes-in-flight", -1);

  printf ("nbdkit-backup %s", json_get_string (o, "version", "?"));
  if (pid >= 0)
    printf (", pid %" PRIi64, pid);
  putchar ('\n');
  if (json_object_object_get_ex (o, "filters", &f) &&
      json_object_is_type (f, json_type_array)) {
    size_t i, n = json_object_array_length (f);

    printf ("filters:");
    for (i = 0; i < n; ++i)
      printf (" %s", json_object_get_string (json_object_array_get_idx (f, i)));
    putchar ('\n');
  }
  if (wif >= 0)
    printf ("writes in flight: %" PRIi64 "\n", wif);
  print_list (o, "jobs", print_job);
  print_list (o, "snapshots", print_snapshot);
  print_list (o, "bitmaps", print_bitmap);
}

int
status_main (int argc, char *argv[])
{
  enum { OPT_JSON = 256 };
  static const struct option long_options[] = {
    { "help",    no_argument, NULL, 'h' },
    { "json",    no_argument, NULL, OPT_JSON },
    { "verbose", no_argument, NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  const char *cmd = argv[0];
  bool json = false;
  json_object *ret = NULL;
  int c, r;

  while ((c = getopt_long (argc, argv, "hv", long_options, NULL)) != -1) {
    switch (c) {
    case OPT_JSON: json = true; break;
    default:
      r = common_option (c, cmd, status_usage);
      if (r != -1)
        return r;
    }
  }
  if (argc - optind < 1)
    return usage_error (cmd, "missing SOCKET");
  if (argc - optind > 1)
    return usage_error (cmd, "unexpected argument '%s' after SOCKET",
                        argv[optind + 1]);

  r = control_run (argv[optind], "query-status", NULL, &ret);
  if (r == NBDBACKUP_EXIT_OK) {
    if (json)
      printf ("%s\n", json_object_to_json_string_ext
              (ret, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    else
      print_status (ret);
  }
  json_object_put (ret);
  return r;
}
