/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Option parsing helpers shared by the subcommands. */

#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "nbdkit-stubs.h"
#include "nbdbackup.h"
#include "group-repo.h"

void
format_size (char *buf, size_t len, uint64_t size)
{
  static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB" };
  double v = size;
  int i = -1;

  if (size < 1024) {
    snprintf (buf, len, "%" PRIu64 " B", size);
    return;
  }
  while (v >= 1024 && i < 4) {
    v /= 1024;
    i++;
  }
  snprintf (buf, len, "%.1f %s", v, units[i]);
}

int
common_option (int c, const char *cmd, void (*usage_fn) (const char *cmd))
{
  switch (c) {
  case 'v':
    log_verbose = true;
    return -1;
  case 'h':
    usage_fn (cmd);
    return NBDBACKUP_EXIT_OK;
  case OPT_DISK:
    if (!group_name_ok (optarg))
      return usage_error (cmd, "--disk: '%s' is not a disk name (1 to %d "
                          "of A-Z a-z 0-9 _ -)", optarg, GROUP_MAX_NAME);
    repo_disk = optarg;
    return -1;
  default:
    /* getopt_long has printed what is wrong, naming the option. */
    fprintf (stderr, "Try '%s --help' for more information.\n", cmd);
    return NBDBACKUP_EXIT_USAGE;
  }
}

int
parse_simple_options (int argc, char *argv[],
                      void (*usage_fn) (const char *cmd))
{
  static const struct option long_options[] = {
    { "help",    no_argument, NULL, 'h' },
    { "verbose", no_argument, NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  int c, r;

  while ((c = getopt_long (argc, argv, "hv", long_options, NULL)) != -1) {
    r = common_option (c, argv[0], usage_fn);
    if (r != -1)
      return r;
  }
  return -1;
}

int
usage_error (const char *cmd, const char *fs, ...)
{
  va_list args;

  if (stub_before_message)
    stub_before_message ();
  fprintf (stderr, "%s: ", cmd);
  va_start (args, fs);
  vfprintf (stderr, fs, args);
  va_end (args);
  fprintf (stderr, "\nTry '%s --help' for more information.\n", cmd);
  return NBDBACKUP_EXIT_USAGE;
}
