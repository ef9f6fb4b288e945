/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup pull [OPTIONS] SOURCE-URI TARGET
 *
 * Copy an NBD export (typically a read-only point-in-time snapshot
 * export) to a new raw file, a new qcow2 image or an existing NBD
 * export.  This file is the subcommand's face: options, the order of
 * the steps, and the JSON summary.  The copy itself is copy.c, the
 * targets are target-*.c.
 *
 * The order matters for invariant 3 (no silent half-backups): check
 * that TARGET may be written before connecting anywhere, connect to
 * the source before creating anything, create TARGET.incomplete, copy,
 * flush, and only then rename it to TARGET.
 */

#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <json.h>

#include "files.h"
#include "ispowerof2.h"
#include "nbd-uri.h"
#include "nbdkit-stubs.h"
#include "parse.h"
#include "chain.h"
#include "copy.h"
#include "discard.h"
#include "disconnect.h"
#include "nbdbackup.h"
#include "source.h"
#include "target.h"

#define MIB (1024.0 * 1024.0)

#define DEFAULT_REQUESTS 16
#define MAX_REQUESTS 1024
#define DEFAULT_CONNECTIONS 1
#define MAX_CONNECTIONS 64
#define DEFAULT_CHUNK (1024 * 1024)
#define MIN_CHUNK 4096
#define MAX_CHUNK (32 * 1024 * 1024)
/* Refuse option combinations that would need more buffer memory. */
#define MAX_BUFFERS (UINT64_C (4) << 30)

/* What the user asked for. */
struct pull {
  const char *source;
  const char *target;
  struct target_options topts;  /* format settled by target_format_of */
  bool force;                   /* replace an existing TARGET */
  bool break_chain;             /* --force-break-chain */
  const char *control;          /* --control: the server's socket */
  unsigned connections;
  struct copy_options copy;
  bool json;
  bool discard_source;          /* --discard-source */
};

static void
pull_usage (const char *cmd)
{
  printf ("Usage: %s [OPTIONS] SOURCE-URI TARGET\n"
          "\n"
          "Copy the NBD export SOURCE-URI (for example a point-in-time "
          "snapshot\n"
          "export) to TARGET: a raw file, a new qcow2 image, or an NBD "
          "URI.\n"
          "A file TARGET is written as TARGET.incomplete and renamed to "
          "TARGET\n"
          "only when it is complete and flushed.\n"
          "\n"
          "Target:\n"
          "  -f, --format=raw|qcow2    format of a file TARGET (default: "
          "qcow2 if\n"
          "                            TARGET ends in .qcow2 or .qcow, else "
          "raw)\n"
          "      --cluster-size=SIZE   qcow2 cluster size, 512 to 2M "
          "(default 64K)\n"
          "  -b, --backing=FILE        qcow2 backing file, relative to "
          "TARGET's\n"
          "                            directory (default: none)\n"
          "  -F, --backing-format=raw|qcow2\n"
          "                            format of FILE (default: probed)\n"
          "      --force               replace an existing TARGET, unless "
          "qcow2\n"
          "                            images beside it use it as backing "
          "file\n"
          "      --force-break-chain   replace it even then (breaks those "
          "images)\n"
          "      --incremental         copy only what SOURCE-URI reports as "
          "allocated\n"
          "                            (e.g. a dirty:BITMAP export) into a "
          "qcow2\n"
          "                            overlay of --backing (the previous "
          "backup)\n"
          "      --discard-source      trim SOURCE-URI behind the copy, "
          "so that a\n"
          "                            fleece snapshot gives back its "
          "store space\n"
          "                            (needs fleece-discard-source=true; "
          "the\n"
          "                            snapshot cannot be read again)\n"
          "\n"
          "Copying:\n"
          "  -C, --connections=N       connections to the source and to an "
          "NBD\n"
          "                            target (default %d)\n"
          "  -R, --requests=N          requests in flight per connection "
          "(default %d)\n"
          "      --chunk=SIZE          largest request, a power of 2 from "
          "4K to 32M\n"
          "                            (default 1M)\n"
          "\n"
          "Output:\n"
          "      --progress            show the progress bar even if stderr "
          "is not\n"
          "                            a terminal\n"
          "      --no-progress         never show the progress bar\n"
          "      --json                print a JSON summary on stdout at "
          "the end\n"
          "      --control=SOCKET      the source server's control socket: "
          "if it\n"
          "                            refuses SOURCE-URI's export, ask it "
          "why\n"
          HELP_VERBOSE_HELP
          "\n"
          "SIZEs take K, M, G or T suffixes.  SOURCE-URI and an NBD TARGET "
          "are\n"
          "NBD URIs (nbd://HOST[:PORT]/EXPORT, "
          "nbd+unix:///EXPORT?socket=PATH).\n"
          "\n"
          "Exit status: 0 success, 1 the copy failed, 2 usage error.\n"
          "See nbdbackup(1).\n",
          cmd, DEFAULT_CONNECTIONS, DEFAULT_REQUESTS);
}

/* Parse the options into *p.  Returns -1 to go on, else an exit
 * status (--help, or a usage error already printed).
 */
static int
parse_options (int argc, char *argv[], struct pull *p)
{
  enum {
    OPT_CLUSTER_SIZE = 256, OPT_FORCE, OPT_CHUNK, OPT_PROGRESS,
    OPT_NO_PROGRESS, OPT_JSON, OPT_INCREMENTAL, OPT_FORCE_BREAK_CHAIN,
    OPT_CONTROL, OPT_DISCARD_SOURCE,
  };
  static const char short_options[] = "b:C:F:f:hR:v";
  static const struct option long_options[] = {
    { "backing",        required_argument, NULL, 'b' },
    { "backing-format", required_argument, NULL, 'F' },
    { "chunk",          required_argument, NULL, OPT_CHUNK },
    { "cluster-size",   required_argument, NULL, OPT_CLUSTER_SIZE },
    { "connections",    required_argument, NULL, 'C' },
    { "control",        required_argument, NULL, OPT_CONTROL },
    { "discard-source", no_argument,       NULL, OPT_DISCARD_SOURCE },
    { "force",          no_argument,       NULL, OPT_FORCE },
    { "force-break-chain", no_argument,    NULL, OPT_FORCE_BREAK_CHAIN },
    { "format",         required_argument, NULL, 'f' },
    { "help",           no_argument,       NULL, 'h' },
    { "incremental",    no_argument,       NULL, OPT_INCREMENTAL },
    { "json",           no_argument,       NULL, OPT_JSON },
    { "no-progress",    no_argument,       NULL, OPT_NO_PROGRESS },
    { "progress",       no_argument,       NULL, OPT_PROGRESS },
    { "requests",       required_argument, NULL, 'R' },
    { "verbose",        no_argument,       NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  const char *cmd = argv[0];
  enum target_format format = TARGET_AUTO;
  int progress = -1;            /* -1 = if stderr is a terminal */
  uint64_t v;
  int c, r;

  while ((c = getopt_long (argc, argv, short_options, long_options,
                           NULL)) != -1) {
    switch (c) {
    case 'b':
      if (*optarg == '\0')
        return usage_error (cmd, "--backing: empty file name");
      p->topts.backing = optarg;
      break;
    case 'F':
      if (strcmp (optarg, "raw") != 0 && strcmp (optarg, "qcow2") != 0)
        return usage_error (cmd, "--backing-format: expected raw or qcow2, "
                            "got '%s'", optarg);
      p->topts.backing_format = optarg;
      break;
    case 'f':
      if (strcmp (optarg, "raw") != 0 && strcmp (optarg, "qcow2") != 0)
        return usage_error (cmd, "--format: expected raw or qcow2, got '%s'",
                            optarg);
      target_parse_format (optarg, &format);
      break;
    case OPT_CLUSTER_SIZE:
      if (!parse_size (optarg, &v) || v < 512 || v > 2 * 1024 * 1024 ||
          !is_power_of_2 (v))
        return usage_error (cmd, "--cluster-size: expected a power of 2 "
                            "from 512 to 2M, got '%s'", optarg);
      p->topts.cluster_size = v;
      break;
    case OPT_FORCE:
      p->force = true;
      break;
    case OPT_FORCE_BREAK_CHAIN:
      p->force = p->break_chain = true;
      break;
    case OPT_INCREMENTAL:
      p->copy.skip_holes = true;
      break;
    case OPT_DISCARD_SOURCE:
      p->discard_source = true;
      break;
    case 'C':
      if (!parse_unsigned (optarg, 1, MAX_CONNECTIONS, &p->connections))
        return usage_error (cmd, "--connections: expected an integer from "
                            "1 to %d, got '%s'", MAX_CONNECTIONS, optarg);
      break;
    case 'R':
      if (!parse_unsigned (optarg, 1, MAX_REQUESTS, &p->copy.requests))
        return usage_error (cmd, "--requests: expected an integer from "
                            "1 to %d, got '%s'", MAX_REQUESTS, optarg);
      break;
    case OPT_CHUNK:
      if (!parse_size (optarg, &v) || v < MIN_CHUNK || v > MAX_CHUNK ||
          !is_power_of_2 (v))
        return usage_error (cmd, "--chunk: expected a power of 2 from 4K "
                            "to 32M, got '%s'", optarg);
      p->copy.chunk = v;
      break;
    case OPT_PROGRESS:
      progress = 1;
      break;
    case OPT_NO_PROGRESS:
      progress = 0;
      break;
    case OPT_JSON:
      p->json = true;
      break;
    case OPT_CONTROL:
      if (*optarg == '\0')
        return usage_error (cmd, "--control: empty socket path");
      p->control = optarg;
      break;
    default:
      r = common_option (c, cmd, pull_usage);
      if (r != -1)
        return r;
    }
  }

  if (argc - optind < 2)
    return usage_error (cmd, "missing %s",
                        argc == optind ? "SOURCE-URI and TARGET" : "TARGET");
  if (argc - optind > 2)
    return usage_error (cmd, "unexpected argument '%s' after TARGET",
                        argv[optind + 2]);
  p->source = argv[optind];
  p->target = argv[optind + 1];

  if (!is_nbd_uri (p->source))
    return usage_error (cmd, "SOURCE-URI '%s' is not an NBD URI "
                        "(nbd://..., nbd+unix://...)", p->source);

  /* The format: the one rule of the target library. */
  if (is_nbd_uri (p->target)) {
    const char *opt = NULL;

    if (format)                       opt = "--format";
    else if (p->topts.cluster_size)   opt = "--cluster-size";
    else if (p->topts.backing)        opt = "--backing";
    else if (p->topts.backing_format) opt = "--backing-format";
    else if (p->break_chain)          opt = "--force-break-chain";
    else if (p->force)                opt = "--force";
    if (opt)
      return usage_error (cmd, "%s applies only to a file TARGET, and "
                          "'%s' is an NBD URI", opt, p->target);
    p->topts.format = TARGET_NBD;
  }
  else {
    if (*p->target == '\0')
      return usage_error (cmd, "TARGET is empty");
    p->topts.format = target_format_of (format, p->target);
    if (p->topts.format == TARGET_RAW) {
      if (p->topts.cluster_size)
        return usage_error (cmd, "--cluster-size needs a qcow2 TARGET");
      if (p->topts.backing)
        return usage_error (cmd, "--backing needs a qcow2 TARGET");
    }
    if (p->topts.backing_format && !p->topts.backing)
      return usage_error (cmd, "--backing-format needs --backing");
  }
  /* Unchanged ranges are left unwritten: only an overlay of the
   * previous backup reads them back right.
   */
  if (p->copy.skip_holes &&
      (p->topts.format != TARGET_QCOW2 || !p->topts.backing))
    return usage_error (cmd, "--incremental needs a qcow2 TARGET with "
                        "--backing=PREVIOUS-BACKUP");
  p->topts.partial = p->copy.skip_holes;
  p->topts.replace = true;

  if ((uint64_t) p->connections * p->copy.requests * p->copy.chunk >
      MAX_BUFFERS)
    return usage_error (cmd, "--connections x --requests x --chunk would "
                        "need more than 4G of buffers");

  p->copy.progress = progress == -1 ? isatty (STDERR_FILENO) : progress;
  return -1;
}

/* Before connecting anywhere: TARGET may be written.  An existing
 * TARGET is replaced only with --force.  0 or -1 (reported).
 */
static int
check_target (const struct pull *p)
{
  char msg[512];
  struct stat st;

  if (target_check ("target", p->target, &p->topts, msg, sizeof msg) == -1) {
    nbdkit_error ("%s", msg);
    return -1;
  }
  if (!p->force && lstat (p->target, &st) == 0) {
    nbdkit_error ("target: %s: already exists (use --force to replace it)",
                  p->target);
    return -1;
  }
  return 0;
}

/* The copy, from connecting to renaming.  0 or -1 (reported). */
static int
do_pull (struct pull *p, struct copy_stats *stats)
{
  struct source src = { 0 };
  struct target *tgt = NULL;
  struct copy *c = NULL;
  int r = -1;

  if (p->topts.format != TARGET_NBD &&
      (check_target (p) == -1 ||
       (!p->break_chain && chain_check_replace (p->target) == -1) ||
       (p->topts.backing &&
        chain_check_backing (p->target, p->topts.backing) == -1)))
    return -1;

  if (source_open (&src, p->source, p->connections) == -1) {
    source_explain_refusal (p->source, p->control);
    goto out;
  }
  stats->total = src.size;

  /* Reads must fit the server's limit. */
  if (p->copy.chunk > src.max_request) {
    uint32_t chunk = UINT32_C (1) << log_2_bits (src.max_request);

    nbdkit_debug ("the source accepts at most %" PRIu64 " bytes per "
                  "request: --chunk %" PRIu32 " reduced to %" PRIu32,
                  src.max_request, p->copy.chunk, chunk);
    p->copy.chunk = chunk;
  }

  if (p->discard_source) {
    p->copy.discard = discard_new (&src);
    if (p->copy.discard == NULL)
      goto out;
  }

  p->topts.connections = p->connections;
  tgt = target_open ("target", p->target, src.size, &p->topts);
  if (tgt == NULL)
    goto out;

  c = copy_new (&src, tgt, &p->copy);
  if (c == NULL)
    goto out;
  if (copy_run (c, stats) == -1)
    goto out;
  if (tgt->ops->flush (tgt) == -1)
    goto out;
  /* A signal during the flush: don't publish, the user asked us to
   * stop.
   */
  if (interrupted_by != 0) {
    nbdkit_error ("interrupted by signal %d", (int) interrupted_by);
    goto out;
  }
  if (tgt->ops->finish (tgt, true) == -1)
    goto out;
  r = 0;

 out:
  /* Say goodbye to every server before hanging up (disconnect.c).
   * Close the handles before freeing the engine: libnbd may hold
   * callbacks into it until then.
   */
  if (tgt)
    disconnect_all (tgt->nbd, tgt->nr_nbd, "target");
  disconnect_all (src.nbd, src.nr_nbd, "source");
  if (tgt)
    tgt->ops->close (tgt);
  source_close (&src);
  copy_free (c);
  discard_free (p->copy.discard);
  p->copy.discard = NULL;
  return r;
}

/* A double with a fixed number of decimals, as JSON. */
static json_object *
json_fixed (double v, int decimals)
{
  char buf[64];

  snprintf (buf, sizeof buf, "%.*f", decimals, v);
  return json_object_new_double_s (v, buf);
}

static int
print_summary (const struct pull *p, const struct copy_stats *st,
               double seconds, bool ok)
{
  json_object *o = json_object_new_object ();
  uint64_t done = st->copied + st->zero;
  const char *err = log_first_error ();
  int r = 0;

  if (o == NULL) {
    nbdkit_error ("json_object_new_object: out of memory");
    return -1;
  }
  json_object_object_add (o, "command", json_object_new_string ("pull"));
  json_object_object_add (o, "source", json_object_new_string (p->source));
  json_object_object_add (o, "target", json_object_new_string (p->target));
  json_object_object_add (o, "format",
                          json_object_new_string
                          (target_format_name (p->topts.format)));
  json_object_object_add (o, "bytes_total", json_object_new_int64 (st->total));
  json_object_object_add (o, "bytes_copied",
                          json_object_new_int64 (st->copied));
  json_object_object_add (o, "bytes_zero", json_object_new_int64 (st->zero));
  if (p->copy.skip_holes)
    json_object_object_add (o, "bytes_unchanged",
                            json_object_new_int64 (st->skipped));
  if (p->discard_source)
    json_object_object_add (o, "bytes_discarded",
                            json_object_new_int64 (st->discarded));
  json_object_object_add (o, "seconds", json_fixed (seconds, 3));
  json_object_object_add (o, "mib_per_second",
                          json_fixed (seconds > 0 ? done / MIB / seconds : 0,
                                      2));
  json_object_object_add (o, "result",
                          json_object_new_string (ok ? "ok" : "error"));
  json_object_object_add (o, "error",
                          ok ? NULL :
                          json_object_new_string (err ? err : "failed"));
  if (printf ("%s\n",
              json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN |
                                              JSON_C_TO_STRING_NOSLASHESCAPE))
      < 0)
    r = -1;
  json_object_put (o);
  return r;
}

int
pull_main (int argc, char *argv[])
{
  struct pull p = {
    .connections = DEFAULT_CONNECTIONS,
    .copy = { .requests = DEFAULT_REQUESTS, .chunk = DEFAULT_CHUNK },
  };
  struct copy_stats stats = { 0 };
  double start;
  bool ok;
  int r;

  r = parse_options (argc, argv, &p);
  if (r != -1)
    return r;

  catch_signals ();
  start = monotonic_seconds ();
  ok = do_pull (&p, &stats) == 0;
  if (p.json &&
      print_summary (&p, &stats, monotonic_seconds () - start, ok) == -1) {
    perror ("stdout");
    ok = false;
  }
  return ok ? NBDBACKUP_EXIT_OK : NBDBACKUP_EXIT_FAILED;
}
