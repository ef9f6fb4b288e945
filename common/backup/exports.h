/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The export names the suite's filters serve, and who refuses the
 * rest.
 *
 * Most plugins (file among them) ignore the export name: a name that
 * no filter serves reaches the plugin and is served as the live disk.
 * A mistyped snapshot export ("snap" for "snapshot") would then back
 * up the live disk and exit 0.  So every filter of the suite that owns
 * export names (fleece's snapshot export, dirtybitmap's dirty:NAME)
 * claims them here, and by default (strict) passes down only "" (the
 * plugin's default export) and names that a filter of the suite
 * below it claims; any other name is refused with a message that says
 * which exports exist.  <filter>-exports=passthrough restores passing
 * every other name to the plugin, for plugins that serve names.
 *
 * All calls are thread-safe.
 */

#ifndef NBDKIT_BACKUP_EXPORTS_H
#define NBDKIT_BACKUP_EXPORTS_H

#include <stdbool.h>
#include <stddef.h>

#include "control.h"

/* Can export name be opened now?  0, or -1 with err filled with the
 * reason (for example "no snapshot is active").
 */
typedef int exports_check_fn (const char *name, struct control_error *err);

/* filter serves export name (or, if prefix, every name that starts
 * with it; shown in messages as NAME<what>, e.g. "dirty:BITMAP").
 * check may be NULL (always available).  0 or -1 (reported).
 */
extern int exports_claim (const char *filter, const char *name, bool prefix,
                          const char *what, exports_check_fn *check);

/* Forget filter's claims (call from .unload). */
extern void exports_unclaim (const char *filter);

/* True if a filter of the suite loaded below filter (nearer the
 * plugin) claims name: filter may pass it down.
 */
extern bool exports_served_below (const char *filter, const char *name);

/* Why can name not be opened?  1: it is "" (the plugin's default
 * export), or a filter claims it and it is available; 0: a filter claims it but it is not available now, err
 * says why; -1: no filter claims it (err says which exports exist).
 */
extern int exports_check (const char *name, struct control_error *err);

/* The exports the suite serves, for messages: "'' (the live disk),
 * 'snapshot', 'dirty:BITMAP'".  Writes at most len
 * bytes to buf.
 */
extern void exports_describe (char *buf, size_t len);

/* Parse <filter>-exports=strict|passthrough.  0 or -1 (reported). */
extern int exports_parse_policy (const char *param, const char *value,
                                 bool *passthrough);

/* One server, several disks.  Some plugins serve one disk per export
 * name (the file plugin's dir= and dirfd=, ondemand's dir=).  The
 * suite's filters keep one snapshot, one job and one set of bitmaps
 * per server, which would mix those disks; and such a plugin cannot
 * even be opened outside a client connection (file's dir= mode reads
 * nbdkit_export_name, which is NULL in .after_fork, and crashes), so
 * the filters refuse it at start.
 *
 * exports_note_plugin_key: from .config, with each key passed down to
 * the plugin (dir= and dirfd= are noted; dir= counts only for the
 * file and ondemand plugins, found on nbdkit's command line).
 * exports_refuse_multi_export: from .get_ready: 0, or -1 with a
 * message (filter is the filter's name, keeps what it keeps per
 * server, e.g. "one snapshot").
 */
extern void exports_note_plugin_key (const char *key);
extern int exports_refuse_multi_export (const char *filter,
                                        const char *keeps);

/* Register the control command query-export {"name": NAME} (once per
 * process, whichever filter calls first; from .get_ready): {"name",
 * "served-by", "available", "reason"}.  0 or -1.
 */
extern int exports_register_command (void);

#endif /* NBDKIT_BACKUP_EXPORTS_H */
