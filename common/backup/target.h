/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Backup targets: where copied clusters go.  One interface for every
 * kind (raw file now; qcow2 and NBD URIs later), so the engine and
 * the job never care which.
 *
 * A target that is not finished complete must never look complete:
 * each kind documents how (the raw file is written under
 * "PATH.incomplete" and renamed to PATH only when the job completes).
 */

#ifndef NBDKIT_BACKUP_TARGET_H
#define NBDKIT_BACKUP_TARGET_H

#include <stdbool.h>
#include <stdint.h>

struct target;

struct target_ops {
  const char *kind;
  /* Write count bytes at offset.  0, or -1 with errno set and
   * nbdkit_error called.  Thread-safe.
   */
  int (*pwrite) (struct target *t, const void *buf, uint32_t count,
                 uint64_t offset);
  /* Make [offset, offset+count) read as zeros, unmapped if possible. */
  int (*zero) (struct target *t, uint32_t count, uint64_t offset);
  /* Read back (for stores that serve reads, e.g. fleecing). */
  int (*pread) (struct target *t, void *buf, uint32_t count,
                uint64_t offset);
  /* Make everything written so far durable. */
  int (*flush) (struct target *t);
  /* End the target's life: complete says whether the job finished
   * and the target is the whole point-in-time image.  A complete
   * target is flushed and published; an incomplete one stays marked
   * as such.  0 or -1 (reported).
   */
  int (*finish) (struct target *t, bool complete);
  /* Free everything (after finish, or on abandoning). */
  void (*close) (struct target *t);
};

struct target {
  const struct target_ops *ops;
  uint64_t size;
  /* True if every byte not yet written reads as zero, so zero
   * clusters need no write at all (a freshly created target).
   */
  bool known_zero;
  /* Where the finished target will be, and where it is until then. */
  char *name;
  char *working_name;
};

/* Check a raw file target path at configuration time: it must not be
 * the source file (source may be NULL if unknown), and if it exists
 * it must be a regular file.  0 or -1 (reported, naming param).
 */
extern int target_file_check (const char *param, const char *path,
                              const char *source);

/* Open a raw file target for a disk of size bytes.  A missing file is
 * created sparse; an existing one must be exactly size bytes, is
 * renamed to PATH.incomplete while the job runs, and its old contents
 * are overwritten cluster by cluster (zero clusters are unmapped).
 * Returns NULL on error (reported, naming param).
 */
extern struct target *target_file_open (const char *param, const char *path,
                                         uint64_t size);

#endif /* NBDKIT_BACKUP_TARGET_H */
