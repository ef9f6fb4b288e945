/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The process's named dirty bitmaps (one set per nbdkit process: it
 * lives in libnbdkit-backup).  The dirtybitmap filter creates them,
 * marks them on every write and saves them; other filters use them:
 * cbw copies a bitmap's dirty clusters for an incremental backup, and
 * the dirtybitmap filter's dirty exports report them as extents.
 *
 * A bitmap has a granularity (a power of two), one bit per granule of
 * the disk, and flags: recording (enabled), persistent (saved in the
 * sidecar file), inconsistent (may have missed writes: it holds no
 * bits, only the reason why, and can only be removed) and busy (in
 * use by a backup or an export: it cannot be changed).
 *
 * A persistent bitmap may have a mirror: its bits in the sidecar
 * file's shared mapping, which the dirtybitmap filter installs
 * (dirty_install_mirrors).  Every bit is set in the mirror, under the
 * set's lock, before dirty_mark returns: so the file holds every
 * write that went down even if the process dies.
 *
 * Every change to a bitmap's bits or flags happens either with the
 * write gate closed (control commands) or while the bitmap is busy,
 * so a write is wholly before or wholly after it.  All calls are
 * thread-safe.
 */

#ifndef NBDKIT_BACKUP_DIRTY_H
#define NBDKIT_BACKUP_DIRTY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "control.h"

struct dirty_bitmap;

#define DIRTY_MIN_GRANULARITY UINT32_C (512)
#define DIRTY_MAX_GRANULARITY (UINT32_C (1) << 31)
#define DIRTY_MAX_NAME 1023

/* What an incremental backup does to its bitmap when it ends (QEMU's
 * bitmap modes).
 */
enum dirty_mode {
  DIRTY_MODE_ON_SUCCESS,  /* Success: only writes since the start stay. */
  DIRTY_MODE_NEVER,       /* Never cleared: everything stays. */
  DIRTY_MODE_ALWAYS,      /* What was copied is cleared, even on failure. */
};

/* Its name ("on-success", "never", "always"). */
extern const char *dirty_mode_name (enum dirty_mode m);

/* Check a name the user gives a bitmap: 0, or -1 with err filled. */
extern int dirty_check_name (const char *name, struct control_error *err);

/* The disk size the bitmaps cover (0 until known). */
extern uint64_t dirty_disk_size (void);

/* Set the disk size (the dirtybitmap filter, once it knows it).
 * Bitmaps made for another size (loaded from an older file) become
 * inconsistent; returns how many did.
 */
extern unsigned dirty_set_disk_size (uint64_t size);

/* A function run before anything changes bits or flags (so before a
 * write is recorded): the sidecar file's in-use flag.  It returns 0,
 * or -1 with errno set to refuse the change.
 */
typedef int dirty_change_hook (void);
extern void dirty_set_change_hook (dirty_change_hook *hook);

/* Run the hook (for callers about to change bitmaps).  0 or -1. */
extern int dirty_before_change (void);

/* Record a write, write-zeroes or trim of [offset, offset+count) in
 * every recording bitmap.  0, or -1 with errno set if the change hook
 * refused (the write must then fail).
 */
extern int dirty_mark (uint64_t offset, uint64_t count);

/* The same, and *seq is set to a number > 0 if a bit that was clear
 * in a mirror was set (the caller who wants it durable before the
 * write goes down waits until a sync covering seq is done; see
 * dirty_mirror_seq), else to 0.
 */
extern int dirty_mark_seq (uint64_t offset, uint64_t count, uint64_t *seq);

/* The number of the last mirror change: a sync that starts after
 * reading it covers every change up to it.
 */
extern uint64_t dirty_mirror_seq (void);

/* Install the mirrors, under the set's lock: for each persistent,
 * consistent bitmap, lookup (name) gives its place in the mapping
 * (NULL if none: no mirror), and the bitmap's bits are copied there.
 * Every other bitmap loses its mirror.  NULL lookup drops them all.
 */
extern void dirty_install_mirrors (uint8_t *(*lookup) (const char *name,
                                                       size_t *len,
                                                       void *opaque),
                                   void *opaque);

/* True (once) if a bitmap with a mirror became inconsistent since the
 * last call: the sidecar file must be rewritten to say so.
 */
extern bool dirty_take_rewrite_request (void);

/* The sidecar file's identity, shown by query-bitmaps for persistent
 * bitmaps ("sidecar-uuid", "generation").  NULL uuid: none.
 */
extern void dirty_set_sidecar (const char *uuid, uint64_t generation);

/* The bitmap called name, or NULL. */
extern struct dirty_bitmap *dirty_find (const char *name);

/* How many bitmaps exist. */
extern size_t dirty_count_bitmaps (void);

/* A new bitmap.  data (data_len bytes, bit i of byte j = granule
 * 8j+i) gives its bits; NULL means clean.  An inconsistent bitmap has
 * no bits.
 */
struct dirty_new {
  const char *name;
  uint32_t granularity;
  bool recording;
  bool persistent;
  bool inconsistent;
  const char *reason;           /* Why inconsistent (NULL: unknown). */
  const uint8_t *data;
  size_t data_len;
};

/* Add a bitmap (the disk size must be known).  Returns it, or NULL
 * with err filled (name taken, bad granularity, out of memory).
 */
extern struct dirty_bitmap *dirty_add (const struct dirty_new *n,
                                       struct control_error *err);

/* Drop a bitmap at once, whatever its state (undoing an add). */
extern void dirty_discard (struct dirty_bitmap *b);

/* Removing in two steps for transactions: prepare hides the bitmap
 * from dirty_find (refused if busy), commit frees it, abort brings it
 * back.
 */
extern int dirty_remove_prepare (struct dirty_bitmap *b,
                                 struct control_error *err);
extern void dirty_remove_commit (struct dirty_bitmap *b);
extern void dirty_remove_abort (struct dirty_bitmap *b);

/* Refuse (-1, err filled) if b is inconsistent or busy: what every
 * change but removal requires.  verb names the change for the message.
 */
extern int dirty_check_changeable (struct dirty_bitmap *b, const char *verb,
                                   struct control_error *err);

/* A bitmap's bits and flags, saved so a transaction can undo a
 * change.  NULL on allocation failure.
 */
struct dirty_saved;
extern struct dirty_saved *dirty_save (struct dirty_bitmap *b);
/* Put the saved state back, and free it. */
extern void dirty_restore (struct dirty_saved *s);
extern void dirty_saved_free (struct dirty_saved *s);

/* Changes (callers check dirty_check_changeable first). */
extern void dirty_clear (struct dirty_bitmap *b);
extern void dirty_set_recording (struct dirty_bitmap *b, bool on);

/* Mark in target every granule that overlaps a dirty granule of any
 * source (granularities may differ).  Cannot fail.
 */
extern void dirty_merge (struct dirty_bitmap *target,
                         struct dirty_bitmap *const *sources, size_t n);

/* A bitmap's state. */
struct dirty_info {
  uint64_t count;               /* Dirty bytes (clipped to the disk). */
  uint32_t granularity;
  bool recording;
  bool persistent;
  bool inconsistent;
  bool busy;
  bool in_backup;               /* Busy with an incremental backup. */
  unsigned readers;             /* Dirty exports open on it. */
  const char *reason;           /* Why inconsistent (valid as long as
                                   the bitmap), or NULL. */
};
extern void dirty_get_info (struct dirty_bitmap *b, struct dirty_info *info);

/* Its name (valid as long as the bitmap). */
extern const char *dirty_name (const struct dirty_bitmap *b);

/* The first dirty byte range of b that ends after offset, clipped to
 * [offset, end) and to the disk: true with *start and *len set, or
 * false if [offset, end) is clean.  A bitmap in a backup reports the
 * bits frozen at the backup's start.
 */
extern bool dirty_next_range (struct dirty_bitmap *b, uint64_t offset,
                              uint64_t end, uint64_t *start, uint64_t *len);

/* The names the dirtybitmap filter will add at start, once the
 * disk's size is known (dirtybitmap-add): the array must live until
 * the next call; (NULL, 0) forgets them.
 */
extern void dirty_set_expected (const char *const *names, size_t n);

/* Could an incremental backup use bitmap name now?  0, or -1 with err
 * filled (not found, inconsistent, or busy).  A missing bitmap passes
 * only if it is expected (dirty_set_expected): so a mistyped name is
 * refused before the server serves anything.
 */
extern int dirty_backup_check (const char *name, struct control_error *err);

/* An incremental backup of bitmap name over a disk of size bytes:
 * refused (NULL, err filled) unless the bitmap exists, is consistent,
 * not busy and covers size bytes.  From now until dirty_backup_end
 * the bitmap is busy, its bits are frozen (dirty_next_range gives
 * them), and new writes are recorded beside them.
 */
extern struct dirty_bitmap *dirty_backup_begin (const char *name,
                                                uint64_t size,
                                                struct control_error *err);

/* End it.  success says whether the target is complete.  For
 * DIRTY_MODE_ALWAYS after a failure, copied (offset, len) says whether
 * every byte of a range is safely on the target: those granules are
 * cleared.  Writes recorded meanwhile are merged back.
 */
extern void dirty_backup_end (struct dirty_bitmap *b, bool success,
                              enum dirty_mode mode,
                              bool (*copied) (void *opaque, uint64_t offset,
                                              uint64_t len),
                              void *opaque);

/* A reader of a frozen bitmap (a dirty export): refused unless the
 * bitmap is consistent, not recording and not in a backup.  While any
 * reader is open the bitmap is busy.
 */
extern struct dirty_bitmap *dirty_reader_begin (const char *name,
                                                struct control_error *err);
extern void dirty_reader_end (struct dirty_bitmap *b);

/* Would dirty_reader_begin accept name now?  0, or -1 with err filled
 * (the same reasons).
 */
extern int dirty_reader_check (const char *name, struct control_error *err);

/* For the sidecar file: each bitmap in creation order, under the
 * set's lock (fn must not call back into this API).  bits holds
 * nr_granules bits packed as dirty_new's data (a backup's new writes
 * already merged in); NULL for an inconsistent bitmap.
 */
struct dirty_record {
  const char *name;
  uint32_t granularity;
  bool recording;
  bool persistent;
  bool inconsistent;
  const char *reason;           /* Why inconsistent, or NULL. */
  uint64_t nr_granules;
  const uint8_t *bits;
  size_t bits_len;
};
extern int dirty_foreach_record (int (*fn) (const struct dirty_record *r,
                                            void *opaque),
                                 void *opaque);

/* Mark every persistent bitmap inconsistent (the file that keeps
 * them failed), with the reason why (copied).
 */
extern void dirty_invalidate_persistent (const char *why);

/* Free every bitmap and forget the disk size (at unload). */
extern void dirty_free_all (void);

#endif /* NBDKIT_BACKUP_DIRTY_H */
