/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* ackwriter: seeded-random writes, zeroes and trims through several
 * connections, each logged before it is sent and again when it is
 * acknowledged, for the crash tests of change tracking.
 *
 * Notes on the design:
 *
 * Each connection (all opened before the first request) has its own
 * thread, PRNG stream and one request in flight at a time (synchronous libnbd calls), so requests of
 * different connections overlap in time.  Every log line is one
 * write(2) to a file opened O_APPEND, so lines never interleave and a
 * line is in the file before the request is sent ("S") or once it
 * was acknowledged ("A"):
 *
 *   S|A CONNECTION SEQUENCE write|zero|trim OFFSET LENGTH
 *
 * With --kill-after N --kill-pid PID, the thread that gets the Nth
 * acknowledgement sends SIGKILL to PID at once (the server the test
 * started), while the other connections' requests are in flight: a
 * crash at a point chosen by the seed, with no timing involved.  A
 * connection stops at its first error (the server is gone), or after
 * --ops requests in all.  Overlapping requests are allowed: the tests
 * compare the disk with a backup of it, not with a model.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <libnbd.h>

#include "parse.h"
#include "prng.h"

#define PROG "ackwriter"
#define MAX_CONNECTIONS 64
#define MAX_REQUEST (UINT64_C (4) * 1024 * 1024)

/* Options, set in main before any thread starts and never changed. */
static uint64_t seed;
static unsigned nr_connections = 4;
static uint64_t max_len = 256 * 1024;
static uint64_t ops = UINT64_MAX;
static uint64_t kill_after;
static pid_t kill_pid;
static int log_fd = -1;
static const char *uri;
static int64_t disk_size;

/* Counters, atomic. */
static uint64_t issued;
static uint64_t acked;

static const char *const kind_name[] = { "write", "zero", "trim" };

static void
log_line (char what, unsigned conn, uint64_t seq, int kind,
          uint64_t offset, uint64_t len)
{
  char line[128];
  int n = snprintf (line, sizeof line, "%c %u %" PRIu64 " %s %" PRIu64
                    " %" PRIu64 "\n", what, conn, seq, kind_name[kind],
                    offset, len);

  if (write (log_fd, line, n) != n) {
    perror (PROG ": log");
    exit (EXIT_FAILURE);
  }
}

/* Connected in main before any thread starts (so that a kill at the
 * first acknowledgement finds every connection open).
 */
static struct nbd_handle *handles[MAX_CONNECTIONS];

static void *
writer (void *arg)
{
  unsigned conn = (uintptr_t) arg;
  struct nbd_handle *nbd = handles[conn];
  struct prng r;
  uint8_t *buf = malloc (max_len);
  uint64_t seq;

  if (buf == NULL) {
    perror ("malloc");
    exit (EXIT_FAILURE);
  }
  prng_seed_stream (&r, seed, conn);
  for (seq = 0;; ++seq) {
    uint64_t len = (prng_next (&r) % (max_len / 512) + 1) * 512;
    uint64_t offset = (prng_next (&r) % ((disk_size - len) / 512 + 1)) * 512;
    uint64_t k = prng_next (&r) % 10;
    int kind = k < 6 ? 0 : k < 8 ? 1 : 2;
    uint64_t i;
    int ret;

    if (__atomic_fetch_add (&issued, 1, __ATOMIC_SEQ_CST) >= ops)
      break;
    for (i = 0; i < len; i += 8) {
      uint64_t v = prng_next (&r);
      memcpy (buf + i, &v, 8);
    }
    log_line ('S', conn, seq, kind, offset, len);
    switch (kind) {
    case 0: ret = nbd_pwrite (nbd, buf, len, offset, 0); break;
    case 1: ret = nbd_zero (nbd, len, offset, 0); break;
    default: ret = nbd_trim (nbd, len, offset, 0); break;
    }
    if (ret == -1)
      break;                    /* The server is gone. */
    log_line ('A', conn, seq, kind, offset, len);
    if (__atomic_add_fetch (&acked, 1, __ATOMIC_SEQ_CST) == kill_after &&
        kill_pid > 0)
      kill (kill_pid, SIGKILL);
  }
  nbd_close (nbd);
  free (buf);
  return NULL;
}

static void
usage (FILE *fp, int status)
{
  fprintf (fp,
           "Usage: %s [--seed N] [--connections N] [--max-len SIZE] "
           "[--ops N]\n"
           "          [--kill-after N --kill-pid PID] --log FILE URI\n"
           "Write, zero and trim at random through N connections, logging\n"
           "each request when sent (S) and when acknowledged (A).\n",
           PROG);
  exit (status);
}

int
main (int argc, char *argv[])
{
  static const struct option long_options[] = {
    { "seed",        required_argument, NULL, 's' },
    { "connections", required_argument, NULL, 'c' },
    { "max-len",     required_argument, NULL, 'm' },
    { "ops",         required_argument, NULL, 'o' },
    { "kill-after",  required_argument, NULL, 'k' },
    { "kill-pid",    required_argument, NULL, 'p' },
    { "log",         required_argument, NULL, 'l' },
    { "help",        no_argument,       NULL, 'h' },
    { NULL }
  };
  pthread_t threads[MAX_CONNECTIONS];
  struct nbd_handle *nbd;
  unsigned i;
  uint64_t v;
  int c;

  while ((c = getopt_long (argc, argv, "h", long_options, NULL)) != -1) {
    switch (c) {
    case 's':
      if (!parse_u64 (optarg, &seed)) usage (stderr, EXIT_FAILURE);
      break;
    case 'c':
      if (!parse_unsigned (optarg, 1, MAX_CONNECTIONS, &nr_connections))
        usage (stderr, EXIT_FAILURE);
      break;
    case 'm':
      if (!parse_size (optarg, &max_len) || max_len < 512 ||
          max_len > MAX_REQUEST || max_len % 512)
        usage (stderr, EXIT_FAILURE);
      break;
    case 'o':
      if (!parse_u64 (optarg, &ops)) usage (stderr, EXIT_FAILURE);
      break;
    case 'k':
      if (!parse_u64 (optarg, &kill_after)) usage (stderr, EXIT_FAILURE);
      break;
    case 'p':
      if (!parse_u64 (optarg, &v) || v < 2 || v > INT32_MAX)
        usage (stderr, EXIT_FAILURE);
      kill_pid = v;
      break;
    case 'l':
      log_fd = open (optarg, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                     0600);
      if (log_fd == -1) {
        perror (optarg);
        exit (EXIT_FAILURE);
      }
      break;
    case 'h':
      usage (stdout, EXIT_SUCCESS);
      break;
    default:
      usage (stderr, EXIT_FAILURE);
    }
  }
  if (optind != argc - 1 || log_fd == -1 || (kill_after > 0) != (kill_pid > 0))
    usage (stderr, EXIT_FAILURE);
  uri = argv[optind];

  nbd = nbd_create ();
  if (nbd == NULL || nbd_connect_uri (nbd, uri) == -1 ||
      (disk_size = nbd_get_size (nbd)) == -1) {
    fprintf (stderr, PROG ": %s\n", nbd_get_error ());
    exit (EXIT_FAILURE);
  }
  nbd_close (nbd);
  if ((uint64_t) disk_size < max_len)
    max_len = disk_size / 512 * 512;

  for (i = 0; i < nr_connections; ++i) {
    handles[i] = nbd_create ();
    if (handles[i] == NULL || nbd_connect_uri (handles[i], uri) == -1) {
      fprintf (stderr, PROG ": connection %u: %s\n", i, nbd_get_error ());
      exit (EXIT_FAILURE);
    }
  }
  for (i = 0; i < nr_connections; ++i) {
    errno = pthread_create (&threads[i], NULL, writer,
                            (void *) (uintptr_t) i);
    if (errno) {
      perror ("pthread_create");
      exit (EXIT_FAILURE);
    }
  }
  for (i = 0; i < nr_connections; ++i)
    pthread_join (threads[i], NULL);
  printf ("%" PRIu64 " acknowledged\n", acked);
  return EXIT_SUCCESS;
}
