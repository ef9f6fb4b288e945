/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Connecting to the source export.
 *
 * Every connection asks for base:allocation; only the first is used
 * for block status, the others only read.  The copy reads from a
 * point-in-time snapshot export, which nobody writes, so several
 * connections see the same data whether or not the server advertises
 * multi-conn.  (Pulling from a live export is not point-in-time
 * anyway.)
 */

#include <config.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json.h>
#include <libnbd.h>

#include "control.h"
#include "nbdkit-stubs.h"
#include "source.h"

/* The largest read we send when the server names no maximum: the NBD
 * protocol's conventional limit, which nbdkit and qemu-nbd accept.
 */
#define DEFAULT_MAX_REQUEST (32 * 1024 * 1024)

static struct nbd_handle *
connect_one (const char *uri)
{
  struct nbd_handle *nbd;

  nbd = nbd_create ();
  if (nbd == NULL) {
    nbdkit_error ("%s", nbd_get_error ());
    return NULL;
  }
  /* Buffers are only used after a successful read: don't pay for
   * zeroing them first.
   */
  nbd_set_pread_initialize (nbd, false);
  /* The export's description too (pull --discard-source checks it). */
  nbd_set_full_info (nbd, true);
  if (nbd_add_meta_context (nbd, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
      nbd_connect_uri (nbd, uri) == -1) {
    nbdkit_error ("source %s: %s", uri, nbd_get_error ());
    nbd_close (nbd);
    return NULL;
  }
  return nbd;
}

int
source_open (struct source *src, const char *uri, unsigned nr)
{
  int64_t size, max;
  unsigned i;

  src->uri = uri;
  src->nr_nbd = 0;
  src->nbd = calloc (nr, sizeof *src->nbd);
  if (src->nbd == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }

  for (i = 0; i < nr; ++i) {
    src->nbd[i] = connect_one (uri);
    if (src->nbd[i] == NULL)
      goto err;
    src->nr_nbd++;
  }

  size = nbd_get_size (src->nbd[0]);
  if (size == -1) {
    nbdkit_error ("source %s: %s", uri, nbd_get_error ());
    goto err;
  }
  src->size = size;
  src->have_extents =
    nbd_can_meta_context (src->nbd[0], LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  if (!src->have_extents)
    nbdkit_debug ("source %s: no base:allocation, copying every byte", uri);

  max = nbd_get_block_size (src->nbd[0], LIBNBD_SIZE_MAXIMUM);
  src->max_request = max > 0 ? (uint64_t) max : DEFAULT_MAX_REQUEST;
  nbdkit_debug ("source %s: %" PRIu64 " bytes, %u connection(s), "
                "max request %" PRIu64, uri, src->size, nr, src->max_request);
  return 0;

 err:
  source_close (src);
  return -1;
}

/* The exports NBD_OPT_LIST returns, as "'NAME' (DESCRIPTION), ...". */
struct export_list {
  FILE *fp;
  const char *wanted;
  bool found;
  unsigned n;
};

static int
list_one (void *opaque, const char *name, const char *description)
{
  struct export_list *l = opaque;

  if (strcmp (name, l->wanted) == 0)
    l->found = true;
  fprintf (l->fp, "%s'%s'", l->n++ ? ", " : "", name);
  if (description && *description)
    fprintf (l->fp, " (%s)", description);
  else if (*name == '\0')
    fprintf (l->fp, " (the default export)");
  return 0;
}

/* Ask the control socket why name is refused.  The reason, malloc'd,
 * or NULL (reported).
 */
static char *
ask_control (const char *control, const char *name)
{
  struct control *c;
  struct control_error err = { 0 };
  json_object *args = json_object_new_object (), *ret = NULL, *v;
  char *reason = NULL;

  c = control_connect (control);
  if (c == NULL) {
    json_object_put (args);
    return NULL;
  }
  json_object_object_add (args, "name", json_object_new_string (name));
  if (control_execute (c, "query-export", args, &ret, &err) == 0) {
    if (json_object_object_get_ex (ret, "reason", &v) &&
        json_object_is_type (v, json_type_string))
      reason = strdup (json_object_get_string (v));
    else
      reason = strdup ("the server says it is available now");
  }
  else if (err.desc)
    nbdkit_error ("control socket %s: query-export: %s", control, err.desc);
  json_object_put (ret);
  control_error_free (&err);
  control_close (c);
  return reason;
}

void
source_explain_refusal (const char *uri, const char *control)
{
  struct nbd_handle *nbd;
  struct export_list l = { 0 };
  char *list = NULL, *reason = NULL, *wanted = NULL;
  size_t len = 0;
  bool listed = false;

  nbd = nbd_create ();
  if (nbd == NULL)
    return;
  /* Stop before NBD_OPT_GO: the server is up if this connects. */
  if (nbd_set_opt_mode (nbd, true) == -1 ||
      nbd_connect_uri (nbd, uri) == -1 ||
      (wanted = nbd_get_export_name (nbd)) == NULL) {
    nbd_close (nbd);
    return;
  }
  l.wanted = wanted;
  l.fp = open_memstream (&list, &len);
  if (l.fp) {
    listed = nbd_opt_list (nbd, (nbd_list_callback) {
        .callback = list_one, .user_data = &l }) != -1;
    if (!listed)
      nbdkit_debug ("listing the exports: %s", nbd_get_error ());
    if (fclose (l.fp) == EOF)
      listed = false;
  }
  nbd_opt_abort (nbd);
  nbd_close (nbd);

  if (listed && !l.found)
    nbdkit_error ("the server does not serve an export named '%s'; "
                  "it serves: %s", wanted, l.n ? list : "none");
  if (control)
    reason = ask_control (control, wanted);
  if (reason)
    nbdkit_error ("why the server refuses export '%s' (its control "
                  "socket says): %s", wanted, reason);
  else if (!control)
    nbdkit_error ("nbdkit does not tell a client why it refuses an "
                  "export: the server's log says, or give "
                  "--control=SOCKET to ask its control socket");
  free (reason);
  free (list);
  free (wanted);
}

void
source_close (struct source *src)
{
  unsigned i;

  for (i = 0; i < src->nr_nbd; ++i) {
    /* The source is only read: a plain close is enough, but say
     * goodbye politely so the server doesn't log a dropped client.
     * Not with requests in flight (an abandoned copy): nbd_shutdown
     * would wait for them, and the server may be what hangs.
     */
    if (nbd_aio_is_ready (src->nbd[i]) == 1 &&
        nbd_aio_in_flight (src->nbd[i]) == 0)
      nbd_shutdown (src->nbd[i], 0);
    nbd_close (src->nbd[i]);
  }
  free (src->nbd);
  src->nbd = NULL;
  src->nr_nbd = 0;
}
