/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Notes on the design and implementation of the copy engine:
 *
 * One thread drives everything through libnbd's asynchronous API: a
 * poll(2) loop over every source connection (and every target
 * connection when the target is an NBD export).  Completion callbacks
 * only record what happened and push the slot on a list; the loop
 * does the rest, because a callback must not call libnbd on its own
 * handle.  Apart from the workers (below) everything
 * is in one thread, and nothing else needs a lock.
 *
 * A slot is one request in flight with its own chunk-sized buffer;
 * there are --requests slots per source connection, and slot i always
 * uses connection i % connections (and the target connection of the
 * same number, its "lane").  A slot's life:
 *
 *   FREE --pread--> READING --callback--> ready list --> WRITING --> FREE
 *
 * and for a zero range on a target that needs zeros written, straight
 * FREE --> WRITING.  In WRITING, pending counts the target requests
 * not yet done plus one held while they are being issued, so that a
 * file target that completes requests at once cannot retire the slot
 * half way.  The slot's bytes are counted in the stats only when all
 * of its requests succeeded.
 *
 * Work comes from a cursor (next) over the source, cut at the extents
 * that base:allocation block status reports, fetched one window
 * (EXTENT_WINDOW) at a time with a synchronous nbd_block_status on
 * connection 0.  That call runs libnbd's loop for connection 0 until
 * it returns, so reads on connection 0 may complete inside it; their
 * callbacks only touch the ready list, and the loop drains that list
 * before it polls again.  Data ranges are read in pieces of at most
 * chunk bytes that never cross a multiple of chunk, so that writes
 * to the target are aligned whatever the extents look like.
 *
 * Zeros.  A range the source reports as ZERO is never read.  On a
 * known_zero target (a new file or qcow2 image without backing)
 * it needs nothing at all; otherwise it is written as zeros in pieces
 * of at most max_zero.  Data that reads as zeros is found too, like
 * qemu-img convert does: on a known_zero target, runs of whole
 * ZERO_GRANULE blocks of zeros inside a piece are skipped; on other
 * targets a piece that is zero throughout is sent as a zero request.
 * Either way those bytes count as "zero", not "copied".
 *
 * Holes under --incremental (skip_holes).  A source such as a
 * dirty:NAME export of nbdkit-dirtybitmap-filter reports the ranges
 * unchanged since the previous backup as HOLE: they are neither read
 * nor written, so the overlay target reads them from its backing
 * file (the previous backup), and they count as "skipped".  HOLE|ZERO
 * is not skipped: it promises zeros, which the backing file may not
 * hold (a qcow2 plugin export's zero clusters over backing data).
 *
 * --discard-source (discard.c): every range the target has (its
 * writes acknowledged, or nothing to write) is reported done, and the
 * loop trims the source behind the copy; the copy ends once the last
 * trim has completed.
 *
 * Digests (the repository's backup, verify and restore).  With a
 * digest option, work is cut into whole digest chunks instead: a
 * chunk is skipped or zero only if its extents all say so, else it is
 * read whole (a chunk that is part hole, part dirty is read whole:
 * the dirty export reads the snapshot's data everywhere).  Zero chunks
 * are hashed as the precomputed zero digest; a chunk read is hashed
 * by a worker (below), and the hash also tells whether it reads as
 * zeros.  The loop records and checks the digests (digest_done, with
 * the mismatch callback) before the slot's bytes count as done.  On a target that
 * is not known_zero (an overlay), a zero chunk is written as zeros
 * unless the parent's list says it is zero there already.  Without a
 * target (verify) nothing is written.
 *
 * Workers.  Hashing and synchronous writes (a file or qcow2 target:
 * pwrite, the copy into the page cache) are what cost CPU, and in the
 * loop thread they capped the copy at one core (bench/repo-bench.sh,
 * bench/repo-restore-bench.sh).  So in digest mode, or with a target
 * without aio_* requests, a slot whose read has completed goes to a
 * worker (a thread per online CPU, at most MAX_WORKERS): it hashes the
 * chunks and, for a synchronous target, finds the zeros and issues the
 * writes, unless a chunk differs from expect (then the loop reports it
 * and decides, and a restore writes nothing of that slot).  The worker
 * owns the slot (state HASHING) from the todo ring until it puts it on
 * the hashed list and wakes the loop through an eventfd that the loop
 * polls with the connections; only those lists are shared, under
 * hlock, and a worker touches only its slot, read-only lists and the
 * target (whose pwrite and zero are thread-safe).  The loop then
 * checks the digests and retires the slot (stats, --discard-source),
 * or issues the writes itself for an NBD target.  copy_run stops and
 * joins the workers before it returns (what is still queued after an
 * error is dropped), so none touches the target after that.
 *
 * Errors and signals.  The first error, a connection that dies, or
 * SIGINT/SIGTERM stops new work, and the requests in flight are
 * waited for (a dead connection's are failed by libnbd at once) before
 * copy_run returns -1, so that the caller can then say NBD_CMD_DISC on
 * every connection.  Hanging up with requests in flight is what makes
 * nbdkit 1.32.4 and 1.32.5 abort (nbdbackup(1), BUGS), and the server
 * may be the live disk's.  The wait gives up after DRAIN_SECONDS, or
 * at once on a second signal (the server may be what hangs); the
 * engine's memory then stays allocated until copy_free, which the
 * caller runs after closing every handle, because libnbd may still
 * hold callbacks that point at the slots until then.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/eventfd.h>

#include <libnbd.h>

#include "files.h"
#include "iszero.h"
#include "minmax.h"
#include "nbdkit-stubs.h"
#include "copy.h"
#include "digest.h"
#include "nbdbackup.h"
#include "progress.h"

/* Bytes of extents asked for per block status call. */
#define EXTENT_WINDOW (UINT64_C (1) << 30)

/* Zero detection granule in data read from the source. */
#define ZERO_GRANULE 4096

/* Poll timeout: how quickly a signal or a stalled progress bar is
 * noticed.
 */
#define POLL_MS 100

/* How long to wait for the requests in flight after an error or a
 * signal, before hanging up on them anyway.
 */
#define DRAIN_SECONDS 60

/* Most workers (hashing, file writes); there is one per online CPU. */
#define MAX_WORKERS 8

enum slot_state { SLOT_FREE, SLOT_READING, SLOT_HASHING, SLOT_WRITING };

struct slot {
  struct copy *c;
  unsigned index;
  unsigned lane;                /* connection number */
  enum slot_state state;
  uint64_t offset;
  uint32_t len;
  char *buf;                    /* chunk bytes */
  unsigned pending;             /* target requests + 1 while issuing */
  int err;                      /* first errno of the read or writes */
  bool reported;                /* err has already been reported */
  uint64_t bytes_data;          /* counted in stats on success */
  uint64_t bytes_zero;
  bool *zero_chunk;             /* digest mode: chunk i of buf is zero */
  /* Digest mode: the digest of chunk i of buf, from a worker. */
  unsigned char (*digest)[DIGEST_LEN];
  bool hash_failed;             /* digest_buf failed (reported) */
  bool worker_wrote;            /* a worker issued the writes */
};

/* What a piece of work is. */
enum piece_kind { PIECE_DATA, PIECE_ZERO, PIECE_SKIP };

struct extent {
  uint64_t offset;
  uint64_t length;
  bool zero;
  bool skip;                    /* a hole under skip_holes */
};

struct copy {
  /* Set by copy_new and never changed. */
  struct source *src;
  struct target *tgt;
  struct copy_options opts;
  struct slot *slots;
  unsigned nr_slots;
  unsigned nr_handles;          /* source + target connections */
  uint32_t dchunk;              /* digest chunk size, 0: no digests */

  /* Run state, all in the one thread. */
  unsigned *free_slots;         /* stack of free slot indexes */
  unsigned nr_free;
  unsigned *ready;              /* slots whose read has completed */
  unsigned nr_ready;
  unsigned busy;                /* slots not FREE */
  uint64_t next;                /* first byte not handed out yet */
  struct extent *ext;           /* the current window's extents */
  size_t nr_ext, cap_ext, ext_i;
  uint64_t ext_end;             /* end of the extents in ext */
  uint64_t window_end;          /* end of the window asked for */
  bool failed;
  bool interrupted;             /* the signal has been reported */
  double drain_start;           /* when failed was seen busy, or 0 */
  struct copy_stats stats;
  struct pollfd *fds;           /* nr_handles + 1 (the eventfd) */
  bool *gone;                   /* nr_handles: connection dead (reported) */

  /* Workers (hashing, synchronous writes).  Only these fields are shared with
   * them, under hlock; a slot in SLOT_HASHING belongs to the workers
   * until it is back on the hashed list.
   */
  unsigned nr_workers;          /* started */
  pthread_t workers[MAX_WORKERS];
  pthread_mutex_t hlock;
  pthread_cond_t hcond;         /* work queued, or stop */
  unsigned *hash_todo;          /* ring of slot indexes to hash */
  unsigned todo_head, todo_count;
  unsigned *hashed;             /* slots hashed, for the loop */
  unsigned nr_hashed;
  unsigned *hashed_take;        /* the loop's copy of hashed */
  bool hash_stop;               /* copy_run is over: exit */
  int hash_fd;                  /* eventfd: a slot was hashed, or -1 */
};

static void
slot_release (struct slot *slot)
{
  struct copy *c = slot->c;

  slot->state = SLOT_FREE;
  c->free_slots[c->nr_free++] = slot->index;
  c->busy--;
}

/* [offset, offset+len) is on the target. */
static void
range_done (struct copy *c, uint64_t offset, uint64_t len)
{
  if (c->opts.discard && discard_done (c->opts.discard, offset, len) == -1)
    c->failed = true;
}

/* Drop one reference on a WRITING slot; the last one retires it. */
static void
slot_put (struct slot *slot)
{
  struct copy *c = slot->c;

  if (--slot->pending > 0)
    return;
  if (slot->err) {
    if (!slot->reported && !c->failed)  /* only the first error */
      nbdkit_error ("target: writing %" PRIu32 " bytes at offset %" PRIu64
                    ": %s", slot->len, slot->offset, strerror (slot->err));
    c->failed = true;
  }
  else {
    c->stats.copied += slot->bytes_data;
    c->stats.zero += slot->bytes_zero;
    range_done (c, slot->offset, slot->len);
  }
  slot_release (slot);
}

/* target_done_fn: a target request of the slot has completed. */
static void
target_done (void *opaque, int err)
{
  struct slot *slot = opaque;

  if (err && !slot->err)
    slot->err = err;
  slot_put (slot);
}

/* A target request could not be issued (reported).  Touches only
 * the slot (it may run in a worker): slot_put fails the copy.
 */
static void
issue_failed (struct slot *slot)
{
  slot->pending--;
  if (!slot->err) {
    slot->err = EIO;
    slot->reported = true;
  }
}

static void
issue_write (struct slot *slot, const char *buf, uint32_t len,
             uint64_t offset)
{
  struct target *t = slot->c->tgt;

  if (slot->err)
    return;
  slot->pending++;
  slot->bytes_data += len;
  /* A file target completes at once; an NBD target asynchronously. */
  if (t->ops->aio_pwrite) {
    if (t->ops->aio_pwrite (t, slot->lane, buf, len, offset,
                            target_done, slot) == -1)
      issue_failed (slot);
  }
  else if (t->ops->pwrite (t, buf, len, offset) == -1)
    issue_failed (slot);
  else
    target_done (slot, 0);
}

static void
issue_zero (struct slot *slot, uint32_t len, uint64_t offset)
{
  struct target *t = slot->c->tgt;

  if (slot->err)
    return;
  slot->pending++;
  slot->bytes_zero += len;
  if (t->ops->aio_zero) {
    if (t->ops->aio_zero (t, slot->lane, len, offset,
                          target_done, slot) == -1)
      issue_failed (slot);
  }
  else if (t->ops->zero (t, len, offset) == -1)
    issue_failed (slot);
  else
    target_done (slot, 0);
}

/* Digests.  The chunk numbers of [offset, offset+len) (whole chunks). */
static inline uint64_t
chunk_of (const struct copy *c, uint64_t offset)
{
  return offset / c->dchunk;
}

/* The digest list whose chunk geometry every list shares. */
static const struct digests *
any_list (const struct copy *c)
{
  return c->opts.record ? c->opts.record :
    c->opts.expect ? c->opts.expect : c->opts.parent;
}

/* Chunk i's digest is d: record it, check it.  0 to go on, -1 to
 * stop (a mismatch, reported).
 */
static int
digest_done (struct copy *c, uint64_t i, const unsigned char *d)
{
  const struct copy_options *o = &c->opts;

  if (o->record)
    memcpy (o->record->d[i], d, DIGEST_LEN);
  if (o->expect && memcmp (o->expect->d[i], d, DIGEST_LEN) != 0) {
    uint64_t offset = i * c->dchunk;
    uint32_t len = digests_chunk_len (o->expect, i);

    c->stats.mismatches++;
    if (o->mismatch)
      return o->mismatch (o->mismatch_opaque, offset, len);
    nbdkit_error ("chunk at offset %" PRIu64 ": digest mismatch", offset);
    return -1;
  }
  return 0;
}

/* A zero piece: every chunk has the zero digest. */
static int
digest_zero_piece (struct copy *c, uint64_t offset, uint64_t len)
{
  const struct digests *any = any_list (c);
  uint64_t i, end = chunk_of (c, offset + len - 1);

  for (i = chunk_of (c, offset); i <= end; ++i)
    if (digest_done (c, i, digests_zero_of (any, i)) == -1)
      return -1;
  return 0;
}

/* In a worker: hash every chunk of a slot that was read, noting
 * which are zero.  Touches only the slot and read-only lists.
 */
static void
hash_slot (struct slot *slot)
{
  struct copy *c = slot->c;
  const struct digests *any = any_list (c);
  uint32_t pos, n;
  uint64_t i;
  unsigned k;

  for (pos = 0; pos < slot->len; pos += n) {
    i = chunk_of (c, slot->offset + pos);
    n = digests_chunk_len (any, i);
    k = pos / c->dchunk;
    if (digest_buf (slot->buf + pos, n, slot->digest[k]) == -1) {
      slot->hash_failed = true;
      return;
    }
    slot->zero_chunk[k] =
      memcmp (slot->digest[k], digests_zero_of (any, i), DIGEST_LEN) == 0;
  }
}

/* In the loop: record and check the digests a worker computed, in
 * chunk order.  0 to go on, -1 to stop (reported).
 */
static int
digest_slot (struct slot *slot)
{
  struct copy *c = slot->c;
  uint32_t pos;

  if (slot->hash_failed)
    return -1;
  for (pos = 0; pos < slot->len; pos += c->dchunk)
    if (digest_done (c, chunk_of (c, slot->offset + pos),
                     slot->digest[pos / c->dchunk]) == -1)
      return -1;
  return 0;
}

/* A chunk that reads as zero need not be written where the parent
 * (the overlay's backing file) is zero too.
 */
static bool
parent_zero (const struct copy *c, uint64_t offset)
{
  return c->opts.parent && digests_is_zero (c->opts.parent,
                                            chunk_of (c, offset));
}

/* Issue zero requests for [offset, offset+len), in pieces the target
 * takes (max_zero may be below the length).
 */
static void
issue_zeros (struct slot *slot, uint64_t offset, uint64_t len)
{
  uint64_t pos, next;

  for (pos = 0; pos < len; pos += next) {
    next = MIN (len - pos, (uint64_t) slot->c->tgt->max_zero);
    issue_zero (slot, next, offset + pos);
  }
}

enum chunk_action { DO_WRITE, DO_ZERO, DO_NOTHING };

/* Digest mode, a target that is not known_zero: what chunk at pos
 * of the slot needs.  Data is written; zeros are written as zeros
 * unless the parent is zero there.
 */
static enum chunk_action
chunk_action (const struct slot *slot, uint32_t pos)
{
  if (!slot->zero_chunk[pos / slot->c->dchunk])
    return DO_WRITE;
  if (parent_zero (slot->c, slot->offset + pos))
    return DO_NOTHING;
  return DO_ZERO;
}

/* Write the slot chunk by chunk, each run of chunks that need the
 * same in one request.
 */
static void
write_chunks (struct slot *slot)
{
  struct copy *c = slot->c;
  uint32_t pos = 0, start;
  enum chunk_action run;

  while (pos < slot->len) {
    start = pos;
    run = chunk_action (slot, pos);
    do
      pos += MIN (c->dchunk, slot->len - pos);
    while (pos < slot->len && chunk_action (slot, pos) == run);
    if (run == DO_WRITE)
      issue_write (slot, slot->buf + start, pos - start,
                   slot->offset + start);
    else if (run == DO_ZERO)
      issue_zeros (slot, slot->offset + start, pos - start);
    else
      slot->bytes_zero += pos - start;
  }
}

/* Issue the writes of a slot whose read has completed (and, in
 * digest mode, been hashed and checked).  The caller holds one
 * reference (pending) and drops it with slot_put.  Runs in the loop,
 * or in a worker for a target without aio_* requests (a file): then
 * it touches only the slot and the target.
 */
static void
issue_slot_writes (struct slot *slot)
{
  struct copy *c = slot->c;
  const char *buf = slot->buf;
  uint32_t len = slot->len, pos, end, next;
  bool zero;

  if (c->dchunk) {
    if (c->tgt == NULL) {       /* verify: nothing to write */
      for (pos = 0; pos < len; pos += c->dchunk) {
        next = MIN (len - pos, c->dchunk);
        if (slot->zero_chunk[pos / c->dchunk])
          slot->bytes_zero += next;
        else
          slot->bytes_data += next;
      }
      return;
    }
    if (!c->tgt->known_zero) {
      write_chunks (slot);
      return;
    }
  }

  if (!c->tgt->known_zero) {
    if (is_zero (buf, len)) {
      /* In pieces the target takes (max_zero may be below chunk). */
      for (pos = 0; pos < len; pos += next) {
        next = MIN (len - pos, c->tgt->max_zero);
        issue_zero (slot, next, slot->offset + pos);
      }
    }
    else
      issue_write (slot, buf, len, slot->offset);
    return;
  }

  /* Split into runs of zero and non-zero granules, aligned to
   * ZERO_GRANULE in the disk (not in the buffer), and skip the zero
   * runs.
   */
  for (pos = 0; pos < len; pos = end) {
    end = MIN ((uint64_t) len,
               ((slot->offset + pos) / ZERO_GRANULE + 1) * ZERO_GRANULE
               - slot->offset);
    zero = is_zero (buf + pos, end - pos);
    while (end < len) {
      next = MIN (len, end + ZERO_GRANULE);
      if (is_zero (buf + end, next - end) != zero)
        break;
      end = next;
    }
    if (zero)
      slot->bytes_zero += end - pos;
    else
      issue_write (slot, buf + pos, end - pos, slot->offset + pos);
  }
}

/* In the loop: the slot's read has completed (and in digest mode its
 * hash, and maybe a worker has written it already): record and check
 * its digests, write what it read unless that is done, and drop the
 * reference.
 */
static void
write_slot (struct slot *slot)
{
  struct copy *c = slot->c;

  if (!slot->worker_wrote)
    slot->pending = 1;
  slot->state = SLOT_WRITING;

  if (c->dchunk && digest_slot (slot) == -1) {
    c->failed = true;
    slot->reported = true;
    slot->err = EIO;
    slot_put (slot);
    return;
  }
  if (!slot->worker_wrote)
    issue_slot_writes (slot);
  slot_put (slot);
}

/* libnbd completion of a source read (inside nbd_aio_notify_* or
 * nbd_block_status): just queue the slot for the loop.
 */
static int
read_done (void *user_data, int *error)
{
  struct slot *slot = user_data;
  struct copy *c = slot->c;

  slot->err = *error;
  c->ready[c->nr_ready++] = slot->index;
  return 1;                     /* retire the command */
}

/* True if the target's writes are synchronous calls, which the
 * workers make: a file or qcow2 image, not an NBD export.
 */
static bool
workers_write (const struct copy *c)
{
  return c->tgt != NULL && c->tgt->ops->aio_pwrite == NULL;
}

/* In a worker: every chunk of the slot read agrees with expect (the
 * digests must be hashed).  Reads only.
 */
static bool
expect_ok (const struct slot *slot)
{
  const struct copy *c = slot->c;
  uint32_t pos;

  if (c->opts.expect == NULL)
    return true;
  for (pos = 0; pos < slot->len; pos += c->dchunk)
    if (memcmp (c->opts.expect->d[chunk_of (c, slot->offset + pos)],
                slot->digest[pos / c->dchunk], DIGEST_LEN) != 0)
      return false;
  return true;
}

/* In a worker: hash the slot (digest mode) and, for a synchronous
 * target, write it unless a chunk differs from expect (the loop
 * reports that and decides, as without workers).
 */
static void
work_slot (struct slot *slot)
{
  struct copy *c = slot->c;

  slot->hash_failed = false;
  slot->worker_wrote = false;
  if (c->dchunk) {
    hash_slot (slot);
    if (slot->hash_failed || !expect_ok (slot))
      return;
  }
  if (workers_write (c)) {
    slot->pending = 1;
    issue_slot_writes (slot);
    slot->worker_wrote = true;
  }
}

/* A worker: take slots off the ring, work on them, put them on the
 * hashed list and wake the loop, until told to stop (what is still
 * queued then is abandoned: the copy is over).
 */
static void *
slot_worker (void *arg)
{
  struct copy *c = arg;
  const uint64_t one = 1;
  unsigned index;

  for (;;) {
    pthread_mutex_lock (&c->hlock);
    while (c->todo_count == 0 && !c->hash_stop)
      pthread_cond_wait (&c->hcond, &c->hlock);
    if (c->hash_stop) {
      pthread_mutex_unlock (&c->hlock);
      return NULL;
    }
    index = c->hash_todo[c->todo_head];
    c->todo_head = (c->todo_head + 1) % c->nr_slots;
    c->todo_count--;
    pthread_mutex_unlock (&c->hlock);

    work_slot (&c->slots[index]);

    pthread_mutex_lock (&c->hlock);
    c->hashed[c->nr_hashed++] = index;
    pthread_mutex_unlock (&c->hlock);
    /* Fails only when the counter is full: the loop is awake then. */
    if (write (c->hash_fd, &one, sizeof one) == -1) {
      /* ignored */
    }
  }
}

/* Hand a slot whose read has completed to the workers. */
static void
queue_work (struct slot *slot)
{
  struct copy *c = slot->c;

  slot->state = SLOT_HASHING;
  pthread_mutex_lock (&c->hlock);
  c->hash_todo[(c->todo_head + c->todo_count) % c->nr_slots] = slot->index;
  c->todo_count++;
  pthread_cond_signal (&c->hcond);
  pthread_mutex_unlock (&c->hlock);
}

static void
process_ready (struct copy *c)
{
  while (c->nr_ready > 0) {
    struct slot *slot = &c->slots[c->ready[--c->nr_ready]];

    if (slot->err) {
      if (!c->failed)           /* only the first error */
          nbdkit_error ("source %s: reading %" PRIu32 " bytes at offset "
                      "%" PRIu64 ": %s", c->src->uri, slot->len,
                      slot->offset, strerror (slot->err));
      c->failed = true;
      slot_release (slot);
    }
    else if (c->failed)
      slot_release (slot);      /* no more writes after an error */
    else if (c->nr_workers > 0)
      queue_work (slot);
    else
      write_slot (slot);
  }
}

/* Slots the workers have hashed: check and write them. */
static void
process_hashed (struct copy *c)
{
  unsigned i, n;

  if (c->nr_workers == 0)
    return;
  pthread_mutex_lock (&c->hlock);
  n = c->nr_hashed;
  memcpy (c->hashed_take, c->hashed, n * sizeof *c->hashed);
  c->nr_hashed = 0;
  pthread_mutex_unlock (&c->hlock);

  for (i = 0; i < n; ++i) {
    struct slot *slot = &c->slots[c->hashed_take[i]];

    if (c->failed)
      slot_release (slot);      /* no more writes after an error */
    else
      write_slot (slot);
  }
}

static int
add_extent (struct copy *c, uint64_t offset, uint64_t length, bool zero,
            bool skip)
{
  struct extent *last = c->nr_ext > 0 ? &c->ext[c->nr_ext - 1] : NULL;

  if (last && last->zero == zero && last->skip == skip) {
    last->length += length;
    return 0;
  }
  if (c->nr_ext == c->cap_ext) {
    size_t n = c->cap_ext ? c->cap_ext * 2 : 64;
    struct extent *p = realloc (c->ext, n * sizeof *p);

    if (p == NULL)
      return -1;
    c->ext = p;
    c->cap_ext = n;
  }
  c->ext[c->nr_ext++] = (struct extent) { offset, length, zero, skip };
  return 0;
}

static int
extent_cb (void *user_data, const char *metacontext, uint64_t offset,
           uint32_t *entries, size_t nr_entries, int *error)
{
  struct copy *c = user_data;
  uint64_t pos = offset, len;
  size_t i;

  if (strcmp (metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  /* Only one reply is expected; ignore anything that would not
   * continue the extents we have.
   */
  if (offset != c->ext_end)
    return 0;
  for (i = 0; i + 1 < nr_entries && pos < c->window_end; i += 2) {
    len = MIN ((uint64_t) entries[i], c->window_end - pos);
    if (len == 0)
      break;
    if (add_extent (c, pos, len, entries[i + 1] & LIBNBD_STATE_ZERO,
                    c->opts.skip_holes &&
                    (entries[i + 1] & (LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO))
                    == LIBNBD_STATE_HOLE) == -1) {
      *error = ENOMEM;
      return -1;
    }
    pos += len;
  }
  c->ext_end = pos;
  return 0;
}

/* Fetch the extents of the window starting at c->next. */
static int
refresh_extents (struct copy *c)
{
  struct source *src = c->src;
  nbd_extent_callback cb = { .callback = extent_cb, .user_data = c };

  c->nr_ext = c->ext_i = 0;
  c->ext_end = c->next;
  c->window_end = c->next + MIN (src->size - c->next, EXTENT_WINDOW);

  if (!src->have_extents) {
    c->ext_end = c->window_end;
    if (add_extent (c, c->next, c->window_end - c->next, false,
                    false) == -1) {
      nbdkit_error ("realloc: %m");
      return -1;
    }
    return 0;
  }
  if (nbd_block_status (src->nbd[0], c->window_end - c->next, c->next,
                        cb, 0) == -1) {
    nbdkit_error ("source %s: block status at offset %" PRIu64 ": %s",
                  src->uri, c->next, nbd_get_error ());
    return -1;
  }
  if (c->nr_ext == 0) {
    nbdkit_error ("source %s: block status at offset %" PRIu64
                  " returned no extents", src->uri, c->next);
    return -1;
  }
  return 0;
}

/* Digest mode: what the chunk [off, end) is, from the extents (ext_i
 * is moved to the first one that reaches off).  Only a chunk that is
 * all hole is skipped and only one that is all zero is zero; a part
 * past the extents known is read.
 */
static enum piece_kind
classify_chunk (struct copy *c, uint64_t off, uint64_t end)
{
  bool all_zero = end <= c->ext_end, all_skip = end <= c->ext_end;
  size_t i;

  while (c->ext_i < c->nr_ext &&
         c->ext[c->ext_i].offset + c->ext[c->ext_i].length <= off)
    c->ext_i++;
  for (i = c->ext_i; i < c->nr_ext && c->ext[i].offset < end; ++i) {
    all_zero &= c->ext[i].zero;
    all_skip &= c->ext[i].skip;
  }
  return all_skip ? PIECE_SKIP : all_zero ? PIECE_ZERO : PIECE_DATA;
}

/* Digest mode: the next piece is a run of whole chunks of one kind,
 * at most opts.chunk bytes (and not crossing a multiple of it) unless
 * it is skipped, and not past the extents known.
 */
static void
next_chunks (struct copy *c, uint64_t *end, bool *zero, bool *skip)
{
  uint64_t size = c->src->size, limit;
  enum piece_kind kind;

  *end = MIN (size, c->next + c->dchunk);
  kind = classify_chunk (c, c->next, *end);
  limit = kind == PIECE_SKIP ? c->ext_end :
    MIN (c->ext_end, (c->next | (c->opts.chunk - 1)) + 1);
  while (*end < limit && *end + c->dchunk <= c->ext_end &&
         classify_chunk (c, *end, MIN (size, *end + c->dchunk)) == kind)
    *end = MIN (size, *end + c->dchunk);
  *zero = kind == PIECE_ZERO;
  *skip = kind == PIECE_SKIP;
}

/* The next piece of work at c->next, which it advances.  1 = got
 * one, 0 = the whole source is handed out, -1 = error.  *skip: a
 * hole to leave alone (skip_holes).
 */
static int
next_piece (struct copy *c, uint64_t *offset, uint64_t *len, bool *zero,
            bool *skip)
{
  const struct extent *e;
  uint64_t end;

  if (c->next >= c->src->size)
    return 0;
  if (c->next >= c->ext_end && refresh_extents (c) == -1)
    return -1;
  if (c->dchunk) {
    next_chunks (c, &end, zero, skip);
    *offset = c->next;
    *len = end - c->next;
    c->next = end;
    return 1;
  }
  while (c->ext[c->ext_i].offset + c->ext[c->ext_i].length <= c->next)
    c->ext_i++;
  e = &c->ext[c->ext_i];
  end = e->offset + e->length;
  if (e->skip)
    ;
  else if (e->zero) {
    if (!c->tgt->known_zero)
      end = MIN (end, c->next + c->tgt->max_zero);
  }
  else
    end = MIN (end, (c->next | (c->opts.chunk - 1)) + 1);

  *offset = c->next;
  *len = end - c->next;
  *zero = e->zero;
  *skip = e->skip;
  c->next = end;
  return 1;
}

/* Hand out work to free slots. */
static int
fill (struct copy *c)
{
  while (!c->failed && c->nr_free > 0) {
    struct slot *slot;
    uint64_t offset, len;
    bool zero, skip;
    int r;

    r = next_piece (c, &offset, &len, &zero, &skip);
    if (r <= 0)
      return r;
    if (skip) {
      c->stats.skipped += len;
      range_done (c, offset, len);
      continue;
    }
    if (zero && c->dchunk && digest_zero_piece (c, offset, len) == -1)
      return -1;
    if (zero && (c->tgt == NULL || c->tgt->known_zero)) {
      c->stats.zero += len;
      range_done (c, offset, len);
      continue;
    }

    slot = &c->slots[c->free_slots[--c->nr_free]];
    c->busy++;
    slot->offset = offset;
    slot->len = len;
    slot->err = 0;
    slot->reported = false;
    slot->bytes_data = slot->bytes_zero = 0;

    if (zero) {
      slot->state = SLOT_WRITING;
      slot->pending = 1;
      if (c->dchunk) {          /* zero what the parent does not */
        memset (slot->zero_chunk, 1,
                c->opts.chunk / c->dchunk * sizeof *slot->zero_chunk);
        write_chunks (slot);
      }
      else
        issue_zero (slot, len, offset);
      slot_put (slot);
    }
    else {
      nbd_completion_callback cb = { .callback = read_done,
                                     .user_data = slot };

      slot->state = SLOT_READING;
      if (nbd_aio_pread (c->src->nbd[slot->lane], slot->buf, len, offset,
                         cb, 0) == -1) {
        nbdkit_error ("source %s: %s", c->src->uri, nbd_get_error ());
        slot_release (slot);
        return -1;
      }
    }
  }
  return 0;
}

static struct nbd_handle *
handle (struct copy *c, unsigned i, const char **what)
{
  if (i < c->src->nr_nbd) {
    *what = "source";
    return c->src->nbd[i];
  }
  *what = "target";
  return c->tgt->nbd[i - c->src->nr_nbd];
}

/* Wait for events on every live connection and let libnbd handle
 * them.  -1 if a connection died (reported; libnbd fails its requests,
 * the others go on), -2 if poll itself failed.
 */
static int
poll_once (struct copy *c)
{
  const char *what;
  unsigned i;
  int r = 0;

  for (i = 0; i < c->nr_handles; ++i) {
    struct nbd_handle *nbd = handle (c, i, &what);
    unsigned dir;

    c->fds[i].fd = -1;          /* ignored by poll */
    c->fds[i].events = 0;
    c->fds[i].revents = 0;
    if (c->gone[i])
      continue;
    dir = nbd_aio_get_direction (nbd);
    c->fds[i].fd = nbd_aio_get_fd (nbd);
    if (dir & LIBNBD_AIO_DIRECTION_READ)
      c->fds[i].events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
      c->fds[i].events |= POLLOUT;
  }
  c->fds[c->nr_handles].fd = c->hash_fd;      /* -1: ignored */
  c->fds[c->nr_handles].events = POLLIN;
  c->fds[c->nr_handles].revents = 0;
  if (poll (c->fds, c->nr_handles + 1, POLL_MS) == -1) {
    if (errno == EINTR)
      return 0;
    nbdkit_error ("poll: %m");
    return -2;
  }
  if (c->fds[c->nr_handles].revents & POLLIN) {
    uint64_t n;

    /* Just clear it: process_hashed looks at the list anyway. */
    if (read (c->hash_fd, &n, sizeof n) == -1 && errno != EAGAIN) {
      nbdkit_error ("eventfd: read: %m");
      return -2;
    }
  }
  for (i = 0; i < c->nr_handles; ++i) {
    struct nbd_handle *nbd = handle (c, i, &what);
    int n = 0;

    if (c->gone[i])
      continue;
    if (c->fds[i].revents & (POLLIN | POLLHUP | POLLERR))
      n = nbd_aio_notify_read (nbd);
    else if (c->fds[i].revents & POLLOUT)
      n = nbd_aio_notify_write (nbd);
    if (n == -1 || nbd_aio_is_dead (nbd) == 1 ||
        nbd_aio_is_closed (nbd) == 1) {
      if (n == -1)
        nbdkit_error ("%s: %s", what, nbd_get_error ());
      else
        nbdkit_error ("%s: the server closed the connection", what);
      c->gone[i] = true;
      r = -1;
    }
  }
  return r;
}

/* The digest options agree with the source and each other; set
 * dchunk and make opts.chunk a multiple of it.  0 or -1 (reported).
 */
static int
digest_setup (struct copy *c)
{
  const struct digests *lists[] = {
    c->opts.record, c->opts.expect, c->opts.parent
  };
  size_t i;

  for (i = 0; i < sizeof lists / sizeof lists[0]; ++i) {
    if (lists[i] == NULL)
      continue;
    if (lists[i]->size != c->src->size ||
        (c->dchunk && lists[i]->chunk != c->dchunk)) {
      nbdkit_error ("digest list of %" PRIu64 " bytes in chunks of %"
                    PRIu32 " does not fit the source (%" PRIu64 " bytes)",
                    lists[i]->size, lists[i]->chunk, c->src->size);
      return -1;
    }
    c->dchunk = lists[i]->chunk;
  }
  if (c->tgt == NULL && c->dchunk == 0) {
    nbdkit_error ("internal error: a copy without a target and digests");
    return -1;
  }
  if (c->dchunk && c->opts.chunk < c->dchunk) {
    if (c->dchunk > c->src->max_request) {
      nbdkit_error ("source %s: the server reads at most %" PRIu64 " bytes "
                    "at a time, less than a digest chunk (%" PRIu32 ")",
                    c->src->uri, c->src->max_request, c->dchunk);
      return -1;
    }
    c->opts.chunk = c->dchunk;
  }
  return 0;
}

/* Start one worker per online CPU.  0 or -1
 * (reported).
 */
static int
start_workers (struct copy *c)
{
  long cpus = sysconf (_SC_NPROCESSORS_ONLN);
  unsigned want = cpus < 1 ? 1 : cpus > MAX_WORKERS ?
    MAX_WORKERS : (unsigned) cpus;
  int err;

  c->hash_todo = calloc (c->nr_slots, sizeof *c->hash_todo);
  c->hashed = calloc (c->nr_slots, sizeof *c->hashed);
  c->hashed_take = calloc (c->nr_slots, sizeof *c->hashed_take);
  if (c->hash_todo == NULL || c->hashed == NULL || c->hashed_take == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  c->hash_fd = eventfd (0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (c->hash_fd == -1) {
    nbdkit_error ("eventfd: %m");
    return -1;
  }
  pthread_mutex_init (&c->hlock, NULL);
  pthread_cond_init (&c->hcond, NULL);
  while (c->nr_workers < want) {
    err = pthread_create (&c->workers[c->nr_workers], NULL, slot_worker, c);
    if (err) {
      errno = err;
      nbdkit_error ("pthread_create: %m");
      return -1;
    }
    c->nr_workers++;
  }
  return 0;
}

/* Stop the workers after the slot each is working on, and join
 * them: once copy_run returns, no worker touches the target, which
 * the caller then finishes and closes.
 */
static void
stop_workers (struct copy *c)
{
  unsigned i;

  if (c->hash_fd == -1)
    return;
  pthread_mutex_lock (&c->hlock);
  c->hash_stop = true;
  pthread_cond_broadcast (&c->hcond);
  pthread_mutex_unlock (&c->hlock);
  for (i = 0; i < c->nr_workers; ++i)
    pthread_join (c->workers[i], NULL);
  pthread_mutex_destroy (&c->hlock);
  pthread_cond_destroy (&c->hcond);
  close (c->hash_fd);
  c->hash_fd = -1;
}

struct copy *
copy_new (struct source *src, struct target *tgt,
          const struct copy_options *opts)
{
  struct copy *c;
  unsigned i;

  c = calloc (1, sizeof *c);
  if (c == NULL)
    goto nomem;
  c->hash_fd = -1;
  c->src = src;
  c->tgt = tgt;
  c->opts = *opts;
  c->stats.total = src->size;
  c->nr_slots = opts->requests * src->nr_nbd;
  c->nr_handles = src->nr_nbd + (tgt ? tgt->nr_nbd : 0);
  if (digest_setup (c) == -1)
    goto err;
  c->slots = calloc (c->nr_slots, sizeof *c->slots);
  c->free_slots = calloc (c->nr_slots, sizeof *c->free_slots);
  c->ready = calloc (c->nr_slots, sizeof *c->ready);
  c->fds = calloc (c->nr_handles + 1, sizeof *c->fds);
  c->gone = calloc (c->nr_handles, sizeof *c->gone);
  if (c->slots == NULL || c->free_slots == NULL || c->ready == NULL ||
      c->fds == NULL || c->gone == NULL)
    goto nomem;
  for (i = 0; i < c->nr_slots; ++i) {
    struct slot *slot = &c->slots[i];

    slot->c = c;
    slot->index = i;
    slot->lane = i % src->nr_nbd;
    slot->buf = malloc (c->opts.chunk);
    if (slot->buf == NULL)
      goto nomem;
    if (c->dchunk &&
        ((slot->zero_chunk = calloc (c->opts.chunk / c->dchunk,
                                     sizeof *slot->zero_chunk)) == NULL ||
         (slot->digest = calloc (c->opts.chunk / c->dchunk,
                                 sizeof *slot->digest)) == NULL))
      goto nomem;
    /* Popped in order 0, 1, 2...: consecutive pieces go to different
     * connections.
     */
    c->free_slots[c->nr_slots - 1 - i] = i;
  }
  c->nr_free = c->nr_slots;
  if ((c->dchunk || workers_write (c)) && start_workers (c) == -1)
    goto err;
  return c;

 nomem:
  nbdkit_error ("malloc: %m");
 err:
  copy_free (c);
  return NULL;
}

/* After the first error: true once waiting for the requests still in
 * flight should stop (too long, or a second signal).
 */
static bool
drain_given_up (struct copy *c)
{
  double now = monotonic_seconds ();

  if (c->drain_start == 0)
    c->drain_start = now;
  if (signal_count < 2 && now - c->drain_start < DRAIN_SECONDS)
    return false;
  if (signal_count >= 2)
    warning ("giving up on %u request(s) in flight after a second signal",
             c->busy);
  else
    warning ("giving up on %u request(s) in flight after %d seconds",
             c->busy, DRAIN_SECONDS);
  return true;
}

int
copy_run (struct copy *c, struct copy_stats *stats)
{
  struct discard *d = c->opts.discard;

  progress_start (c->stats.total, c->opts.progress);
  for (;;) {
    /* A signal stops new work like an error does. */
    if (interrupted_by != 0 && !c->interrupted) {
      c->interrupted = true;
      if (!c->failed)
        nbdkit_error ("interrupted by signal %d (%s)",
                      (int) interrupted_by, strsignal (interrupted_by));
      c->failed = true;
    }
    /* Block status inside fill may complete reads: drain again. */
    do {
      process_hashed (c);
      process_ready (c);
      if (fill (c) == -1)
        c->failed = true;
    } while (c->nr_ready > 0);
    if (d && !c->failed)
      discard_kick (d);

    /* A trim in flight is a request in flight too. */
    if (c->busy == 0 && !(d && discard_busy (d)) &&
        (c->failed ||
         (c->next >= c->src->size && (!d || discard_caught_up (d)))))
      break;
    if (c->failed && drain_given_up (c))
      break;                    /* abandon what is in flight */
    progress_update (c->stats.copied + c->stats.zero + c->stats.skipped);
    switch (poll_once (c)) {
    case -1:                    /* a connection died: drain the others */
      c->failed = true;
      break;
    case -2:
      c->failed = true;
      goto out;
    }
  }
 out:
  stop_workers (c);
  progress_end ();

  if (d)
    c->stats.discarded = discard_bytes (d);
  *stats = c->stats;
  if (c->failed || c->stats.mismatches > 0)
    return -1;
  if (c->stats.copied + c->stats.zero + c->stats.skipped != c->stats.total) {
    nbdkit_error ("internal error: copied %" PRIu64 " + zero %" PRIu64
                  " + skipped %" PRIu64 " != %" PRIu64 " bytes",
                  c->stats.copied, c->stats.zero, c->stats.skipped,
                  c->stats.total);
    return -1;
  }
  return 0;
}

void
copy_free (struct copy *c)
{
  unsigned i;

  if (c == NULL)
    return;
  stop_workers (c);
  if (c->slots)
    for (i = 0; i < c->nr_slots; ++i) {
      free (c->slots[i].buf);
      free (c->slots[i].zero_chunk);
      free (c->slots[i].digest);
    }
  free (c->hash_todo);
  free (c->hashed);
  free (c->hashed_take);
  free (c->slots);
  free (c->free_slots);
  free (c->ready);
  free (c->ext);
  free (c->fds);
  free (c->gone);
  free (c);
}
