/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* seqwriter: the writer of the group snapshot tests (issue 12).
 *
 *   seqwriter [--status FILE] [--stop FILE] [--count N] URI-A URI-B
 *
 * Over one connection to each disk, it writes the sequence number N
 * (1, 2, 3, ...) to disk A, waits for the acknowledgement, writes the
 * same N to disk B, waits, and goes on with N+1.  So at every instant
 * B holds A's number or one less; a pair of snapshots taken at one
 * instant must show that, and a pair taken at two instants need not.
 *
 * A number is written as 20 decimal digits and a newline at offset 0
 * of a 512-byte block (the rest zeroes), so `head -c 20` of a copy
 * reads it.
 *
 * --status FILE: after each pair, FILE holds the last N written to
 * both disks (replaced by rename, so a reader never sees half of it),
 * which lets a test wait until the writer has gone on.  --count N:
 * stop after N.  --stop FILE: stop, after a pair, once FILE exists
 * (a test stops the writer so, never by a signal: nbdkit 1.32 aborts
 * when a client hangs up with a request in flight).  A write that fails ends
 * the program with status 1 and a message.
 */

#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libnbd.h>

#include "parse.h"

#define PROG "seqwriter"

static int
write_status (const char *path, uint64_t n)
{
  char tmp[4096];
  FILE *fp;

  snprintf (tmp, sizeof tmp, "%s.tmp", path);
  fp = fopen (tmp, "w");
  if (fp == NULL) {
    perror (tmp);
    return -1;
  }
  fprintf (fp, "%" PRIu64 "\n", n);
  if (fclose (fp) == EOF || rename (tmp, path) == -1) {
    perror (path);
    return -1;
  }
  return 0;
}

static struct nbd_handle *
connect_to (const char *uri)
{
  struct nbd_handle *h = nbd_create ();

  if (h == NULL || nbd_connect_uri (h, uri) == -1) {
    fprintf (stderr, PROG ": %s: %s\n", uri, nbd_get_error ());
    exit (EXIT_FAILURE);
  }
  return h;
}

int
main (int argc, char *argv[])
{
  static const struct option opts[] = {
    { "status", required_argument, NULL, 's' },
    { "count",  required_argument, NULL, 'c' },
    { "stop",   required_argument, NULL, 'x' },
    { NULL, 0, NULL, 0 }
  };
  const char *status = NULL, *stop = NULL;
  struct stat st;
  uint64_t count = UINT64_MAX, n;
  struct nbd_handle *h[2];
  char block[512];
  int c, i;

  while ((c = getopt_long (argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 's':
      status = optarg;
      break;
    case 'x':
      stop = optarg;
      break;
    case 'c':
      if (!parse_u64 (optarg, &count) || count == 0) {
        fprintf (stderr, PROG ": --count: not a positive number: %s\n",
                 optarg);
        exit (2);
      }
      break;
    default:
      exit (2);
    }
  }
  if (argc - optind != 2) {
    fprintf (stderr, "usage: " PROG " [--status FILE] [--stop FILE] "
             "[--count N] URI-A URI-B\n");
    exit (2);
  }
  h[0] = connect_to (argv[optind]);
  h[1] = connect_to (argv[optind + 1]);

  for (n = 1; n <= count; ++n) {
    memset (block, 0, sizeof block);
    snprintf (block, sizeof block, "%020" PRIu64 "\n", n);
    for (i = 0; i < 2; ++i)
      if (nbd_pwrite (h[i], block, sizeof block, 0, 0) == -1) {
        fprintf (stderr, PROG ": writing %" PRIu64 " to disk %c: %s\n",
                 n, "AB"[i], nbd_get_error ());
        exit (EXIT_FAILURE);
      }
    if (status && write_status (status, n) == -1)
      exit (EXIT_FAILURE);
    if (stop && stat (stop, &st) == 0)
      break;
  }
  for (i = 0; i < 2; ++i) {
    nbd_shutdown (h[i], 0);
    nbd_close (h[i]);
  }
  return 0;
}
