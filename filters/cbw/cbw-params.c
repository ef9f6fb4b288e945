/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The settings of a cbw backup, parsed once for the command line and
 * for backup-start (see cbw-params.h).  Each setting has a parameter
 * name, an argument name (NULL: parameters only) and a parser; every
 * message starts with the name the user gave.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "backup.h"
#include "cbw-params.h"
#include "control.h"
#include "dirty.h"
#include "incremental.h"
#include "ispowerof2.h"
#include "job.h"
#include "nbd-uri.h"
#include "parse.h"

#define FAIL(...) control_fail (err, CONTROL_GENERIC_ERROR, __VA_ARGS__)

typedef int setting_parser (struct backup_spec *s, const char *key,
                            const char *value, struct control_error *err);

/* Replace *field with a copy of value, or with value as an absolute
 * path if path (NBD URIs are kept as they are).
 */
static int
set_string (char **field, const char *key, const char *value, bool path,
            struct control_error *err)
{
  char *copy;

  if (path && !is_nbd_uri (value)) {
    if (*value == '\0')
      return FAIL ("%s: must not be empty", key);
    copy = nbdkit_absolute_path (value);
  }
  else
    copy = strdup (value);
  if (copy == NULL)
    return FAIL ("%s: cannot store '%s': %s", key, value, strerror (errno));
  free (*field);
  *field = copy;
  return 0;
}

static int
p_target (struct backup_spec *s, const char *key, const char *value,
          struct control_error *err)
{
  return set_string (&s->target, key, value, true, err);
}

static int
p_format (struct backup_spec *s, const char *key, const char *value,
          struct control_error *err)
{
  if (parse_target_format (value, &s->format) == -1)
    return FAIL ("%s: unknown format '%s' (expecting raw, qcow2 or nbd)",
                 key, value);
  return 0;
}

static int
p_backing (struct backup_spec *s, const char *key, const char *value,
           struct control_error *err)
{
  /* Kept as written: stored in the qcow2 header, where a relative
   * name is relative to the target's directory.
   */
  return set_string (&s->backing, key, value, false, err);
}

static int
p_backing_format (struct backup_spec *s, const char *key, const char *value,
                  struct control_error *err)
{
  if (strcmp (value, "raw") != 0 && strcmp (value, "qcow2") != 0)
    return FAIL ("%s: unknown format '%s' (expecting raw or qcow2)",
                 key, value);
  return set_string (&s->backing_format, key, value, false, err);
}

static int
p_sync (struct backup_spec *s, const char *key, const char *value,
        struct control_error *err)
{
  if (parse_sync (value, &s->sync) == -1)
    return FAIL ("%s: unknown sync mode '%s' "
                 "(expecting full, top, incremental or none)", key, value);
  return 0;
}

static int
p_bitmap (struct backup_spec *s, const char *key, const char *value,
          struct control_error *err)
{
  struct control_error ierr = { 0 };

  if (dirty_check_name (value, &ierr) == -1)
    return FAIL ("%s: %s", key, ierr.desc);
  return set_string (&s->bitmap, key, value, false, err);
}

static int
p_bitmap_mode (struct backup_spec *s, const char *key, const char *value,
               struct control_error *err)
{
  if (incremental_parse_mode (value, &s->bitmap_mode) == -1)
    return FAIL ("%s: unknown mode '%s' "
                 "(expecting on-success, never or always)", key, value);
  return 0;
}

static int
p_cluster_size (struct backup_spec *s, const char *key, const char *value,
                struct control_error *err)
{
  int64_t r = nbdkit_parse_size (value);

  if (r < 4096 || r > 16 * 1024 * 1024 || !is_power_of_2 (r))
    return FAIL ("%s: '%s' must be a power of two from 4K to 16M",
                 key, value);
  s->cluster_size = r;
  return 0;
}

static int
p_status (struct backup_spec *s, const char *key, const char *value,
          struct control_error *err)
{
  return set_string (&s->status_path, key, value, true, err);
}

static int
p_workers (struct backup_spec *s, const char *key, const char *value,
           struct control_error *err)
{
  unsigned r;

  if (!parse_unsigned (value, 1, JOB_MAX_WORKERS, &r))
    return FAIL ("%s: '%s' must be from 1 to %u", key, value,
                 JOB_MAX_WORKERS);
  s->workers = r;
  return 0;
}

static int
p_on_error (struct backup_spec *s, const char *key, const char *value,
            struct control_error *err)
{
  if (parse_on_error (value, &s->on_error) == -1)
    return FAIL ("%s: unknown policy '%s' "
                 "(expecting break-snapshot or fail-write)", key, value);
  return 0;
}

static int
p_copy_timeout (struct backup_spec *s, const char *key, const char *value,
                struct control_error *err)
{
  char *end;
  double r;

  errno = 0;
  r = strtod (value, &end);
  if (errno != 0 || end == value || *end != '\0' || !(r >= 0) ||
      r > 86400)
    return FAIL ("%s: '%s' must be a number of seconds "
                 "from 0 (no limit) to 86400", key, value);
  s->copy_timeout = r;
  return 0;
}

static int
p_speed (struct backup_spec *s, const char *key, const char *value,
         struct control_error *err)
{
  int64_t r = nbdkit_parse_size (value);

  if (r == -1)
    return FAIL ("%s: '%s' must be bytes per second, with an optional "
                 "K, M or G suffix, or 0 (no limit)", key, value);
  s->speed = r;
  return 0;
}

static int
p_buffer_size (struct backup_spec *s, const char *key, const char *value,
               struct control_error *err)
{
  int64_t r = nbdkit_parse_size (value);

  if (r == -1 || r > INT64_C (1) << 40)
    return FAIL ("%s: '%s' must be a size in bytes, with an optional "
                 "K, M or G suffix, up to 1T, or 0 (no buffer)", key, value);
  s->buffer_size = r;
  return 0;
}

static int
p_job_id (struct backup_spec *s, const char *key, const char *value,
          struct control_error *err)
{
  if (control_check_name (key, value, 128, err) == -1)
    return -1;
  return set_string (&s->job_id, key, value, false, err);
}

static const struct setting {
  const char *parameter;        /* On the command line. */
  const char *argument;         /* In backup-start; NULL: not there. */
  setting_parser *parse;
} settings[] = {
  { "cbw-target",                "target",         p_target },
  { "cbw-target-format",         "format",         p_format },
  { "cbw-target-backing",        "backing",        p_backing },
  { "cbw-target-backing-format", "backing-format", p_backing_format },
  { "cbw-sync",                  "sync",           p_sync },
  { "cbw-bitmap",                "bitmap",         p_bitmap },
  { "cbw-bitmap-mode",           "bitmap-mode",    p_bitmap_mode },
  { "cbw-cluster-size",          "cluster-size",   p_cluster_size },
  { "cbw-status",                NULL,             p_status },
  { "cbw-workers",               "workers",        p_workers },
  { "cbw-on-error",              "on-error",       p_on_error },
  { "cbw-copy-timeout",          "copy-timeout",   p_copy_timeout },
  { "cbw-speed",                 "speed",          p_speed },
  { "cbw-job-id",                "job-id",         p_job_id },
  { "cbw-buffer-size",           "buffer-size",    p_buffer_size },
};

int
cbw_parse_setting (struct backup_spec *spec, enum cbw_from from,
                   const char *key, const char *value,
                   struct control_error *err)
{
  size_t i;

  for (i = 0; i < sizeof settings / sizeof settings[0]; ++i) {
    const char *name = from == CBW_FROM_PARAMETER
      ? settings[i].parameter : settings[i].argument;

    if (name && strcmp (key, name) == 0)
      return settings[i].parse (spec, key, value, err) == -1 ? -1 : 1;
  }
  return 0;
}
