/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdkit-dirtybitmap-filter: change tracking for incremental backups.
 *
 * Notes on the design:
 *
 * The bitmaps themselves live in libnbdkit-backup (common/backup/
 * dirty.c), one set per process, so that the cbw filter can take one
 * for an incremental backup.  This filter owns their life: it loads
 * and saves them (persist.c), records every pwrite, zero and trim
 * that reaches it in every recording bitmap, and gives them control
 * commands (commands.c).
 *
 * A write is marked before it goes down, inside the write gate: so a
 * transaction (which closes the gate) sees it wholly before or wholly
 * after, and a write that fails half way is still marked (a spurious
 * dirty bit costs a copy; a missing one corrupts a backup).  The
 * first change after start waits until the sidecar says "in use" and
 * is mapped: from then on dirty_mark sets each bit in the sidecar's
 * shared mapping too, so the bitmaps survive the process dying
 * (persist.c, persist-map.c).  In power mode, a write that set a new
 * bit waits until the bit is durable (one fdatasync shared by the
 * writers waiting) before it goes down.
 *
 * Dirty exports: "dirty:NAME" serves the data of the snapshot export
 * below (fleece's, by default "snapshot") read-only, with extents
 * from bitmap NAME: clean granules are HOLE (not ZERO: they read as
 * the snapshot's data, so the NBD rule that HOLE alone promises
 * nothing about the contents holds), dirty ones are data.  A client
 * with only base:allocation, e.g. nbdinfo --map or qemu-img map,
 * thus sees what changed.  The bitmap must be disabled (frozen at the
 * snapshot instant) and is busy while an export is open on it.  The
 * snapshot export must be served by a filter of the suite below this
 * one (else, most plugins ignoring names, it would be the live disk);
 * other unknown names are refused too (common/backup/exports.h).
 *
 * Not done: tracking several exports of one plugin separately (all
 * exports count as one disk), and writes that bypass this filter
 * (another server, or offline tools) cannot be seen at all.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "commands.h"
#include "control.h"
#include "dirty.h"
#include "exports.h"
#include "gate.h"
#include "ispowerof2.h"
#include "persist.h"
#include "registry.h"

/* Lock order: see lock-order.h. */

#define DIRTY_EXPORT_PREFIX "dirty:"

/* Parameters, set in .config and never changed afterwards. */
static char *file_path;                         /* dirtybitmap-file */
static uint32_t granularity = 65536;            /* dirtybitmap-granularity */
static const char *snapshot_export = "snapshot"; /* dirtybitmap-snapshot-export */
static const char **add_names;                  /* dirtybitmap-add */
static size_t nr_add_names;
static bool passthrough;                        /* dirtybitmap-exports */
static bool power;                              /* dirtybitmap-durability */
/* The plugin's file=, if given once: checked for changes made while
 * no server tracked it.
 */
static char *disk_file;
static unsigned nr_disk_files;

/* True once the bitmaps are loaded: only then are they saved. */
static bool loaded;

struct handle {
  struct dirty_bitmap *reader;  /* Set for a dirty export. */
};

static void
dirtybitmap_load (void)
{
  registry_add_filter ("dirtybitmap");
}

static void
dirtybitmap_unload (void)
{
  /* Every filter's .cleanup has run (so cbw has ended its backup and
   * released its bitmap): the bitmaps are final.
   */
  if (loaded)
    persist_save ();
  dirty_free_all ();
  persist_close ();
  exports_unclaim ("dirtybitmap");
  registry_remove_filter ("dirtybitmap");
  free (file_path);
  free (disk_file);
  free (add_names);
}

static int
dirtybitmap_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                    const char *key, const char *value)
{
  if (strcmp (key, "dirtybitmap-file") == 0) {
    free (file_path);
    file_path = nbdkit_absolute_path (value);
    return file_path ? 0 : -1;
  }
  else if (strcmp (key, "dirtybitmap-control") == 0)
    return control_configure ("dirtybitmap-control", value);
  else if (strcmp (key, "dirtybitmap-granularity") == 0) {
    int64_t r = nbdkit_parse_size (value);
    if (r == -1)
      return -1;
    if (r < DIRTY_MIN_GRANULARITY || r > DIRTY_MAX_GRANULARITY ||
        !is_power_of_2 (r)) {
      nbdkit_error ("dirtybitmap-granularity: '%s' must be a power of two "
                    "from 512 to 2G", value);
      return -1;
    }
    granularity = r;
    return 0;
  }
  else if (strcmp (key, "dirtybitmap-add") == 0) {
    struct control_error err = { 0 };
    const char **p;

    if (dirty_check_name (value, &err) == -1) {
      nbdkit_error ("dirtybitmap-add: %s", err.desc);
      return -1;
    }
    p = realloc (add_names, (nr_add_names + 1) * sizeof *p);
    if (p == NULL) {
      nbdkit_error ("realloc: %m");
      return -1;
    }
    add_names = p;
    add_names[nr_add_names++] = value;
    return 0;
  }
  else if (strcmp (key, "dirtybitmap-snapshot-export") == 0) {
    if (strlen (value) > 4096) {
      nbdkit_error ("dirtybitmap-snapshot-export: name too long");
      return -1;
    }
    snapshot_export = value;
    return 0;
  }
  else if (strcmp (key, "dirtybitmap-exports") == 0)
    return exports_parse_policy ("dirtybitmap-exports", value, &passthrough);
  else if (strcmp (key, "dirtybitmap-durability") == 0) {
    if (strcmp (value, "process") == 0)
      power = false;
    else if (strcmp (value, "power") == 0)
      power = true;
    else {
      nbdkit_error ("dirtybitmap-durability: '%s' must be 'process' or "
                    "'power'", value);
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "file") == 0) {
    /* The plugin's (file, qcow2 ...) disk: note it, pass it on. */
    free (disk_file);
    disk_file = nbdkit_absolute_path (value);
    if (disk_file == NULL)
      return -1;
    nr_disk_files++;
  }
  exports_note_plugin_key (key);
  return next (nxdata, key, value);
}

static int
dirtybitmap_config_complete (nbdkit_next_config_complete *next,
                             nbdkit_backend *nxdata)
{
  if (power && file_path == NULL) {
    nbdkit_error ("dirtybitmap-durability=power needs dirtybitmap-file "
                  "(without a file no bitmap outlives the server)");
    return -1;
  }
  return next (nxdata);
}

#define dirtybitmap_config_help \
  "dirtybitmap-file=<FILE>   Keep persistent bitmaps in this sidecar file.\n" \
  "dirtybitmap-add=<NAME>    Create this bitmap at start if missing.\n" \
  "dirtybitmap-granularity=<N>\n" \
  "                          Default granularity of new bitmaps (64K).\n" \
  "dirtybitmap-control=<SOCKET>\n" \
  "                          The server's control socket.\n" \
  "dirtybitmap-snapshot-export=<NAME>\n" \
  "                          Export whose data dirty:* serve (snapshot).\n" \
  "dirtybitmap-exports=strict|passthrough\n" \
  "                          Refuse unknown export names (default strict).\n" \
  "dirtybitmap-durability=process|power\n" \
  "                          What the bitmap file survives (process)."

/* Is the export that dirty exports read available?  0, or -1 with
 * err filled.
 */
static int
check_snapshot_export (struct control_error *err)
{
  struct control_error why = { 0 };

  /* "" is the plugin's default export; with passthrough the user
   * says the plugin serves the name.
   */
  if (snapshot_export[0] == '\0' || passthrough)
    return 0;
  if (!exports_served_below ("dirtybitmap", snapshot_export))
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "no filter below this one serves the snapshot "
                         "export '%s' (load nbdkit-fleece-filter after "
                         "dirtybitmap: --filter=dirtybitmap "
                         "--filter=fleece)", snapshot_export);
  if (exports_check (snapshot_export, &why) != 1)
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "the snapshot export '%s' is not available: %s",
                         snapshot_export, why.desc);
  return 0;
}

/* Can dirty export name be opened now? */
static int
check_dirty_export (const char *name, struct control_error *err)
{
  if (dirty_reader_check (name + strlen (DIRTY_EXPORT_PREFIX), err) == -1)
    return -1;
  return check_snapshot_export (err);
}

static int
dirtybitmap_get_ready (int thread_model)
{
  if (exports_refuse_multi_export ("dirtybitmap", "one set of bitmaps") == -1)
    return -1;
  if (exports_claim ("dirtybitmap", DIRTY_EXPORT_PREFIX, true, "BITMAP",
                     check_dirty_export) == -1 ||
      exports_register_command () == -1)
    return -1;
  if (file_path) {
    if (persist_load (file_path, nr_disk_files == 1 ? disk_file : NULL,
                      power) == -1)
      return -1;
    dirty_set_change_hook (persist_mark_in_use);
  }
  loaded = true;
  /* So that cbw-bitmap= can be checked now, in cbw's .get_ready
   * (which runs after this one): with --run, .after_fork is too late
   * to stop the server.
   */
  dirty_set_expected (add_names, nr_add_names);
  if (commands_register (granularity) == -1)
    return -1;
  return control_bind ();
}

static int
dirtybitmap_after_fork (nbdkit_backend *backend)
{
  nbdkit_next *next;
  int64_t size;
  size_t i;
  unsigned lost;

  /* The disk's size: the bitmaps cover it. */
  next = nbdkit_next_context_open (backend, 1, "", 1);
  if (next == NULL) {
    nbdkit_error ("dirtybitmap: cannot open the plugin to learn the "
                  "disk's size");
    return -1;
  }
  if (next->prepare (next) == -1)
    size = -1;
  else
    size = next->get_size (next);
  next->finalize (next);
  nbdkit_next_context_close (next);
  if (size == -1)
    return -1;
  lost = dirty_set_disk_size (size);
  if (lost > 0)
    nbdkit_debug ("dirtybitmap: the disk's size is now %" PRIi64 ": %u "
                  "bitmaps from %s are inconsistent", size, lost, file_path);

  for (i = 0; i < nr_add_names; ++i) {
    struct control_error err = { 0 };
    struct dirty_new n = {
      .name = add_names[i],
      .granularity = granularity,
      .recording = true,
      .persistent = file_path != NULL,
    };

    if (dirty_find (add_names[i]))
      continue;                 /* Kept from the file. */
    /* The file is not written here: the first change writes it (in
     * use, with this bitmap).  A server that fails to start after
     * this point (a filter above failing in .after_fork) thus leaves
     * the file as it was, and until a change nothing can be missed.
     */
    if (dirty_add (&n, &err) == NULL) {
      nbdkit_error ("dirtybitmap-add: %s: %s", add_names[i], err.desc);
      return -1;
    }
  }
  dirty_set_expected (NULL, 0);
  return control_start ();
}

static void
dirtybitmap_cleanup (nbdkit_backend *backend)
{
  control_stop ();
}

struct list_ctx {
  struct nbdkit_exports *exports;
  int r;
};

static int
list_one (const struct dirty_record *rec, void *opaque)
{
  struct list_ctx *c = opaque;
  CLEANUP_FREE char *name = NULL;

  if (rec->inconsistent || rec->recording)
    return 0;
  if (asprintf (&name, DIRTY_EXPORT_PREFIX "%s", rec->name) == -1 ||
      nbdkit_add_export (c->exports, name,
                         "dirty clusters of the snapshot (read-only)") == -1)
    c->r = -1;
  return 0;
}

/* May a request for exportname (not a dirty export) go down? */
static bool
passes_down (const char *exportname)
{
  return passthrough || exportname[0] == '\0' ||
    exports_served_below ("dirtybitmap", exportname);
}

static int
dirtybitmap_list_exports (nbdkit_next_list_exports *next,
                          nbdkit_backend *nxdata, int readonly, int is_tls,
                          struct nbdkit_exports *exports)
{
  struct list_ctx c = { .exports = exports };
  struct control_error err = { 0 };
  struct nbdkit_exports *below;
  bool have_default = false;
  size_t i;

  /* List only what open would accept. */
  below = nbdkit_exports_new ();
  if (below == NULL)
    return -1;
  if (next (nxdata, readonly, below) == -1) {
    nbdkit_exports_free (below);
    return -1;
  }
  for (i = 0; c.r == 0 && i < nbdkit_exports_count (below); ++i) {
    struct nbdkit_export e = nbdkit_get_export (below, i);

    have_default |= e.name[0] == '\0';
    if (passes_down (e.name))
      c.r = nbdkit_add_export (exports, e.name, e.description);
  }
  nbdkit_exports_free (below);
  /* As fleece does: a copy cannot carry nbdkit_use_default_export. */
  if (c.r == 0 && !have_default)
    c.r = nbdkit_add_export (exports, "", NULL);
  if (c.r == 0 && check_snapshot_export (&err) == 0)
    dirty_foreach_record (list_one, &c);
  return c.r;
}

static void *
dirtybitmap_open (nbdkit_next_open *next, nbdkit_context *context,
                  int readonly, const char *exportname, int is_tls)
{
  struct handle *h = calloc (1, sizeof *h);
  size_t plen = strlen (DIRTY_EXPORT_PREFIX);

  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  if (strncmp (exportname, DIRTY_EXPORT_PREFIX, plen) == 0) {
    struct control_error err = { 0 };

    h->reader = dirty_reader_begin (exportname + plen, &err);
    if (h->reader == NULL || check_snapshot_export (&err) == -1) {
      nbdkit_error ("dirtybitmap: export %s: %s", exportname, err.desc);
      if (h->reader)
        dirty_reader_end (h->reader);
      free (h);
      return NULL;
    }
    if (next (context, 1, snapshot_export) == -1) {
      dirty_reader_end (h->reader);
      free (h);
      return NULL;
    }
    return h;
  }
  if (!passes_down (exportname)) {
    char list[512];

    /* The plugin would serve it as the live disk (most ignore the
     * name): a mistyped export must not back that up.
     */
    exports_describe (list, sizeof list);
    nbdkit_error ("dirtybitmap: no export named '%s': this server serves "
                  "%s (dirtybitmap-exports=passthrough would pass other "
                  "names to the plugin)", exportname, list);
    free (h);
    return NULL;
  }
  if (next (context, readonly, exportname) == -1) {
    free (h);
    return NULL;
  }
  return h;
}

static void
dirtybitmap_close (void *handle)
{
  struct handle *h = handle;

  if (h->reader)
    dirty_reader_end (h->reader);
  free (h);
}

static int
dirtybitmap_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct handle *h = handle;
  int64_t size;

  if (h->reader == NULL)
    return 0;
  size = next->get_size (next);
  if (size == -1)
    return -1;
  if ((uint64_t) size != dirty_disk_size ()) {
    nbdkit_error ("dirtybitmap: export %s%s: the export %s has %" PRIi64
                  " bytes but the bitmap covers %" PRIu64,
                  DIRTY_EXPORT_PREFIX, dirty_name (h->reader),
                  snapshot_export, size, dirty_disk_size ());
    return -1;
  }
  return 0;
}

#define READER_OR(h, value, otherwise) \
  (((struct handle *) (h))->reader ? (value) : (otherwise))

static int
dirtybitmap_can_write (nbdkit_next *next, void *handle)
{
  return READER_OR (handle, 0, next->can_write (next));
}

static int
dirtybitmap_can_extents (nbdkit_next *next, void *handle)
{
  return READER_OR (handle, 1, next->can_extents (next));
}

static int
dirtybitmap_can_cache (nbdkit_next *next, void *handle)
{
  return READER_OR (handle, NBDKIT_CACHE_NONE, next->can_cache (next));
}

static int
dirtybitmap_can_multi_conn (nbdkit_next *next, void *handle)
{
  return READER_OR (handle, 1, next->can_multi_conn (next));
}

static int
dirtybitmap_extents (nbdkit_next *next, void *handle, uint32_t count,
                     uint64_t offset, uint32_t flags,
                     struct nbdkit_extents *extents, int *err)
{
  struct handle *h = handle;
  uint64_t end = offset + count, pos = offset, start, len;

  if (h->reader == NULL)
    return next->extents (next, count, offset, flags, extents, err);

  while (pos < end) {
    if (!dirty_next_range (h->reader, pos, end, &start, &len)) {
      start = end;
      len = 0;
    }
    if (start > pos &&
        nbdkit_add_extent (extents, pos, start - pos,
                           NBDKIT_EXTENT_HOLE) == -1)
      goto fail;
    if (len > 0 && nbdkit_add_extent (extents, start, len, 0) == -1)
      goto fail;
    pos = start + len;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  return 0;
 fail:
  *err = errno;
  return -1;
}

/* Record a change before it goes down (in power mode, durably).  0,
 * or -1 with *err set.
 */
static int
mark (uint64_t offset, uint32_t count, int *err)
{
  uint64_t seq;

  if (dirty_mark_seq (offset, count, &seq) == -1) {
    *err = errno ? errno : EIO;
    nbdkit_error ("dirtybitmap: cannot mark %s in use, so this write "
                  "could not be tracked safely: %m", file_path);
    return -1;
  }
  if (persist_after_mark (seq) == -1) {
    *err = EIO;
    nbdkit_error ("dirtybitmap: %s cannot say that the bitmaps missed "
                  "this write, so it was refused: %m", file_path);
    return -1;
  }
  return 0;
}

static int
dirtybitmap_pwrite (nbdkit_next *next, void *handle, const void *buf,
                    uint32_t count, uint64_t offset, uint32_t flags,
                    int *err)
{
  GATE_FOR_CURRENT_SCOPE ();

  if (mark (offset, count, err) == -1)
    return -1;
  return next->pwrite (next, buf, count, offset, flags, err);
}

static int
dirtybitmap_zero (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags, int *err)
{
  GATE_FOR_CURRENT_SCOPE ();

  if (mark (offset, count, err) == -1)
    return -1;
  return next->zero (next, count, offset, flags, err);
}

static int
dirtybitmap_trim (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags, int *err)
{
  GATE_FOR_CURRENT_SCOPE ();

  if (mark (offset, count, err) == -1)
    return -1;
  return next->trim (next, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name              = "dirtybitmap",
  .longname          = "nbdkit dirty bitmap (change tracking) filter",
  .load              = dirtybitmap_load,
  .unload            = dirtybitmap_unload,
  .config            = dirtybitmap_config,
  .config_complete   = dirtybitmap_config_complete,
  .config_help       = dirtybitmap_config_help,
  .get_ready         = dirtybitmap_get_ready,
  .after_fork        = dirtybitmap_after_fork,
  .cleanup           = dirtybitmap_cleanup,
  .list_exports      = dirtybitmap_list_exports,
  .open              = dirtybitmap_open,
  .close             = dirtybitmap_close,
  .prepare           = dirtybitmap_prepare,
  .can_write         = dirtybitmap_can_write,
  .can_extents       = dirtybitmap_can_extents,
  .can_cache         = dirtybitmap_can_cache,
  .can_multi_conn    = dirtybitmap_can_multi_conn,
  .pwrite            = dirtybitmap_pwrite,
  .zero              = dirtybitmap_zero,
  .trim              = dirtybitmap_trim,
  .extents           = dirtybitmap_extents,
};

NBDKIT_REGISTER_FILTER (filter)
