/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Backup targets: where copied clusters go.  One interface for every
 * kind (raw file, qcow2 image, NBD URI), so the engine and the job
 * never care which.
 *
 * A target that is not finished complete must never look complete:
 * each kind documents how.  Files (raw and qcow2) are written under
 * "PATH.incomplete" and renamed to PATH only when the job completes
 * (target_unpublish and target_publish below, one mechanism for
 * both).  An NBD URI cannot be renamed: there the status file, the
 * debug log and control-socket events are the only completion marker.
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
struct control_error;
extern int target_file_check (const char *param, const char *path,
                              const char *source,
                              struct control_error *err);

/* Open a raw file target for a disk of size bytes.  A missing file is
 * created sparse; an existing one must be exactly size bytes, is
 * renamed to PATH.incomplete while the job runs, and its old contents
 * are overwritten cluster by cluster (zero clusters are unmapped).
 * Returns NULL on error (reported, naming param).
 */
extern struct target *target_file_open (const char *param, const char *path,
                                         uint64_t size);

/* Kinds of target, chosen by cbw-target-format or the target's name. */
enum target_format {
  TARGET_AUTO = 0,              /* nbd URI by scheme, else qcow2 magic, else raw */
  TARGET_RAW,
  TARGET_QCOW2,
  TARGET_NBD,
};

/* True if path is an existing file starting with the qcow2 magic. */
extern bool target_file_is_qcow2 (const char *path);

/* Set t->name to path and t->working_name to "PATH.incomplete".
 * 0 or -1 (reported).
 */
extern int target_set_names (struct target *t, const char *path);

/* Unpublish an existing complete target: rename PATH to its working
 * name, so that from now on it is a backup in progress.  0 or -1
 * (reported, naming param).
 */
extern int target_unpublish (const char *param, struct target *t);

/* Publish a complete, flushed target: rename the working name to
 * PATH and sync the directory.  0 or -1 (reported).
 */
extern int target_publish (struct target *t);

/* Options of a qcow2 target. */
struct target_qcow2_options {
  /* Backing file to store in a new image (NULL: none), and its
   * format ("raw" or "qcow2"; NULL: probe the file).  A relative
   * name is relative to the target's directory, as in qemu-img.
   */
  const char *backing;
  const char *backing_format;
  unsigned cluster_size;        /* for a new image: 512 .. 2M */
};

/* Open a qcow2 target.  A missing file is created (at
 * PATH.incomplete) with the given backing file; an existing qcow2
 * image must have the disk's size, is unpublished like a raw file,
 * and keeps its own backing file.  NULL on error (reported, naming
 * param).
 */
extern struct target *target_qcow2_open (const char *param, const char *path,
                                          uint64_t size,
                                          const struct target_qcow2_options *o);

/* Open an NBD URI target with connections parallel connections (at
 * least 1).  The export must be writable and exactly size bytes.
 * NULL on error (reported, naming param).
 */
extern struct target *target_nbd_open (const char *param, const char *uri,
                                        uint64_t size, unsigned connections);

#endif /* NBDKIT_BACKUP_TARGET_H */
