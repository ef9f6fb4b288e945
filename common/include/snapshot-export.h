/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* How nbdkit-fleece-filter describes its snapshot export (in export
 * listings and in NBD_INFO_DESCRIPTION), and so how nbdbackup pull
 * --discard-source tells a snapshot that readers may trim from a live
 * disk, which trim would destroy: NBD has no flag for "trim only".
 */

#ifndef NBDKIT_BACKUP_SNAPSHOT_EXPORT_H
#define NBDKIT_BACKUP_SNAPSHOT_EXPORT_H

#define SNAPSHOT_EXPORT_DESCRIPTION "point-in-time snapshot (read-only)"
#define SNAPSHOT_EXPORT_DESCRIPTION_DISCARD \
  "point-in-time snapshot (read-only, readers may discard)"

#endif /* NBDKIT_BACKUP_SNAPSHOT_EXPORT_H */
