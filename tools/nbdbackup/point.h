/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* A point in time of a repository, for the commands that read one
 * (restore, verify, mount, prune).  See point.c.
 */

#ifndef NBDBACKUP_POINT_H
#define NBDBACKUP_POINT_H

#include <stdbool.h>
#include <stdint.h>

#include "digest.h"

struct repo;
struct repo_entry;

struct point {
  const struct repo_entry *entry; /* in the repository's catalog */
  const char *id;
  uint64_t size;                /* the disk's size at the instant */
  char *file;                   /* REPO/ID.qcow2 */
  char *abs_file;               /* its absolute path */
  char *digests_file;           /* REPO/ID.digests */
};

/* The backup id of r, or (id NULL) the newest.  NULL if there is no
 * such backup (reported).
 */
extern const struct repo_entry *point_find (const struct repo *r,
                                            const char *id);

/* Check that backup e of r can be served: every file of its chain, e
 * first, is a regular file in the repository (not a symlink, a FIFO
 * ...) and a qcow2 image whose backing file is exactly the parent's
 * file (a full has none), of the recorded size; and fill *p.  0, or
 * -1 with every problem reported as "backup ID: ...".
 */
extern int point_open (struct repo *r, const struct repo_entry *e,
                       struct point *p);

/* Load the digest list of the point (checked against the catalog's
 * digest of it) into *d.  0 or -1 (reported).
 */
extern int point_load_digests (const struct point *p, struct digests *d);

extern void point_close (struct point *p);

/* point-read.c: read a point in time through a server. */

struct copy_options;
struct copy_stats;
struct target;

/* Open the target once the served disk's size is known.  NULL on
 * error (reported).
 */
typedef struct target *(*point_open_target_fn) (void *opaque,
                                                uint64_t size);

/* Mismatches reported per backup at most (more are counted). */
#define POINT_MAX_REPORT 10

struct point_read {
  /* In. */
  unsigned connections;         /* to the server */
  const struct digests *check;  /* check every chunk, or NULL */
  unsigned max_report;          /* mismatches reported, at most
                                 * POINT_MAX_REPORT (more counted) */
  bool stop_at_mismatch;        /* restore: the first one fails */
  point_open_target_fn open_target; /* NULL: read only (verify) */
  void *opaque;
  /* Out. */
  uint64_t mismatches;          /* chunks that differ from check */
  uint64_t checked;             /* bytes checked */
  uint64_t offsets[POINT_MAX_REPORT]; /* of the first mismatches */
  unsigned nr_offsets;
};

/* Serve the point read-only in a private directory, copy all of it
 * to the target (flushed and published once every chunk is checked),
 * stop the server.  0, or -1 (reported, with what the server said
 * when reading failed); a mismatch is -1 too.  *stats says how far
 * the copy got.
 */
extern int point_read (const struct point *p, struct point_read *pr,
                       struct copy_options *opts,
                       struct copy_stats *stats);

#endif /* NBDBACKUP_POINT_H */
