/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The coordinator of a group transaction: one transaction applied on
 * several nbdkit servers at one instant (nbdkit-backup-control(7),
 * "Group transactions").  For `snapshot start --group` and the
 * repository commands' group backups.
 */

#ifndef NBDBACKUP_GROUP_H
#define NBDBACKUP_GROUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <json.h>

/* One server of the group. */
struct group_member {
  /* Set by the caller. */
  const char *socket;           /* Its control socket. */
  json_object *actions;         /* Its "actions" array (borrowed). */

  /* Set by group_transaction. */
  bool prepared;                /* group-prepare succeeded. */
  bool committed;               /* group-commit succeeded. */
  int64_t prepare_us;           /* Closing its gate took this long. */
  int64_t gate_closed_us;       /* Its gate was closed this long (-1:
                                 * unknown). */
};

struct group_options {
  const char *id;               /* The group's id (NULL: made up). */
  unsigned deadline_ms;         /* Each server aborts by itself then. */
  /* Called once every server is prepared (every gate closed), before
   * the first commit.  Returning -1 aborts the group.  May be NULL.
   */
  int (*before_commit) (void *opaque);
  void *opaque;
};

/* What happened to the group as a whole. */
struct group_result {
  char id[160];                 /* The id used. */
  struct timespec instant;      /* CLOCK_REALTIME when all were closed. */
  int64_t closed_p50_us;        /* Gate-closed times over the members. */
  int64_t closed_max_us;
};

/* Apply each member's actions on every member at one instant:
 * connect to every socket, group-prepare on all of them at once, and
 * once all have answered, group-commit on all.  If any connection,
 * prepare or before_commit fails, or a server goes away before the
 * commit, group-abort goes to every server that prepared, and nothing
 * is applied anywhere.  Errors are reported naming the socket.
 *
 * Returns NBDBACKUP_EXIT_OK (applied everywhere), _REFUSED (a server
 * refused to prepare: applied nowhere) or _FAILED (a connection
 * failed: applied nowhere, unless the message says a commit failed
 * after others succeeded, in which case members[].committed says
 * where it was applied).
 */
extern int group_transaction (struct group_member *members, size_t n,
                              const struct group_options *opts,
                              struct group_result *result);

#endif /* NBDBACKUP_GROUP_H */
