/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit test for qcow2_find_dependents: a chain full <- inc1 <- inc2,
 * an image naming full by its absolute path, and things the scan must
 * pass over: a symlink to a dependent, a FIFO (it must not block), a
 * raw file, an image whose backing file is missing, a header whose
 * backing name lies past the end of the file, and an image in a
 * subdirectory.
 */

#include <config.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#undef NDEBUG
#include <assert.h>

#include "qcow2.h"
#include "qcow2-internal.h"
#include "dependents.h"

static char dir[] = "/tmp/test-dependents.XXXXXX";

static char *
path_of (const char *name)
{
  char *p;

  assert (asprintf (&p, "%s/%s", dir, name) != -1);
  return p;
}

static void
create (const char *name, const char *backing)
{
  struct qcow2_create_options o = {
    .size = 1024 * 1024, .backing = backing,
    .backing_format = backing ? "qcow2" : NULL,
  };
  char *p = path_of (name);

  assert (qcow2_create (p, &o) == 0);
  free (p);
}

/* Check that the dependents of name are exactly the list, in order. */
static void
expect (const char *name, const char *const *want)
{
  char *p = path_of (name);
  char **names;
  size_t n, i;

  assert (qcow2_find_dependents (p, &names, &n) == 0);
  for (i = 0; want[i] != NULL; ++i) {
    assert (i < n);
    if (strcmp (names[i], want[i]) != 0) {
      fprintf (stderr, "%s: dependent %zu is %s, expected %s\n",
               name, i, names[i], want[i]);
      abort ();
    }
  }
  assert (i == n);
  assert (names[n] == NULL);
  qcow2_free_names (names);
  free (p);
}

int
main (void)
{
  char *p, *full, *sub;
  unsigned char h[20] = { 0 };
  int fd;

  assert (mkdtemp (dir) != NULL);
  full = path_of ("full");

  create ("full", NULL);
  create ("inc1", "full");
  create ("inc2", "inc1");
  create ("abs", full);
  create ("orphan", "missing");
  p = path_of ("link");
  assert (symlink ("inc1", p) == 0);
  free (p);
  p = path_of ("fifo");
  assert (mkfifo (p, 0600) == 0);
  free (p);
  /* A raw file, and a qcow2 header naming a backing file past EOF. */
  p = path_of ("raw");
  fd = open (p, O_WRONLY | O_CREAT | O_EXCL, 0600);
  assert (fd >= 0);
  assert (write (fd, "full", 4) == 4);
  close (fd);
  free (p);
  put_be32 (h, QCOW2_MAGIC);
  put_be32 (h + 4, 3);
  put_be64 (h + 8, 4096);
  put_be32 (h + 16, 4);
  p = path_of ("truncated");
  fd = open (p, O_WRONLY | O_CREAT | O_EXCL, 0600);
  assert (fd >= 0);
  assert (write (fd, h, sizeof h) == sizeof h);
  close (fd);
  free (p);
  sub = path_of ("sub");
  assert (mkdir (sub, 0700) == 0);
  create ("sub/elsewhere", "../full");

  expect ("full", (const char *[]) { "abs", "inc1", "inc2", NULL });
  expect ("inc1", (const char *[]) { "inc2", NULL });
  expect ("inc2", (const char *[]) { NULL });
  expect ("no-such-file", (const char *[]) { NULL });
  /* The same file by another path. */
  expect ("sub/../full", (const char *[]) { "abs", "inc1", "inc2", NULL });
  /* From the subdirectory, only its own images are looked at. */
  expect ("sub/../sub/elsewhere", (const char *[]) { NULL });

  printf ("test-dependents: OK\n");
  assert (asprintf (&p, "rm -rf '%s'", dir) != -1);
  assert (system (p) == 0);
  free (p);
  free (sub);
  free (full);
  return 0;
}
