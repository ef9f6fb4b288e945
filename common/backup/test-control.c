/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit tests for the control protocol's request handling: parse
 * errors, unknown commands, bad arguments, ids, and transactions that
 * commit all or nothing; input that is not valid UTF-8 or holds NUL;
 * the name check.  Over a real socket: the greeting is always the
 * first line a client reads, even while events are sent; a client
 * that never reads holds up nobody and loses nothing until its queue
 * overflows; the client past CONTROL_MAX_CLIENTS is refused.
 */

#include <config.h>

#undef NDEBUG
#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "control.h"
#include "control-commands.h"
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

static int
connect_to (const char *path)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  int fd;

  strcpy (addr.sun_path, path);
  fd = socket (AF_UNIX, SOCK_STREAM, 0);
  assert (fd >= 0);
  assert (connect (fd, (struct sockaddr *) &addr, sizeof addr) == 0);
  return fd;
}

/* Buffered lines from a socket. */
struct reader {
  int fd;
  size_t start, end;
  char buf[65536];
};

static struct reader *
reader_new (int fd)
{
  struct reader *r = calloc (1, sizeof *r);
  assert (r != NULL);
  r->fd = fd;
  return r;
}

/* The next line (without its newline; the caller frees it), or NULL
 * at the end of the stream.
 */
static char *
read_line (struct reader *r)
{
  char *line = NULL;
  size_t len = 0;

  for (;;) {
    char *nl = memchr (r->buf + r->start, '\n', r->end - r->start);
    size_t n = nl ? (size_t) (nl - (r->buf + r->start)) : r->end - r->start;
    ssize_t got;

    line = realloc (line, len + n + 1);
    assert (line != NULL);
    memcpy (line + len, r->buf + r->start, n);
    len += n;
    line[len] = '\0';
    r->start += n;
    if (nl) {
      r->start++;
      return line;
    }
    r->start = r->end = 0;
    got = read (r->fd, r->buf, sizeof r->buf);
    assert (got >= 0);
    if (got == 0) {
      free (line);
      return NULL;
    }
    r->end = got;
  }
}

static void
reader_close (struct reader *r)
{
  close (r->fd);
  free (r);
}

static const char too_many[] =
  "{\"error\":{\"class\":\"GenericError\",\"desc\":\"too many clients: "
  "this server serves at most 16 at a time\"}}";

/* Connect to the socket at path and return its first line.  A client
 * that has just closed is counted until its thread sees it, so a
 * refusal for too many clients is tried again (for at most 60 s).
 */
static char *
first_line (const char *path)
{
  time_t give_up = time (NULL) + 60;

  for (;;) {
    struct reader *r = reader_new (connect_to (path));
    char *line = read_line (r);

    assert (line != NULL);
    reader_close (r);
    if (strcmp (line, too_many) != 0 || time (NULL) > give_up)
      return line;
    free (line);
  }
}

static char sock_dir[] = "/tmp/test-control.XXXXXX";
static char sock_path[64];

static void
server_up (void)
{
  assert (control_bind () == 0);
  assert (control_start () == 0);
}

static void
server_down (void)
{
  control_stop ();
  assert (access (sock_path, F_OK) == -1);
}

/* A client that connects while events are being sent reads the
 * greeting first, never an event.
 */
static void
test_greeting_first (void)
{
  pthread_t emitter;
  int i;

  server_up ();
  assert (pthread_create (&emitter, NULL, emit_loop, NULL) == 0);
  for (i = 0; i < 200; ++i) {
    char *line = first_line (sock_path);
    if (strncmp (line, "{\"nbdkit-backup\":", 17) != 0) {
      fprintf (stderr, "client %d read first: %s\n", i, line);
      abort ();
    }
    free (line);
  }
  emitting = false;
  pthread_join (emitter, NULL);
  server_down ();
  printf ("greeting first: 200 clients ok\n");
}

/* Send n events named name, each with {"n": i, "pad": "xx..."}. */
static void
emit_padded_from (const char *name, int first, int n, size_t pad)
{
  char *x = malloc (pad + 1);
  int i;

  assert (x != NULL);
  memset (x, 'x', pad);
  x[pad] = '\0';
  for (i = first; i < first + n; ++i) {
    json_object *d = json_object_new_object ();
    json_object_object_add (d, "n", json_object_new_int (i));
    json_object_object_add (d, "pad", json_object_new_string (x));
    control_emit_event (name, d);
  }
  free (x);
}

static void
emit_padded (const char *name, int n, size_t pad)
{
  emit_padded_from (name, 0, n, pad);
}

/* The n of an event line of that name, or -1 for another line. */
static int
event_n (const char *line, const char *name)
{
  char prefix[64];
  const char *p;

  snprintf (prefix, sizeof prefix, "{\"event\":\"%s\",", name);
  if (strncmp (line, prefix, strlen (prefix)) != 0 ||
      (p = strstr (line, "\"n\":")) == NULL)
    return -1;
  return atoi (p + 4);
}

/* Read n events of that name in order, then the echo reply. */
static void
expect_events_then (struct reader *r, const char *name, int n,
                    const char *last)
{
  char *line;
  int i;

  for (i = 0; i < n; ++i) {
    line = read_line (r);
    assert (line != NULL);
    if (event_n (line, name) != i) {
      fprintf (stderr, "expected event %s %d, read: %.200s\n", name, i, line);
      abort ();
    }
    free (line);
  }
  if (last) {
    line = read_line (r);
    assert (line != NULL);
    if (strcmp (line, last) != 0) {
      fprintf (stderr, "expected %s, read: %.200s\n", last, line);
      abort ();
    }
    free (line);
  }
}

static void
send_line (int fd, const char *s)
{
  size_t len = strlen (s);
  assert (write (fd, s, len) == (ssize_t) len);
  assert (write (fd, "\n", 1) == 1);
}

/* Read the greeting. */
static void
expect_greeting (struct reader *r)
{
  char *line = read_line (r);

  assert (line && strncmp (line, "{\"nbdkit-backup\":", 17) == 0);
  free (line);
}

/* Client a reads its greeting (so events are due to it), then nothing
 * while 1 MB of events go out (more than its socket holds) and client
 * b runs a command: b gets every event and its reply, and a, when it
 * reads at last, every event too.  Nothing waits on a's socket.
 */
static void
test_stuck_client (void)
{
  struct reader *a, *b;
  char *line;

  server_up ();
  a = reader_new (connect_to (sock_path));
  expect_greeting (a);
  b = reader_new (connect_to (sock_path));
  line = read_line (b);
  assert (line && strncmp (line, "{\"nbdkit-backup\":", 17) == 0);
  free (line);
  emit_padded ("TEST_BIG", 1000, 1000);
  send_line (b->fd, "{\"execute\":\"echo\",\"arguments\":{\"x\":\"done\"}}");
  expect_events_then (b, "TEST_BIG", 1000, "{\"return\":\"done\"}");
  reader_close (b);

  expect_events_then (a, "TEST_BIG", 1000, NULL);
  reader_close (a);
  server_down ();
  printf ("stuck client: it and the other got all 1000 events\n");
}

/* test_overflow: how many TEST_HUGE events the reading client has
 * read so far.  The events are emitted in batches, each only once the
 * reader has read everything before it, so that the reader's queue
 * never holds more than a batch however slowly its thread runs (under
 * a sanitizer, beside CPU hogs): only the idle client overflows.
 */
#define HUGE_EVENTS 400
#define HUGE_BATCH 40           /* 40 * 16000 bytes: far below the cap */
static pthread_mutex_t huge_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t huge_cond = PTHREAD_COND_INITIALIZER;
static int huge_read;

static void *
read_huge (void *vp)
{
  struct reader *r = vp;
  char *line;
  int i;

  for (i = 0; i < HUGE_EVENTS; ++i) {
    line = read_line (r);
    assert (line != NULL);
    assert (event_n (line, "TEST_HUGE") == i);
    free (line);
    pthread_mutex_lock (&huge_lock);
    huge_read = i + 1;
    pthread_cond_signal (&huge_cond);
    pthread_mutex_unlock (&huge_lock);
  }
  return NULL;
}

/* Past CONTROL_MAX_QUEUE bytes unread, a client is disconnected; one
 * that reads gets everything.
 */
static void
test_overflow (void)
{
  struct reader *a, *b;
  pthread_t t;
  char *line;
  int i, n = 0;

  huge_read = 0;
  server_up ();
  a = reader_new (connect_to (sock_path));
  expect_greeting (a);
  b = reader_new (connect_to (sock_path));
  line = read_line (b);
  assert (line && strncmp (line, "{\"nbdkit-backup\":", 17) == 0);
  free (line);
  assert (pthread_create (&t, NULL, read_huge, b) == 0);
  for (i = 0; i < HUGE_EVENTS; i += HUGE_BATCH) {   /* 6.4 MB in all */
    pthread_mutex_lock (&huge_lock);
    while (huge_read < i)
      pthread_cond_wait (&huge_cond, &huge_lock);
    pthread_mutex_unlock (&huge_lock);
    emit_padded_from ("TEST_HUGE", i, HUGE_BATCH, 16000);
  }
  pthread_join (t, NULL);
  send_line (b->fd, "{\"execute\":\"echo\",\"arguments\":{\"x\":1}}");
  expect_events_then (b, "TEST_HUGE", 0, "{\"return\":1}");

  /* a: some events in order, then the end. */
  while ((line = read_line (a)) != NULL) {
    assert (event_n (line, "TEST_HUGE") == n);
    n++;
    free (line);
  }
  assert (n < HUGE_EVENTS);
  reader_close (a);
  reader_close (b);
  server_down ();
  printf ("overflow: the reader got 400 events, the idle client %d, "
          "then was disconnected\n", n);
}

/* The client past CONTROL_MAX_CLIENTS is told so and closed. */
static void
test_too_many (void)
{
  struct reader *r[CONTROL_MAX_CLIENTS + 1];
  char *line;
  int i;

  server_up ();
  for (i = 0; i < CONTROL_MAX_CLIENTS; ++i) {
    r[i] = reader_new (connect_to (sock_path));
    line = read_line (r[i]);
    assert (line && strncmp (line, "{\"nbdkit-backup\":", 17) == 0);
    free (line);
  }
  r[i] = reader_new (connect_to (sock_path));
  line = read_line (r[i]);
  assert (line != NULL);
  printf ("client %d: %s\n", i + 1, line);
  assert (strcmp (line, too_many) == 0);
  free (line);
  assert (read_line (r[i]) == NULL);
  for (i = 0; i <= CONTROL_MAX_CLIENTS; ++i)
    reader_close (r[i]);
  server_down ();
}

static void
test_names (void)
{
  struct control_error err;

  assert (control_check_name ("job-id", "nightly-1", 128, &err) == 0);
  assert (control_check_name ("job-id", "caf\xc3\xa9", 128, &err) == 0);
  assert (control_check_name ("job-id", "", 128, &err) == -1);
  assert (strcmp (err.desc, "job-id must be 1 to 128 bytes long") == 0);
  assert (control_check_name ("a bitmap name", "abcde", 4, &err) == -1);
  assert (strcmp (err.desc, "a bitmap name must be 1 to 4 bytes long") == 0);
  assert (control_check_name ("job-id", "a\tb", 128, &err) == -1);
  assert (strcmp (err.desc, "job-id must not contain control characters "
                  "(byte 0x09 at offset 1)") == 0);
  assert (control_check_name ("job-id", "a\x7f", 128, &err) == -1);
  assert (control_check_name ("job-id", "\xff\xfe", 128, &err) == -1);
  assert (strcmp (err.desc, "job-id must be valid UTF-8") == 0);
}

/* Input that is not valid UTF-8, or that would be cut at a NUL. */
static void
test_input (void)
{
  expect ("{\"execute\":\"echo\",\"arguments\":{\"x\":\"\xff\xfe\"}}",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"the request is not valid UTF-8 (byte 0xff at offset "
          "36)\"}}");
  expect ("{\"execute\":\"echo\",\"arguments\":{\"x\":\"\xed\xa0\x80\"}}",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"the request is not valid UTF-8 (byte 0xed at offset "
          "36)\"}}");
  expect ("{\"execute\":\"echo\",\"arguments\":{\"x\":\"a\\u0000b\"},"
          "\"id\":5}",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"a string in the request contains NUL (\\\\u0000)\"}}");
  expect ("{\"execute\":\"echo\",\"arguments\":{\"a\\u0000b\":1}}",
          "{\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"a string in the request contains NUL (\\\\u0000)\"}}");
  expect ("{\"execute\":\"echo\",\"arguments\":{\"x\":\"\\\\u0000\"}}",
          "{\"return\":\"\\\\u0000\"}");
  expect ("{\"execute\":\"echo\",\"arguments\":{\"x\":\"caf\xc3\xa9 \\u00e9\"}}",
          "{\"return\":\"caf\xc3\xa9 \xc3\xa9\"}");
}

/* The reply of client's line contains want. */
static void
expect_from (uint64_t client, const char *line, const char *want)
{
  char *r = control_handle_client_line (client, line, strlen (line));

  assert (r != NULL);
  if (strstr (r, want) == NULL) {
    fprintf (stderr, "request: %s\nreply:   %s\nwanted:  %s\n",
             line, r, want);
    abort ();
  }
  free (r);
}

#define PREPARE(id, ms, actions)                                        \
  "{\"execute\":\"group-prepare\",\"arguments\":{\"group\":\"" id "\","    \
  "\"deadline-ms\":" #ms ",\"actions\":[" actions "]}}"
#define GROUP_CMD(cmd, id)                                              \
  "{\"execute\":\"group-" cmd "\",\"arguments\":{\"group\":\"" id "\"}}"
#define COUNT "{\"type\":\"count\"}"

/* Group transactions: prepare holds the gate with nothing applied;
 * commit, abort, the client going away, the deadline and shutdown
 * end it.
 */
static void
test_group (void)
{
  int c0 = counter, a0 = aborted;
  struct timespec ts = { 0, 1000000 };
  int i;

  expect_from (1, PREPARE ("g1", 600000, COUNT "," COUNT),
               "{\"return\":{\"group\":\"g1\",\"deadline-ms\":600000,");
  assert (gate_is_closed () && counter == c0);
  expect_from (2, "{\"execute\":\"count\"}",
               "\"desc\":\"group transaction 'g1' is prepared and holds "
               "the write gate: commit or abort it first\"");
  expect_from (2, PREPARE ("g2", 10, COUNT),
               "\"desc\":\"group-prepare: group transaction 'g1' is already "
               "prepared: commit or abort it first\"");
  expect_from (2, "{\"execute\":\"query-status\"}",
               "\"gate-closed\":true,\"group\":{\"group\":\"g1\","
               "\"state\":\"prepared\"");
  expect_from (2, GROUP_CMD ("commit", "g1"),
               "{\"return\":{\"group\":\"g1\",\"gate-closed-us\":");
  assert (!gate_is_closed () && counter == c0 + 2 && aborted == a0);

  /* Another client going away changes nothing; the preparer does. */
  expect_from (1, PREPARE ("g2", 600000, COUNT), "{\"return\":");
  control_group_client_gone (2);
  assert (gate_is_closed ());
  control_group_client_gone (1);
  assert (!gate_is_closed () && aborted == a0 + 1);
  expect_from (1, GROUP_CMD ("commit", "g2"),
               "\"desc\":\"group-commit: group transaction 'g2' was aborted "
               "(the client that prepared it went away): nothing was "
               "applied\"");
  expect_from (1, GROUP_CMD ("abort", "g2"), "\"reason\":\"client\"");

  /* The deadline: wait for the timer to open the gate. */
  expect_from (1, PREPARE ("g3", 1, COUNT), "{\"return\":");
  for (i = 0; i < 120000 && gate_is_closed (); ++i)
    nanosleep (&ts, NULL);
  assert (!gate_is_closed () && aborted == a0 + 2);
  expect_from (1, GROUP_CMD ("commit", "g3"),
               "(its deadline passed): nothing was applied\"");

  /* A failed prepare leaves nothing held. */
  expect_from (1, PREPARE ("g4", 600000,
                           COUNT ",{\"type\":\"count\","
                           "\"data\":{\"fail\":true}}"),
               "\"desc\":\"count: told to fail\"");
  assert (!gate_is_closed () && aborted == a0 + 3);
  expect_from (1, GROUP_CMD ("abort", "g4"),
               "\"desc\":\"group-abort: no group transaction 'g4' is "
               "prepared\"");

  /* Shutdown aborts a held group and waits for its timer. */
  expect_from (1, PREPARE ("g5", 600000, COUNT), "{\"return\":");
  control_group_shutdown ();
  assert (!gate_is_closed () && aborted == a0 + 4 && counter == c0 + 2);
  expect_from (1, GROUP_CMD ("commit", "g5"),
               "(the server was shutting down)");
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

  test_input ();
  test_names ();
  test_group ();

  assert (mkdtemp (sock_dir) != NULL);
  snprintf (sock_path, sizeof sock_path, "%s/ctl", sock_dir);
  assert (control_configure ("test-control", sock_path) == 0);
  test_greeting_first ();
  test_stuck_client ();
  test_overflow ();
  test_too_many ();
  assert (rmdir (sock_dir) == 0);

  printf ("test-control: ok\n");
  return 0;
}
