/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit tests for cleanup, file, publishing and number parsing helpers. */

#include <config.h>

#undef NDEBUG
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "files.h"
#include "parse.h"
#include "publish.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void
locked_scope (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  assert (pthread_mutex_trylock (&lock) == EBUSY);
}

static void
test_parse (void)
{
  static const char *const bad[] = {
    "", " 1", "+1", "-1", "1 ", "0x10", "1KB", "1P", "K", "1.5M", NULL
  };
  uint64_t u = 42;
  unsigned n = 42;
  size_t i;

  /* Plain numbers, and every suffix in either case. */
  assert (parse_u64 ("0", &u) && u == 0);
  assert (parse_u64 ("18446744073709551615", &u) && u == UINT64_MAX);
  assert (parse_size ("4096", &u) && u == 4096);
  assert (parse_size ("1k", &u) && u == 1024);
  assert (parse_size ("64K", &u) && u == 65536);
  assert (parse_size ("3m", &u) && u == UINT64_C (3) << 20);
  assert (parse_size ("2G", &u) && u == UINT64_C (2) << 30);
  assert (parse_size ("5t", &u) && u == UINT64_C (5) << 40);
  assert (parse_size ("0M", &u) && u == 0);
  assert (parse_size ("16777215T", &u) && u == UINT64_C (16777215) << 40);

  /* Not numbers: EINVAL, and *ret is left alone. */
  u = 42;
  for (i = 0; bad[i] != NULL; ++i) {
    errno = 0;
    assert (!parse_size (bad[i], &u) && errno == EINVAL);
    errno = 0;
    assert (!parse_u64 (bad[i], &u) && errno == EINVAL);
    errno = 0;
    assert (!parse_unsigned (bad[i], 0, UINT_MAX, &n) && errno == EINVAL);
  }
  assert (!parse_u64 ("1K", &u) && errno == EINVAL);
  assert (u == 42 && n == 42);

  /* Too large, before or after the suffix: ERANGE. */
  errno = 0;
  assert (!parse_u64 ("18446744073709551616", &u) && errno == ERANGE);
  errno = 0;
  assert (!parse_size ("18446744073709551616", &u) && errno == ERANGE);
  errno = 0;
  assert (!parse_size ("16777216T", &u) && errno == ERANGE);
  errno = 0;
  assert (!parse_size ("17179869184G", &u) && errno == ERANGE);
  assert (u == 42);

  /* Ranges are inclusive. */
  assert (parse_unsigned ("1", 1, 16, &n) && n == 1);
  assert (parse_unsigned ("16", 1, 16, &n) && n == 16);
  errno = 0;
  assert (!parse_unsigned ("0", 1, 16, &n) && errno == ERANGE);
  errno = 0;
  assert (!parse_unsigned ("17", 1, 16, &n) && errno == ERANGE);
  errno = 0;
  assert (!parse_unsigned ("4294967296", 0, UINT_MAX, &n) && errno == ERANGE);
  assert (n == 16);
}

/* PATH.incomplete is renamed to PATH and back. */
static void
test_publish (const char *dir)
{
  CLEANUP_FREE char *path = NULL;
  CLEANUP_FREE char *inc = NULL;
  int fd;

  assert (asprintf (&path, "%s/backup.img", dir) > 0);
  inc = incomplete_name (path);
  assert (inc != NULL);
  assert (strlen (inc) == strlen (path) + strlen (".incomplete"));
  assert (strncmp (inc, path, strlen (path)) == 0);
  assert (strcmp (inc + strlen (path), ".incomplete") == 0);

  fd = open (inc, O_WRONLY | O_CREAT | O_EXCL, 0644);
  assert (fd >= 0);
  close (fd);
  assert (rename_durably (NULL, inc, path) == 0);
  assert (access (path, F_OK) == 0 && access (inc, F_OK) == -1);
  assert (rename_durably ("test", path, inc) == 0);
  assert (access (path, F_OK) == -1 && access (inc, F_OK) == 0);

  /* A missing file: reported, errno kept, nothing renamed. */
  errno = 0;
  assert (rename_durably ("test", path, inc) == -1);
  assert (errno == ENOENT);
  assert (access (inc, F_OK) == 0);
  unlink (inc);
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
  test_publish (dir);
  rmdir (dir);
  assert (monotonic_seconds () > 0);
  test_parse ();
  printf ("test-utils: ok\n");
  return 0;
}
