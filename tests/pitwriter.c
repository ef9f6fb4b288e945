/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* pitwriter: the writer half of the point-in-time oracle.
 *
 * Notes on the design:
 *
 * pitwriter issues a seeded-random stream of writes, zeroes and trims
 * to an NBD export over several connections at once, and keeps a
 * model: a raw file holding exactly what the export must hold after
 * every acknowledged request.  A test snapshots the model before the
 * run (that is what a point-in-time backup must contain) and compares
 * the export with the model afterwards.
 *
 * The model is only exact if no two overlapping requests are ever in
 * flight together, because the server may apply overlapping requests
 * in either order.  So every request first takes its byte range in a
 * range lock (a mutex, a condition variable and one in-flight slot per
 * thread), applies itself to the model, is issued and acknowledged,
 * and only then releases the range.  Requests on disjoint ranges run
 * in parallel, which is the point: the filter under test sees real
 * concurrency on every connection.
 *
 * Zero and trim are both modelled as zeroes.  NBD lets a trimmed range
 * read back as anything, but the plugins we test under (file, memory)
 * read trimmed ranges as zeroes, and the oracle depends on that.
 *
 * Reproducibility: thread i issues a fixed share of --ops and draws
 * kind, offset, length and data from its own PRNG seeded from (seed,
 * i).  So a seed always issues the same requests; only their
 * interleaving between threads, and so the final contents where
 * requests overlap, may differ from run to run.  The model follows
 * whatever interleaving happened.
 *
 * Not done: flush and FUA (the oracle checks contents, not
 * durability), reads during the run, and splitting requests larger
 * than the server's maximum block size (--max-len is capped at 32M).
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libnbd.h>

#include "cleanup.h"
#include "prng.h"
#include "parse.h"

#define PROG "pitwriter"

/* Largest --max-len: well inside libnbd's and nbdkit's request limits. */
#define MAX_REQUEST (UINT64_C (32) * 1024 * 1024)

/* Largest --connections. */
#define MAX_CONNECTIONS 1024

/* Chunk size for --verify reads. */
#define VERIFY_CHUNK (UINT64_C (4) * 1024 * 1024)

enum kind { KIND_WRITE = 0, KIND_ZERO, KIND_TRIM, NR_KINDS };
static const char *const kind_name[NR_KINDS] = { "write", "zero", "trim" };

/* Options, set in main before any thread starts and never changed. */
static uint64_t seed = 0;
static unsigned nr_connections = 4;
static uint64_t nr_ops = 1000;
static uint64_t max_len = 1024 * 1024;
static uint64_t align = 1;
static bool kind_enabled[NR_KINDS] = { true, true, true };
static const char *model_path;
static bool verify;
static bool quiet;

/* Fields set in main before any thread starts and never changed. */
static uint64_t export_size;
static unsigned char *model;           /* mmap of the model file */
static enum kind kinds[NR_KINDS];      /* the enabled kinds */
static unsigned nr_kinds;

/* The range lock.  Slot i of ranges[] belongs to thread i and is
 * busy while that thread has a request in flight.  range_cond is
 * broadcast whenever a slot is released.
 */
struct range {
  bool busy;
  uint64_t offset;
  uint64_t len;
};

/* This lock protects ranges[] and failed. */
static pthread_mutex_t range_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t range_cond = PTHREAD_COND_INITIALIZER;
static struct range *ranges;
static bool failed;                    /* a request failed: stop */

struct worker {
  /* Fields set before the thread starts. */
  unsigned index;
  pthread_t thread;
  struct nbd_handle *nbd;
  uint64_t nr_ops;

  /* Written only by the thread, read by main after joining it. */
  uint64_t count[NR_KINDS];
  uint64_t bytes[NR_KINDS];
};

static void __attribute__ ((noreturn))
usage (int status)
{
  FILE *fp = status == 0 ? stdout : stderr;

  if (status != 0) {
    fprintf (fp, "Try '%s --help'.\n", PROG);
    exit (status);
  }
  fprintf (fp,
           "Usage: %s [--seed N] [--connections N] [--ops N] [--max-len SIZE]\n"
           "          [--kinds write,zero,trim] [--align N] --model FILE\n"
           "          [--verify] [--quiet] URI\n"
           "\n"
           "Issue seeded-random writes, zeroes and trims to URI over N\n"
           "connections, never two overlapping requests at once, applying\n"
           "each to FILE (a raw image the size of the export) so that FILE\n"
           "ends up holding what the export must hold.\n"
           "\n"
           "  --seed N           PRNG seed (default 0)\n"
           "  --connections N    connections and threads (default 4)\n"
           "  --ops N            total requests (default 1000)\n"
           "  --max-len SIZE     largest request, K/M/G suffix (default 1M)\n"
           "  --kinds LIST       kinds to issue (default write,zero,trim)\n"
           "  --align N          offsets, lengths multiples of N (default 1)\n"
           "  --model FILE       the model image (required)\n"
           "  --verify           afterwards read the export back and compare\n"
           "  --quiet            print no summary\n"
           "\n"
           "Exit status: 0 success, 1 failure or mismatch, 2 usage error.\n",
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

/* Parse --kinds: a comma-separated subset of write,zero,trim. */
static void
parse_kinds (const char *str)
{
  CLEANUP_FREE char *copy = strdup (str);
  char *tok, *saveptr = NULL;
  unsigned k;

  if (copy == NULL) {
    perror ("strdup");
    exit (1);
  }
  for (k = 0; k < NR_KINDS; ++k)
    kind_enabled[k] = false;
  for (tok = strtok_r (copy, ",", &saveptr); tok != NULL;
       tok = strtok_r (NULL, ",", &saveptr)) {
    for (k = 0; k < NR_KINDS; ++k) {
      if (strcmp (tok, kind_name[k]) == 0) {
        kind_enabled[k] = true;
        break;
      }
    }
    if (k == NR_KINDS)
      usage_error ("--kinds: unknown kind '%s' (expected write, zero or trim)",
                   tok);
  }
  for (k = 0; k < NR_KINDS; ++k)
    if (kind_enabled[k])
      return;
  usage_error ("--kinds: no kinds given");
}

static unsigned
log2_floor (uint64_t v)
{
  unsigned r = 0;

  while (v >>= 1)
    r++;
  return r;
}

/* A request length in [1, max_len], a multiple of align.  Three times
 * in four it is log-uniform (each power-of-two octave equally likely,
 * so small requests dominate); otherwise uniform over the whole range,
 * which gives large requests a fair share.
 */
static uint64_t
pick_length (struct prng *r)
{
  uint64_t len;

  if (prng_uniform (r, 4) == 0)
    len = 1 + prng_uniform (r, max_len);
  else {
    unsigned b = prng_uniform (r, log2_floor (max_len) + 1);
    uint64_t lo = UINT64_C (1) << b;
    uint64_t hi = 2 * lo - 1;

    if (hi > max_len)
      hi = max_len;
    len = lo + prng_uniform (r, hi - lo + 1);
  }

  /* Round up to align, or down if that passes max_len (max_len >=
   * align, so the result is never 0).
   */
  len = (len + align - 1) / align * align;
  if (len > max_len)
    len -= align;
  return len;
}

/* True if [offset, offset+len) overlaps no other thread's range.
 * Call with range_lock held.
 */
static bool
range_is_free (unsigned self, uint64_t offset, uint64_t len)
{
  unsigned i;

  for (i = 0; i < nr_connections; ++i) {
    if (i == self || !ranges[i].busy)
      continue;
    if (offset < ranges[i].offset + ranges[i].len &&
        ranges[i].offset < offset + len)
      return false;
  }
  return true;
}

/* Wait until [offset, offset+len) is free, then mark it in flight for
 * thread self.  Returns false (holding nothing) if another thread has
 * failed and we should stop.
 */
static bool
range_acquire (unsigned self, uint64_t offset, uint64_t len)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&range_lock);

  while (!failed && !range_is_free (self, offset, len))
    pthread_cond_wait (&range_cond, &range_lock);
  if (failed)
    return false;
  ranges[self].busy = true;
  ranges[self].offset = offset;
  ranges[self].len = len;
  return true;
}

/* Release thread self's range, recording whether its request failed. */
static void
range_release (unsigned self, bool request_failed)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&range_lock);

  ranges[self].busy = false;
  if (request_failed)
    failed = true;
  pthread_cond_broadcast (&range_cond);
}

static void *
worker_run (void *vp)
{
  struct worker *w = vp;
  struct prng r;
  CLEANUP_FREE unsigned char *buf = malloc (max_len);
  uint64_t i;

  if (buf == NULL) {
    perror ("malloc");
    range_release (w->index, true);
    return NULL;
  }
  prng_seed_stream (&r, seed, w->index);

  for (i = 0; i < w->nr_ops; ++i) {
    enum kind kind = kinds[prng_uniform (&r, nr_kinds)];
    uint64_t len = pick_length (&r);
    uint64_t offset = prng_uniform (&r, export_size) / align * align;
    int ret;

    if (len > export_size - offset)
      len = export_size - offset;
    if (kind == KIND_WRITE)
      prng_fill (&r, buf, len);

    if (!range_acquire (w->index, offset, len))
      return NULL;

    /* The range is ours: nothing else reads or writes it, in the
     * model or on the export, until we release it.
     */
    switch (kind) {
    case KIND_WRITE:
      memcpy (model + offset, buf, len);
      ret = nbd_pwrite (w->nbd, buf, len, offset, 0);
      break;
    case KIND_ZERO:
      memset (model + offset, 0, len);
      ret = nbd_zero (w->nbd, len, offset, 0);
      break;
    case KIND_TRIM:
      memset (model + offset, 0, len);
      ret = nbd_trim (w->nbd, len, offset, 0);
      break;
    default:
      abort ();
    }
    if (ret == -1)
      fprintf (stderr, "%s: %s at offset %" PRIu64 " length %" PRIu64
               " (connection %u): %s\n",
               PROG, kind_name[kind], offset, len, w->index,
               nbd_get_error ());

    range_release (w->index, ret == -1);
    if (ret == -1)
      return NULL;
    w->count[kind]++;
    w->bytes[kind] += len;
  }
  return NULL;
}

/* Read the whole export through nbd and compare it with the model.
 * Returns 0 if they match, -1 (having said why) if not.
 */
static int
verify_export (struct nbd_handle *nbd)
{
  uint64_t chunk = VERIFY_CHUNK;
  int64_t max_block = nbd_get_block_size (nbd, LIBNBD_SIZE_MAXIMUM);
  CLEANUP_FREE unsigned char *buf = NULL;
  uint64_t offset, n, i;

  if (max_block > 0 && (uint64_t) max_block < chunk)
    chunk = max_block;
  buf = malloc (chunk);
  if (buf == NULL) {
    perror ("malloc");
    return -1;
  }

  for (offset = 0; offset < export_size; offset += n) {
    n = export_size - offset;
    if (n > chunk)
      n = chunk;
    if (nbd_pread (nbd, buf, n, offset, 0) == -1) {
      fprintf (stderr, "%s: verify: read at offset %" PRIu64
               " length %" PRIu64 ": %s\n",
               PROG, offset, n, nbd_get_error ());
      return -1;
    }
    if (memcmp (buf, model + offset, n) != 0) {
      for (i = 0; buf[i] == model[offset + i]; ++i)
        ;
      fprintf (stderr, "%s: verify: export and model differ, "
               "first at offset %" PRIu64 " (export 0x%02x, model 0x%02x)\n",
               PROG, offset + i, buf[i], model[offset + i]);
      return -1;
    }
  }
  return 0;
}

int
main (int argc, char *argv[])
{
  enum {
    OPT_SEED = 256, OPT_CONNECTIONS, OPT_OPS, OPT_MAX_LEN, OPT_KINDS,
    OPT_ALIGN, OPT_MODEL, OPT_VERIFY, OPT_QUIET, OPT_HELP,
  };
  static const struct option long_options[] = {
    { "seed",        required_argument, NULL, OPT_SEED },
    { "connections", required_argument, NULL, OPT_CONNECTIONS },
    { "ops",         required_argument, NULL, OPT_OPS },
    { "max-len",     required_argument, NULL, OPT_MAX_LEN },
    { "kinds",       required_argument, NULL, OPT_KINDS },
    { "align",       required_argument, NULL, OPT_ALIGN },
    { "model",       required_argument, NULL, OPT_MODEL },
    { "verify",      no_argument,       NULL, OPT_VERIFY },
    { "quiet",       no_argument,       NULL, OPT_QUIET },
    { "help",        no_argument,       NULL, OPT_HELP },
    { NULL, 0, NULL, 0 }
  };
  const char *uri;
  uint64_t v;
  int c, fd, status = 0;
  unsigned i, k;
  struct nbd_handle **nbd;
  struct worker *workers;
  struct stat st;
  uint64_t total_count = 0, total_bytes = 0;

  while ((c = getopt_long (argc, argv, "", long_options, NULL)) != -1) {
    switch (c) {
    case OPT_SEED:
      if (!parse_u64 (optarg, &seed))
        usage_error ("--seed: expected an unsigned integer, got '%s'", optarg);
      break;
    case OPT_CONNECTIONS:
      if (!parse_unsigned (optarg, 1, MAX_CONNECTIONS, &nr_connections))
        usage_error ("--connections: expected an integer 1..%d, got '%s'",
                     MAX_CONNECTIONS, optarg);
      break;
    case OPT_OPS:
      if (!parse_u64 (optarg, &nr_ops))
        usage_error ("--ops: expected an unsigned integer, got '%s'", optarg);
      break;
    case OPT_MAX_LEN:
      if (!parse_size (optarg, &v) || v < 1 || v > MAX_REQUEST)
        usage_error ("--max-len: expected a size from 1 to 32M, got '%s'",
                     optarg);
      max_len = v;
      break;
    case OPT_KINDS:
      parse_kinds (optarg);
      break;
    case OPT_ALIGN:
      if (!parse_size (optarg, &v) || v < 1 || v > MAX_REQUEST)
        usage_error ("--align: expected a size from 1 to 32M, got '%s'",
                     optarg);
      align = v;
      break;
    case OPT_MODEL:
      model_path = optarg;
      break;
    case OPT_VERIFY:
      verify = true;
      break;
    case OPT_QUIET:
      quiet = true;
      break;
    case OPT_HELP:
      usage (0);
    default:
      /* getopt_long has already named the bad option. */
      usage (2);
    }
  }
  if (model_path == NULL)
    usage_error ("--model is required");
  if (optind >= argc)
    usage_error ("missing URI");
  if (optind + 1 < argc)
    usage_error ("unexpected argument '%s' after the URI", argv[optind + 1]);
  uri = argv[optind];
  if (align > max_len)
    usage_error ("--align (%" PRIu64 ") is larger than --max-len (%" PRIu64 ")",
                 align, max_len);

  /* Connect every handle before starting any thread, so that setup
   * errors are reported once and the export's properties are known.
   */
  nbd = calloc (nr_connections, sizeof *nbd);
  workers = calloc (nr_connections, sizeof *workers);
  ranges = calloc (nr_connections, sizeof *ranges);
  if (nbd == NULL || workers == NULL || ranges == NULL) {
    perror ("calloc");
    exit (1);
  }
  for (i = 0; i < nr_connections; ++i) {
    nbd[i] = nbd_create ();
    if (nbd[i] == NULL || nbd_connect_uri (nbd[i], uri) == -1) {
      fprintf (stderr, "%s: %s: %s\n", PROG, uri, nbd_get_error ());
      exit (1);
    }
  }
  {
    int64_t size = nbd_get_size (nbd[0]);

    if (size == -1) {
      fprintf (stderr, "%s: %s: %s\n", PROG, uri, nbd_get_error ());
      exit (1);
    }
    export_size = size;
  }

  if (nr_ops > 0) {
    if (export_size == 0) {
      fprintf (stderr, "%s: %s: the export is empty\n", PROG, uri);
      exit (1);
    }
    if (nbd_is_read_only (nbd[0]) == 1) {
      fprintf (stderr, "%s: %s: the export is read-only\n", PROG, uri);
      exit (1);
    }
    if (kind_enabled[KIND_ZERO] && nbd_can_zero (nbd[0]) != 1) {
      fprintf (stderr, "%s: the server does not support zero: "
               "not issuing zero requests\n", PROG);
      kind_enabled[KIND_ZERO] = false;
    }
    if (kind_enabled[KIND_TRIM] && nbd_can_trim (nbd[0]) != 1) {
      fprintf (stderr, "%s: the server does not support trim: "
               "not issuing trim requests\n", PROG);
      kind_enabled[KIND_TRIM] = false;
    }
    for (k = 0; k < NR_KINDS; ++k)
      if (kind_enabled[k])
        kinds[nr_kinds++] = k;
    if (nr_kinds == 0) {
      fprintf (stderr, "%s: no request kind left to issue\n", PROG);
      exit (1);
    }
  }

  /* Map the model.  With no ops it is only read. */
  fd = open (model_path, nr_ops > 0 ? O_RDWR : O_RDONLY);
  if (fd == -1 || fstat (fd, &st) == -1) {
    fprintf (stderr, "%s: %s: %m\n", PROG, model_path);
    exit (1);
  }
  if ((uint64_t) st.st_size != export_size) {
    fprintf (stderr, "%s: %s: the model is %" PRIu64 " bytes "
             "but the export is %" PRIu64 " bytes\n",
             PROG, model_path, (uint64_t) st.st_size, export_size);
    exit (1);
  }
  if (export_size > 0) {
    model = mmap (NULL, export_size,
                  nr_ops > 0 ? PROT_READ | PROT_WRITE : PROT_READ,
                  MAP_SHARED, fd, 0);
    if (model == MAP_FAILED) {
      fprintf (stderr, "%s: mmap: %s: %m\n", PROG, model_path);
      exit (1);
    }
  }

  /* Share the ops out: thread i always gets the same count. */
  for (i = 0; i < nr_connections; ++i) {
    workers[i].index = i;
    workers[i].nbd = nbd[i];
    workers[i].nr_ops = nr_ops / nr_connections +
      (i < nr_ops % nr_connections ? 1 : 0);
  }
  if (nr_ops > 0) {
    for (i = 0; i < nr_connections; ++i) {
      int err = pthread_create (&workers[i].thread, NULL,
                                worker_run, &workers[i]);
      if (err != 0) {
        errno = err;
        perror ("pthread_create");
        exit (1);
      }
    }
    for (i = 0; i < nr_connections; ++i) {
      int err = pthread_join (workers[i].thread, NULL);
      if (err != 0) {
        errno = err;
        perror ("pthread_join");
        exit (1);
      }
    }
  }
  if (failed)
    status = 1;

  if (status == 0 && verify && verify_export (nbd[0]) == -1)
    status = 1;

  if (status == 0 && !quiet) {
    printf ("seed=%" PRIu64 " connections=%u", seed, nr_connections);
    for (k = 0; k < NR_KINDS; ++k) {
      uint64_t count = 0, bytes = 0;

      for (i = 0; i < nr_connections; ++i) {
        count += workers[i].count[k];
        bytes += workers[i].bytes[k];
      }
      printf (" %s=%" PRIu64 " %s_bytes=%" PRIu64,
              kind_name[k], count, kind_name[k], bytes);
      total_count += count;
      total_bytes += bytes;
    }
    printf (" ops=%" PRIu64 " bytes=%" PRIu64 " verified=%s\n",
            total_count, total_bytes, verify ? "yes" : "no");
  }

  if (model != NULL && munmap (model, export_size) == -1) {
    fprintf (stderr, "%s: munmap: %s: %m\n", PROG, model_path);
    status = 1;
  }
  if (close (fd) == -1) {
    fprintf (stderr, "%s: close: %s: %m\n", PROG, model_path);
    status = 1;
  }
  for (i = 0; i < nr_connections; ++i) {
    if (status == 0)
      nbd_shutdown (nbd[i], 0);
    nbd_close (nbd[i]);
  }
  free (nbd);
  free (workers);
  free (ranges);
  if (fflush (stdout) == EOF) {
    perror ("stdout");
    status = 1;
  }
  exit (status);
}
