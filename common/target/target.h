/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Backup targets: where copied clusters go, for the filters (cbw, and
 * fleece's store) and for nbdbackup alike.  One interface for every
 * kind (raw file or block device, qcow2 image, NBD URI), so the engine,
 * the job and the tool's copier never care which.
 *
 * The format of a target follows one rule (target_format_of): the
 * explicit option, else the name (an NBD URI is nbd, a name ending in
 * .qcow2 or .qcow is qcow2), else raw.  An existing file whose content
 * disagrees with the rule is refused, never silently reinterpreted.
 *
 * A target that is not finished complete must never look complete.
 * Files are written under "PATH.incomplete" (created O_EXCL|O_NOFOLLOW,
 * mode 0600; a leftover there is unlinked, never followed) and renamed
 * to PATH only when the job completes.  An existing block device, named
 * on purpose, is written in place.  An NBD URI cannot be renamed: there
 * the caller's status (file, events, exit code) is the only completion
 * marker.
 *
 * Errors are reported with nbdkit_error: the server's inside nbdkit,
 * libstubs' in nbdbackup.  No nbdkit filter header is needed here.
 */

#ifndef NBDKIT_BACKUP_TARGET_H
#define NBDKIT_BACKUP_TARGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct target;
struct nbd_handle;

/* Completion of an asynchronous request: err is 0 or an errno. */
typedef void (*target_done_fn) (void *opaque, int err);

struct target_ops {
  const char *kind;             /* "raw", "qcow2", "nbd", "store" */
  /* Write count bytes at offset.  0, or -1 with errno set and
   * nbdkit_error called.  Thread-safe.
   */
  int (*pwrite) (struct target *t, const void *buf, uint32_t count,
                 uint64_t offset);
  /* Make [offset, offset+count) read as zeros, unmapped if possible;
   * count <= t->max_zero.
   */
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

  /* Optional asynchronous requests (the NBD kind only, NULL
   * otherwise), for a caller that drives t->nbd[] itself with
   * libnbd's aio loop (nbdbackup).  Issue the request on connection
   * lane; done is called from libnbd's completion callback.  0 =
   * issued, -1 = failed and reported (done is not called).
   */
  int (*aio_pwrite) (struct target *t, unsigned lane, const void *buf,
                     uint32_t count, uint64_t offset,
                     target_done_fn done, void *opaque);
  int (*aio_zero) (struct target *t, unsigned lane, uint32_t count,
                   uint64_t offset, target_done_fn done, void *opaque);
};

struct target {
  const struct target_ops *ops;
  uint64_t size;
  /* True if every byte not yet written reads as zero, so zero
   * clusters need no write at all (a freshly created target).
   */
  bool known_zero;
  uint32_t max_zero;            /* largest zero request */
  /* Where the finished target will be, and where it is until then
   * (NULL when written in place: a block device, an NBD URI).
   */
  char *name;
  char *working_name;
  /* The NBD kind's connections, for aio_* callers to poll. */
  struct nbd_handle **nbd;
  unsigned nr_nbd;
};

/* Kinds of target. */
enum target_format {
  TARGET_AUTO = 0,              /* by the name: see target_format_of */
  TARGET_RAW,
  TARGET_QCOW2,
  TARGET_NBD,
};

/* "raw", "qcow2" or "nbd" to a format; 0, or -1 if unknown. */
extern int target_parse_format (const char *s, enum target_format *f);
extern const char *target_format_name (enum target_format f);

/* The one rule: explicit unless TARGET_AUTO, else by name (an NBD URI
 * is nbd, ".qcow2" or ".qcow" is qcow2), else raw.
 */
extern enum target_format target_format_of (enum target_format explicit_,
                                            const char *name);

struct target_options {
  enum target_format format;    /* settled: not TARGET_AUTO */
  /* Backing file of a new qcow2 image (NULL: none) and its format
   * ("raw" or "qcow2"; NULL: probe).  A relative name is relative to
   * the target's directory, as in qemu-img.
   */
  const char *backing;
  const char *backing_format;
  unsigned cluster_size;        /* new qcow2 image: 0 = 64K */
  /* Only changed clusters will be written (sync=top, incremental): a
   * new file would not be a whole backup, so one is refused unless it
   * is a qcow2 image with a backing file.
   */
  bool partial;
  /* An existing PATH is replaced by a new file (nbdbackup --force),
   * removed once PATH.incomplete exists; without it, an existing file
   * is updated in place (the cbw filter: last night's backup).
   */
  bool replace;
  /* The source disk's file, if known: the target must not be it, and
   * an existing raw target must have its size.  NULL if unknown.
   */
  const char *source_file;
  unsigned connections;         /* NBD: parallel connections (>= 1) */
};

/* True if path (a source disk's file) is raw, not qcow2: its holes
 * read as zeros, so a backup of only its allocated clusters (sync=top)
 * into a new raw file is still whole.  False if unknown (NULL).
 */
extern bool target_source_is_raw (const char *path);

/* Check, before any work, that name may be the target: the format
 * agrees with what is there, the kind of file (a symlink, directory,
 * FIFO... is refused, a block device is fine), the directory lets us
 * create it, a partial backup has somewhere whole to land.  0, or -1
 * with a message in msg (prefixed "PARAM: "), nothing reported.
 */
extern int target_check (const char *param, const char *name,
                         const struct target_options *o,
                         char *msg, size_t msglen);

/* Open the target for a disk of size bytes, as target_check allows
 * (checked again).  NULL on error (reported, naming param).
 */
extern struct target *target_open (const char *param, const char *name,
                                   uint64_t size,
                                   const struct target_options *o);

#endif /* NBDKIT_BACKUP_TARGET_H */
