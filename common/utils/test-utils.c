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

/* Hostile leftovers: FIFOs, symlinks, directories and devices where a
 * regular file is expected are refused or removed, never followed or
 * blocked on.
 */
static void
test_hostile (const char *dir)
{
  CLEANUP_FREE char *victim = NULL, *link = NULL, *fifo = NULL;
  CLEANUP_FREE char *sub = NULL, *fresh = NULL;
  struct stat st;
  char buf[16];
  int fd;

  assert (asprintf (&victim, "%s/victim", dir) > 0);
  assert (asprintf (&link, "%s/link", dir) > 0);
  assert (asprintf (&fifo, "%s/fifo", dir) > 0);
  assert (asprintf (&sub, "%s/sub", dir) > 0);
  assert (asprintf (&fresh, "%s/fresh", dir) > 0);

  fd = open (victim, O_WRONLY | O_CREAT | O_EXCL, 0644);
  assert (fd >= 0);
  assert (write (fd, "precious", 8) == 8);
  close (fd);
  assert (symlink (victim, link) == 0);
  assert (mkfifo (fifo, 0600) == 0);
  assert (mkdir (sub, 0700) == 0);

  /* Opening: a FIFO is refused at once (this would hang on a blocking
   * open), a directory and a character device are refused, a symlink
   * only with OPEN_NOFOLLOW, a missing file says ENOENT.
   */
  errno = 0;
  assert (open_regular_file ("test", fifo, O_RDONLY, 0) == -1);
  assert (errno == EINVAL);
  assert (open_regular_file ("test", fifo, O_RDWR, 0) == -1);
  assert (open_regular_file ("test", sub, O_RDONLY, 0) == -1);
  assert (open_regular_file ("test", "/dev/null", O_RDONLY,
                             OPEN_ALLOW_BLOCKDEV) == -1);
  errno = 0;
  assert (open_regular_file ("test", link, O_RDONLY, OPEN_NOFOLLOW) == -1);
  assert (errno == ELOOP);
  errno = 0;
  assert (open_regular_file ("test", fresh, O_RDONLY, 0) == -1);
  assert (errno == ENOENT);
  fd = open_regular_file ("test", link, O_RDONLY, 0);
  assert (fd >= 0);
  assert (!(fcntl (fd, F_GETFL) & O_NONBLOCK));
  assert (read (fd, buf, sizeof buf) == 8);
  close (fd);

  /* Creating over leftovers: the symlink and the FIFO are removed, not
   * followed; the victim keeps its bytes; the new file is 0600.
   */
  fd = create_file_excl ("test", link, O_RDWR, 0600);
  assert (fd >= 0);
  assert (write (fd, "new", 3) == 3);
  close (fd);
  assert (lstat (link, &st) == 0 && S_ISREG (st.st_mode));
  assert ((st.st_mode & 07777) == 0600);
  fd = open (victim, O_RDONLY);
  assert (fd >= 0 && read (fd, buf, sizeof buf) == 8);
  assert (memcmp (buf, "precious", 8) == 0);
  close (fd);
  fd = create_file_excl ("test", fifo, O_WRONLY, 0600);
  assert (fd >= 0);
  close (fd);
  assert (lstat (fifo, &st) == 0 && S_ISREG (st.st_mode));
  errno = 0;
  assert (create_file_excl ("test", sub, O_RDWR, 0600) == -1);
  assert (errno == EISDIR);

  /* Replacing: 0600, and a path that is not a regular file is left
   * alone.
   */
  assert (replace_file_atomically (fresh, "x", 1) == 0);
  assert (stat (fresh, &st) == 0 && (st.st_mode & 07777) == 0600);
  unlink (link);
  assert (symlink (victim, link) == 0);
  errno = 0;
  assert (replace_file_atomically (link, "x", 1) == -1);
  assert (errno == EEXIST);
  assert (lstat (link, &st) == 0 && S_ISLNK (st.st_mode));
  assert (stat (victim, &st) == 0 && st.st_size == 8);

  assert (strcmp (file_kind (S_IFIFO), "a FIFO") == 0);
  unlink (victim); unlink (link); unlink (fifo); unlink (fresh);
  rmdir (sub);
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
  test_hostile (dir);
  rmdir (dir);
  assert (monotonic_seconds () > 0);
  test_parse ();
  printf ("test-utils: ok\n");
  return 0;
}
