/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit tests for the copy-before-write engine, against a fake `next'
 * (an in-memory disk) and an in-memory target: claims (each cluster
 * copied once, whoever races for it), writers waiting on a cluster
 * being copied, the fail-write and break-snapshot policies, copy
 * timeouts under both, and snapshot readers (reads see the instant
 * while writes go on).
 *
 * Deterministic: threads meet at gates (mutex + condition variable),
 * never at sleeps.  Where the test must know that a thread has
 * reached a wait inside the engine, it waits for the engine's own
 * counter (write_waits, copy_timeouts), with a generous bound.  The
 * disk itself has no lock, so that ThreadSanitizer sees a race if the
 * engine ever lets a write overlap a copy or a snapshot read.
 */

#include <config.h>

#undef NDEBUG
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nbdkit-filter.h>

#include "engine.h"
#include "nbdkit-stubs.h"
#include "snapshot.h"

#define CLUSTER 4096u
#define NR_CLUSTERS 64u
#define SIZE ((uint64_t) CLUSTER * NR_CLUSTERS)
#define NONE UINT64_MAX

/* A gate: threads arrive and wait until it opens. */
struct gate {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  unsigned arrived;
  bool open;
};

static void
gate_init (struct gate *g)
{
  pthread_mutex_init (&g->lock, NULL);
  pthread_cond_init (&g->cond, NULL);
  g->arrived = 0;
  g->open = false;
}

static void
gate_pass (struct gate *g)
{
  pthread_mutex_lock (&g->lock);
  g->arrived++;
  pthread_cond_broadcast (&g->cond);
  while (!g->open)
    pthread_cond_wait (&g->cond, &g->lock);
  pthread_mutex_unlock (&g->lock);
}

/* Wait until n threads have arrived at g. */
static void
gate_wait_arrived (struct gate *g, unsigned n)
{
  pthread_mutex_lock (&g->lock);
  while (g->arrived < n)
    pthread_cond_wait (&g->cond, &g->lock);
  pthread_mutex_unlock (&g->lock);
}

static void
gate_open (struct gate *g)
{
  pthread_mutex_lock (&g->lock);
  g->open = true;
  pthread_cond_broadcast (&g->cond);
  pthread_mutex_unlock (&g->lock);
}

/* The disk (what `next' reads) and its contents at the snapshot. */
static char disk[SIZE];
static char oracle[SIZE];

/* Source reads by the thread marked block_source_reads wait at
 * source_gate (a snapshot reader held mid-read); source_reads counts
 * every read.
 */
static __thread bool block_source_reads;
static struct gate source_gate;
static pthread_mutex_t source_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned source_reads;
static uint64_t source_bytes;
static bool held_read_done;
/* A read by any thread that ends a cluster in [tail_lo, tail_hi) (a
 * drainer reading the rest of a held cluster) waits at tail_gate.
 */
static uint64_t tail_lo, tail_hi;
static struct gate tail_gate;
static bool tail_fail;          /* ... and then fails with EIO. */

static int
fake_pread (nbdkit_next *next, void *buf, uint32_t count, uint64_t offset,
            uint32_t flags, int *err)
{
  assert (offset + count <= SIZE);
  uint64_t end_c = (offset + count) / CLUSTER;
  bool tail;

  pthread_mutex_lock (&source_lock);
  source_reads++;
  source_bytes += count;
  tail = (offset + count) % CLUSTER == 0 &&
    tail_lo < end_c && end_c <= tail_hi;
  pthread_mutex_unlock (&source_lock);
  if (tail)
    gate_pass (&tail_gate);
  if (tail && tail_fail) {
    *err = EIO;
    return -1;
  }
  if (block_source_reads)
    gate_pass (&source_gate);
  memcpy (buf, disk + offset, count);
  if (block_source_reads) {
    pthread_mutex_lock (&source_lock);
    held_read_done = true;
    pthread_mutex_unlock (&source_lock);
  }
  return 0;
}

static struct nbdkit_next_ops next_ops = { .pread = fake_pread };
static nbdkit_next *next = &next_ops;

/* The in-memory target.  writes[c] counts the writes and zeroes that
 * covered cluster c.  An operation that covers hold_cluster waits at
 * hold_gate; one that covers fail_cluster fails with ENOSPC.
 */
static struct mem_target {
  struct target t;
  pthread_mutex_t lock;
  char data[SIZE];
  unsigned writes[NR_CLUSTERS];
  uint64_t hold_cluster, fail_cluster;
  struct gate hold_gate;
} mt;

static bool
covers (uint64_t c, uint32_t count, uint64_t offset)
{
  return c != NONE &&
    offset / CLUSTER <= c && c < (offset + count + CLUSTER - 1) / CLUSTER;
}

static int
mem_write (const void *buf, uint32_t count, uint64_t offset)
{
  uint64_t c;
  bool hold, fail;

  assert (offset % CLUSTER == 0 && offset + count <= SIZE);
  pthread_mutex_lock (&mt.lock);
  hold = covers (mt.hold_cluster, count, offset);
  fail = covers (mt.fail_cluster, count, offset);
  pthread_mutex_unlock (&mt.lock);
  if (hold)
    gate_pass (&mt.hold_gate);
  if (fail) {
    nbdkit_error ("mem: no space");
    errno = ENOSPC;
    return -1;
  }
  pthread_mutex_lock (&mt.lock);
  if (buf)
    memcpy (mt.data + offset, buf, count);
  else
    memset (mt.data + offset, 0, count);
  for (c = offset / CLUSTER; c < (offset + count + CLUSTER - 1) / CLUSTER;
       ++c)
    mt.writes[c]++;
  pthread_mutex_unlock (&mt.lock);
  return 0;
}

static int
mem_pwrite (struct target *t, const void *buf, uint32_t count,
            uint64_t offset)
{
  return mem_write (buf, count, offset);
}

static int
mem_zero (struct target *t, uint32_t count, uint64_t offset)
{
  return mem_write (NULL, count, offset);
}

static int
mem_pread (struct target *t, void *buf, uint32_t count, uint64_t offset)
{
  pthread_mutex_lock (&mt.lock);
  memcpy (buf, mt.data + offset, count);
  pthread_mutex_unlock (&mt.lock);
  return 0;
}

/* Nothing to flush, finish or free: the target is static. */
static int mem_flush (struct target *t) { return 0; }
static int mem_finish (struct target *t, bool complete) { return 0; }
static void mem_close (struct target *t) { }

static const struct target_ops mem_ops = {
  .kind = "mem", .pwrite = mem_pwrite, .zero = mem_zero,
  .pread = mem_pread, .flush = mem_flush, .finish = mem_finish,
  .close = mem_close,
};

/* The last error message. */
static pthread_mutex_t msg_lock = PTHREAD_MUTEX_INITIALIZER;
static char last_error[256];

static void
error_hook (const char *msg)
{
  pthread_mutex_lock (&msg_lock);
  snprintf (last_error, sizeof last_error, "%s", msg);
  pthread_mutex_unlock (&msg_lock);
}

static void
expect_error (const char *want)
{
  pthread_mutex_lock (&msg_lock);
  if (strcmp (last_error, want) != 0) {
    fprintf (stderr, "expected error \"%s\", got \"%s\"\n", want,
             last_error);
    abort ();
  }
  last_error[0] = '\0';
  pthread_mutex_unlock (&msg_lock);
}

/* Fill the disk with a pattern (every fifth cluster zero), take the
 * oracle, empty the target and make a protected, active engine.
 */
static struct engine *
setup (enum cbw_on_error on_error, double copy_timeout)
{
  struct engine *e;
  uint64_t i;

  for (i = 0; i < SIZE; ++i)
    disk[i] = (i / CLUSTER) % 5 == 0 ? 0 : (char) (i * 7 + i / CLUSTER);
  memcpy (oracle, disk, SIZE);
  memset (&mt.t, 0, sizeof mt.t);
  mt.t.ops = &mem_ops;
  mt.t.size = SIZE;
  mt.t.known_zero = false;
  memset (mt.data, 0x55, SIZE);
  memset (mt.writes, 0, sizeof mt.writes);
  mt.hold_cluster = mt.fail_cluster = NONE;
  gate_init (&mt.hold_gate);
  gate_init (&source_gate);
  source_reads = 0;
  source_bytes = 0;
  tail_lo = tail_hi = 0;
  tail_fail = false;
  gate_init (&tail_gate);
  held_read_done = false;
  last_error[0] = '\0';

  e = engine_new ("test", SIZE, CLUSTER, &mt.t, on_error);
  assert (e);
  engine_set_copy_timeout (e, copy_timeout);
  engine_protect (e, 0, UINT64_MAX);
  engine_activate (e);
  return e;
}

/* A guest write as a filter does it: copy-before-write, wait for
 * snapshot readers, then change the disk.
 */
static int
guest_write (struct engine *e, uint64_t offset, uint32_t count, char fill)
{
  int err = 0;

  if (engine_before_write (e, next, offset, count, &err) == -1) {
    assert (err == EIO);
    return -1;
  }
  engine_wait_readers (e, offset, count);
  memset (disk + offset, fill, count);
  return 0;
}

/* The background job: copy everything still pending. */
static void *
job_thread (void *vp)
{
  struct engine *e = vp;
  uint64_t cursor = 0, first, n;

  while ((n = engine_claim (e, &cursor, 3, &first, true)) > 0)
    engine_copy (e, next, first, n, false, false);
  return NULL;
}

static struct engine_stats
stats (struct engine *e, uint64_t *pending, bool *broken)
{
  struct engine_stats st;

  engine_get_stats (e, &st, pending, broken, NULL);
  return st;
}

/* Wait until *field of the engine's stats reaches want (an event the
 * engine counts); give up after a generous bound.
 */
static void
wait_stat (struct engine *e, size_t field, uint64_t want)
{
  time_t start = time (NULL);

  for (;;) {
    struct engine_stats st = stats (e, NULL, NULL);
    uint64_t v;

    memcpy (&v, (char *) &st + field, sizeof v);
    if (v >= want)
      return;
    if (time (NULL) - start > 120) {
      fprintf (stderr, "timed out waiting for an engine counter\n");
      abort ();
    }
    sched_yield ();
  }
}

static void
check_target_exact (void)
{
  uint64_t c;

  for (c = 0; c < NR_CLUSTERS; ++c)
    assert (mt.writes[c] == 1);
  assert (memcmp (mt.data, oracle, SIZE) == 0);
}

/* Writers, each on its own clusters (c % NR_WRITERS == id), racing
 * with the job and with each other for claims.
 */
#define NR_WRITERS 4
static pthread_barrier_t start_line;

struct writer { struct engine *e; unsigned id; unsigned seed; };

static void *
writer_thread (void *vp)
{
  struct writer *w = vp;
  unsigned i;

  pthread_barrier_wait (&start_line);
  for (i = 0; i < 200; ++i) {
    uint64_t c = (rand_r (&w->seed) % (NR_CLUSTERS / NR_WRITERS))
      * NR_WRITERS + w->id;
    uint32_t off = rand_r (&w->seed) % CLUSTER;
    uint32_t len = 1 + rand_r (&w->seed) % (CLUSTER - off);

    assert (guest_write (w->e, c * CLUSTER + off, len,
                         (char) (0x80 + w->id)) == 0);
  }
  return NULL;
}

/* NR_WRITERS writer threads (seeds seed, seed+1, ...) and the job,
 * racing from the start or, with job_after, the job once the writers
 * are done.
 */
static void
run_writers_and_job (struct engine *e, unsigned seed, bool job_after)
{
  struct writer w[NR_WRITERS];
  pthread_t wt[NR_WRITERS], jt;
  unsigned i;

  pthread_barrier_init (&start_line, NULL, NR_WRITERS);
  if (!job_after)
    pthread_create (&jt, NULL, job_thread, e);
  for (i = 0; i < NR_WRITERS; ++i) {
    w[i] = (struct writer) { .e = e, .id = i, .seed = seed + i };
    pthread_create (&wt[i], NULL, writer_thread, &w[i]);
  }
  for (i = 0; i < NR_WRITERS; ++i)
    pthread_join (wt[i], NULL);
  if (job_after)
    pthread_create (&jt, NULL, job_thread, e);
  pthread_join (jt, NULL);
  pthread_barrier_destroy (&start_line);
}

static void
test_claims (void)
{
  struct engine *e = setup (CBW_BREAK_SNAPSHOT, 0);
  struct engine_stats st;
  uint64_t pending;
  bool broken;

  run_writers_and_job (e, 42, false);
  st = stats (e, &pending, &broken);
  assert (pending == 0 && !broken);
  assert (st.bytes_copied + st.bytes_zero == SIZE);
  assert (st.bytes_zero == (NR_CLUSTERS + 4) / 5 * CLUSTER);
  check_target_exact ();
  engine_free (e);
}

/* test_claims with the copy-before-write buffer, small enough to be
 * full often (so the partial, the buffered and the direct path all
 * run): still every cluster copied exactly once, and the target exact
 * once the buffer has drained.  With job_after, the writers run alone
 * first (as under sync=none), so most first writes are partial copies.
 */
static void
test_buffer (bool job_after)
{
  struct engine *e = setup (CBW_BREAK_SNAPSHOT, 0);
  struct engine_stats st;
  uint64_t pending;
  bool broken;

  engine_set_buffer (e, 3 * CLUSTER, next);
  run_writers_and_job (e, 4242, job_after);
  engine_deactivate (e);
  engine_quiesce (e);           /* The job waits for the drain so. */

  st = stats (e, &pending, &broken);
  assert (pending == 0 && !broken);
  assert (st.bytes_copied + st.bytes_zero == SIZE);
  assert (st.bytes_buffered <= st.bytes_by_writes);
  if (job_after)
    assert (st.partial_copies > 0);
  check_target_exact ();
  engine_free (e);
}

static uint64_t
read_so_far (void)
{
  uint64_t r;

  pthread_mutex_lock (&source_lock);
  r = source_bytes;
  pthread_mutex_unlock (&source_lock);
  return r;
}

/* Partial copies, deterministically.  Every drainer is kept busy
 * reading the rest of clusters 10-13 (held at tail_gate), so cluster
 * 5's slot stays queued: a write to block 0 of it reads that block
 * only; a write to block 3 adds block 3 to the slot; a write to block
 * 0 again reads nothing.  Once the drainers go on, cluster 5 reaches
 * the target whole, once, as it was at the instant.
 */
static void
test_partial (void)
{
  struct engine *e = setup (CBW_BREAK_SNAPSHOT, 0);
  const uint64_t blk = 512;
  struct engine_stats st;
  uint64_t c, before;
  bool broken;

  engine_set_buffer (e, 8 * CLUSTER, next);
  tail_lo = 10;
  tail_hi = 14;
  for (c = 10; c < 14; ++c)
    assert (guest_write (e, c * CLUSTER + 7, 9, 'a') == 0);
  gate_wait_arrived (&tail_gate, 4);   /* All four drainers, held. */
  assert (read_so_far () == 4 * blk + 4 * (CLUSTER - blk));

  before = read_so_far ();
  assert (guest_write (e, 5 * CLUSTER + 100, 200, 'b') == 0);
  assert (read_so_far () - before == blk);
  assert (guest_write (e, 5 * CLUSTER + 3 * blk, blk, 'c') == 0);
  assert (read_so_far () - before == 2 * blk);
  assert (guest_write (e, 5 * CLUSTER + 10, 50, 'd') == 0);
  assert (read_so_far () - before == 2 * blk);
  /* Blocks 1-2 span two blocks, one already there: one more read. */
  assert (guest_write (e, 5 * CLUSTER + blk - 1, 2, 'e') == 0);
  assert (read_so_far () - before == 3 * blk);
  st = stats (e, NULL, NULL);
  assert (st.partial_copies == 5);
  assert (mt.writes[5] == 0);

  gate_open (&tail_gate);
  engine_deactivate (e);
  engine_quiesce (e);
  st = stats (e, NULL, &broken);
  assert (!broken);
  for (c = 0; c < NR_CLUSTERS; ++c) {
    bool copied = c == 5 || (c >= 10 && c < 14);

    assert (mt.writes[c] == (copied ? 1 : 0));
    if (copied)
      assert (memcmp (mt.data + c * CLUSTER, oracle + c * CLUSTER,
                      CLUSTER) == 0);
  }
  /* The drainer read what the writers had not: the whole of 5. */
  assert (read_so_far () - before == CLUSTER);
  engine_free (e);
}

/* One thread claims cluster 0 and copies it; its target write is
 * held.  A writer to cluster 0 must wait for that copy (not make its
 * own) and go down only after it.
 */
struct held_copy { struct engine *e; uint64_t first; };

static void *
claim_and_copy (void *vp)
{
  struct held_copy *h = vp;
  uint64_t cursor = h->first, first, n;

  n = engine_claim (h->e, &cursor, 1, &first, false);
  assert (n == 1 && first == h->first);
  engine_copy (h->e, next, first, n, false, false);
  return NULL;
}

struct bg_write {
  struct engine *e;
  uint64_t offset;
  uint32_t count;
  int result;
  bool done;
  pthread_mutex_t lock;
};

static void *
bg_write_thread (void *vp)
{
  struct bg_write *b = vp;
  int r = guest_write (b->e, b->offset, b->count, 'W');

  pthread_mutex_lock (&b->lock);
  b->result = r;
  b->done = true;
  pthread_mutex_unlock (&b->lock);
  return NULL;
}

static bool
bg_done (struct bg_write *b)
{
  bool d;

  pthread_mutex_lock (&b->lock);
  d = b->done;
  pthread_mutex_unlock (&b->lock);
  return d;
}

/* engine_deactivate with a cluster held in part: the rest of cluster
 * 5 is still only on the source, and the drainer reading it is held.
 * Deactivation must wait for that read (and the write of the cluster
 * to the target): a write after it may change the rest at once.  The
 * main thread gives the deactivating thread a moment before letting
 * the drainer go, so that the old engine, which returned at once,
 * fails here (the pass never depends on the moment).
 */
struct deact { struct engine *e; pthread_mutex_t lock; pthread_cond_t cond;
               bool done; unsigned writes_seen; };

static void *
deactivate_thread (void *vp)
{
  struct deact *d = vp;

  engine_deactivate (d->e);
  pthread_mutex_lock (&mt.lock);
  d->writes_seen = mt.writes[5];
  pthread_mutex_unlock (&mt.lock);
  /* A write after the end of protection: it must not reach the
   * target.
   */
  memset (disk + 5 * CLUSTER + CLUSTER - 10, 'z', 10);
  pthread_mutex_lock (&d->lock);
  d->done = true;
  pthread_cond_broadcast (&d->cond);
  pthread_mutex_unlock (&d->lock);
  return NULL;
}

static void
test_partial_deactivate (void)
{
  struct engine *e = setup (CBW_BREAK_SNAPSHOT, 0);
  struct deact d = { .e = e, .done = false };
  struct timespec t;
  pthread_t th;

  pthread_mutex_init (&d.lock, NULL);
  pthread_cond_init (&d.cond, NULL);
  engine_set_buffer (e, 8 * CLUSTER, next);
  tail_lo = 5;
  tail_hi = 6;
  assert (guest_write (e, 5 * CLUSTER + 7, 9, 'a') == 0);
  gate_wait_arrived (&tail_gate, 1);
  pthread_create (&th, NULL, deactivate_thread, &d);
  clock_gettime (CLOCK_REALTIME, &t);
  t.tv_nsec += 100 * 1000 * 1000;
  if (t.tv_nsec >= 1000000000) {
    t.tv_sec++;
    t.tv_nsec -= 1000000000;
  }
  pthread_mutex_lock (&d.lock);
  while (!d.done &&
         pthread_cond_timedwait (&d.cond, &d.lock, &t) != ETIMEDOUT)
    ;
  pthread_mutex_unlock (&d.lock);
  gate_open (&tail_gate);
  pthread_join (th, NULL);
  engine_quiesce (e);
  assert (d.writes_seen == 1);
  assert (memcmp (mt.data + 5 * CLUSTER, oracle + 5 * CLUSTER, CLUSTER) == 0);
  assert (stats (e, NULL, NULL).partial_copies == 1);
  engine_free (e);
  pthread_mutex_destroy (&d.lock);
  pthread_cond_destroy (&d.cond);
}

/* The drainer cannot read the rest of a held cluster: the snapshot
 * breaks with the error, deactivation does not wait for ever, and the
 * target never gets the cluster.
 */
static void
test_partial_drain_fails (void)
{
  struct engine *e = setup (CBW_BREAK_SNAPSHOT, 0);
  char *error = NULL;
  bool broken;

  engine_set_buffer (e, 8 * CLUSTER, next);
  tail_lo = 5;
  tail_hi = 6;
  tail_fail = true;
  gate_open (&tail_gate);
  assert (guest_write (e, 5 * CLUSTER + 7, 9, 'a') == 0);
  engine_deactivate (e);
  engine_quiesce (e);
  engine_get_stats (e, NULL, NULL, &broken, &error);
  assert (broken);
  assert (error && strcmp (error, "reading the source at offset 20992 "
                           "failed: Input/output error") == 0);
  assert (mt.writes[5] == 0);
  free (error);
  last_error[0] = '\0';
  engine_free (e);
}

static void
test_writer_waits (void)
{
  struct engine *e = setup (CBW_BREAK_SNAPSHOT, 0);
  struct held_copy h = { .e = e, .first = 1 };
  struct bg_write b = { .e = e, .offset = CLUSTER + 100, .count = 10,
                        .lock = PTHREAD_MUTEX_INITIALIZER };
  pthread_t ct, wt, jt;

  mt.hold_cluster = 1;
  pthread_create (&ct, NULL, claim_and_copy, &h);
  gate_wait_arrived (&mt.hold_gate, 1);       /* The copy is in flight. */

  pthread_create (&wt, NULL, bg_write_thread, &b);
  wait_stat (e, offsetof (struct engine_stats, write_waits), 1);
  assert (!bg_done (&b));
  assert (disk[CLUSTER + 100] == oracle[CLUSTER + 100]);
  pthread_mutex_lock (&source_lock);
  assert (source_reads == 1);                 /* The writer read nothing. */
  pthread_mutex_unlock (&source_lock);

  gate_open (&mt.hold_gate);
  pthread_join (ct, NULL);
  pthread_join (wt, NULL);
  assert (b.result == 0 && disk[CLUSTER + 100] == 'W');
  assert (mt.writes[1] == 1);

  pthread_create (&jt, NULL, job_thread, e);
  pthread_join (jt, NULL);
  check_target_exact ();
  engine_free (e);
}

/* fail-write: a target failure fails the guest write with EIO and
 * keeps the snapshot; the cluster is retried later.
 */
static void
test_fail_write (void)
{
  struct engine *e = setup (CBW_FAIL_WRITE, 0);
  struct engine_stats st;
  uint64_t pending;
  bool broken;
  pthread_t jt;

  mt.fail_cluster = 3;
  assert (guest_write (e, 3 * CLUSTER + 5, 10, 'F') == -1);
  expect_error ("test: writing the target at offset 12288 failed: "
                "No space left on device");
  assert (disk[3 * CLUSTER + 5] == oracle[3 * CLUSTER + 5]);
  st = stats (e, &pending, &broken);
  assert (!broken && pending == NR_CLUSTERS);
  assert (st.writes_failed == 1 && st.bytes_copied == 0);
  assert (engine_is_active (e));

  mt.fail_cluster = NONE;
  assert (guest_write (e, 3 * CLUSTER + 5, 10, 'F') == 0);
  assert (disk[3 * CLUSTER + 5] == 'F');

  pthread_create (&jt, NULL, job_thread, e);
  pthread_join (jt, NULL);
  st = stats (e, &pending, &broken);
  assert (!broken && pending == 0 && st.writes_failed == 1);
  check_target_exact ();

  /* A failure of the job's own copy breaks the snapshot even under
   * fail-write: there is no write to fail.
   */
  engine_free (e);
  e = setup (CBW_FAIL_WRITE, 0);
  mt.fail_cluster = 0;
  pthread_create (&jt, NULL, job_thread, e);
  pthread_join (jt, NULL);
  stats (e, NULL, &broken);
  assert (broken && !engine_is_active (e));
  engine_free (e);
}

/* break-snapshot: a target failure abandons the backup; the write and
 * every later write go on, with no more copies.
 */
static void
test_break_snapshot (void)
{
  struct engine *e = setup (CBW_BREAK_SNAPSHOT, 0);
  uint64_t first, cursor = 0;
  unsigned w;
  bool broken;
  char *error;

  mt.fail_cluster = 5;
  assert (guest_write (e, 5 * CLUSTER, CLUSTER, 'B') == 0);
  assert (disk[5 * CLUSTER] == 'B');
  expect_error ("test: writing the target at offset 20480 failed: "
                "No space left on device");
  engine_get_stats (e, NULL, NULL, &broken, &error);
  assert (broken && !engine_is_active (e));
  assert (strcmp (error, "writing the target at offset 20480 failed: "
                  "No space left on device") == 0);
  free (error);

  w = mt.writes[6];
  assert (guest_write (e, 6 * CLUSTER, 1, 'B') == 0);
  assert (mt.writes[6] == w && disk[6 * CLUSTER] == 'B');
  assert (engine_claim (e, &cursor, 1, &first, true) == 0);
  engine_free (e);
}

/* Copy timeouts: the target write of cluster 2 hangs until the test
 * lets it go, which it does only after the writers gave up.
 */
static void
test_timeout_break (void)
{
  struct engine *e = setup (CBW_BREAK_SNAPSHOT, 0.01);
  struct engine_stats st;
  bool broken;
  char *error;

  mt.hold_cluster = 2;
  assert (guest_write (e, 2 * CLUSTER, 100, 'T') == 0);
  assert (disk[2 * CLUSTER] == 'T');
  st = stats (e, NULL, &broken);
  assert (broken && st.copy_timeouts == 1 && st.writes_failed == 0);
  engine_get_stats (e, NULL, NULL, NULL, &error);
  assert (strcmp (error, "copy-before-write took longer than 0.01 s") == 0);
  free (error);
  gate_open (&mt.hold_gate);
  engine_free (e);              /* Waits for the helper. */
}

static void
test_timeout_fail_write (void)
{
  struct engine *e = setup (CBW_FAIL_WRITE, 0.01);
  struct engine_stats st;
  uint64_t pending;
  bool broken;
  pthread_t jt;

  mt.hold_cluster = 2;
  assert (guest_write (e, 2 * CLUSTER, 100, 'T') == -1);
  expect_error ("test: copy-before-write took longer than 0.01 s: "
                "failing the write");
  /* The cluster stays claimed while its copy is in flight: a second
   * write to it waits and times out too, without a second copy.
   */
  assert (guest_write (e, 2 * CLUSTER + 200, 1, 'T') == -1);
  assert (disk[2 * CLUSTER] == oracle[2 * CLUSTER]);
  st = stats (e, NULL, &broken);
  assert (!broken && st.copy_timeouts == 2 && st.writes_failed == 2);

  gate_open (&mt.hold_gate);
  engine_quiesce (e);           /* The helper finished the claim. */
  assert (mt.writes[2] == 1);
  assert (guest_write (e, 2 * CLUSTER, 100, 'T') == 0);
  assert (mt.writes[2] == 1 && disk[2 * CLUSTER] == 'T');

  pthread_create (&jt, NULL, job_thread, e);
  pthread_join (jt, NULL);
  st = stats (e, &pending, &broken);
  assert (!broken && pending == 0 && st.copy_timeouts == 2);
  check_target_exact ();
  engine_free (e);
}

/* Snapshot readers: a reader held in the middle of reading the
 * source keeps writers to its clusters waiting; what it returns is
 * the instant, and so is every later read while writes go on.
 */
struct reader { struct engine *e; char buf[SIZE]; int result; };

static void *
held_reader (void *vp)
{
  struct reader *r = vp;
  int err = 0;

  block_source_reads = true;
  r->result = engine_snapshot_pread (r->e, next, r->buf, SIZE, 0, &err);
  return NULL;
}

static void *
checked_writer (void *vp)
{
  struct bg_write *b = vp;
  int err = 0;

  assert (engine_before_write (b->e, next, b->offset, b->count, &err) == 0);
  engine_wait_readers (b->e, b->offset, b->count);
  /* The held read must be over before the write goes down. */
  pthread_mutex_lock (&source_lock);
  assert (held_read_done);
  pthread_mutex_unlock (&source_lock);
  memset (disk + b->offset, 'R', b->count);
  return NULL;
}

static void
test_snapshot_readers (void)
{
  struct engine *e = setup (CBW_BREAK_SNAPSHOT, 0);
  static struct reader r;
  static char buf[SIZE];
  struct bg_write b = { .e = e, .offset = 7 * CLUSTER, .count = 3 * CLUSTER,
                        .lock = PTHREAD_MUTEX_INITIALIZER };
  pthread_t rt, wt, jt;
  int err = 0;

  r.e = e;
  pthread_create (&rt, NULL, held_reader, &r);
  gate_wait_arrived (&source_gate, 1);        /* Registered, reading. */
  pthread_create (&wt, NULL, checked_writer, &b);
  wait_stat (e, offsetof (struct engine_stats, bytes_by_writes),
             3 * CLUSTER);                    /* Copied; now it waits. */
  gate_open (&source_gate);
  pthread_join (rt, NULL);
  pthread_join (wt, NULL);
  assert (r.result == 0 && memcmp (r.buf, oracle, SIZE) == 0);
  assert (disk[7 * CLUSTER] == 'R');

  /* Copied clusters come from the target now, the rest from the
   * source; both are the instant.
   */
  assert (guest_write (e, 20 * CLUSTER + 1, 2, 'S') == 0);
  assert (engine_snapshot_pread (e, next, buf, SIZE, 0, &err) == 0);
  assert (memcmp (buf, oracle, SIZE) == 0);
  assert (engine_snapshot_pread (e, next, buf, 1000, 7 * CLUSTER - 500,
                                 &err) == 0);
  assert (memcmp (buf, oracle + 7 * CLUSTER - 500, 1000) == 0);

  pthread_create (&jt, NULL, job_thread, e);
  pthread_join (jt, NULL);
  assert (engine_snapshot_pread (e, next, buf, SIZE, 0, &err) == 0);
  assert (memcmp (buf, oracle, SIZE) == 0);

  engine_break (e, "gone");
  assert (engine_snapshot_pread (e, next, buf, 512, 0, &err) == -1);
  assert (err == EIO);
  expect_error ("test: the snapshot is broken");
  engine_free (e);
}

/* Readers and writers at random, with the job: every snapshot read
 * equals the instant.
 */
static void *
random_reader (void *vp)
{
  struct writer *w = vp;
  static __thread char buf[4 * CLUSTER];
  unsigned i;

  pthread_barrier_wait (&start_line);
  for (i = 0; i < 300; ++i) {
    uint64_t off = rand_r (&w->seed) % SIZE;
    uint32_t len = 1 + rand_r (&w->seed) % (sizeof buf);
    int err = 0;

    if (off + len > SIZE)
      len = SIZE - off;
    assert (engine_snapshot_pread (w->e, next, buf, len, off, &err) == 0);
    assert (memcmp (buf, oracle + off, len) == 0);
  }
  return NULL;
}

static void
test_readers_and_writers (void)
{
  struct engine *e = setup (CBW_BREAK_SNAPSHOT, 0);
  struct writer w[NR_WRITERS], rd[2];
  pthread_t wt[NR_WRITERS], rt[2], jt;
  unsigned i;

  pthread_barrier_init (&start_line, NULL, NR_WRITERS + 2);
  for (i = 0; i < 2; ++i) {
    rd[i] = (struct writer) { .e = e, .id = i, .seed = 7 + i };
    pthread_create (&rt[i], NULL, random_reader, &rd[i]);
  }
  for (i = 0; i < NR_WRITERS; ++i) {
    w[i] = (struct writer) { .e = e, .id = i, .seed = 99 + i };
    pthread_create (&wt[i], NULL, writer_thread, &w[i]);
  }
  pthread_create (&jt, NULL, job_thread, e);
  for (i = 0; i < NR_WRITERS; ++i)
    pthread_join (wt[i], NULL);
  for (i = 0; i < 2; ++i)
    pthread_join (rt[i], NULL);
  pthread_join (jt, NULL);
  pthread_barrier_destroy (&start_line);
  check_target_exact ();
  engine_free (e);
}

/* Discard: whole clusters leave the snapshot (reads fail, writes copy
 * nothing); a discard waits for a reader still reading them.
 */
static void *
held_reader_10 (void *vp)
{
  struct reader *r = vp;
  int err = 0;

  block_source_reads = true;
  r->result = engine_snapshot_pread (r->e, next, r->buf, CLUSTER,
                                     10 * CLUSTER, &err);
  return NULL;
}

static void *
discarder (void *vp)
{
  uint64_t start, len;

  assert (engine_discard (vp, 10 * CLUSTER, CLUSTER, &start, &len));
  /* The held reader must be done before the store may be freed. */
  pthread_mutex_lock (&source_lock);
  assert (held_read_done);
  pthread_mutex_unlock (&source_lock);
  return NULL;
}

static void
test_discard (void)
{
  struct engine *e = setup (CBW_BREAK_SNAPSHOT, 0);
  static struct reader r;
  static char buf[SIZE];
  struct engine_stats st;
  uint64_t start, len, pending;
  bool broken;
  pthread_t rt, dt;
  int err = 0;

  assert (guest_write (e, 3 * CLUSTER, 10, 'D') == 0);      /* Copied. */
  assert (!engine_discard (e, 1, CLUSTER, &start, &len));   /* Partial. */
  assert (engine_discard (e, CLUSTER / 2, 6 * CLUSTER - CLUSTER / 2,
                          &start, &len));
  assert (start == CLUSTER && len == 5 * CLUSTER);
  assert (engine_snapshot_pread (e, next, buf, CLUSTER, 0, &err) == 0);
  assert (memcmp (buf, oracle, CLUSTER) == 0);
  assert (engine_snapshot_pread (e, next, buf, 2, 2 * CLUSTER - 1,
                                 &err) == -1 && err == EPERM);
  expect_error ("test: the snapshot's data at offset 8191 (2 bytes) was "
                "discarded by a reader (discard-source): it can no longer "
                "be read");
  assert (guest_write (e, 4 * CLUSTER, 10, 'E') == 0);
  assert (mt.writes[4] == 0);                     /* No copy. */
  /* The last cluster, not a byte of it less. */
  assert (!engine_discard (e, SIZE - 1, 1, &start, &len));
  assert (engine_discard (e, SIZE - CLUSTER, CLUSTER, &start, &len));
  assert (start == SIZE - CLUSTER && len == CLUSTER);

  /* A reader held on cluster 10's source holds up its discard. */
  r.e = e;
  pthread_create (&rt, NULL, held_reader_10, &r);
  gate_wait_arrived (&source_gate, 1);
  pthread_create (&dt, NULL, discarder, e);
  gate_open (&source_gate);
  pthread_join (rt, NULL);
  pthread_join (dt, NULL);
  assert (r.result == 0 && memcmp (r.buf, oracle + 10 * CLUSTER,
                                   CLUSTER) == 0);

  /* 3 copied; 1, 2, 4, 5, 10 and 63 pending no more; 7 gone. */
  st = stats (e, &pending, &broken);
  assert (!broken && st.bytes_discarded == 7 * CLUSTER);
  assert (pending == NR_CLUSTERS - 7);
  engine_free (e);
}

/* The engine asks for extents only when use_extents is true, which
 * these tests never set; snapshot extents are not tested here.
 */
struct nbdkit_extents *
nbdkit_extents_full (nbdkit_next *n, uint32_t count, uint64_t offset,
                     uint32_t flags, int *err)
{
  *err = ENOTSUP;
  return NULL;
}

/* Never called, since nbdkit_extents_full never succeeds. */
size_t nbdkit_extents_count (const struct nbdkit_extents *x) { abort (); }
void nbdkit_extents_free (struct nbdkit_extents *x) { abort (); }
struct nbdkit_extent
nbdkit_get_extent (const struct nbdkit_extents *x, size_t i) { abort (); }
int
nbdkit_add_extent (struct nbdkit_extents *x, uint64_t offset,
                   uint64_t length, uint32_t type) { abort (); }

int
main (void)
{
  stub_error_hook = error_hook;
  pthread_mutex_init (&mt.lock, NULL);

  test_claims ();
  test_buffer (false);
  test_buffer (true);
  test_partial ();
  test_partial_deactivate ();
  test_partial_drain_fails ();
  test_writer_waits ();
  test_fail_write ();
  test_break_snapshot ();
  test_timeout_break ();
  test_timeout_fail_write ();
  test_snapshot_readers ();
  test_readers_and_writers ();
  test_discard ();
  printf ("test-engine: all passed\n");
  return 0;
}
