/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The ids jobs have had (see job-id.h).  A list, since a server
 * starts a few jobs a day: a long-running one holds a few thousand
 * short strings after years.
 */

#include <config.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "job-id.h"

/* This lock protects the list below. */
static pthread_mutex_t ids_lock = PTHREAD_MUTEX_INITIALIZER;
static char **ids;
static size_t n_ids, cap_ids;

static bool
used_locked (const char *id)
{
  size_t i;

  for (i = 0; i < n_ids; ++i)
    if (strcmp (ids[i], id) == 0)
      return true;
  return false;
}

static int
add_locked (const char *id)
{
  char *copy;

  if (used_locked (id))
    return 0;
  if (n_ids == cap_ids) {
    size_t cap = cap_ids ? cap_ids * 2 : 16;
    char **p = realloc (ids, cap * sizeof *p);
    if (p == NULL) {
      nbdkit_error ("realloc: %m");
      return -1;
    }
    ids = p;
    cap_ids = cap;
  }
  copy = strdup (id);
  if (copy == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  ids[n_ids++] = copy;
  return 0;
}

int
job_id_reserve (const char *id)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&ids_lock);
  return add_locked (id);
}

char *
job_id_fresh (const char *base)
{
  char *id;
  unsigned long n;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&ids_lock);

  if (!used_locked (base)) {
    id = strdup (base);
    if (id == NULL)
      nbdkit_error ("strdup: %m");
  }
  else {
    for (n = 2;; ++n) {
      if (asprintf (&id, "%s-%lu", base, n) == -1) {
        nbdkit_error ("asprintf: %m");
        return NULL;
      }
      if (!used_locked (id))
        break;
      free (id);
    }
  }
  return id;
}
