/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Digest lists (nbdbackup(1), REPOSITORY).
 *
 * The file ID.digests, little endian:
 *
 *   offset 0   8 bytes  magic "NBDBDIG1"
 *          8   4        chunk size (a power of 2, 4K to 16M)
 *         12   4        reserved, 0
 *         16   8        disk size in bytes
 *         24   8        number of chunks n = ceil (size / chunk)
 *         32   32*n     SHA-256 of each chunk of the disk at the
 *                       instant (the last one over its bytes only)
 *
 * The catalog's "digest" of a backup is the SHA-256 of the whole
 * file, so that a flipped byte in the list itself is found too.
 *
 * Hashing uses OpenSSL's libcrypto (EVP).  The SHA-256 method is
 * fetched once; EVP_Digest with it is safe from several threads.
 */

#include <config.h>

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "cleanup.h"
#include "files.h"
#include "ispowerof2.h"
#include "nbdkit-stubs.h"
#include "publish.h"
#include "digest.h"

#define MAGIC "NBDBDIG1"
#define HEADER_LEN 32

static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256;

static void
fetch_md (void)
{
  sha256 = EVP_MD_fetch (NULL, "SHA256", NULL);
}

static const EVP_MD *
md (void)
{
  pthread_once (&md_once, fetch_md);
  if (sha256 == NULL)
    nbdkit_error ("libcrypto: SHA256 is not available");
  return sha256;
}

int
digest_buf (const void *buf, size_t len, unsigned char out[DIGEST_LEN])
{
  const EVP_MD *m = md ();

  if (m == NULL)
    return -1;
  if (EVP_Digest (buf, len, out, NULL, m, NULL) != 1) {
    nbdkit_error ("libcrypto: EVP_Digest failed");
    return -1;
  }
  return 0;
}

void
digest_to_hex (const unsigned char d[DIGEST_LEN], char out[DIGEST_HEX_LEN + 1])
{
  static const char hex[] = "0123456789abcdef";
  size_t i;

  for (i = 0; i < DIGEST_LEN; ++i) {
    out[2 * i] = hex[d[i] >> 4];
    out[2 * i + 1] = hex[d[i] & 15];
  }
  out[DIGEST_HEX_LEN] = '\0';
}

static bool
chunk_ok (uint64_t chunk)
{
  return chunk >= DIGEST_MIN_CHUNK && chunk <= DIGEST_MAX_CHUNK &&
    is_power_of_2 (chunk);
}

/* The zero digests of d (chunk and size set). */
static int
compute_zero (struct digests *d)
{
  CLEANUP_FREE char *zeros = calloc (1, d->chunk);

  if (zeros == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  if (digest_buf (zeros, d->chunk, d->zero) == -1)
    return -1;
  if (d->size % d->chunk == 0)
    memcpy (d->zero_last, d->zero, DIGEST_LEN);
  else if (digest_buf (zeros, d->size % d->chunk, d->zero_last) == -1)
    return -1;
  return 0;
}

/* Set chunk, size, n and the zero digests, and allocate d->d. */
static int
alloc_list (struct digests *d, uint32_t chunk, uint64_t size)
{
  memset (d, 0, sizeof *d);
  d->chunk = chunk;
  d->size = size;
  d->n = size / chunk + (size % chunk != 0);
  if (d->n > SIZE_MAX / DIGEST_LEN) {
    nbdkit_error ("digest list: %" PRIu64 " chunks is too many", d->n);
    return -1;
  }
  d->d = malloc (d->n ? d->n * DIGEST_LEN : 1);
  if (d->d == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  if (compute_zero (d) == -1) {
    digests_free (d);
    return -1;
  }
  return 0;
}

int
digests_init (struct digests *d, uint32_t chunk, uint64_t size)
{
  uint64_t i;

  if (!chunk_ok (chunk)) {
    nbdkit_error ("digest list: chunk size %" PRIu32 " is not a power of 2 "
                  "from 4K to 16M", chunk);
    return -1;
  }
  if (alloc_list (d, chunk, size) == -1)
    return -1;
  for (i = 0; i < d->n; ++i)
    memcpy (d->d[i], digests_zero_of (d, i), DIGEST_LEN);
  return 0;
}

int
digests_copy (struct digests *dst, const struct digests *src)
{
  *dst = *src;
  dst->d = malloc (src->n ? src->n * DIGEST_LEN : 1);
  if (dst->d == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  memcpy (dst->d, src->d, src->n * DIGEST_LEN);
  return 0;
}

void
digests_free (struct digests *d)
{
  free (d->d);
  d->d = NULL;
  d->n = 0;
}

uint32_t
digests_chunk_len (const struct digests *d, uint64_t i)
{
  if (i + 1 == d->n && d->size % d->chunk != 0)
    return d->size % d->chunk;
  return d->chunk;
}

const unsigned char *
digests_zero_of (const struct digests *d, uint64_t i)
{
  return i + 1 == d->n ? d->zero_last : d->zero;
}

bool
digests_is_zero (const struct digests *d, uint64_t i)
{
  return memcmp (d->d[i], digests_zero_of (d, i), DIGEST_LEN) == 0;
}

static void
make_header (const struct digests *d, unsigned char h[HEADER_LEN])
{
  uint32_t chunk = htole32 (d->chunk), reserved = 0;
  uint64_t size = htole64 (d->size), n = htole64 (d->n);

  memcpy (h, MAGIC, 8);
  memcpy (h + 8, &chunk, 4);
  memcpy (h + 12, &reserved, 4);
  memcpy (h + 16, &size, 8);
  memcpy (h + 24, &n, 8);
}

/* SHA-256 of header and list, as hex. */
static int
hash_file (const unsigned char *header, const void *list, size_t len,
           char hex[DIGEST_HEX_LEN + 1])
{
  const EVP_MD *m = md ();
  EVP_MD_CTX *ctx;
  unsigned char out[DIGEST_LEN];
  int r = -1;

  if (m == NULL)
    return -1;
  ctx = EVP_MD_CTX_new ();
  if (ctx == NULL) {
    nbdkit_error ("libcrypto: EVP_MD_CTX_new failed");
    return -1;
  }
  if (EVP_DigestInit_ex (ctx, m, NULL) == 1 &&
      EVP_DigestUpdate (ctx, header, HEADER_LEN) == 1 &&
      EVP_DigestUpdate (ctx, list, len) == 1 &&
      EVP_DigestFinal_ex (ctx, out, NULL) == 1) {
    digest_to_hex (out, hex);
    r = 0;
  }
  else
    nbdkit_error ("libcrypto: SHA-256 failed");
  EVP_MD_CTX_free (ctx);
  return r;
}

int
digests_list_digest (const struct digests *d, char hex[DIGEST_HEX_LEN + 1])
{
  unsigned char h[HEADER_LEN];

  make_header (d, h);
  return hash_file (h, d->d, d->n * DIGEST_LEN, hex);
}

/* Read exactly len bytes, or say why not. */
static int
read_full (int fd, void *buf, size_t len, const char *path)
{
  char *p = buf;

  while (len > 0) {
    ssize_t r = read (fd, p, len);

    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      nbdkit_error ("digest list %s: read: %m", path);
      return -1;
    }
    if (r == 0) {
      nbdkit_error ("digest list %s: the file is truncated", path);
      return -1;
    }
    p += r;
    len -= r;
  }
  return 0;
}

int
digests_load (const char *path, struct digests *d, const char *hex)
{
  CLEANUP_CLOSE int fd = -1;
  unsigned char h[HEADER_LEN];
  uint32_t chunk, reserved;
  uint64_t size, n;
  struct stat st;
  char got[DIGEST_HEX_LEN + 1];

  memset (d, 0, sizeof *d);
  fd = open_regular_file ("digest list", path, O_RDONLY, OPEN_NOFOLLOW);
  if (fd == -1)
    return -1;
  if (fstat (fd, &st) == -1) {
    nbdkit_error ("digest list %s: fstat: %m", path);
    return -1;
  }
  if (st.st_size < HEADER_LEN) {
    nbdkit_error ("digest list %s: the file is truncated (%" PRIi64
                  " bytes)", path, (int64_t) st.st_size);
    return -1;
  }
  if (read_full (fd, h, HEADER_LEN, path) == -1)
    return -1;
  if (memcmp (h, MAGIC, 8) != 0) {
    nbdkit_error ("digest list %s: not a digest list (bad magic)", path);
    return -1;
  }
  memcpy (&chunk, h + 8, 4);
  memcpy (&reserved, h + 12, 4);
  memcpy (&size, h + 16, 8);
  memcpy (&n, h + 24, 8);
  chunk = le32toh (chunk);
  size = le64toh (size);
  n = le64toh (n);
  if (!chunk_ok (chunk)) {
    nbdkit_error ("digest list %s: chunk size %" PRIu32 " is not a power "
                  "of 2 from 4K to 16M", path, chunk);
    return -1;
  }
  if (reserved != 0) {
    nbdkit_error ("digest list %s: reserved field is not zero", path);
    return -1;
  }
  if (n != size / chunk + (size % chunk != 0)) {
    nbdkit_error ("digest list %s: %" PRIu64 " chunks do not match the "
                  "disk size %" PRIu64, path, n, size);
    return -1;
  }
  if (n > (UINT64_MAX - HEADER_LEN) / DIGEST_LEN ||
      (uint64_t) st.st_size != HEADER_LEN + n * DIGEST_LEN) {
    nbdkit_error ("digest list %s: the file has %" PRIi64 " bytes, "
                  "expected %" PRIu64, path, (int64_t) st.st_size,
                  HEADER_LEN + n * DIGEST_LEN);
    return -1;
  }
  if (alloc_list (d, chunk, size) == -1)
    return -1;
  if (read_full (fd, d->d, n * DIGEST_LEN, path) == -1)
    goto err;
  if (hex) {
    if (hash_file (h, d->d, n * DIGEST_LEN, got) == -1)
      goto err;
    if (strcmp (got, hex) != 0) {
      nbdkit_error ("digest list %s: its SHA-256 is %s, the catalog "
                    "says %s: the list is corrupt", path, got, hex);
      goto err;
    }
  }
  return 0;

 err:
  digests_free (d);
  return -1;
}

static int
write_full (int fd, const void *buf, size_t len, const char *path)
{
  const char *p = buf;

  while (len > 0) {
    ssize_t r = write (fd, p, len);

    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      nbdkit_error ("digest list %s: write: %m", path);
      return -1;
    }
    p += r;
    len -= r;
  }
  return 0;
}

int
digests_save (const char *path, const struct digests *d,
              char hex[DIGEST_HEX_LEN + 1])
{
  CLEANUP_FREE char *tmp = incomplete_name (path);
  unsigned char h[HEADER_LEN];
  int fd;

  if (tmp == NULL)
    return -1;
  make_header (d, h);
  if (hex && hash_file (h, d->d, d->n * DIGEST_LEN, hex) == -1)
    return -1;
  fd = create_file_excl ("digest list", tmp, O_WRONLY, 0600);
  if (fd == -1)
    return -1;
  if (write_full (fd, h, HEADER_LEN, tmp) == -1 ||
      write_full (fd, d->d, d->n * DIGEST_LEN, tmp) == -1)
    goto err;
  if (fsync (fd) == -1) {
    nbdkit_error ("digest list %s: fsync: %m", tmp);
    goto err;
  }
  if (close (fd) == -1) {
    fd = -1;
    nbdkit_error ("digest list %s: close: %m", tmp);
    goto err;
  }
  fd = -1;
  if (rename_durably ("digest list", tmp, path) == -1)
    goto err;
  return 0;

 err:
  if (fd >= 0)
    close (fd);
  unlink (tmp);
  return -1;
}
