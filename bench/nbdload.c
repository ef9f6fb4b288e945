/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdload: a load generator for the benchmarks.
 *
 * Notes on the design:
 *
 * One thread drives every connection through libnbd's asynchronous
 * API: a single poll(2) loop over all handles keeps --qd requests in
 * flight on each, resubmitting as completions arrive.  Because
 * everything (submission, libnbd's socket I/O, completion callbacks)
 * runs in this one thread, no locking is needed, and all requests can
 * share one data buffer: reads land in it and are thrown away, and
 * writes send its seeded-random contents.  One client thread keeps up
 * with nbdkit over a Unix socket for the request sizes we benchmark;
 * if it ever became the bottleneck, the fix would be one loop per
 * group of connections.
 *
 * Completion callbacks must not call libnbd on their own handle, so
 * they only record the latency and put the slot back on the free
 * list; the loop does the resubmitting.  They return 1, which retires
 * the command without nbd_aio_command_completed.
 *
 * Latency is measured per request with CLOCK_MONOTONIC, from just
 * before submission to the completion callback, so it includes the
 * client's own queueing.  Latencies go into a log-linear histogram
 * (64 buckets per power of two, about 1.5% resolution) rather than a
 * list, so long runs need no memory; the maximum is exact.
 *
 * Offsets are multiples of --bs from --offset, within [offset,
 * offset+length).  Random offsets come from a seeded PRNG; sequential
 * ones walk the range in order over all connections together and wrap
 * around.  --bytes is rounded up to whole requests.  --seconds stops
 * submitting at the deadline and then waits for the requests in
 * flight, which are counted; "seconds" in the output is the time
 * until the last of them completed.
 */

#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libnbd.h>

#include "parse.h"
#include "prng.h"

#define PROG "nbdload"

/* Largest --bs: well inside libnbd's and nbdkit's request limits. */
#define MAX_BS (UINT64_C (32) * 1024 * 1024)

#define MAX_QD 1024
#define MAX_CONNECTIONS 1024

/* Histogram: values below 2^(SUB_BITS+1) ns get a bucket each; above
 * that, each power of two is split into 2^SUB_BITS buckets.
 */
#define SUB_BITS 6
#define NR_BUCKETS ((64 - SUB_BITS + 1) << SUB_BITS)

/* Options, set in main and never changed afterwards. */
static bool op_write;
static bool pattern_seq;
static uint64_t bs = 4096;
static unsigned qd = 16;
static double seconds = 10;
static uint64_t target_bytes;          /* 0: run for seconds instead */
static unsigned nr_connections = 1;
static uint64_t seed = 0;
static uint64_t range_offset;
static uint64_t range_length;          /* 0: to the end of the export */

/* A request slot: one of the qd requests a connection may have in
 * flight.
 */
struct slot {
  struct conn *conn;
  unsigned index;
  struct timespec start;
};

struct conn {
  struct nbd_handle *nbd;
  struct slot *slots;
  unsigned *free_slots;                /* stack of free slot indexes */
  unsigned nr_free;
};

/* Run state: the loop and the completion callbacks share it, all in
 * one thread.
 */
static unsigned char *buf;             /* the shared data buffer */
static uint64_t nr_blocks;             /* range_length / bs */
static uint64_t seq_next;              /* next block for --pattern seq */
static uint64_t nr_submitted;
static uint64_t nr_in_flight;
static uint64_t nr_completed;
static bool failed;
static uint64_t histogram[NR_BUCKETS];
static uint64_t lat_max_ns;

/* Random offsets (common/include/prng.h). */
static struct prng prng;

static void __attribute__ ((noreturn))
usage (int status)
{
  if (status != 0) {
    fprintf (stderr, "Try '%s --help'.\n", PROG);
    exit (status);
  }
  printf ("Usage: %s --op read|write --pattern rand|seq [--bs SIZE] [--qd N]\n"
          "          [--seconds S | --bytes SIZE] [--connections N]\n"
          "          [--seed N] [--offset O --length L] URI\n"
          "\n"
          "Keep N requests in flight per connection and print one JSON line\n"
          "of throughput and latency.  SIZEs take K/M/G/T suffixes.\n"
          "\n"
          "  --op read|write     request type (required)\n"
          "  --pattern rand|seq  offsets random or sequential (required)\n"
          "  --bs SIZE           request size (default 4K, at most 32M)\n"
          "  --qd N              requests in flight per connection "
          "(default 16)\n"
          "  --seconds S         run time, may be fractional (default 10)\n"
          "  --bytes SIZE        run until SIZE bytes are transferred\n"
          "  --connections N     connections (default 1)\n"
          "  --seed N            seed for random offsets and data "
          "(default 0)\n"
          "  --offset O          start of the range used (default 0)\n"
          "  --length L          length of the range (default to the end)\n"
          "\n"
          "Exit status: 0 success, 1 failure, 2 usage error.\n",
          PROG);
  exit (0);
}

static void __attribute__ ((noreturn, format (printf, 1, 2)))
usage_error (const char *fs, ...)
{
  va_list args;

  fprintf (stderr, "%s: ", PROG);
  va_start (args, fs);
  vfprintf (stderr, fs, args);
  va_end (args);
  fprintf (stderr, "\n");
  usage (2);
}

static uint64_t
timespec_diff_ns (const struct timespec *a, const struct timespec *b)
{
  return (uint64_t) (b->tv_sec - a->tv_sec) * UINT64_C (1000000000) +
    b->tv_nsec - a->tv_nsec;
}

static double
now_s (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned
bucket_of (uint64_t ns)
{
  unsigned msb, shift;

  if (ns < (UINT64_C (2) << SUB_BITS))
    return ns;
  msb = 63 - __builtin_clzll (ns);
  shift = msb - SUB_BITS;
  return (shift << SUB_BITS) + (ns >> shift);
}

/* The midpoint of bucket i, in ns. */
static double
bucket_value (unsigned i)
{
  unsigned shift;
  uint64_t lower;

  if (i < (2u << SUB_BITS))
    return i;
  shift = (i >> SUB_BITS) - 1;
  lower = (uint64_t) (i - (shift << SUB_BITS)) << shift;
  return lower + ((UINT64_C (1) << shift) - 1) / 2.0;
}

/* The quantile of the recorded latencies at permille/1000, in ns. */
static double
quantile_ns (unsigned permille)
{
  uint64_t want = (nr_completed * permille + 999) / 1000, seen = 0;
  unsigned i;

  if (nr_completed == 0)
    return 0;
  if (want < 1)
    want = 1;
  for (i = 0; i < NR_BUCKETS; ++i) {
    seen += histogram[i];
    if (seen >= want) {
      /* The top bucket's midpoint may exceed the exact maximum. */
      double v = bucket_value (i);
      return v > lat_max_ns ? lat_max_ns : v;
    }
  }
  return lat_max_ns;
}

static int
completed (void *vp, int *error)
{
  struct slot *slot = vp;
  struct conn *conn = slot->conn;
  struct timespec end;
  uint64_t ns;

  clock_gettime (CLOCK_MONOTONIC, &end);
  if (*error != 0) {
    fprintf (stderr, "%s: %s failed: %s\n",
             PROG, op_write ? "write" : "read", strerror (*error));
    failed = true;
  }
  else {
    ns = timespec_diff_ns (&slot->start, &end);
    histogram[bucket_of (ns)]++;
    if (ns > lat_max_ns)
      lat_max_ns = ns;
    nr_completed++;
  }
  conn->free_slots[conn->nr_free++] = slot->index;
  nr_in_flight--;
  return 1;                             /* retire the command */
}

/* Submit one request on conn, which has a free slot. */
static int
submit (struct conn *conn)
{
  struct slot *slot = &conn->slots[conn->free_slots[--conn->nr_free]];
  nbd_completion_callback cb = { .callback = completed, .user_data = slot };
  uint64_t block, offset;
  int64_t r;

  if (pattern_seq) {
    block = seq_next++;
    if (seq_next == nr_blocks)
      seq_next = 0;
  }
  else
    block = prng_uniform (&prng, nr_blocks);
  offset = range_offset + block * bs;

  clock_gettime (CLOCK_MONOTONIC, &slot->start);
  if (op_write)
    r = nbd_aio_pwrite (conn->nbd, buf, bs, offset, cb, 0);
  else
    r = nbd_aio_pread (conn->nbd, buf, bs, offset, cb, 0);
  if (r == -1) {
    fprintf (stderr, "%s: %s at offset %" PRIu64 ": %s\n",
             PROG, op_write ? "write" : "read", offset, nbd_get_error ());
    conn->nr_free++;
    return -1;
  }
  nr_submitted++;
  nr_in_flight++;
  return 0;
}

/* Run the load.  Returns the elapsed seconds, or -1 on failure. */
static double
run (struct conn *conns)
{
  struct pollfd *fds = calloc (nr_connections, sizeof *fds);
  uint64_t max_requests = (target_bytes + bs - 1) / bs;
  double start, deadline, now;
  bool stopping = false;
  unsigned i;

  if (fds == NULL) {
    perror ("calloc");
    return -1;
  }

  start = now_s ();
  deadline = start + seconds;
  for (;;) {
    now = now_s ();
    if (target_bytes == 0 && now >= deadline)
      stopping = true;

    for (i = 0; !stopping && i < nr_connections; ++i) {
      while (conns[i].nr_free > 0) {
        if (target_bytes > 0 && nr_submitted >= max_requests) {
          stopping = true;
          break;
        }
        if (submit (&conns[i]) == -1)
          goto fail;
      }
    }
    if (stopping && nr_in_flight == 0)
      break;

    for (i = 0; i < nr_connections; ++i) {
      unsigned dir = nbd_aio_get_direction (conns[i].nbd);

      fds[i].fd = nbd_aio_get_fd (conns[i].nbd);
      fds[i].events = 0;
      fds[i].revents = 0;
      if (dir & LIBNBD_AIO_DIRECTION_READ)
        fds[i].events |= POLLIN;
      if (dir & LIBNBD_AIO_DIRECTION_WRITE)
        fds[i].events |= POLLOUT;
    }
    {
      int timeout = -1;

      /* Wake at the deadline (seconds <= 1e6, so this fits an int). */
      if (!stopping && target_bytes == 0)
        timeout = (int) ((deadline - now) * 1000) + 1;
      if (poll (fds, nr_connections, timeout) == -1) {
        if (errno == EINTR)
          continue;
        perror ("poll");
        goto fail;
      }
    }
    for (i = 0; i < nr_connections; ++i) {
      int r = 0;

      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
        r = nbd_aio_notify_read (conns[i].nbd);
      else if (fds[i].revents & POLLOUT)
        r = nbd_aio_notify_write (conns[i].nbd);
      if (r == -1) {
        fprintf (stderr, "%s: %s\n", PROG, nbd_get_error ());
        goto fail;
      }
    }
    if (failed)
      goto fail;
  }

  free (fds);
  return now_s () - start;

 fail:
  free (fds);
  return -1;
}

int
main (int argc, char *argv[])
{
  enum {
    OPT_OP = 256, OPT_PATTERN, OPT_BS, OPT_QD, OPT_SECONDS, OPT_BYTES,
    OPT_CONNECTIONS, OPT_SEED, OPT_OFFSET, OPT_LENGTH, OPT_HELP,
  };
  static const struct option long_options[] = {
    { "op",          required_argument, NULL, OPT_OP },
    { "pattern",     required_argument, NULL, OPT_PATTERN },
    { "bs",          required_argument, NULL, OPT_BS },
    { "qd",          required_argument, NULL, OPT_QD },
    { "seconds",     required_argument, NULL, OPT_SECONDS },
    { "bytes",       required_argument, NULL, OPT_BYTES },
    { "connections", required_argument, NULL, OPT_CONNECTIONS },
    { "seed",        required_argument, NULL, OPT_SEED },
    { "offset",      required_argument, NULL, OPT_OFFSET },
    { "length",      required_argument, NULL, OPT_LENGTH },
    { "help",        no_argument,       NULL, OPT_HELP },
    { NULL, 0, NULL, 0 }
  };
  const char *uri;
  const char *op_arg = NULL, *pattern_arg = NULL;
  bool have_seconds = false;
  struct conn *conns;
  uint64_t v, export_size, total_bytes;
  double elapsed;
  char *end;
  int c;
  unsigned i, j;

  while ((c = getopt_long (argc, argv, "", long_options, NULL)) != -1) {
    switch (c) {
    case OPT_OP:
      op_arg = optarg;
      if (strcmp (optarg, "read") == 0)
        op_write = false;
      else if (strcmp (optarg, "write") == 0)
        op_write = true;
      else
        usage_error ("--op: expected read or write, got '%s'", optarg);
      break;
    case OPT_PATTERN:
      pattern_arg = optarg;
      if (strcmp (optarg, "rand") == 0)
        pattern_seq = false;
      else if (strcmp (optarg, "seq") == 0)
        pattern_seq = true;
      else
        usage_error ("--pattern: expected rand or seq, got '%s'", optarg);
      break;
    case OPT_BS:
      if (!parse_size (optarg, &bs) || bs < 1 || bs > MAX_BS)
        usage_error ("--bs: expected a size from 1 to 32M, got '%s'", optarg);
      break;
    case OPT_QD:
      if (!parse_unsigned (optarg, 1, MAX_QD, &qd))
        usage_error ("--qd: expected an integer 1..%d, got '%s'",
                     MAX_QD, optarg);
      break;
    case OPT_SECONDS:
      errno = 0;
      seconds = strtod (optarg, &end);
      if (errno != 0 || end == optarg || *end != '\0' ||
          !(seconds > 0) || seconds > 1e6)
        usage_error ("--seconds: expected a positive number, got '%s'",
                     optarg);
      have_seconds = true;
      break;
    case OPT_BYTES:
      if (!parse_size (optarg, &target_bytes) || target_bytes == 0)
        usage_error ("--bytes: expected a size greater than 0, got '%s'",
                     optarg);
      break;
    case OPT_CONNECTIONS:
      if (!parse_unsigned (optarg, 1, MAX_CONNECTIONS, &nr_connections))
        usage_error ("--connections: expected an integer 1..%d, got '%s'",
                     MAX_CONNECTIONS, optarg);
      break;
    case OPT_SEED:
      if (!parse_u64 (optarg, &seed))
        usage_error ("--seed: expected an unsigned integer, got '%s'", optarg);
      break;
    case OPT_OFFSET:
      if (!parse_size (optarg, &range_offset))
        usage_error ("--offset: expected a size, got '%s'", optarg);
      break;
    case OPT_LENGTH:
      if (!parse_size (optarg, &range_length) || range_length == 0)
        usage_error ("--length: expected a size greater than 0, got '%s'",
                     optarg);
      break;
    case OPT_HELP:
      usage (0);
    default:
      /* getopt_long has already named the bad option. */
      usage (2);
    }
  }
  if (op_arg == NULL)
    usage_error ("--op is required");
  if (pattern_arg == NULL)
    usage_error ("--pattern is required");
  if (have_seconds && target_bytes > 0)
    usage_error ("--seconds and --bytes cannot be used together");
  if (optind >= argc)
    usage_error ("missing URI");
  if (optind + 1 < argc)
    usage_error ("unexpected argument '%s' after the URI", argv[optind + 1]);
  uri = argv[optind];

  conns = calloc (nr_connections, sizeof *conns);
  if (conns == NULL) {
    perror ("calloc");
    exit (1);
  }
  for (i = 0; i < nr_connections; ++i) {
    struct conn *conn = &conns[i];

    conn->nbd = nbd_create ();
    if (conn->nbd == NULL) {
      fprintf (stderr, "%s: %s\n", PROG, nbd_get_error ());
      exit (1);
    }
    /* Reads are thrown away: don't pay for zeroing the buffer. */
    nbd_set_pread_initialize (conn->nbd, false);
    if (nbd_connect_uri (conn->nbd, uri) == -1) {
      fprintf (stderr, "%s: %s: %s\n", PROG, uri, nbd_get_error ());
      exit (1);
    }
    conn->slots = calloc (qd, sizeof *conn->slots);
    conn->free_slots = calloc (qd, sizeof *conn->free_slots);
    if (conn->slots == NULL || conn->free_slots == NULL) {
      perror ("calloc");
      exit (1);
    }
    for (j = 0; j < qd; ++j) {
      conn->slots[j].conn = conn;
      conn->slots[j].index = j;
      conn->free_slots[j] = qd - 1 - j;
    }
    conn->nr_free = qd;
  }

  {
    int64_t size = nbd_get_size (conns[0].nbd);

    if (size == -1) {
      fprintf (stderr, "%s: %s: %s\n", PROG, uri, nbd_get_error ());
      exit (1);
    }
    export_size = size;
  }
  if (range_offset >= export_size) {
    fprintf (stderr, "%s: --offset %" PRIu64 " is not inside the export "
             "(%" PRIu64 " bytes)\n", PROG, range_offset, export_size);
    exit (1);
  }
  if (range_length == 0)
    range_length = export_size - range_offset;
  if (range_length > export_size - range_offset) {
    fprintf (stderr, "%s: --offset %" PRIu64 " --length %" PRIu64
             " goes past the end of the export (%" PRIu64 " bytes)\n",
             PROG, range_offset, range_length, export_size);
    exit (1);
  }
  nr_blocks = range_length / bs;
  if (nr_blocks == 0) {
    fprintf (stderr, "%s: the range (%" PRIu64 " bytes) is smaller than "
             "--bs (%" PRIu64 ")\n", PROG, range_length, bs);
    exit (1);
  }
  if (op_write && nbd_is_read_only (conns[0].nbd) == 1) {
    fprintf (stderr, "%s: %s: the export is read-only\n", PROG, uri);
    exit (1);
  }

  /* Random data, so that nothing on the way can shortcut zeroes. */
  prng_seed (&prng, seed);
  buf = malloc (bs);
  if (buf == NULL) {
    perror ("malloc");
    exit (1);
  }
  for (v = 0; v < bs; v += 8) {
    uint64_t r = prng_next (&prng);
    memcpy (buf + v, &r, bs - v < 8 ? bs - v : 8);
  }

  elapsed = run (conns);
  if (elapsed < 0)
    exit (1);

  total_bytes = nr_completed * bs;
  printf ("{\"op\":\"%s\",\"pattern\":\"%s\",\"bs\":%" PRIu64 ","
          "\"qd\":%u,\"connections\":%u,\"seconds\":%.3f,"
          "\"ops\":%" PRIu64 ",\"bytes\":%" PRIu64 ","
          "\"iops\":%.1f,\"mib_per_s\":%.2f,"
          "\"lat_us_p50\":%.1f,\"lat_us_p99\":%.1f,\"lat_us_max\":%.1f}\n",
          op_arg, pattern_arg, bs, qd, nr_connections, elapsed,
          nr_completed, total_bytes,
          elapsed > 0 ? nr_completed / elapsed : 0,
          elapsed > 0 ? total_bytes / elapsed / (1024 * 1024) : 0,
          quantile_ns (500) / 1000, quantile_ns (990) / 1000,
          lat_max_ns / 1000.0);

  for (i = 0; i < nr_connections; ++i) {
    nbd_shutdown (conns[i].nbd, 0);
    nbd_close (conns[i].nbd);
    free (conns[i].slots);
    free (conns[i].free_slots);
  }
  free (conns);
  free (buf);
  if (fflush (stdout) == EOF) {
    perror ("stdout");
    exit (1);
  }
  exit (0);
}
