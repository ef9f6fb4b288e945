/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The one parser of a cbw backup's settings.  The command line
 * (cbw-sync=top) and the control socket's backup-start ("sync":
 * "top") both come here, so a bad value gets the same message either
 * way; only the name differs, as the user gave it.
 */

#ifndef CBW_PARAMS_H
#define CBW_PARAMS_H

#include "backup.h"
#include "control.h"

/* Where a setting comes from, which decides its name. */
enum cbw_from {
  CBW_FROM_PARAMETER,           /* "cbw-target-format" */
  CBW_FROM_COMMAND,             /* backup-start's "format" */
};

/* Parse setting key=value into spec (key as given: "cbw-sync" for a
 * parameter, "sync" for a command argument).  Returns 1 if key is a
 * setting and was stored, 0 if key is not a backup setting from this
 * source (the caller decides), or -1 with err filled with a message
 * that names key.  Errors are never reported here: the caller sends
 * err->desc to nbdkit_error or to the control client.
 */
extern int cbw_parse_setting (struct backup_spec *spec, enum cbw_from from,
                              const char *key, const char *value,
                              struct control_error *err);

#endif /* CBW_PARAMS_H */
