/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit tests for the registry and the write gate. */

#include <config.h>

#undef NDEBUG
#include <assert.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gate.h"
#include "registry.h"

static void
count_fn (const char *name, void *obj, void *opaque)
{
  (*(int *) opaque) += *(int *) obj;
}

static void
test_registry (void)
{
  char *s;
  int a = 1, b = 10, n = 0;

  assert (registry_add_filter ("cbw") == 0);
  assert (registry_add_filter ("fleece") == 0);
  assert (registry_add_filter ("cbw") == 0);      /* idempotent */
  s = registry_list_filters ();
  assert (s && strcmp (s, "cbw fleece") == 0);
  free (s);
  /* Load order: the plugin outwards, so cbw is below fleece. */
  assert (registry_filter_position ("cbw") == 0);
  assert (registry_filter_position ("fleece") == 1);
  assert (registry_filter_position ("dirtybitmap") == -1);
  assert (registry_has_filter ("fleece"));
  registry_remove_filter ("cbw");
  assert (!registry_has_filter ("cbw"));
  s = registry_list_filters ();
  assert (s && strcmp (s, "fleece") == 0);
  free (s);

  assert (registry_add_object ("bitmap", "b0", &a, NULL) == 0);
  assert (registry_add_object ("bitmap", "b1", &b, NULL) == 0);
  assert (registry_add_object ("job", "b0", &b, NULL) == 0); /* other kind */
  assert (registry_add_object ("bitmap", "b0", &b, NULL) == -1);
  assert (registry_find_object ("bitmap", "b0") == &a);
  assert (registry_find_object ("bitmap", "nope") == NULL);
  registry_foreach ("bitmap", count_fn, &n);
  assert (n == 11);
  assert (registry_remove_object ("bitmap", "b0") == &a);
  assert (registry_remove_object ("bitmap", "b0") == NULL);
  assert (registry_find_object ("job", "b0") == &b);
  assert (registry_instance () != NULL);
}

/* Gate: writers run in parallel; a closed gate has none inside.
 * Writers run until the closer is done, and the closer waits for a
 * write to get through between two closes, so the two always
 * interleave, whatever the scheduler does (no sleeps).
 */
static atomic_int inside;
static atomic_int closed_flag;
static atomic_int violations;
static atomic_int passed;       /* writes through the gate so far */
static atomic_int stop;

static void *
writer (void *arg)
{
  while (!atomic_load (&stop)) {
    GATE_FOR_CURRENT_SCOPE ();
    gate_enter ();              /* nested entry from a second filter */
    atomic_fetch_add (&inside, 1);
    if (atomic_load (&closed_flag))
      atomic_fetch_add (&violations, 1);
    atomic_fetch_sub (&inside, 1);
    gate_leave ();
    atomic_fetch_add (&passed, 1);
  }
  return NULL;
}

static void
test_gate (void)
{
  pthread_t t[4];
  int i;

  for (i = 0; i < 4; ++i)
    assert (pthread_create (&t[i], NULL, writer, NULL) == 0);
  for (i = 0; i < 200; ++i) {
    int seen = atomic_load (&passed);

    gate_close ();
    atomic_store (&closed_flag, 1);
    assert (atomic_load (&inside) == 0);
    assert (gate_writes_in_flight () == 0);
    atomic_store (&closed_flag, 0);
    gate_open ();
    while (atomic_load (&passed) == seen)
      sched_yield ();
  }
  atomic_store (&stop, 1);
  for (i = 0; i < 4; ++i)
    pthread_join (t[i], NULL);
  assert (atomic_load (&violations) == 0);
  assert (gate_writes_in_flight () == 0);
}

int
main (void)
{
  test_registry ();
  test_gate ();
  printf ("test-registry: ok\n");
  return 0;
}
