/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* One backup of the cbw filter: what it is asked to do (a spec, from
 * the parameters or from a backup-start command) and what runs it
 * (target, engine, job, bitmap).  The same steps serve both ways of
 * starting: check, prepare (open everything, protect nothing yet),
 * activate (the snapshot instant: call with the write gate closed or
 * before any client), start the job; or abort a prepared backup.
 */

#ifndef CBW_BACKUP_H
#define CBW_BACKUP_H

#include <stdbool.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "control.h"
#include "dirty.h"
#include "engine.h"
#include "job.h"
#include "target.h"

enum sync_mode { SYNC_FULL, SYNC_TOP, SYNC_NONE, SYNC_INCREMENTAL };
extern const char *const sync_name[];

/* cbw-buffer-size by default, for every kind of target.  (A file
 * target had none before partial copies: its writes go to the page
 * cache, and a whole-cluster buffer in front of that only cost
 * writers.  With partial copies a first write reads only its blocks,
 * and the first-touch writer into a raw file went from 21-48k to
 * 62-65k IOPS, into qcow2 from 37-41k to 46-50k.)
 */
#define BUFFER_DEFAULT (64 * 1024 * 1024)

struct backup_spec {
  char *target;                 /* Path (absolute) or NBD URI. */
  enum target_format format;
  char *backing;                /* Backing file of a new qcow2 target. */
  char *backing_format;
  enum sync_mode sync;
  unsigned cluster_size;
  unsigned workers;
  uint64_t speed;
  double copy_timeout;
  uint64_t buffer_size;         /* Copy-before-write buffer (0: none). */
  enum cbw_on_error on_error;
  char *bitmap;                 /* sync=incremental's dirty bitmap. */
  enum dirty_mode bitmap_mode;
  char *status_path;
  char *job_id;
  const char *source_file;      /* The file plugin's disk, if known. */
};

struct backup {
  struct backup_spec spec;
  struct target *target;
  struct engine *engine;
  struct job *job;
  struct dirty_bitmap *bitmap;  /* Frozen for sync=incremental. */
};

/* Parsers shared by parameters and commands: 0, or -1 if unknown. */
extern int parse_sync (const char *s, enum sync_mode *sync);
extern int parse_target_format (const char *s, enum target_format *f);
extern int parse_on_error (const char *s, enum cbw_on_error *e);

/* Deep copy of a spec (strings duplicated); 0 or -1 (reported). */
extern int spec_copy (struct backup_spec *dst, const struct backup_spec *src);
extern void spec_free (struct backup_spec *s);

/* The target library's options for the spec's target. */
extern void spec_target_options (const struct backup_spec *s,
                                 struct target_options *o);

/* Check a spec as far as possible without the disk (the target's
 * kind is settled here, by target_format_of).  Messages name the
 * parameter as prefix + name ("cbw-" for parameters, "" for command
 * arguments).  0, or -1 with err filled.
 */
extern int spec_check (struct backup_spec *s, const char *prefix,
                       struct control_error *err);

/* Open the target, make the engine and mark the clusters to protect
 * (nothing is protected yet).  next reads the source.  NULL with err
 * filled on error.
 */
extern struct backup *backup_prepare (const struct backup_spec *s,
                                      const char *prefix,
                                      nbdkit_next *next,
                                      struct control_error *err);

/* The snapshot instant: protection starts. */
extern void backup_activate (struct backup *b);

/* Start the job (threads for every sync but none).  0, or -1
 * (reported; the snapshot is then broken).
 */
extern int backup_start_job (struct backup *b, nbdkit_next *next,
                             bool use_extents);

/* Undo a prepared backup that never became active. */
extern void backup_abort (struct backup *b);

/* True while the backup's job runs. */
extern bool backup_running (struct backup *b);

/* End the backup (wait: let a running job finish; else cancel it) and
 * free everything.  Returns the job's final state.
 */
extern enum job_state backup_end (struct backup *b, bool wait);

#endif /* CBW_BACKUP_H */
