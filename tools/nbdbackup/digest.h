/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Digest lists: the SHA-256 of every fixed-size chunk of a disk at a
 * backup's instant, kept beside the backup as ID.digests.  See
 * digest.c for the file format.
 */

#ifndef NBDBACKUP_DIGEST_H
#define NBDBACKUP_DIGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DIGEST_LEN 32                   /* SHA-256 */
#define DIGEST_HEX_LEN (2 * DIGEST_LEN) /* without the NUL */

/* Chunk sizes a list may have (powers of 2). */
#define DIGEST_MIN_CHUNK 4096
#define DIGEST_MAX_CHUNK (16 * 1024 * 1024)

struct digests {
  uint32_t chunk;               /* bytes per chunk, a power of 2 */
  uint64_t size;                /* the disk's size in bytes */
  uint64_t n;                   /* chunks: ceil (size / chunk) */
  unsigned char (*d)[DIGEST_LEN]; /* n digests */
  /* The digests of a chunk of zeros, whole and (if size % chunk) of
   * the short last chunk: computed once, used for zero extents.
   */
  unsigned char zero[DIGEST_LEN];
  unsigned char zero_last[DIGEST_LEN];
};

/* SHA-256 of len bytes.  Thread-safe.  0, or -1 (reported). */
extern int digest_buf (const void *buf, size_t len,
                       unsigned char out[DIGEST_LEN]);

/* out gets the 64 lower-case hex digits of d and a NUL. */
extern void digest_to_hex (const unsigned char d[DIGEST_LEN],
                           char out[DIGEST_HEX_LEN + 1]);

/* A list for a disk of size bytes in chunks of chunk bytes (a power
 * of 2 from DIGEST_MIN_CHUNK to DIGEST_MAX_CHUNK), every entry the
 * zero digest.  0, or -1 (reported).
 */
extern int digests_init (struct digests *d, uint32_t chunk, uint64_t size);

/* dst becomes a copy of src.  0, or -1 (reported). */
extern int digests_copy (struct digests *dst, const struct digests *src);

/* Free the entries (safe on a zeroed or freed struct). */
extern void digests_free (struct digests *d);

/* The length of chunk i (the last one may be short). */
extern uint32_t digests_chunk_len (const struct digests *d, uint64_t i);

/* The digest of chunk i's length of zeros. */
extern const unsigned char *digests_zero_of (const struct digests *d,
                                             uint64_t i);

/* True if entry i is the digest of zeros. */
extern bool digests_is_zero (const struct digests *d, uint64_t i);

/* Load the list at path, checking all of it: a regular file (not a
 * symlink, a FIFO...), the magic, the chunk size, the count against
 * the size, the file's length; and if hex is not NULL, that the
 * SHA-256 of the whole file is hex (the catalog's "digest").  0, or
 * -1 with the error reported as "digest list PATH: WHAT".
 */
extern int digests_load (const char *path, struct digests *d,
                         const char *hex);

/* Write the list to path: PATH.incomplete created O_EXCL|O_NOFOLLOW
 * mode 0600, written, synced, renamed to path.  hex (if not NULL)
 * gets the list digest (the SHA-256 of the whole file).  0, or -1
 * (reported; nothing is left at path).
 */
extern int digests_save (const char *path, const struct digests *d,
                         char hex[DIGEST_HEX_LEN + 1]);

/* The list digest without writing the file.  0, or -1 (reported). */
extern int digests_list_digest (const struct digests *d,
                                char hex[DIGEST_HEX_LEN + 1]);

#endif /* NBDBACKUP_DIGEST_H */
