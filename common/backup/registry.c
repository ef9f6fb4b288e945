/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "nbdkit-stubs.h"
#include "registry.h"

/* Lock order: see lock-order.h. */

struct entry {
  struct entry *next;
  char *kind;           /* "filter" for loaded filters. */
  char *name;
  void *obj;
  registry_describe_fn *describe;
};

/* This lock protects the list. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry *head;

static struct entry **
lookup (const char *kind, const char *name)
{
  struct entry **pp;

  for (pp = &head; *pp; pp = &(*pp)->next)
    if (strcmp ((*pp)->kind, kind) == 0 && strcmp ((*pp)->name, name) == 0)
      return pp;
  return NULL;
}

static int
add (const char *kind, const char *name, void *obj,
     registry_describe_fn *describe, bool unique)
{
  struct entry *e, **pp;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (lookup (kind, name)) {
    if (!unique)
      return 0;
    nbdkit_error ("%s '%s' already exists", kind, name);
    errno = EEXIST;
    return -1;
  }
  e = calloc (1, sizeof *e);
  if (e == NULL || (e->kind = strdup (kind)) == NULL ||
      (e->name = strdup (name)) == NULL) {
    nbdkit_error ("malloc: %m");
    if (e) free (e->kind);
    free (e);
    return -1;
  }
  e->obj = obj;
  e->describe = describe;
  for (pp = &head; *pp; pp = &(*pp)->next)
    ;
  *pp = e;
  return 0;
}

static void *
remove_entry (const char *kind, const char *name)
{
  struct entry **pp, *e;
  void *obj;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  pp = lookup (kind, name);
  if (pp == NULL)
    return NULL;
  e = *pp;
  *pp = e->next;
  obj = e->obj;
  free (e->kind);
  free (e->name);
  free (e);
  return obj;
}

int
registry_add_filter (const char *name)
{
  return add ("filter", name, NULL, NULL, false);
}

void
registry_remove_filter (const char *name)
{
  remove_entry ("filter", name);
}

bool
registry_has_filter (const char *name)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  return lookup ("filter", name) != NULL;
}

int
registry_filter_position (const char *name)
{
  struct entry *e;
  int i = 0;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  for (e = head; e; e = e->next)
    if (strcmp (e->kind, "filter") == 0) {
      if (strcmp (e->name, name) == 0)
        return i;
      i++;
    }
  return -1;
}

char *
registry_list_filters (void)
{
  char *buf = NULL;
  size_t len = 0;
  FILE *fp;
  struct entry *e;
  bool first = true;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  fp = open_memstream (&buf, &len);
  if (fp == NULL)
    return NULL;
  for (e = head; e; e = e->next)
    if (strcmp (e->kind, "filter") == 0) {
      fprintf (fp, "%s%s", first ? "" : " ", e->name);
      first = false;
    }
  if (fclose (fp) == EOF) {
    free (buf);
    return NULL;
  }
  return buf;
}

int
registry_add_object (const char *kind, const char *name, void *obj,
                     registry_describe_fn *describe)
{
  return add (kind, name, obj, describe, true);
}

void *
registry_find_object (const char *kind, const char *name)
{
  struct entry **pp;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  pp = lookup (kind, name);
  return pp ? (*pp)->obj : NULL;
}

void *
registry_remove_object (const char *kind, const char *name)
{
  return remove_entry (kind, name);
}

void
registry_foreach (const char *kind,
                  void (*fn) (const char *name, void *obj, void *opaque),
                  void *opaque)
{
  struct entry *e;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  for (e = head; e; e = e->next)
    if (strcmp (e->kind, kind) == 0)
      fn (e->name, e->obj, opaque);
}

void
registry_foreach_described (const char *kind,
                            void (*fn) (const char *name, void *obj,
                                        void *describe, void *opaque),
                            void *opaque)
{
  struct entry *e;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  for (e = head; e; e = e->next)
    if (strcmp (e->kind, kind) == 0)
      fn (e->name, e->obj, (void *) e->describe, opaque);
}

const void *
registry_instance (void)
{
  return &head;
}
