/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Internals of the qcow2 library: the per-image state shared by
 * header.c, table.c, refcount.c, compress.c, backing.c and io.c.
 */

#ifndef NBDKIT_BACKUP_QCOW2_INTERNAL_H
#define NBDKIT_BACKUP_QCOW2_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/types.h>

#include "qcow2.h"

#define QCOW2_MAGIC 0x514649fbU         /* "QFI\xfb" */

/* Incompatible feature bits. */
#define QCOW2_INCOMPAT_DIRTY       (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT     (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE   (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2       (1ULL << 4)

/* Header extension types. */
#define QCOW2_EXT_END            0x00000000U
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acaU
#define QCOW2_EXT_DATA_FILE      0x44415441U
#define QCOW2_EXT_CRYPTO         0x0537be77U

/* Table entries. */
#define QCOW2_OFLAG_COPIED     (1ULL << 63)
#define QCOW2_OFLAG_COMPRESSED (1ULL << 62)
#define QCOW2_OFLAG_ZERO       1ULL
#define QCOW2_OFFSET_MASK      0x00fffffffffffe00ULL

/* Limits we impose on metadata sizes (bytes). */
#define QCOW2_MAX_L1_BYTES       (32 * 1024 * 1024)
#define QCOW2_MAX_RT_BYTES       (8 * 1024 * 1024)
#define QCOW2_MAX_SIZE           (1ULL << 56)

/* A bounded, write-through cache of cluster-sized tables (L2 tables
 * or refcount blocks), keyed by host offset, least recently used out.
 * Protected by the image lock.
 */
struct table_cache {
  unsigned nslots;
  uint64_t clock;
  struct cache_slot {
    uint64_t offset;            /* 0 = empty slot */
    uint64_t used;              /* clock value of last use */
    unsigned char *data;        /* cluster_size bytes */
  } *slots;
};

/* What an L2 entry means (from the guest's point of view). */
enum cluster_kind {
  CLUSTER_UNALLOCATED,  /* read from backing, or zeros */
  CLUSTER_ZERO,         /* zero flag, no host cluster */
  CLUSTER_ZERO_ALLOC,   /* zero flag with a preallocated host cluster */
  CLUSTER_NORMAL,       /* data at host offset */
  CLUSTER_COMPRESSED,   /* compressed data at byte offset */
};

struct qcow2_chain;

struct qcow2_image {
  /* Fields set at open and never changed afterwards. */
  char *path;
  int fd;
  bool readonly;
  unsigned version;
  unsigned cluster_bits;
  uint32_t cluster_size;
  unsigned l2_bits;             /* log2 of entries per L2 table */
  uint64_t size;                /* virtual size */
  unsigned refcount_order;
  unsigned rb_bits;             /* log2 of entries per refcount block */
  uint64_t refcount_max;
  unsigned compression_type;    /* 0 zlib, 1 zstd */
  unsigned csize_shift;         /* compressed descriptor layout */
  uint64_t csize_mask;
  uint64_t coffset_mask;
  uint32_t nb_snapshots;
  uint64_t incompatible, compatible, autoclear;
  uint32_t header_length;
  char *backing_name;           /* as named in the header, or NULL */
  char *backing_format_name;    /* from the header extension, or NULL */
  bool header_names_backing;    /* header names a backing file */
  struct qcow2_image *backing;  /* qcow2 backing, or NULL */
  int backing_fd;               /* raw backing, or -1 */
  uint64_t backing_size;        /* size of the backing (raw or qcow2) */
  uint32_t l1_size;             /* entries */
  uint64_t l1_offset;

  /* Data I/O done outside the lock on host offsets found under it
   * holds this for reading; releasing clusters for reuse (which only
   * happens at flush) holds it for writing, so a host cluster is never
   * reused while someone still reads or writes it under its old name.
   */
  pthread_rwlock_t reuse_lock;

  /* This lock protects all the metadata below, and the caches. */
  pthread_mutex_t lock;
  uint64_t *l1;                 /* in host byte order */
  uint64_t rt_offset;           /* refcount table */
  uint32_t rt_clusters;
  uint64_t rt_entries;
  uint64_t *rt;                 /* in host byte order */
  struct table_cache l2_cache;
  struct table_cache rb_cache;
  uint64_t free_hint;           /* no free cluster below this index */
  uint64_t file_clusters;       /* host clusters known to exist or be used */
  /* Host clusters whose refcount drops at the next flush. */
  uint64_t *pending_free;
  size_t npending, pending_alloc;
  /* Host clusters that hold metadata, one bit each (overlap.c); NULL
   * for a read-only image.
   */
  unsigned char *meta;
  uint64_t meta_clusters;       /* bits in meta */

  /* Set (atomically, under the lock) once a write would have
   * overwritten metadata: no write is done after that.
   */
  bool corrupt;

  /* Whether the image is preallocated with metadata only (io.c),
   * decided at the first block status.  Protected by the lock.
   */
  bool prealloc_checked, prealloc;
};

/* header.c */
/* Parse and check the header; fills img.  ro says whether writing is
 * intended (some feature bits are refused only for writing).
 */
extern int qcow2_parse_header (struct qcow2_image *img,
                               const unsigned char *buf, size_t len,
                               uint64_t file_size);
/* Load the L1 and refcount tables, checking every entry. */
extern int qcow2_load_tables (struct qcow2_image *img, uint64_t file_size);
/* Write header bytes [off, off + len) from the big-endian values. */
extern int qcow2_write_header_u64 (struct qcow2_image *img, uint64_t off,
                                   uint64_t v);
extern int qcow2_write_header_u32 (struct qcow2_image *img, uint64_t off,
                                   uint32_t v);

/* table.c */
extern int cache_init (struct table_cache *c, unsigned nslots,
                       uint32_t cluster_size);
extern void cache_free (struct table_cache *c);
/* Get a table at host offset (reading it if needed); NULL on error. */
extern unsigned char *cache_get (struct qcow2_image *img,
                                 struct table_cache *c, uint64_t offset);
/* Put a freshly written table into the cache. */
extern unsigned char *cache_put (struct qcow2_image *img,
                                 struct table_cache *c, uint64_t offset,
                                 const void *data);
/* Classify an L2 entry; -1 (reported) if it is corrupt. */
extern int l2_entry_kind (struct qcow2_image *img, uint64_t entry,
                          enum cluster_kind *kind);
/* Look up the L2 entries for guest clusters [vc, vc + n): returns how
 * many (>= 1) lie in the same L2 table and copies them to out.
 * Caller holds the lock.
 */
extern int l2_lookup (struct qcow2_image *img, uint64_t vc, uint64_t n,
                      uint64_t *out, int *err);
/* The L2 table for guest cluster vc, allocating it if alloc; sets
 * *table and *idx.  Caller holds the lock.
 */
extern int l2_get_table (struct qcow2_image *img, uint64_t vc, bool alloc,
                         unsigned char **table, uint64_t *table_offset,
                         uint64_t *idx, int *err);
/* Write entries [first, first + n) of the cached table to disk. */
extern int l2_write_entries (struct qcow2_image *img, unsigned char *table,
                             uint64_t table_offset, uint64_t first,
                             uint64_t n, int *err);

/* refcount.c */
/* Refcount of a host cluster; -1 on error. */
extern int refcount_get (struct qcow2_image *img, uint64_t hc,
                         uint64_t *rc);
/* Allocate one host cluster (refcount 1, written); 0 on error. */
extern uint64_t refcount_alloc_cluster (struct qcow2_image *img, int *err);
/* Queue a refcount decrement of host cluster hc for the next flush. */
extern int refcount_defer_free (struct qcow2_image *img, uint64_t hc,
                                int *err);
/* Queue the decrements for a compressed cluster descriptor. */
extern int refcount_defer_free_entry (struct qcow2_image *img,
                                      uint64_t entry, int *err);
/* Apply the queued decrements (caller holds reuse_lock for writing). */
extern int refcount_commit_frees (struct qcow2_image *img, int *err);

/* overlap.c (caller holds the lock, except in meta_init) */
/* Build the metadata map of a writable image from its tables; -1
 * (reported) if tables overlap each other.
 */
extern int meta_init (struct qcow2_image *img);
/* Host clusters [hc, hc + n) hold metadata from now on / no longer. */
extern int meta_mark (struct qcow2_image *img, uint64_t hc, uint64_t n);
extern void meta_unmark (struct qcow2_image *img, uint64_t hc, uint64_t n);
/* Before writing guest data at host [host, host + len) for guest
 * offset guest: -1 with *err = EIO (reported; the image is marked
 * corrupt) if that overlaps metadata, or lies past the end of the
 * file, or the image was marked corrupt.
 */
extern int meta_check_write (struct qcow2_image *img, uint64_t guest,
                             uint64_t host, uint64_t len, int *err);
/* Before handing out host cluster hc that the refcounts call free:
 * -1 with *err = EIO (reported, marked corrupt) if it is metadata.
 */
extern int meta_check_alloc (struct qcow2_image *img, uint64_t hc, int *err);
/* Before reading the data of L2 entry entry (guest offset guest): -1
 * with *err = EIO (reported) if it lies past the end of the file.
 */
extern int meta_check_read (struct qcow2_image *img, uint64_t guest,
                            uint64_t entry, int *err);

/* compress.c */
/* Decompress a compressed cluster descriptor into out (cluster_size). */
extern int qcow2_read_compressed (struct qcow2_image *img, uint64_t entry,
                                  unsigned char *out, int *err);

/* backing.c */
/* Open the backing chain for img according to opts. */
extern int qcow2_open_backing (struct qcow2_image *img,
                               const struct qcow2_open_options *opts,
                               unsigned depth, struct qcow2_chain *chain);
/* Read from the backing chain (zeros where there is none). */
extern int backing_pread (struct qcow2_image *img, void *buf, uint32_t count,
                          uint64_t offset, int *err);
/* True if backing reads as zeros for a prefix of the range; sets *len. */
extern int backing_status (struct qcow2_image *img, uint32_t count,
                           uint64_t offset, uint64_t *len, unsigned *flags,
                           int *err);
extern void backing_close (struct qcow2_image *img);

/* Files in a chain being opened, for loop detection (backing.c). */
#define QCOW2_MAX_CHAIN 128
struct qcow2_chain {
  unsigned n;
  dev_t dev[QCOW2_MAX_CHAIN];
  ino_t ino[QCOW2_MAX_CHAIN];
};
/* Add fd's file to the chain; -1 (reported) if it is already there. */
extern int qcow2_chain_add (struct qcow2_chain *chain, int fd,
                            const char *path);

/* open.c */
/* Open one image of a chain (depth 0 = top). */
extern struct qcow2_image *qcow2_open_depth (const char *path,
                                             const struct qcow2_open_options *opts,
                                             unsigned depth,
                                             struct qcow2_chain *chain);

/* Endian helpers. */
static inline uint64_t
get_be64 (const unsigned char *p)
{
  return ((uint64_t) p[0] << 56) | ((uint64_t) p[1] << 48) |
    ((uint64_t) p[2] << 40) | ((uint64_t) p[3] << 32) |
    ((uint64_t) p[4] << 24) | ((uint64_t) p[5] << 16) |
    ((uint64_t) p[6] << 8) | p[7];
}

static inline uint32_t
get_be32 (const unsigned char *p)
{
  return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
    ((uint32_t) p[2] << 8) | p[3];
}

static inline void
put_be64 (unsigned char *p, uint64_t v)
{
  int i;
  for (i = 7; i >= 0; --i) { p[i] = v & 0xff; v >>= 8; }
}

static inline void
put_be32 (unsigned char *p, uint32_t v)
{
  int i;
  for (i = 3; i >= 0; --i) { p[i] = v & 0xff; v >>= 8; }
}

/* pread/pwrite the whole range, retrying; short reads past EOF are
 * zero-filled by full_pread.  0 or -1 with errno.
 */
extern int full_pread (int fd, void *buf, size_t count, uint64_t offset);
extern int full_pwrite (int fd, const void *buf, size_t count,
                        uint64_t offset);

#endif /* NBDKIT_BACKUP_QCOW2_INTERNAL_H */
