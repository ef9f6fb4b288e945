/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdkit-fleece-filter: image fleecing.
 *
 * Beside the live export (the plugin's, read-write), the filter
 * serves a read-only export (default name "snapshot") holding the disk
 * as it was at the snapshot instant.  It is the copy-before-write
 * engine of common/backup with a local temporary store as its target
 * and no background job: writers copy a cluster's old data into the
 * store before changing it; snapshot readers read the store for
 * copied clusters and the source for the rest (common/backup/
 * snapshot.c explains why that is exact).
 *
 * Lifetime: snap_lock guards the snapshot's existence.  Requests that
 * use the snapshot (live writes and snapshot reads) hold it shared;
 * starting and stopping take it exclusively, so a snapshot is never
 * torn down under a request.  Starting also happens with the write
 * gate closed (a transaction action, or server start before any
 * client), which is what makes the instant exact.
 *
 * A store failure (full, or an I/O error) breaks the snapshot: the
 * writer's request always goes on, snapshot readers get EIO from then
 * on.  The writer is never failed for the sake of the snapshot.
 *
 * Discard-source (fleece-discard-source=true, QEMU 9.1's discard-source
 * of snapshot-access): a reader done with a range says so with NBD
 * trim on the snapshot export.  The whole clusters inside it leave the
 * snapshot (engine_discard): writers stop protecting them, their store
 * space is punched out, and reads of them fail with EPERM.  To accept
 * trim, nbdkit must see the export as writable; writes and
 * write-zeroes to it are refused with EPERM (as QEMU's snapshot-access
 * refuses them), so the snapshot never changes.  Without the
 * parameter the export is read-only, as before.
 *
 * Export names: "" (the live disk) and the snapshot export; any other
 * name is refused (common/backup/exports.h says why) unless a filter
 * of the suite below serves it or fleece-exports=passthrough.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "control.h"
#include "engine.h"
#include "exports.h"
#include "gate.h"
#include "ispowerof2.h"
#include "registry.h"
#include "snapshot.h"
#include "snapshot-export.h"
#include "store.h"

/* Lock order: see lock-order.h. */

/* Log every cluster copy (-D fleece.engine=1). */
NBDKIT_DLL_PUBLIC int fleece_debug_engine = 0;

/* Parameters, set in .config and never changed afterwards. */
static const char *export_name = "snapshot";    /* fleece-export */
static char *store_where;                       /* fleece-store */
static uint64_t store_limit;                    /* fleece-store-limit */
static unsigned cluster_size = 65536;           /* fleece-cluster-size */
static bool start_at_start = true;              /* fleece-snapshot */
static bool passthrough;                        /* fleece-exports */
static bool discard_source;                     /* fleece-discard-source */

/* Opened in .after_fork, closed in .cleanup: to learn the size. */
static nbdkit_next *size_next;

/* This lock guards the snapshot's existence (see above). */
static pthread_rwlock_t snap_lock;
static struct engine *engine;           /* NULL: no snapshot. */
/* Made by a prepared group transaction (group-prepare) and not yet
 * committed: protecting already, but not to be opened, shown as
 * active or stopped until the commit (the group may still abort).
 */
static bool start_pending;
static struct target *store;
static uint64_t snapshots_taken;

struct handle {
  bool snapshot;                        /* The snapshot export. */
};

static void
fleece_load (void)
{
  pthread_rwlockattr_t attr;

  pthread_rwlockattr_init (&attr);
  pthread_rwlockattr_setkind_np (&attr,
                                 PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init (&snap_lock, &attr);
  pthread_rwlockattr_destroy (&attr);
  registry_add_filter ("fleece");
}

static void
fleece_unload (void)
{
  exports_unclaim ("fleece");
  registry_remove_filter ("fleece");
  pthread_rwlock_destroy (&snap_lock);
  free (store_where);
}

static int
fleece_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
               const char *key, const char *value)
{
  if (strcmp (key, "fleece-export") == 0) {
    if (*value == '\0' || strlen (value) > 4096) {
      nbdkit_error ("fleece-export: the snapshot export needs a name "
                    "(1 to 4096 bytes)");
      return -1;
    }
    export_name = value;
    return 0;
  }
  else if (strcmp (key, "fleece-store") == 0) {
    free (store_where);
    store_where = nbdkit_absolute_path (value);
    return store_where ? 0 : -1;
  }
  else if (strcmp (key, "fleece-store-limit") == 0) {
    int64_t r = nbdkit_parse_size (value);
    if (r == -1)
      return -1;
    store_limit = r;
    return 0;
  }
  else if (strcmp (key, "fleece-cluster-size") == 0) {
    int64_t r = nbdkit_parse_size (value);
    if (r == -1)
      return -1;
    if (r < 4096 || r > 16 * 1024 * 1024 || !is_power_of_2 (r)) {
      nbdkit_error ("fleece-cluster-size: '%s' must be a power of two "
                    "from 4K to 16M", value);
      return -1;
    }
    cluster_size = r;
    return 0;
  }
  else if (strcmp (key, "fleece-snapshot") == 0) {
    if (strcmp (value, "at-start") == 0)
      start_at_start = true;
    else if (strcmp (value, "on-command") == 0)
      start_at_start = false;
    else {
      nbdkit_error ("fleece-snapshot: unknown value '%s' "
                    "(expecting at-start or on-command)", value);
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "fleece-discard-source") == 0) {
    int r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    discard_source = r;
    return 0;
  }
  else if (strcmp (key, "fleece-exports") == 0)
    return exports_parse_policy ("fleece-exports", value, &passthrough);
  else if (strcmp (key, "fleece-control") == 0)
    return control_configure ("fleece-control", value);

  exports_note_plugin_key (key);
  return next (nxdata, key, value);
}

static int
fleece_config_complete (nbdkit_next_config_complete *next,
                        nbdkit_backend *nxdata)
{
  if (store_where == NULL) {
    const char *tmp = getenv ("TMPDIR");
    store_where = strdup (tmp && *tmp ? tmp : "/var/tmp");
    if (store_where == NULL) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
  }
  /* The store is made later (at the snapshot): check its place now. */
  if (target_store_check ("fleece-store", store_where) == -1)
    return -1;
  if (!start_at_start && control_path () == NULL) {
    nbdkit_error ("fleece-snapshot=on-command needs a control socket: "
                  "set fleece-control=SOCKET");
    return -1;
  }
  return next (nxdata);
}

#define fleece_config_help \
  "fleece-export=<NAME>      Name of the snapshot export (default snapshot).\n" \
  "fleece-store=<DIR|FILE>   Where copied clusters go (default $TMPDIR).\n" \
  "fleece-store-limit=<N>    Cap on the store's data (default none).\n" \
  "fleece-cluster-size=<N>   Copy granularity (default 64K).\n" \
  "fleece-snapshot=at-start|on-command\n" \
  "                          When the snapshot is taken (default at-start).\n" \
  "fleece-discard-source=<BOOL>\n" \
  "                          Snapshot readers may trim what they have read\n" \
  "                          (default false).\n" \
  "fleece-exports=strict|passthrough\n" \
  "                          Refuse unknown export names (default strict).\n" \
  "fleece-control=<SOCKET>   The server's control socket."

/* Start a snapshot: callers hold snap_lock exclusively and the gate
 * is closed (or no client exists yet).  0 or -1 (reported in err).
 */
static int
snapshot_create (struct control_error *err)
{
  int64_t size;
  struct target *t;
  struct engine *e;

  if (engine)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "a snapshot is already active: stop it first");
  size = size_next->get_size (size_next);
  if (size == -1)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "cannot get the disk's size");
  t = target_store_open ("fleece-store", store_where, size, store_limit);
  if (t == NULL)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "cannot create the store in %s", store_where);
  e = engine_new ("fleece", size, cluster_size, t, CBW_BREAK_SNAPSHOT);
  if (e == NULL) {
    t->ops->close (t);
    return control_fail (err, CONTROL_GENERIC_ERROR, "out of memory");
  }
  engine_protect (e, 0, UINT64_MAX);
  engine_skip_zeros (e, size_next);     /* Holes need no copy. */
  engine_activate (e);
  store = t;
  engine = e;
  snapshots_taken++;
  nbdkit_debug ("fleece: snapshot taken: %" PRIu64 " bytes, cluster size "
                "%u, export \"%s\"", (uint64_t) size, cluster_size,
                export_name);
  return 0;
}

/* Stop it and give the store's space back.  snap_lock held
 * exclusively, so no request uses it.
 */
static void
snapshot_destroy (void)
{
  if (engine == NULL)
    return;
  engine_deactivate (engine);
  store->ops->finish (store, false);
  engine_free (engine);
  store->ops->close (store);
  engine = NULL;
  store = NULL;
  nbdkit_debug ("fleece: snapshot stopped, store released");
}

static json_object *
describe_snapshot (void *unused)
{
  json_object *o = json_object_new_object ();

  pthread_rwlock_rdlock (&snap_lock);
  json_object_object_add (o, "name", json_object_new_string ("fleece"));
  json_object_object_add (o, "export", json_object_new_string (export_name));
  json_object_object_add (o, "active",
                          json_object_new_boolean (engine != NULL &&
                                                   !start_pending));
  if (start_pending)
    json_object_object_add (o, "pending", json_object_new_boolean (true));
  if (engine) {
    struct engine_stats st;
    uint64_t pending;
    bool broken;
    char *error = NULL;

    engine_get_stats (engine, &st, &pending, &broken, &error);
    json_object_object_add (o, "broken", json_object_new_boolean (broken));
    json_object_object_add (o, "error",
                            error ? json_object_new_string (error) : NULL);
    json_object_object_add (o, "disk-size",
                            json_object_new_int64 (engine_size (engine)));
    json_object_object_add (o, "cluster-size",
                            json_object_new_int64
                            (engine_cluster_size (engine)));
    json_object_object_add (o, "bytes-copied",
                            json_object_new_int64 (st.bytes_copied));
    json_object_object_add (o, "store-used",
                            json_object_new_int64 (target_store_used (store)));
    json_object_object_add (o, "store-peak",
                            json_object_new_int64 (target_store_peak (store)));
    json_object_object_add (o, "bytes-discarded",
                            json_object_new_int64 (st.bytes_discarded));
    free (error);
  }
  json_object_object_add (o, "store-limit", json_object_new_int64 (store_limit));
  json_object_object_add (o, "discard-source",
                          json_object_new_boolean (discard_source));
  json_object_object_add (o, "snapshots-taken",
                          json_object_new_int64 (snapshots_taken));
  pthread_rwlock_unlock (&snap_lock);
  return o;
}

/* Transaction actions.  prepare does all the work (it cannot be
 * split: the store is only useful once protecting), so abort undoes
 * it and commit has nothing left to do.
 */
static int
start_prepare (json_object *args, void **state, struct control_error *err,
               void *opaque)
{
  int r;

  if (json_object_object_length (args) != 0)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "snapshot-start takes no arguments");
  pthread_rwlock_wrlock (&snap_lock);
  r = snapshot_create (err);
  start_pending = r == 0;
  pthread_rwlock_unlock (&snap_lock);
  return r;
}

static void
start_commit (void *state, void *opaque)
{
  pthread_rwlock_wrlock (&snap_lock);
  start_pending = false;
  pthread_rwlock_unlock (&snap_lock);
}

static void
start_abort (void *state, void *opaque)
{
  pthread_rwlock_wrlock (&snap_lock);
  snapshot_destroy ();
  start_pending = false;
  pthread_rwlock_unlock (&snap_lock);
}

static void
start_after (void *state, void *opaque)
{
  json_object *d = json_object_new_object ();

  json_object_object_add (d, "export", json_object_new_string (export_name));
  control_emit_event ("SNAPSHOT_STARTED", d);
}

static const struct control_action start_action = {
  .type = "snapshot-start",
  .prepare = start_prepare,
  .commit = start_commit,
  .abort = start_abort,
  .after = start_after,
};

static int
stop_cmd (json_object *args, json_object **ret, struct control_error *err,
          void *opaque)
{
  json_object *d;

  if (json_object_object_length (args) != 0)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "snapshot-stop takes no arguments");
  pthread_rwlock_wrlock (&snap_lock);
  if (engine == NULL) {
    pthread_rwlock_unlock (&snap_lock);
    return control_fail (err, CONTROL_NOT_FOUND, "no snapshot is active");
  }
  snapshot_destroy ();
  pthread_rwlock_unlock (&snap_lock);
  d = json_object_new_object ();
  json_object_object_add (d, "export", json_object_new_string (export_name));
  control_emit_event ("SNAPSHOT_STOPPED", d);
  return 0;
}

/* Can the snapshot export be opened now? */
static int
check_export (const char *name, struct control_error *err)
{
  int r = 0;

  pthread_rwlock_rdlock (&snap_lock);
  if (engine == NULL || start_pending)
    r = control_fail (err, CONTROL_GENERIC_ERROR,
                      "no snapshot is active%s",
                      start_at_start ? "" : " (fleece-snapshot=on-command: "
                      "start one with snapshot-start)");
  pthread_rwlock_unlock (&snap_lock);
  return r;
}

static int
fleece_get_ready (int thread_model)
{
  if (exports_refuse_multi_export ("fleece", "one snapshot") == -1)
    return -1;
  backup_debug_engine |= fleece_debug_engine;
  if (exports_claim ("fleece", export_name, false, NULL,
                     check_export) == -1 ||
      exports_register_command () == -1)
    return -1;
  if (registry_add_object ("snapshot", "fleece", NULL,
                           describe_snapshot) == -1)
    return -1;
  if (control_register_action (&start_action) == -1 ||
      control_register ("snapshot-stop", stop_cmd, NULL) == -1)
    return -1;
  return control_bind ();
}

static int
fleece_after_fork (nbdkit_backend *backend)
{
  struct control_error err = { 0 };

  size_next = nbdkit_next_context_open (backend, 1, "", 1);
  if (size_next == NULL) {
    nbdkit_error ("fleece: cannot open the source");
    return -1;
  }
  if (size_next->prepare (size_next) == -1)
    return -1;
  if (start_at_start) {
    pthread_rwlock_wrlock (&snap_lock);
    if (snapshot_create (&err) == -1) {
      pthread_rwlock_unlock (&snap_lock);
      nbdkit_error ("fleece: %s", err.desc);
      return -1;
    }
    pthread_rwlock_unlock (&snap_lock);
  }
  return control_start ();
}

static void
fleece_cleanup (nbdkit_backend *backend)
{
  control_stop ();
  pthread_rwlock_wrlock (&snap_lock);
  snapshot_destroy ();
  pthread_rwlock_unlock (&snap_lock);
  registry_remove_object ("snapshot", "fleece");
  if (size_next) {
    size_next->finalize (size_next);
    nbdkit_next_context_close (size_next);
    size_next = NULL;
  }
}

/* The snapshot export's description (snapshot-export.h). */
static const char *
snapshot_description (void)
{
  return discard_source ? SNAPSHOT_EXPORT_DESCRIPTION_DISCARD
    : SNAPSHOT_EXPORT_DESCRIPTION;
}

/* May a request for exportname (not the snapshot export) go down? */
static bool
passes_down (const char *exportname)
{
  return passthrough || exportname[0] == '\0' ||
    exports_served_below ("fleece", exportname);
}

static int
fleece_list_exports (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                     int readonly, int is_tls, struct nbdkit_exports *exports)
{
  struct control_error err = { 0 };
  struct nbdkit_exports *below;
  bool have_default = false;
  size_t i;
  int r = 0;

  /* List only what open would accept. */
  below = nbdkit_exports_new ();
  if (below == NULL)
    return -1;
  if (next (nxdata, readonly, below) == -1) {
    nbdkit_exports_free (below);
    return -1;
  }
  for (i = 0; r == 0 && i < nbdkit_exports_count (below); ++i) {
    struct nbdkit_export e = nbdkit_get_export (below, i);

    have_default |= e.name[0] == '\0';
    if (strcmp (e.name, export_name) != 0 && passes_down (e.name))
      r = nbdkit_add_export (exports, e.name, e.description);
  }
  nbdkit_exports_free (below);
  /* A plugin may have asked for its default export to be listed
   * (nbdkit_use_default_export), which a copy cannot carry: "" is
   * always served.
   */
  if (r == 0 && !have_default)
    r = nbdkit_add_export (exports, "", NULL);
  if (r == -1)
    return -1;
  if (check_export (export_name, &err) == -1)
    return 0;                   /* No snapshot: opening it would fail. */
  return nbdkit_add_export (exports, export_name, snapshot_description ());
}

static void *
fleece_open (nbdkit_next_open *next, nbdkit_context *context,
             int readonly, const char *exportname, int is_tls)
{
  struct handle *h;
  bool snap = strcmp (exportname, export_name) == 0;

  if (snap) {
    pthread_rwlock_rdlock (&snap_lock);
    if (engine == NULL || start_pending) {
      pthread_rwlock_unlock (&snap_lock);
      nbdkit_error ("fleece: export %s: no snapshot is active", export_name);
      return NULL;
    }
    pthread_rwlock_unlock (&snap_lock);
  }
  else if (!passes_down (exportname)) {
    char list[512];

    /* The plugin would serve it as the live disk (most ignore the
     * name): a mistyped snapshot export must not back that up.
     */
    exports_describe (list, sizeof list);
    nbdkit_error ("fleece: no export named '%s': this server serves %s "
                  "(fleece-exports=passthrough would pass other names to "
                  "the plugin)", exportname, list);
    return NULL;
  }
  /* The snapshot export reads the plugin's default export. */
  if (next (context, snap ? 1 : readonly, snap ? "" : exportname) == -1)
    return NULL;
  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->snapshot = snap;
  return h;
}

static void
fleece_close (void *handle)
{
  free (handle);
}

#define SNAPSHOT_OR(h, value, otherwise) \
  (((struct handle *) (h))->snapshot ? (value) : (otherwise))

static const char *
fleece_export_description (nbdkit_next *next, void *handle)
{
  return SNAPSHOT_OR (handle, snapshot_description (),
                      next->export_description (next));
}

/* The snapshot export is writable only for trim (discard-source). */
static int
fleece_can_write (nbdkit_next *next, void *handle)
{
  return SNAPSHOT_OR (handle, discard_source, next->can_write (next));
}

static int
fleece_can_trim (nbdkit_next *next, void *handle)
{
  return SNAPSHOT_OR (handle, discard_source, next->can_trim (next));
}

static int
fleece_can_zero (nbdkit_next *next, void *handle)
{
  return SNAPSHOT_OR (handle, NBDKIT_ZERO_NONE, next->can_zero (next));
}

static int
fleece_can_fast_zero (nbdkit_next *next, void *handle)
{
  return SNAPSHOT_OR (handle, 0, next->can_fast_zero (next));
}

static int
fleece_can_fua (nbdkit_next *next, void *handle)
{
  return SNAPSHOT_OR (handle, NBDKIT_FUA_NONE, next->can_fua (next));
}

/* With discard-source, tell readers the granularity a trim must have
 * to free anything: one cluster (partial clusters stay).  Where the
 * plugin states no limits, reads keep the conventional 32M maximum.
 */
static int
fleece_block_size (nbdkit_next *next, void *handle, uint32_t *minimum,
                   uint32_t *preferred, uint32_t *maximum)
{
  if (next->block_size (next, minimum, preferred, maximum) == -1)
    return -1;
  if (!((struct handle *) handle)->snapshot || !discard_source)
    return 0;
  if (*minimum == 0) {
    *minimum = 1;
    *preferred = 4096;
    *maximum = 32 * 1024 * 1024;
  }
  if (*preferred < cluster_size && *maximum >= cluster_size)
    *preferred = cluster_size;
  return 0;
}

static int
fleece_can_extents (nbdkit_next *next, void *handle)
{
  return SNAPSHOT_OR (handle, 1, next->can_extents (next));
}

static int
fleece_can_cache (nbdkit_next *next, void *handle)
{
  return SNAPSHOT_OR (handle, NBDKIT_CACHE_NONE, next->can_cache (next));
}

static int
fleece_can_multi_conn (nbdkit_next *next, void *handle)
{
  return SNAPSHOT_OR (handle, 1, next->can_multi_conn (next));
}

static int
fleece_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  int r;

  if (!((struct handle *) handle)->snapshot)
    return next->pread (next, buf, count, offset, flags, err);

  pthread_rwlock_rdlock (&snap_lock);
  if (engine == NULL) {
    pthread_rwlock_unlock (&snap_lock);
    *err = EIO;
    nbdkit_error ("fleece: the snapshot was stopped");
    return -1;
  }
  r = engine_snapshot_pread (engine, next, buf, count, offset, err);
  pthread_rwlock_unlock (&snap_lock);
  return r;
}

static int
fleece_extents (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents, int *err)
{
  int r;

  if (!((struct handle *) handle)->snapshot)
    return next->extents (next, count, offset, flags, extents, err);

  pthread_rwlock_rdlock (&snap_lock);
  if (engine == NULL) {
    pthread_rwlock_unlock (&snap_lock);
    *err = EIO;
    nbdkit_error ("fleece: the snapshot was stopped");
    return -1;
  }
  if (next->can_extents (next) <= 0) {
    /* The source gives no map: all data, as NBD allows. */
    r = nbdkit_add_extent (extents, offset, count, 0);
    if (r == -1)
      *err = errno;
  }
  else
    r = engine_snapshot_extents (engine, next, count, offset, flags, extents,
                                 target_store_next_data, store, err);
  pthread_rwlock_unlock (&snap_lock);
  return r;
}

/* Before any change to the live disk: save the old data. */
static int
before_write (nbdkit_next *next, uint32_t count, uint64_t offset)
{
  int err = 0;

  if (engine) {
    /* The store failing breaks the snapshot, never the write. */
    engine_before_write (engine, next, offset, count, &err);
    engine_wait_readers (engine, offset, count);
  }
  return 0;
}

/* Writes reach a snapshot handle only with discard-source. */
static int
refuse_snapshot_write (const char *what, int *err)
{
  nbdkit_error ("fleece: export %s is a read-only snapshot: %s refused "
                "(it accepts only trim, to discard what was read)",
                export_name, what);
  *err = EPERM;
  return -1;
}

/* Trim of the snapshot export: the reader is done with the range. */
static int
snapshot_discard (uint32_t count, uint64_t offset, int *err)
{
  uint64_t start, len;

  pthread_rwlock_rdlock (&snap_lock);
  if (engine == NULL) {
    pthread_rwlock_unlock (&snap_lock);
    *err = EIO;
    nbdkit_error ("fleece: the snapshot was stopped");
    return -1;
  }
  if (engine_discard (engine, offset, count, &start, &len))
    target_store_punch (store, start, len);
  pthread_rwlock_unlock (&snap_lock);
  return 0;
}

static int
fleece_pwrite (nbdkit_next *next, void *handle, const void *buf,
               uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  if (((struct handle *) handle)->snapshot)
    return refuse_snapshot_write ("write", err);

  GATE_FOR_CURRENT_SCOPE ();
  int r;

  pthread_rwlock_rdlock (&snap_lock);
  before_write (next, count, offset);
  r = next->pwrite (next, buf, count, offset, flags, err);
  pthread_rwlock_unlock (&snap_lock);
  return r;
}

static int
fleece_zero (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
             uint32_t flags, int *err)
{
  if (((struct handle *) handle)->snapshot)
    return refuse_snapshot_write ("write-zeroes", err);

  GATE_FOR_CURRENT_SCOPE ();
  int r;

  pthread_rwlock_rdlock (&snap_lock);
  before_write (next, count, offset);
  r = next->zero (next, count, offset, flags, err);
  pthread_rwlock_unlock (&snap_lock);
  return r;
}

static int
fleece_trim (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
             uint32_t flags, int *err)
{
  if (((struct handle *) handle)->snapshot)
    return snapshot_discard (count, offset, err);

  GATE_FOR_CURRENT_SCOPE ();
  int r;

  pthread_rwlock_rdlock (&snap_lock);
  before_write (next, count, offset);
  r = next->trim (next, count, offset, flags, err);
  pthread_rwlock_unlock (&snap_lock);
  return r;
}

static struct nbdkit_filter filter = {
  .name              = "fleece",
  .longname          = "nbdkit image fleecing filter",
  .load              = fleece_load,
  .unload            = fleece_unload,
  .config            = fleece_config,
  .config_complete   = fleece_config_complete,
  .config_help       = fleece_config_help,
  .get_ready         = fleece_get_ready,
  .after_fork        = fleece_after_fork,
  .cleanup           = fleece_cleanup,
  .list_exports      = fleece_list_exports,
  .open              = fleece_open,
  .close             = fleece_close,
  .export_description = fleece_export_description,
  .can_write         = fleece_can_write,
  .can_trim          = fleece_can_trim,
  .can_zero          = fleece_can_zero,
  .can_fast_zero     = fleece_can_fast_zero,
  .can_fua           = fleece_can_fua,
  .block_size        = fleece_block_size,
  .can_extents       = fleece_can_extents,
  .can_cache         = fleece_can_cache,
  .can_multi_conn    = fleece_can_multi_conn,
  .pread             = fleece_pread,
  .pwrite            = fleece_pwrite,
  .zero              = fleece_zero,
  .trim              = fleece_trim,
  .extents           = fleece_extents,
};

NBDKIT_REGISTER_FILTER (filter)
