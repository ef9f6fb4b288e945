/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit tests for cleanup and file helpers. */

#include <config.h>

#undef NDEBUG
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "files.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void
locked_scope (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  assert (pthread_mutex_trylock (&lock) == EBUSY);
}

int
main (void)
{
  char dir[] = "/tmp/test-utils.XXXXXX";
  CLEANUP_FREE char *path = NULL;
  char buf[64];
  int fd;
  ssize_t n;
  struct stat st;

  /* The lock is released when the scope ends. */
  locked_scope ();
  assert (pthread_mutex_trylock (&lock) == 0);
  pthread_mutex_unlock (&lock);

  {
    CLEANUP_FREE char *p = malloc (100);
    assert (p != NULL);
  }

  assert (mkdtemp (dir) != NULL);
  assert (asprintf (&path, "%s/status.json", dir) > 0);
  assert (replace_file_atomically (path, "first", 5) == 0);
  assert (replace_file_atomically (path, "second!", 7) == 0);
  fd = open (path, O_RDONLY);
  assert (fd >= 0);
  n = read (fd, buf, sizeof buf);
  assert (n == 7 && memcmp (buf, "second!", 7) == 0);
  close (fd);
  assert (stat (path, &st) == 0 && st.st_size == 7);

  /* Failure leaves no temporary behind and says why. */
  {
    CLEANUP_FREE char *bad = NULL;
    assert (asprintf (&bad, "%s/no/such/dir/x", dir) > 0);
    errno = 0;
    assert (replace_file_atomically (bad, "x", 1) == -1);
    assert (errno == ENOENT);
  }

  unlink (path);
  rmdir (dir);
  assert (monotonic_seconds () > 0);
  printf ("test-utils: ok\n");
  return 0;
}
