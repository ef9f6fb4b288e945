/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit tests for the dirty bitmap set: marking at several
 * granularities, ranges clipped to the disk, merges across
 * granularities, saved state for transactions, every bitmap mode
 * after success and failure (with a granularity coarser than the
 * copy clusters), the change hook, and invalidation.
 */

#include <config.h>

#undef NDEBUG
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dirty.h"

#define K 1024ULL
#define M (1024 * K)
#define DISK (10 * M + 4 * K)

/* The ranges of b as "offset+length ..." (static buffer). */
static const char *
ranges (struct dirty_bitmap *b)
{
  static char buf[4096];
  uint64_t pos = 0, s, l;
  size_t n = 0;

  buf[0] = '\0';
  while (dirty_next_range (b, pos, UINT64_MAX, &s, &l)) {
    n += snprintf (buf + n, sizeof buf - n, "%s%llu+%llu", n ? " " : "",
                   (unsigned long long) s, (unsigned long long) l);
    pos = s + l;
  }
  return buf;
}

static struct dirty_bitmap *
add (const char *name, uint32_t granularity, bool recording)
{
  struct control_error err = { 0 };
  struct dirty_new n = {
    .name = name, .granularity = granularity, .recording = recording,
  };
  struct dirty_bitmap *b = dirty_add (&n, &err);

  if (b == NULL) {
    fprintf (stderr, "dirty_add %s: %s\n", name, err.desc);
    abort ();
  }
  return b;
}

static uint64_t
count (struct dirty_bitmap *b)
{
  struct dirty_info i;

  dirty_get_info (b, &i);
  return i.count;
}

static void
test_marking (void)
{
  struct dirty_bitmap *g4k, *g64k, *g1m, *off;
  struct control_error err = { 0 };
  struct dirty_new dup = { .name = "g4k", .granularity = 4096 };

  dirty_set_disk_size (DISK);
  g4k = add ("g4k", 4096, true);
  g64k = add ("g64k", 65536, true);
  g1m = add ("g1m", 1048576, true);
  off = add ("off", 4096, false);
  assert (dirty_add (&dup, &err) == NULL);
  assert (strcmp (err.desc, "bitmap 'g4k' already exists") == 0);
  dup.name = "odd";
  dup.granularity = 3000;
  assert (dirty_add (&dup, &err) == NULL);

  assert (dirty_mark (65000, 1000) == 0);          /* Straddles 64K. */
  assert (dirty_mark (DISK - 1, 1) == 0);          /* The last byte. */
  assert (dirty_mark (5 * M, 0) == 0);             /* Nothing. */
  assert (strcmp (ranges (g4k), "61440+8192 10485760+4096") == 0);
  assert (strcmp (ranges (g64k), "0+131072 10485760+4096") == 0);
  assert (strcmp (ranges (g1m), "0+1048576 10485760+4096") == 0);
  assert (strcmp (ranges (off), "") == 0);
  /* The last granule counts only the disk's bytes. */
  assert (count (g4k) == 12288);
  assert (count (g64k) == 131072 + 4096);
  assert (count (g1m) == M + 4096);

  /* Ranges clipped to the window asked for. */
  {
    uint64_t s, l;
    assert (dirty_next_range (g64k, 100000, 120000, &s, &l));
    assert (s == 100000 && l == 20000);
    assert (!dirty_next_range (g64k, 131072, 10 * M, &s, &l));
  }
}

static void
test_merge_and_save (void)
{
  struct dirty_bitmap *g4k = dirty_find ("g4k");
  struct dirty_bitmap *g1m = dirty_find ("g1m");
  struct dirty_bitmap *t = add ("t", 65536, false);
  struct dirty_bitmap *src[2] = { g4k, g1m };
  struct dirty_saved *s;

  s = dirty_save (t);
  assert (s);
  dirty_merge (t, src, 1);
  assert (strcmp (ranges (t), "0+131072 10485760+4096") == 0);
  dirty_merge (t, src, 2);
  assert (strcmp (ranges (t), "0+1048576 10485760+4096") == 0);
  dirty_set_recording (t, true);
  dirty_restore (s);                    /* Undo both merges. */
  assert (strcmp (ranges (t), "") == 0);
  assert (dirty_mark (2 * M, 1) == 0);  /* Still not recording. */
  assert (strcmp (ranges (t), "") == 0);

  s = dirty_save (g4k);
  dirty_clear (g4k);
  assert (strcmp (ranges (g4k), "") == 0);
  dirty_restore (s);
  assert (strcmp (ranges (g4k), "61440+8192 2097152+4096 10485760+4096") == 0);
  dirty_discard (t);
}

/* Copied clusters (64K) for the "always" test: 16..31 and 40. */
static bool
copied (void *opaque, uint64_t offset, uint64_t len)
{
  uint64_t c;

  for (c = offset >> 16; c <= (offset + len - 1) >> 16; ++c)
    if (!((c >= 16 && c < 32) || c == 40))
      return false;
  return true;
}

static void
run_backup (const char *name, bool success, enum dirty_mode mode,
            const char *before, const char *after)
{
  struct control_error err = { 0 };
  struct dirty_bitmap *b = dirty_find (name);
  struct dirty_info i;

  dirty_clear (b);
  assert (dirty_mark (0, 1) == 0);
  assert (dirty_mark (M, 2 * M) == 0);          /* 1M..3M */
  assert (strcmp (ranges (b), before) == 0);
  assert (dirty_backup_begin (name, DISK + 1, &err) == NULL);
  assert (dirty_backup_begin (name, DISK, &err) == b);
  dirty_get_info (b, &i);
  assert (i.busy && i.in_backup);
  assert (dirty_backup_begin (name, DISK, &err) == NULL);
  assert (strcmp (err.desc, "bitmap 'g1m' is busy (another backup is "
                  "using it)") == 0 ||
          strcmp (err.desc, "bitmap 'g64k' is busy (another backup is "
                  "using it)") == 0);
  assert (dirty_check_changeable (b, "cleared", &err) == -1);
  /* Writes during the backup: frozen bits stay as they were. */
  assert (dirty_mark (5 * M + 10, 1) == 0);
  assert (strcmp (ranges (b), before) == 0);
  dirty_backup_end (b, success, mode, copied, NULL);
  dirty_get_info (b, &i);
  assert (!i.busy);
  if (strcmp (ranges (b), after) != 0) {
    fprintf (stderr, "%s %s %s: got %s, expected %s\n", name,
             success ? "success" : "failure", dirty_mode_name (mode),
             ranges (b), after);
    abort ();
  }
}

static void
test_modes (void)
{
  const char *b64 = "0+65536 1048576+2097152";
  const char *b1m = "0+3145728";
  const char *new64 = "5242880+65536", *new1m = "5242880+1048576";

  run_backup ("g64k", true, DIRTY_MODE_ON_SUCCESS, b64, new64);
  run_backup ("g64k", false, DIRTY_MODE_ON_SUCCESS, b64,
              "0+65536 1048576+2097152 5242880+65536");
  run_backup ("g64k", true, DIRTY_MODE_NEVER, b64,
              "0+65536 1048576+2097152 5242880+65536");
  run_backup ("g64k", false, DIRTY_MODE_NEVER, b64,
              "0+65536 1048576+2097152 5242880+65536");
  run_backup ("g64k", true, DIRTY_MODE_ALWAYS, b64, new64);
  /* Clusters 16..31 (1M..2M) and 40 copied: those granules go. */
  run_backup ("g64k", false, DIRTY_MODE_ALWAYS, b64,
              "0+65536 2097152+524288 2686976+458752 5242880+65536");
  /* 1M granules: granule 1 (clusters 16..31) is all copied and goes;
   * granule 2 has only cluster 40 copied and stays.
   */
  run_backup ("g1m", false, DIRTY_MODE_ALWAYS, b1m,
              "0+1048576 2097152+1048576 5242880+1048576");
  run_backup ("g1m", true, DIRTY_MODE_ON_SUCCESS, b1m, new1m);
}

static bool hook_fails;
static unsigned hook_calls;

static int
hook (void)
{
  hook_calls++;
  if (hook_fails) {
    errno = EROFS;
    return -1;
  }
  return 0;
}

static void
test_hook_and_invalidation (void)
{
  struct dirty_bitmap *g4k = dirty_find ("g4k");
  struct control_error err = { 0 };
  struct dirty_info i;

  dirty_set_change_hook (hook);
  assert (dirty_mark (0, 1) == 0 && hook_calls == 1);
  /* A refused backup changes nothing: the hook (the sidecar's in-use
   * flag) is not run for it.
   */
  assert (dirty_backup_begin ("nope", DISK, &err) == NULL);
  assert (strncmp (err.desc, "bitmap 'nope' not found (the bitmaps are: '",
                   43) == 0);
  assert (hook_calls == 1);
  /* Missing names pass the check only if dirtybitmap-add makes them. */
  assert (dirty_backup_check ("nope", &err) == -1);
  {
    static const char *const expected[] = { "nope" };
    dirty_set_expected (expected, 1);
    assert (dirty_backup_check ("nope", &err) == 0);
    assert (dirty_backup_check ("nope2", &err) == -1);
    dirty_set_expected (NULL, 0);
    assert (dirty_backup_check ("nope", &err) == -1);
  }
  hook_fails = true;
  errno = 0;
  assert (dirty_mark (0, 1) == -1 && errno == EROFS);
  /* Beginning a backup changes no bit, nor does a failed one that
   * keeps them: neither marks the file in use (so a server whose
   * start fails keeps its sidecar as it was).  Taking bits away does.
   */
  {
    struct dirty_bitmap *b;
    unsigned calls = hook_calls;

    assert ((b = dirty_backup_begin ("g4k", DISK, &err)) != NULL);
    dirty_backup_end (b, false, DIRTY_MODE_NEVER, NULL, NULL);
    assert (hook_calls == calls);
    hook_fails = false;
    assert ((b = dirty_backup_begin ("g4k", DISK, &err)) != NULL);
    assert (hook_calls == calls);
    dirty_backup_end (b, true, DIRTY_MODE_ON_SUCCESS, NULL, NULL);
    assert (hook_calls == calls + 1);
  }
  dirty_set_change_hook (NULL);

  /* A write past the end: nobody can say what changed any more. */
  assert (dirty_mark (DISK - 1, 2) == 0);
  dirty_get_info (g4k, &i);
  assert (i.inconsistent && i.count == 0);
  assert (strcmp (ranges (g4k), "") == 0);
  assert (dirty_check_changeable (g4k, "cleared", &err) == -1);
  assert (dirty_backup_begin ("g4k", DISK, &err) == NULL);
  assert (strstr (err.desc, "a full backup is needed"));
  assert (dirty_reader_begin ("g4k", &err) == NULL);
  /* Only removal works. */
  assert (dirty_remove_prepare (g4k, &err) == 0);
  assert (dirty_find ("g4k") == NULL);
  dirty_remove_abort (g4k);
  assert (dirty_find ("g4k") == g4k);
  assert (dirty_remove_prepare (g4k, &err) == 0);
  dirty_remove_commit (g4k);
  assert (dirty_find ("g4k") == NULL);
  assert (dirty_count_bitmaps () == 3);
  dirty_free_all ();
  assert (dirty_count_bitmaps () == 0);
}

/* The mirror of a persistent bitmap (its bits in the sidecar's
 * mapping, here a plain buffer).
 */
static uint8_t mirror_buf[(DISK / 4096 + 7) / 8];

static uint8_t *
lookup_mirror (const char *name, size_t *len, void *opaque)
{
  if (strcmp (name, "p") != 0)
    return NULL;
  *len = sizeof mirror_buf;
  return mirror_buf;
}

static void
test_mirrors (void)
{
  struct control_error err = { 0 };
  struct dirty_new pn = {
    .name = "p", .granularity = 4096, .recording = true, .persistent = true,
  };
  struct dirty_bitmap *p, *t, *b;
  struct dirty_info i;
  uint64_t seq, seq2;

  dirty_set_disk_size (DISK);
  assert ((p = dirty_add (&pn, &err)) != NULL);
  t = add ("t", 4096, true);
  assert (dirty_mark (0, 4096) == 0);
  /* Installing copies the bits in; only persistent bitmaps get one. */
  memset (mirror_buf, 0xee, sizeof mirror_buf);
  dirty_install_mirrors (lookup_mirror, NULL);
  assert (mirror_buf[0] == 0x01 && mirror_buf[1] == 0);
  assert (mirror_buf[sizeof mirror_buf - 1] == 0);

  /* A new bit: a sequence number; the same granule again: none. */
  assert (dirty_mark_seq (8192, 4096, &seq) == 0 && seq > 0);
  assert (mirror_buf[0] == 0x05 && seq <= dirty_mirror_seq ());
  assert (dirty_mark_seq (8192, 100, &seq2) == 0 && seq2 == 0);
  assert (dirty_mark_seq (DISK - 1, 1, &seq2) == 0 && seq2 > seq);
  assert (mirror_buf[sizeof mirror_buf - 1] == 0x01);
  /* A long range sets whole bytes: 4K .. 100K is granules 1-24. */
  assert (dirty_mark_seq (4096, 96 * K, &seq) == 0 && seq > seq2);
  assert (mirror_buf[0] == 0xff && mirror_buf[1] == 0xff &&
          mirror_buf[2] == 0xff && mirror_buf[3] == 0x01);

  /* During a backup new writes go to the mirror too; the end copies
   * what stays (here only the new writes).
   */
  assert ((b = dirty_backup_begin ("p", DISK, &err)) != NULL);
  assert (dirty_mark_seq (M, 1, &seq) == 0 && seq > 0);
  assert (mirror_buf[M / 4096 / 8] == 0x01 && mirror_buf[0] == 0xff);
  dirty_backup_end (b, true, DIRTY_MODE_ON_SUCCESS, NULL, NULL);
  assert (mirror_buf[0] == 0 && mirror_buf[M / 4096 / 8] == 0x01);
  assert (mirror_buf[sizeof mirror_buf - 1] == 0);
  dirty_clear (p);
  assert (mirror_buf[M / 4096 / 8] == 0);

  /* Inconsistent: no mirror any more, and the file must say so. */
  assert (!dirty_take_rewrite_request ());
  assert (dirty_mark (DISK - 1, 2) == 0);
  dirty_get_info (p, &i);
  assert (i.inconsistent &&
          strcmp (i.reason, "a write went past the end of the disk it "
                  "tracks") == 0);
  assert (dirty_take_rewrite_request ());
  assert (!dirty_take_rewrite_request ());
  memset (mirror_buf, 0, sizeof mirror_buf);
  assert (dirty_mark_seq (0, 4096, &seq) == 0 && seq == 0);
  assert (mirror_buf[0] == 0);
  dirty_get_info (t, &i);
  assert (i.inconsistent);
  dirty_free_all ();
}

int
main (void)
{
  test_marking ();
  test_merge_and_save ();
  test_modes ();
  test_hook_and_invalidation ();
  test_mirrors ();
  printf ("test-dirty: ok\n");
  return 0;
}
