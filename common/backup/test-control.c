/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit tests for the control protocol's request handling: parse
 * errors, unknown commands, bad arguments, ids, and transactions that
 * commit all or nothing; and over a real socket, that the greeting is
 * always the first line a client reads, even while events are sent.
 */

#include <config.h>

#undef NDEBUG
#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "control.h"
#include "gate.h"

static char *
call (const char *line)
{
  char *r = control_handle_line (line, strlen (line));
  assert (r != NULL);
  printf ("%s\n  -> %s\n", line, r);
  return r;
}

static void
expect (const char *line, const char *want)
{
  char *r = call (line);
  if (strcmp (r, want) != 0) {
    fprintf (stderr, "expected: %s\n", want);
    abort ();
  }
  free (r);
}

static int
echo_cmd (json_object *args, json_object **ret, struct control_error *err,
          void *opaque)
{
  json_object *x;

  if (!json_object_object_get_ex (args, "x", &x))
    return control_fail (err, CONTROL_GENERIC_ERROR,
                         "echo: missing argument 'x'");
  *ret = json_object_get (x);
  return 0;
}

/* A counter action: prepare fails for {"fail": true}. */
static int counter, aborted;

static int
count_prepare (json_object *args, void **state, struct control_error *err,
               void *opaque)
{
  json_object *f;

  assert (gate_writes_in_flight () == 0);
  if (json_object_object_get_ex (args, "fail", &f) &&
      json_object_get_boolean (f))
    return control_fail (err, CONTROL_NOT_FOUND, "count: told to fail");
  *state = opaque;
  return 0;
}

static void
count_commit (void *state, void *opaque)
{
  counter++;
}

static void
count_abort (void *state, void *opaque)
{
  aborted++;
}

static const struct control_action count_action = {
  .type = "count",
  .prepare = count_prepare,
  .commit = count_commit,
  .abort = count_abort,
};

/* Events sent as fast as they can be, until told to stop. */
static volatile bool emitting = true;

static void *
emit_loop (void *vp)
{
  while (emitting)
    control_emit_event ("TEST_EVENT", NULL);
  return NULL;
}

/* Connect to the socket at path and return its first line. */
static char *
first_line (const char *path)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  char *line = malloc (4096);
  size_t n = 0;
  int fd;

  assert (line != NULL);
  strcpy (addr.sun_path, path);
  fd = socket (AF_UNIX, SOCK_STREAM, 0);
  assert (fd >= 0);
  assert (connect (fd, (struct sockaddr *) &addr, sizeof addr) == 0);
  while (n < 4095) {
    ssize_t r = read (fd, line + n, 1);
    assert (r == 1);
    if (line[n] == '\n')
      break;
    n++;
  }
  line[n] = '\0';
  close (fd);
  return line;
}

/* A client that connects while events are being sent reads the
 * greeting first, never an event.
 */
static void
test_greeting_first (void)
{
  char dir[] = "/tmp/test-control.XXXXXX";
  char path[64];
  pthread_t emitter;
  int i;

  assert (mkdtemp (dir) != NULL);
  snprintf (path, sizeof path, "%s/ctl", dir);
  assert (control_configure ("test-control", path) == 0);
  assert (control_bind () == 0);
  assert (control_start () == 0);
  assert (pthread_create (&emitter, NULL, emit_loop, NULL) == 0);
  for (i = 0; i < 200; ++i) {
    char *line = first_line (path);
    if (strncmp (line, "{\"nbdkit-backup\":", 17) != 0) {
      fprintf (stderr, "client %d read first: %s\n", i, line);
      abort ();
    }
    free (line);
  }
  emitting = false;
  pthread_join (emitter, NULL);
  control_stop ();
  assert (access (path, F_OK) == -1);
  assert (rmdir (dir) == 0);
  printf ("greeting first: 200 clients ok\n");
}

int
main (void)
{
  char *r;

  setvbuf (stdout, NULL, _IONBF, 0);

  assert (control_register ("echo", echo_cmd, NULL) == 0);
  assert (control_register ("echo", echo_cmd, NULL) == -1);
  assert (control_register_action (&count_action) == 0);

  expect ("{\"execute\":\"echo\",\"arguments\":{\"x\":[1,\"a\"]}}",
          "{\"return\":[1,\"a\"]}");
  expect ("{\"execute\":\"echo\",\"arguments\":{\"x\":1},\"id\":\"abc\"}",
          "{\"return\":1,\"id\":\"abc\"}");
  expect ("{\"execute\":\"echo\"}",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"echo: missing argument 'x'\"}}");
  expect ("{\"execute\":\"nope\",\"id\":7}",
          "{\"error\":{\"class\":\"CommandNotFound\","
          "\"desc\":\"the command nope has not been found\"},\"id\":7}");
  expect ("{\"execute\":",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"JSON parse error: incomplete JSON object\"}}");
  expect ("{\"execute\" \"echo\"}",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"JSON parse error: object property name separator "
          "':' expected\"}}");
  expect ("{\"execute\":\"echo\"} {}",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"JSON parse error: unexpected data after the object\"}}");
  expect ("{\"execute\":\"echo\",\"arguments\":{\"x\":2}}  \r",
          "{\"return\":2}");
  expect ("[1,2]",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"the request must be a JSON object\"}}");
  expect ("{\"arguments\":{}}",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"the request has no 'execute' string\"}}");
  expect ("{\"execute\":\"echo\",\"arguments\":[]}",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"'arguments' must be a JSON object\"}}");
  expect ("{\"execute\":\"echo\",\"argument\":{}}",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"unknown member 'argument' in the request\"}}");
  expect ("{\"execute\":\"qmp_capabilities\"}", "{\"return\":{}}");

  /* An action alone, and in transactions: all or nothing. */
  expect ("{\"execute\":\"count\"}", "{\"return\":{}}");
  assert (counter == 1);
  expect ("{\"execute\":\"transaction\",\"arguments\":{\"actions\":["
          "{\"type\":\"count\"},{\"type\":\"count\",\"data\":{}}]}}",
          "{\"return\":{}}");
  assert (counter == 3 && aborted == 0);
  expect ("{\"execute\":\"transaction\",\"arguments\":{\"actions\":["
          "{\"type\":\"count\"},{\"type\":\"count\"},"
          "{\"type\":\"count\",\"data\":{\"fail\":true}}]}}",
          "{\"error\":{\"class\":\"DeviceNotFound\","
          "\"desc\":\"count: told to fail\"}}");
  assert (counter == 3 && aborted == 2);
  expect ("{\"execute\":\"transaction\",\"arguments\":{\"actions\":["
          "{\"type\":\"echo\"}]}}",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"transaction: 'echo' is not a transaction action\"}}");
  expect ("{\"execute\":\"transaction\",\"arguments\":{}}",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"transaction: 'actions' must be an array\"}}");
  expect ("{\"execute\":\"transaction\",\"arguments\":{\"actions\":[{}]}}",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"transaction: action 0 has no 'type'\"}}");

  r = call ("{\"execute\":\"query-commands\"}");
  assert (strstr (r, "{\"name\":\"count\",\"transaction-action\":true}"));
  assert (strstr (r, "{\"name\":\"query-status\",\"transaction-action\":false}"));
  free (r);
  r = call ("{\"execute\":\"query-status\"}");
  assert (strstr (r, "\"version\":\"" PACKAGE_VERSION "\""));
  free (r);

  test_greeting_first ();

  printf ("test-control: ok\n");
  return 0;
}
