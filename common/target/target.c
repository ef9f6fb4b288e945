/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* What every kind of target shares: the format rule, the checks of
 * what is already at a target's name, opening by kind, and the
 * publish-by-rename mechanism of file targets (raw and qcow2).
 *
 * A file target lives at "PATH.incomplete" while the job runs and is
 * renamed to PATH only once complete and flushed; the directory is
 * synced after each rename, so that after a crash either the old name
 * or the new one is on disk, never a complete-looking half backup.
 * The renaming itself is common/utils' publish.c.
 *
 * Hostile paths: what is at PATH is looked at with lstat, never
 * followed.  A symlink, a directory, a FIFO, a socket or a character
 * device is refused by name; a block device is accepted (the user
 * named it on purpose) and written in place.  Files we open are opened
 * O_NOFOLLOW and without blocking (open_regular_file), files we create
 * O_EXCL|O_NOFOLLOW, mode 0600, after unlinking any leftover
 * (create_file_excl).
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "files.h"
#include "nbd-uri.h"
#include "nbdkit-stubs.h"
#include "publish.h"
#include "qcow2.h"
#include "target-internal.h"

static const char *const format_names[] = {
  [TARGET_AUTO] = "auto", [TARGET_RAW] = "raw",
  [TARGET_QCOW2] = "qcow2", [TARGET_NBD] = "nbd",
};

int
target_parse_format (const char *s, enum target_format *f)
{
  enum target_format i;

  for (i = TARGET_RAW; i <= TARGET_NBD; ++i)
    if (strcmp (s, format_names[i]) == 0) {
      *f = i;
      return 0;
    }
  return -1;
}

const char *
target_format_name (enum target_format f)
{
  return format_names[f];
}

static bool
ends_with (const char *str, const char *suffix)
{
  size_t n = strlen (str), m = strlen (suffix);

  return n >= m && strcmp (str + n - m, suffix) == 0;
}

enum target_format
target_format_of (enum target_format explicit_, const char *name)
{
  if (explicit_ != TARGET_AUTO)
    return explicit_;
  if (is_nbd_uri (name))
    return TARGET_NBD;
  if (ends_with (name, ".qcow2") || ends_with (name, ".qcow"))
    return TARGET_QCOW2;
  return TARGET_RAW;
}

bool
target_source_is_raw (const char *path)
{
  return path && qcow2_probe ("source", path, NULL) == 0;
}

static int __attribute__ ((format (printf, 3, 4)))
fail (char *msg, size_t msglen, const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  vsnprintf (msg, msglen, fs, args);
  va_end (args);
  return -1;
}

int
target_existing (const char *param, const char *name,
                 enum target_existing *kind, struct stat *st,
                 char *msg, size_t msglen)
{
  if (lstat (name, st) == -1) {
    if (errno == ENOENT) {
      *kind = EXISTING_NONE;
      return 0;
    }
    return fail (msg, msglen, "%s: %s: %s", param, name, strerror (errno));
  }
  if (S_ISREG (st->st_mode))
    *kind = EXISTING_FILE;
  else if (S_ISBLK (st->st_mode))
    *kind = EXISTING_BLOCKDEV;
  else
    return fail (msg, msglen, "%s: %s: is %s, not a regular file or "
                 "block device", param, name, file_kind (st->st_mode));
  return 0;
}

/* An existing target: what it holds must agree with the format. */
static int
check_existing (const char *param, const char *name,
                enum target_existing kind, const struct stat *st,
                const struct target_options *o, char *msg, size_t msglen)
{
  struct stat sst;
  bool source_known = o->source_file && stat (o->source_file, &sst) == 0;
  int isq;

  if (source_known && st->st_dev == sst.st_dev && st->st_ino == sst.st_ino)
    return fail (msg, msglen, "%s: %s is the source disk itself",
                 param, name);
  if (access (name, W_OK) == -1)
    return fail (msg, msglen, "%s: %s: %s", param, name, strerror (errno));
  if (kind == EXISTING_BLOCKDEV) {
    if (o->format != TARGET_RAW)
      return fail (msg, msglen, "%s: %s is a block device: only a raw "
                   "target may be one", param, name);
    return 0;
  }
  isq = qcow2_probe (param, name, NULL);
  if (isq == -1)
    return fail (msg, msglen, "%s: %s: cannot read it", param, name);
  if (isq && o->format == TARGET_RAW)
    return fail (msg, msglen, "%s: %s is a qcow2 image but the target "
                 "format is raw (name it .qcow2 or ask for the qcow2 "
                 "format)", param, name);
  if (!isq && o->format == TARGET_QCOW2)
    return fail (msg, msglen, "%s: %s is not a qcow2 image but the "
                 "target format is qcow2", param, name);
  /* The file plugin's disk has its virtual size as its file size. */
  if (o->format == TARGET_RAW && source_known && !o->replace &&
      qcow2_probe ("source", o->source_file, NULL) == 0 &&
      st->st_size != sst.st_size)
    return fail (msg, msglen, "%s: %s is %" PRIu64 " bytes but the disk "
                 "is %" PRIu64 " bytes", param, name,
                 (uint64_t) st->st_size, (uint64_t) sst.st_size);
  return 0;
}

/* A new target: it must be creatable and a whole backup. */
static int
check_new (const char *param, const char *name,
           const struct target_options *o, char *msg, size_t msglen)
{
  CLEANUP_FREE char *copy = strdup (name);

  if (copy == NULL)
    return fail (msg, msglen, "out of memory");
  if (access (dirname (copy), W_OK | X_OK) == -1)
    return fail (msg, msglen, "%s: cannot create %s: %s", param, name,
                 strerror (errno));
  if (o->partial && o->format == TARGET_RAW)
    return fail (msg, msglen, "%s: %s does not exist, and a new raw file "
                 "would hold only the changed clusters (zeros elsewhere): "
                 "back up into an existing full backup, or into a qcow2 "
                 "target whose backing file is the previous backup",
                 param, name);
  if (o->partial && o->format == TARGET_QCOW2 && o->backing == NULL)
    return fail (msg, msglen, "%s: %s does not exist, and a new qcow2 "
                 "image without a backing file would hold only the "
                 "changed clusters: name its backing file", param, name);
  return 0;
}

int
target_check (const char *param, const char *name,
              const struct target_options *o, char *msg, size_t msglen)
{
  enum target_existing kind;
  struct stat st;

  if (o->format == TARGET_NBD)
    return 0;                   /* Checked when connecting. */
  if (*name == '\0')
    return fail (msg, msglen, "%s: empty file name", param);
  if (target_existing (param, name, &kind, &st, msg, msglen) == -1)
    return -1;
  if (kind == EXISTING_NONE || (kind == EXISTING_FILE && o->replace))
    return check_new (param, name, o, msg, msglen);
  return check_existing (param, name, kind, &st, o, msg, msglen);
}

struct target *
target_open (const char *param, const char *name, uint64_t size,
             const struct target_options *o)
{
  char msg[512];
  enum target_existing kind;
  struct stat st;

  switch (o->format) {
  case TARGET_NBD:
    return target_nbd_open (param, name, size, o->connections);
  case TARGET_QCOW2:
  case TARGET_RAW:
    /* Checked again: time has passed since the configuration. */
    if (target_check (param, name, o, msg, sizeof msg) == -1 ||
        target_existing (param, name, &kind, &st, msg, sizeof msg) == -1) {
      nbdkit_error ("%s", msg);
      return NULL;
    }
    if (o->format == TARGET_QCOW2)
      return target_qcow2_open (param, name, kind, size, o);
    return target_file_open (param, name, kind, size, o);
  default:
    nbdkit_error ("%s: the target's format is not settled", param);
    return NULL;
  }
}

void *
target_alloc (size_t size_of, const struct target_ops *ops,
              const char *path, uint64_t size, uint32_t max_zero)
{
  struct target *t = calloc (1, size_of);

  if (t == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  t->ops = ops;
  t->size = size;
  t->max_zero = max_zero;
  if ((t->name = strdup (path)) == NULL) {
    nbdkit_error ("strdup: %m");
    free (t);
    return NULL;
  }
  if ((t->working_name = incomplete_name (path)) == NULL) {
    free (t->name);
    free (t);
    return NULL;
  }
  return t;
}

int
target_unpublish (const char *param, struct target *t)
{
  return rename_durably (param, t->name, t->working_name);
}

int
target_publish (struct target *t)
{
  if (t->working_name == NULL)
    return 0;                   /* Written in place. */
  return rename_durably (NULL, t->working_name, t->name);
}

int
target_placed (const char *param, const char *path,
               enum target_existing kind, bool created)
{
  /* With o->replace, the old PATH goes as soon as the new file
   * exists: a failed run then leaves no PATH that a script could take
   * for its result.
   */
  if (created && kind == EXISTING_FILE &&
      unlink (path) == -1 && errno != ENOENT) {
    nbdkit_error ("%s: %s: cannot remove the old target: %m", param, path);
    return -1;
  }
  if (kind != EXISTING_BLOCKDEV && fsync_parent_dir (path) == -1) {
    nbdkit_error ("%s: %s: fsync of directory: %m", param, path);
    return -1;
  }
  return 0;
}
