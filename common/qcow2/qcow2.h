/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* A small qcow2 library, written from the qcow2 specification
 * (versions 2 and 3).  Every open image carries all of its own state
 * and is safe to use from many threads at once.  Errors are reported
 * with nbdkit_error; data calls also return an errno value in *err.
 */

#ifndef NBDKIT_BACKUP_QCOW2_H
#define NBDKIT_BACKUP_QCOW2_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

struct qcow2_image;

/* How a backing file named inside an image is followed. */
enum qcow2_backing_policy {
  /* Follow a named backing file only if it resolves (after symlinks)
   * into the directory of the image that names it, or below.  The
   * default: an image from an untrusted source cannot make us open
   * arbitrary host files.
   */
  QCOW2_BACKING_SAME_DIR = 0,
  /* Follow any named backing file (trusted images only). */
  QCOW2_BACKING_ANY,
  /* Refuse to open an image whose chain names a backing file. */
  QCOW2_BACKING_REFUSE,
};

struct qcow2_open_options {
  bool readonly;                        /* open O_RDONLY, refuse writes */
  enum qcow2_backing_policy policy;     /* for names inside images */
  /* Override the top image's backing file: NULL = as named in the image
   * (subject to policy), "" = no backing at all (unallocated clusters
   * read as zeros), else a path opened without any policy check.
   */
  const char *backing;
  const char *backing_format;           /* "raw", "qcow2" or NULL */
  unsigned max_depth;                   /* chain depth limit, 0 = 64 */
  /* An existing target (set by the target library, never for images
   * a user names to the plugin, where a symlink is normal): refuse a
   * symlink or anything but a regular file at path, so that what was
   * checked with lstat is what gets opened for writing.  Messages
   * then name the image "TARGET_PARAM PATH".
   */
  const char *target_param;
};

/* Open a qcow2 image (and its backing chain).  NULL on error. */
extern struct qcow2_image *qcow2_open (const char *path,
                                       const struct qcow2_open_options *opts);

/* Flush (if writable) and close the image and its chain.  -1 if the
 * final flush failed (the image is closed anyway).
 */
extern int qcow2_close (struct qcow2_image *img);

/* Virtual disk size in bytes. */
extern uint64_t qcow2_get_size (const struct qcow2_image *img);

/* Cluster size in bytes. */
extern uint32_t qcow2_get_cluster_size (const struct qcow2_image *img);

/* The image file's descriptor, for page-cache hints (the target's
 * writeback); all I/O goes through the library.
 */
extern int qcow2_get_fd (const struct qcow2_image *img);

/* True if the image was opened read-only. */
extern bool qcow2_is_readonly (const struct qcow2_image *img);

/* True if the image has a backing file (as opened). */
extern bool qcow2_has_backing (const struct qcow2_image *img);

/* Read count bytes at offset (within the size).  0 or -1 and *err. */
extern int qcow2_pread (struct qcow2_image *img, void *buf, uint32_t count,
                        uint64_t offset, int *err);

/* Write count bytes at offset, allocating and copying clusters as
 * needed.  Not durable until qcow2_flush.  0 or -1 and *err.
 */
extern int qcow2_pwrite (struct qcow2_image *img, const void *buf,
                         uint32_t count, uint64_t offset, int *err);

/* Make the range read as zeros.  With may_unmap, whole clusters may
 * lose their allocation; without it, allocated clusters stay allocated.
 */
extern int qcow2_zero (struct qcow2_image *img, uint32_t count,
                       uint64_t offset, bool may_unmap, int *err);

/* Discard the range.  Trimmed ranges always read back as zeros (never
 * as backing data).
 */
extern int qcow2_trim (struct qcow2_image *img, uint32_t count,
                       uint64_t offset, int *err);

/* Make every completed write durable (data, then metadata). */
extern int qcow2_flush (struct qcow2_image *img, int *err);

/* Block status flags. */
#define QCOW2_BS_ALLOCATED 1    /* allocated in the top image (L2 entry set) */
#define QCOW2_BS_ZERO      2    /* reads as zeros */
#define QCOW2_BS_DATA      4    /* backed by host data (maybe compressed);
                                 * with ZERO: host data that is a hole
                                 * in a metadata-preallocated image */
#define QCOW2_BS_BACKING   8    /* contents come from the backing chain */

/* Status of [offset, offset + *len) for the longest run (<= count)
 * starting at offset with equal flags; sets *len and *flags.
 */
extern int qcow2_block_status (struct qcow2_image *img, uint32_t count,
                               uint64_t offset, uint64_t *len,
                               unsigned *flags, int *err);

/* Parameters of a new image. */
struct qcow2_create_options {
  uint64_t size;                /* virtual size in bytes */
  unsigned cluster_bits;        /* 9 .. 21, 0 = 16 (64 KiB) */
  unsigned version;             /* 2 (compat 0.10) or 3 (compat 1.1), 0 = 3 */
  const char *backing;          /* backing file name stored, or NULL */
  const char *backing_format;   /* "raw" or "qcow2" (required with backing) */
};

/* Create a new empty image at path; fails if path exists.  0 or -1. */
extern int qcow2_create (const char *path,
                         const struct qcow2_create_options *opts);

/* The one qcow2 probe: 1 if the file starts with the qcow2 magic, 0
 * if not (raw), -1 on error (reported, naming what and path).  The
 * file must be a regular file or a block device, opened without ever
 * blocking.  If backing is not NULL, *backing is set to the backing
 * file name stored in a qcow2 image (malloc'd), or NULL for none.
 */
extern int qcow2_probe (const char *what, const char *path, char **backing);

/* The same on an open file descriptor (path is for messages). */
extern int qcow2_probe_fd (int fd, const char *path, char **backing);

#endif /* NBDKIT_BACKUP_QCOW2_H */
