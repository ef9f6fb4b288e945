/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* nbdbackup control SOCKET [JSON-REQUEST...]
 *
 * The raw face of the control socket, for scripts (as qmp-shell is
 * for QEMU): send each request, print each reply line exactly as the
 * server sent it, one per line, in order.  Without requests on the
 * command line, requests are read from standard input, one per line
 * (empty lines are skipped).
 *
 * A request is checked to be a JSON object and sent re-serialized on
 * one line, so that a pretty-printed request cannot break the
 * protocol's line framing.  Arguments are all checked before
 * connecting: a bad one sends nothing.  Events are not printed.
 * Every request is sent even after an error reply; the exit status is
 * then 3.
 */

#include <config.h>

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <json.h>

#include "nbdkit-stubs.h"
#include "nbdbackup.h"
#include "control.h"

static void
control_usage (const char *cmd)
{
  printf ("Usage: %s [OPTIONS] SOCKET [JSON-REQUEST...]\n"
          "\n"
          "Send each JSON-REQUEST (or, if none are given, each line of "
          "standard\n"
          "input) to the control socket SOCKET and print each reply line "
          "as it is.\n"
          "For example:\n"
          "\n"
          "  %s /run/disk.ctl '{\"execute\":\"query-jobs\"}'\n"
          "\n"
          "  -v, --verbose             print debug messages (and the "
          "greeting)\n"
          "  -h, --help                print this help\n"
          "\n"
          "Exit status: 0 success, 1 cannot talk to the server, 2 usage "
          "error (a\n"
          "request that is not a JSON object), 3 a reply was an error.  "
          "See\n"
          "nbdbackup(1).\n",
          cmd, cmd);
}

/* Parse str as exactly one JSON object.  NULL if it is not. */
static json_object *
parse_request (const char *str)
{
  json_tokener *tok = json_tokener_new ();
  json_object *o;
  size_t len = strlen (str);

  if (tok == NULL)
    return NULL;
  o = json_tokener_parse_ex (tok, str, len);
  if (o && (json_tokener_get_error (tok) != json_tokener_success ||
            strspn (str + tok->char_offset, " \t\r\n") !=
            len - tok->char_offset ||
            !json_object_is_type (o, json_type_object))) {
    json_object_put (o);
    o = NULL;
  }
  json_tokener_free (tok);
  return o;
}

/* Send one request, print its reply.  Returns an exit status. */
static int
send_request (struct control *ctl, json_object *req)
{
  char *reply;
  bool is_error;

  if (control_send_line (ctl, json_object_to_json_string_ext
                         (req, JSON_C_TO_STRING_PLAIN |
                          JSON_C_TO_STRING_NOSLASHESCAPE)) == -1)
    return NBDBACKUP_EXIT_FAILED;
  reply = control_read_reply_line (ctl, &is_error);
  if (reply == NULL)
    return NBDBACKUP_EXIT_FAILED;
  printf ("%s\n", reply);
  fflush (stdout);
  free (reply);
  return is_error ? NBDBACKUP_EXIT_REFUSED : NBDBACKUP_EXIT_OK;
}

int
control_main (int argc, char *argv[])
{
  const char *cmd = argv[0];
  struct control *ctl;
  json_object **reqs = NULL;
  size_t i, n;
  int r, status = NBDBACKUP_EXIT_OK;

  r = parse_simple_options (argc, argv, control_usage);
  if (r != -1)
    return r;
  if (argc - optind < 1)
    return usage_error (cmd, "missing SOCKET");

  n = argc - optind - 1;
  if (n > 0) {
    reqs = calloc (n, sizeof *reqs);
    if (reqs == NULL) {
      perror ("calloc");
      return NBDBACKUP_EXIT_FAILED;
    }
  }
  for (i = 0; i < n; ++i) {
    reqs[i] = parse_request (argv[optind + 1 + i]);
    if (reqs[i] == NULL) {
      status = usage_error (cmd, "not a JSON object: %s",
                            argv[optind + 1 + i]);
      goto out;
    }
  }

  catch_signals ();
  ctl = control_connect (argv[optind]);
  if (ctl == NULL) {
    status = NBDBACKUP_EXIT_FAILED;
    goto out;
  }
  nbdkit_debug ("greeting: %s", json_object_to_json_string_ext
                (control_greeting (ctl), JSON_C_TO_STRING_PLAIN));

  if (n > 0) {
    for (i = 0; i < n; ++i) {
      r = send_request (ctl, reqs[i]);
      if (r == NBDBACKUP_EXIT_FAILED) {
        status = r;
        break;
      }
      if (r != NBDBACKUP_EXIT_OK)
        status = r;
    }
  }
  else {
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;

    while ((len = getline (&line, &cap, stdin)) != -1) {
      json_object *req;

      if (strspn (line, " \t\r\n") == (size_t) len)
        continue;
      req = parse_request (line);
      if (req == NULL) {
        if (len > 0 && line[len - 1] == '\n')
          line[len - 1] = '\0';
        status = usage_error (cmd, "not a JSON object: %s", line);
        break;
      }
      r = send_request (ctl, req);
      json_object_put (req);
      if (r == NBDBACKUP_EXIT_FAILED) {
        status = r;
        break;
      }
      if (r != NBDBACKUP_EXIT_OK)
        status = r;
    }
    free (line);
  }
  control_close (ctl);

 out:
  for (i = 0; i < n; ++i)
    json_object_put (reqs[i]);
  free (reqs);
  return status;
}
