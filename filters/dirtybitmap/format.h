/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The sidecar file's format (version 2 in format.c, the old version 1
 * in format-v1.c, which is only read).
 */

#ifndef NBDKIT_DIRTYBITMAP_FORMAT_H
#define NBDKIT_DIRTYBITMAP_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FORMAT_VERSION 2        /* What format_end writes. */
#define FORMAT_MAX_NAME 1023
#define FORMAT_MAX_REASON 1023
#define FORMAT_MIN_GRANULARITY UINT32_C (512)
#define FORMAT_MAX_GRANULARITY (UINT32_C (1) << 31)
/* Where the bits start: the metadata is padded to this. */
#define FORMAT_BITS_ALIGN 4096

/* The file as a whole. */
struct format_header {
  uint32_t version;             /* As read (1 or 2). */
  bool in_use;                  /* A server was running when written. */
  bool power;                   /* ... with dirtybitmap-durability=power. */
  uint64_t disk_size;
  uint8_t uuid[16];             /* The file's identity (v2; v1: zero). */
  uint64_t generation;          /* +1 on every rewrite (v1: 0). */
  uint8_t boot_id[16];          /* The host's boot when written. */
  bool disk_stat;               /* The three fields below are known. */
  bool disk_mtime;              /* disk_mtime_ns too (clean files). */
  uint64_t disk_file_size, disk_mtime_ns, disk_ino;
};

/* One bitmap as the file holds it. */
struct format_record {
  const char *name;             /* Not NUL-terminated: name_len bytes. */
  size_t name_len;
  uint32_t granularity;
  bool recording;
  bool inconsistent;
  const char *reason;           /* Why inconsistent: reason_len bytes. */
  size_t reason_len;
  const uint8_t *data;          /* NULL if inconsistent. */
  size_t data_len;
  uint64_t data_offset;         /* Where data is in the file. */
};

/* Check a whole file image (either version) and call fn for each
 * bitmap in it.  On a bad file return -1 with a one-line reason in
 * problem (fn is not called at all then).  *h describes the file.  A
 * -1 from fn stops the walk and is returned.
 */
extern int format_parse (const uint8_t *buf, size_t len,
                         struct format_header *h,
                         int (*fn) (const struct format_record *r,
                                    void *opaque),
                         void *opaque, char *problem, size_t problem_len);

/* Version 1 (format-v1.c), called by format_parse for a file that
 * says version 1; the same contract.  A version 1 file that was in
 * use kept no bits: its bitmaps are reported inconsistent, with a
 * reason.
 */
extern int format_v1_parse (const uint8_t *buf, size_t len,
                            struct format_header *h,
                            int (*fn) (const struct format_record *r,
                                       void *opaque),
                            void *opaque, char *problem, size_t problem_len);

/* Bytes of bits for a bitmap of that granularity over the disk. */
extern uint64_t format_bits_len (uint64_t disk_size, uint32_t granularity);

/* Little-endian loads, for both versions. */
extern uint32_t format_get32 (const uint8_t *p);
extern uint64_t format_get64 (const uint8_t *p);

/* Writing a version 2 file image: begin, add each bitmap, end; then
 * p and len hold the file.  Each returns 0, or -1 (out of memory, a
 * name or reason too long, or bits shorter than format_bits_len).
 * Free with format_free either way.  In-use files carry bits too: the
 * server keeps them up to date through a shared mapping.
 */
struct format_buf {
  uint8_t *p;
  size_t len, cap;
};
struct format_writer {
  uint8_t *p;                   /* The file, after format_end. */
  size_t len;
  struct format_header h;
  uint32_t nr;
  struct format_buf dir, bits;  /* Being built. */
};
extern int format_begin (struct format_writer *w,
                         const struct format_header *h);
extern int format_add (struct format_writer *w, const char *name,
                       uint32_t granularity, bool recording,
                       bool inconsistent, const char *reason,
                       const uint8_t *bits, size_t bits_len);
extern int format_end (struct format_writer *w);
extern void format_free (struct format_writer *w);

#endif /* NBDKIT_DIRTYBITMAP_FORMAT_H */
