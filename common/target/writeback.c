/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Page-cache hygiene for targets written in bulk (target-internal.h).
 *
 * A backup is written once and not read back while it is written.
 * Left alone, a full push piles up gigabytes of dirty pages for the
 * final fsync to write at once, and the writers spend their time in
 * the page cache (perf: 41% of a raw push's CPU copying into new
 * folios, 18% spinning on the inode's lock).  So, as nbdcopy does,
 * each bulk range starts its writeback as soon as it is written, and
 * once the range WB_RING pushes back is on the disk its pages leave
 * the cache, so that new writes take pages from a small, warm set.
 *
 * Only hints: the target's final fsync is what makes it durable, and
 * a failure shows there.
 */

#include <config.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>

#include "target-internal.h"

void
writeback_init (struct writeback *w)
{
  pthread_mutex_init (&w->lock, NULL);
  w->next = 0;
  w->mark = 0;
  for (unsigned i = 0; i < WB_RING; ++i)
    w->ring[i].offset = w->ring[i].len = 0;
}

void
writeback_destroy (struct writeback *w)
{
  pthread_mutex_destroy (&w->lock);
}

void
writeback_push (struct writeback *w, int fd, uint64_t offset, uint64_t len)
{
  uint64_t old_offset, old_len;

  if (len == 0)
    return;
  sync_file_range (fd, offset, len, SYNC_FILE_RANGE_WRITE);
  pthread_mutex_lock (&w->lock);
  old_offset = w->ring[w->next].offset;
  old_len = w->ring[w->next].len;
  w->ring[w->next].offset = offset;
  w->ring[w->next].len = len;
  w->next = (w->next + 1) % WB_RING;
  pthread_mutex_unlock (&w->lock);
  if (old_len > 0) {
    sync_file_range (fd, old_offset, old_len,
                     SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                     SYNC_FILE_RANGE_WAIT_AFTER);
    posix_fadvise (fd, old_offset, old_len, POSIX_FADV_DONTNEED);
  }
}

void
writeback_mark_end (struct writeback *w, int fd)
{
  struct stat st;

  if (fstat (fd, &st) == 0 && st.st_size > 0) {
    pthread_mutex_lock (&w->lock);
    w->mark = st.st_size;
    pthread_mutex_unlock (&w->lock);
  }
}

void
writeback_push_tail (struct writeback *w, int fd)
{
  struct stat st;
  uint64_t from, to;

  if (fstat (fd, &st) == -1 || st.st_size <= 0)
    return;
  to = st.st_size;
  pthread_mutex_lock (&w->lock);
  from = w->mark;
  if (to < from + WRITEBACK_MIN)
    to = from;                  /* Not enough new yet. */
  else
    w->mark = to;
  pthread_mutex_unlock (&w->lock);
  writeback_push (w, fd, from, to - from);
}
