/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The sidecar file's format (described in format.c). */

#ifndef NBDKIT_DIRTYBITMAP_FORMAT_H
#define NBDKIT_DIRTYBITMAP_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FORMAT_VERSION 1
#define FORMAT_MAX_NAME 1023
#define FORMAT_MIN_GRANULARITY UINT32_C (512)
#define FORMAT_MAX_GRANULARITY (UINT32_C (1) << 31)

/* One bitmap as the file holds it. */
struct format_record {
  const char *name;             /* Not NUL-terminated: name_len bytes. */
  size_t name_len;
  uint32_t granularity;
  bool recording;
  bool inconsistent;            /* Flagged, or the file was in use. */
  const uint8_t *data;          /* NULL if inconsistent. */
  size_t data_len;
};

/* Check a whole file image and call fn for each bitmap in it.  On a
 * bad file return -1 with a one-line reason in problem (fn is not
 * called at all then).  *in_use tells if the file says a server was
 * running when it was written; *disk_size gives the disk's size.  A
 * -1 from fn stops the walk and is returned.
 */
extern int format_parse (const uint8_t *buf, size_t len,
                         bool *in_use, uint64_t *disk_size,
                         int (*fn) (const struct format_record *r,
                                    void *opaque),
                         void *opaque, char *problem, size_t problem_len);

/* Bytes of bits for a bitmap of that granularity over the disk. */
extern uint64_t format_bits_len (uint64_t disk_size, uint32_t granularity);

/* Writing a file image: begin, add each bitmap, end; then p and len
 * hold the file.  Each returns 0, or -1 (out of memory, or bits
 * shorter than format_bits_len).  Free with format_free either way.
 */
struct format_writer {
  uint8_t *p;
  size_t len, cap;
  bool in_use;                  /* Records carry no bits. */
  uint64_t disk_size;
  uint32_t nr;
};
extern int format_begin (struct format_writer *w, bool in_use,
                         uint64_t disk_size);
extern int format_add (struct format_writer *w, const char *name,
                       uint32_t granularity, bool recording,
                       bool inconsistent, const uint8_t *bits,
                       size_t bits_len);
extern int format_end (struct format_writer *w);
extern void format_free (struct format_writer *w);

#endif /* NBDKIT_DIRTYBITMAP_FORMAT_H */
