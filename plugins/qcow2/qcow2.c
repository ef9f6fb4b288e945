/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdkit-qcow2-plugin: serve a qcow2 image (and its backing chain).
 *
 * Notes on the design: all the work is done by common/qcow2, which
 * keeps its own locks (a mutex for metadata, a reader/writer lock that
 * keeps freed clusters from being reused under a request); so the
 * plugin runs in the parallel thread model and has no per-connection
 * state.  The image is opened once in .get_ready and shared by every
 * connection; flush makes everything durable for all of them, hence
 * multi-conn.  FUA is emulated by nbdkit with a flush, which is what a
 * native implementation would do anyway.
 *
 * Extents (base:allocation) describe the whole chain as qemu-nbd
 * does, so that QEMU's NBD client and qemu-img agree with them: data
 * wherever some layer has data (normal or compressed clusters, data of
 * a raw backing file), HOLE|ZERO wherever the chain reads as zeros
 * (zero clusters, allocated or not; clusters unallocated everywhere;
 * holes of a raw backing file; past the end of a shorter backing
 * file), and ZERO alone where a preallocated image's data cluster
 * is a hole in the file (qemu-nbd's reading of metadata preallocation).
 * A HOLE without ZERO would tell QEMU "unallocated: zeros",
 * which is false over a backing file.  Which clusters the top image
 * itself holds (for cbw's sync=top) is offered to the filters of this
 * process through libnbdkit-backup's registry instead (see
 * top-allocation.h).
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "ispowerof2.h"
#include "minmax.h"
#include "qcow2.h"
#include "top-allocation.h"

static char *filename;
static bool readonly;
static char *backing;           /* NULL, "" (none) or a path */
static char *backing_format;
static enum qcow2_backing_policy policy = QCOW2_BACKING_SAME_DIR;
static bool create;
static int64_t create_size = -1;
static unsigned create_cluster_bits = 16;
static unsigned create_version = 3;
static char *create_backing;
static char *create_backing_format;

/* The open image, shared by all connections (it does its own locking). */
static struct qcow2_image *img;

/* The top image's allocation, for filters in this process. */
static int
top_status (void *opaque, uint32_t count, uint64_t offset, uint64_t *len,
            bool *allocated, int *err)
{
  unsigned bs;

  if (qcow2_block_status (img, count, offset, len, &bs, err) == -1)
    return -1;
  *allocated = (bs & QCOW2_BS_ALLOCATED) != 0;
  return 0;
}
static char *top_owner;
static struct top_allocation top_offer = { .status = top_status };
static bool offered;

static void
qcow2_unload (void)
{
  if (offered)
    top_allocation_withdraw ();
  offered = false;
  free (top_owner);
  if (img && qcow2_close (img) == -1)
    nbdkit_error ("%s: final flush failed", filename);
  img = NULL;
  free (filename);
  free (backing);
  free (backing_format);
  free (create_backing);
  free (create_backing_format);
}

static int
set_string (char **dst, const char *value)
{
  free (*dst);
  *dst = strdup (value);
  if (*dst == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  return 0;
}

static int
qcow2_config (const char *key, const char *value)
{
  int r;

  if (strcmp (key, "file") == 0) {
    free (filename);
    filename = nbdkit_absolute_path (value);
    return filename ? 0 : -1;
  }
  else if (strcmp (key, "readonly") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    readonly = r;
  }
  else if (strcmp (key, "backing") == 0) {
    if (strcmp (value, "none") == 0)
      return set_string (&backing, "");
    free (backing);
    backing = nbdkit_absolute_path (value);
    return backing ? 0 : -1;
  }
  else if (strcmp (key, "backing-format") == 0) {
    if (strcmp (value, "raw") != 0 && strcmp (value, "qcow2") != 0) {
      nbdkit_error ("backing-format must be raw or qcow2");
      return -1;
    }
    return set_string (&backing_format, value);
  }
  else if (strcmp (key, "backing-policy") == 0) {
    if (strcmp (value, "same-dir") == 0)
      policy = QCOW2_BACKING_SAME_DIR;
    else if (strcmp (value, "any") == 0)
      policy = QCOW2_BACKING_ANY;
    else if (strcmp (value, "refuse") == 0)
      policy = QCOW2_BACKING_REFUSE;
    else {
      nbdkit_error ("backing-policy must be same-dir, any or refuse");
      return -1;
    }
  }
  else if (strcmp (key, "create") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    create = r;
  }
  else if (strcmp (key, "create-size") == 0) {
    create_size = nbdkit_parse_size (value);
    if (create_size == -1)
      return -1;
  }
  else if (strcmp (key, "create-cluster-size") == 0) {
    int64_t cs = nbdkit_parse_size (value);
    if (cs == -1)
      return -1;
    if (cs < 512 || cs > 2 * 1024 * 1024 || !is_power_of_2 (cs)) {
      nbdkit_error ("create-cluster-size must be a power of 2 from 512 "
                    "to 2M");
      return -1;
    }
    create_cluster_bits = log_2_bits (cs);
  }
  else if (strcmp (key, "create-compat") == 0) {
    if (strcmp (value, "0.10") == 0)
      create_version = 2;
    else if (strcmp (value, "1.1") == 0)
      create_version = 3;
    else {
      nbdkit_error ("create-compat must be 0.10 or 1.1");
      return -1;
    }
  }
  else if (strcmp (key, "create-backing") == 0)
    return set_string (&create_backing, value);
  else if (strcmp (key, "create-backing-format") == 0) {
    if (strcmp (value, "raw") != 0 && strcmp (value, "qcow2") != 0) {
      nbdkit_error ("create-backing-format must be raw or qcow2");
      return -1;
    }
    return set_string (&create_backing_format, value);
  }
  else {
    nbdkit_error ("unknown parameter '%s'", key);
    return -1;
  }
  return 0;
}

static int
qcow2_config_complete (void)
{
  if (filename == NULL) {
    nbdkit_error ("you must supply the file=<IMAGE> parameter");
    return -1;
  }
  if (create && create_size == -1) {
    nbdkit_error ("create=true needs create-size=<SIZE>");
    return -1;
  }
  if (create && readonly) {
    nbdkit_error ("create=true cannot be used with readonly=true");
    return -1;
  }
  if (create_backing && !create_backing_format) {
    nbdkit_error ("create-backing needs create-backing-format=raw|qcow2");
    return -1;
  }
  if (backing_format && !backing) {
    nbdkit_error ("backing-format needs backing=<FILE>");
    return -1;
  }
  return 0;
}

#define qcow2_config_help \
  "file=<IMAGE>            (required) The qcow2 image to serve.\n" \
  "readonly=true           Open the image read-only.\n" \
  "backing=<FILE>|none     Override the image's backing file.\n" \
  "backing-format=raw|qcow2  Format of backing=<FILE>.\n" \
  "backing-policy=same-dir|any|refuse  Follow backing files named in images.\n" \
  "create=true             Create the image if it does not exist.\n" \
  "create-size=<SIZE>      Virtual size of a created image.\n" \
  "create-cluster-size=<N> Cluster size of a created image (default 64K).\n" \
  "create-compat=0.10|1.1  qcow2 version of a created image (default 1.1).\n" \
  "create-backing=<NAME>   Backing file named in a created image.\n" \
  "create-backing-format=raw|qcow2  Its format."

static int
qcow2_get_ready (void)
{
  struct qcow2_open_options o = {
    .readonly = readonly,
    .policy = policy,
    .backing = backing,
    .backing_format = backing_format,
  };

  if (create && access (filename, F_OK) == -1) {
    struct qcow2_create_options c = {
      .size = create_size,
      .cluster_bits = create_cluster_bits,
      .version = create_version,
      .backing = create_backing,
      .backing_format = create_backing_format,
    };
    if (qcow2_create (filename, &c) == -1)
      return -1;
    nbdkit_debug ("qcow2: created %s", filename);
  }
  img = qcow2_open (filename, &o);
  if (img == NULL)
    return -1;

  if (asprintf (&top_owner, "qcow2 image %s", filename) == -1) {
    nbdkit_error ("asprintf: %m");
    return -1;
  }
  top_offer.owner = top_owner;
  top_offer.size = qcow2_get_size (img);
  if (top_allocation_offer (&top_offer) == -1)
    return -1;
  offered = true;
  return 0;
}

static void *
qcow2_open_conn (int ro)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
qcow2_get_size_cb (void *handle)
{
  return qcow2_get_size (img);
}

/* Preferred: a write of less than a cluster into an unallocated,
 * compressed or shared cluster has to read and rewrite the rest of it
 * (never below 4K, the protocol's default).  No real minimum, and no
 * maximum beyond the protocol's 32M.
 */
static int
qcow2_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                  uint32_t *maximum)
{
  uint32_t cs = qcow2_get_cluster_size (img);

  *minimum = 1;
  *preferred = MAX (cs, UINT32_C (4096));
  *maximum = 32 * 1024 * 1024;
  return 0;
}

static int
qcow2_can_write (void *handle)
{
  return !qcow2_is_readonly (img);
}

static int
qcow2_can_flush (void *handle)
{
  return 1;
}

static int
qcow2_can_fua (void *handle)
{
  return NBDKIT_FUA_EMULATE;
}

static int
qcow2_can_multi_conn (void *handle)
{
  return 1;
}

static int
qcow2_can_extents (void *handle)
{
  return 1;
}

static int
qcow2_pread_cb (void *handle, void *buf, uint32_t count, uint64_t offset,
                uint32_t flags)
{
  int err = 0;

  if (qcow2_pread (img, buf, count, offset, &err) == -1) {
    nbdkit_set_error (err);
    return -1;
  }
  return 0;
}

static int
qcow2_pwrite_cb (void *handle, const void *buf, uint32_t count,
                 uint64_t offset, uint32_t flags)
{
  int err = 0;

  if (qcow2_pwrite (img, buf, count, offset, &err) == -1) {
    nbdkit_set_error (err);
    return -1;
  }
  return 0;
}

static int
qcow2_zero_cb (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int err = 0;

  if (qcow2_zero (img, count, offset, flags & NBDKIT_FLAG_MAY_TRIM,
                  &err) == -1) {
    nbdkit_set_error (err);
    return -1;
  }
  return 0;
}

static int
qcow2_trim_cb (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int err = 0;

  if (qcow2_trim (img, count, offset, &err) == -1) {
    nbdkit_set_error (err);
    return -1;
  }
  return 0;
}

static int
qcow2_flush_cb (void *handle, uint32_t flags)
{
  int err = 0;

  if (qcow2_flush (img, &err) == -1) {
    nbdkit_set_error (err);
    return -1;
  }
  return 0;
}

/* The chain's status, as qemu-nbd reports it: data, or HOLE|ZERO. */
static int
qcow2_extents_cb (void *handle, uint32_t count, uint64_t offset,
                  uint32_t flags, struct nbdkit_extents *extents)
{
  int err = 0;

  while (count > 0) {
    uint64_t len;
    unsigned bs;
    uint32_t type = 0;

    if (qcow2_block_status (img, count, offset, &len, &bs, &err) == -1) {
      nbdkit_set_error (err);
      return -1;
    }
    if (!(bs & QCOW2_BS_DATA))
      type = NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;
    else if (bs & QCOW2_BS_ZERO)
      type = NBDKIT_EXTENT_ZERO;        /* a hole in a preallocated image */
    if (nbdkit_add_extent (extents, offset, len, type) == -1)
      return -1;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
    offset += len;
    count -= len;
  }
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name              = "qcow2",
  .longname          = "nbdkit qcow2 plugin",
  .version           = PACKAGE_VERSION,
  .unload            = qcow2_unload,
  .config            = qcow2_config,
  .config_complete   = qcow2_config_complete,
  .config_help       = qcow2_config_help,
  .magic_config_key  = "file",
  .get_ready         = qcow2_get_ready,
  .open              = qcow2_open_conn,
  .get_size          = qcow2_get_size_cb,
  .block_size        = qcow2_block_size,
  .can_write         = qcow2_can_write,
  .can_flush         = qcow2_can_flush,
  .can_trim          = qcow2_can_write,
  .can_zero          = qcow2_can_write,
  .can_fua           = qcow2_can_fua,
  .can_multi_conn    = qcow2_can_multi_conn,
  .can_extents       = qcow2_can_extents,
  .pread             = qcow2_pread_cb,
  .pwrite            = qcow2_pwrite_cb,
  .zero              = qcow2_zero_cb,
  .trim              = qcow2_trim_cb,
  .flush             = qcow2_flush_cb,
  .extents           = qcow2_extents_cb,
  .errno_is_preserved = 0,
};

/* The library locks its own metadata; requests run fully in parallel. */
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
NBDKIT_REGISTER_PLUGIN (plugin)
