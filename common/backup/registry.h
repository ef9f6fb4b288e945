/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The process-wide registry: which of the suite's filters are loaded
 * in this nbdkit process, and their named objects (bitmaps,
 * snapshots, jobs).  It lives in libnbdkit-backup.so, which every
 * filter of the suite links, so there is exactly one per process.
 * All calls are thread-safe.
 */

#ifndef NBDKIT_BACKUP_REGISTRY_H
#define NBDKIT_BACKUP_REGISTRY_H

#include <stdbool.h>

/* Record that filter name is loaded (call from .load).  0 or -1. */
extern int registry_add_filter (const char *name);

/* Forget filter name (call from .unload). */
extern void registry_remove_filter (const char *name);

/* True if filter name is loaded in this process. */
extern bool registry_has_filter (const char *name);

/* Where filter name is in the stack: nbdkit loads filters from the
 * plugin outwards (the last --filter first), so a smaller position is
 * nearer the plugin (below).  0, 1, ... in load order, or -1 if it is
 * not loaded.
 */
extern int registry_filter_position (const char *name);

/* The loaded filters' names, space-separated, in load order; the
 * caller frees it.  NULL on allocation failure.
 */
extern char *registry_list_filters (void);

/* How an object describes itself to the control socket's queries: a
 * new json_object (json-c), or NULL.
 */
struct json_object;
typedef struct json_object *registry_describe_fn (void *obj);

/* Add a named object of a kind ("job", "snapshot", "bitmap"), with an
 * optional describe function.  Returns 0, or -1 with nbdkit_error
 * called if the name is taken.
 */
extern int registry_add_object (const char *kind, const char *name,
                                void *obj, registry_describe_fn *describe);

/* The object, or NULL. */
extern void *registry_find_object (const char *kind, const char *name);

/* Remove it; returns the object that was there, or NULL. */
extern void *registry_remove_object (const char *kind, const char *name);

/* Call fn for every object of kind, in insertion order, with the
 * registry locked: fn must not call back into the registry.
 */
extern void registry_foreach (const char *kind,
                              void (*fn) (const char *name, void *obj,
                                          void *opaque),
                              void *opaque);

/* The same, also passing each object's describe function. */
extern void registry_foreach_described (const char *kind,
                                        void (*fn) (const char *name,
                                                    void *obj,
                                                    void *describe,
                                                    void *opaque),
                                        void *opaque);

/* The address of the registry's state: equal in every filter of one
 * process, which the tests use to prove there is only one.
 */
extern const void *registry_instance (void);

#endif /* NBDKIT_BACKUP_REGISTRY_H */
