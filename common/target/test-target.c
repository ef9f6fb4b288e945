/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit tests for the target library: the format rule, the checks of
 * what is at a target's name, and the life of a raw and a qcow2 file
 * target (created 0600 at PATH.incomplete, published by finish).
 */

#include <config.h>

#undef NDEBUG
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nbdkit-stubs.h"
#include "qcow2.h"
#include "target.h"
#include "target-internal.h"

static char dir[] = "/tmp/test-target.XXXXXX";

static char *
path (const char *name)
{
  char *p;

  assert (asprintf (&p, "%s/%s", dir, name) != -1);
  return p;
}

static void
test_format_rule (void)
{
  enum target_format f;

  assert (target_format_of (TARGET_AUTO, "/b/disk.qcow2") == TARGET_QCOW2);
  assert (target_format_of (TARGET_AUTO, "/b/disk.qcow") == TARGET_QCOW2);
  assert (target_format_of (TARGET_AUTO, "/b/disk.img") == TARGET_RAW);
  assert (target_format_of (TARGET_AUTO, "/b/qcow2") == TARGET_RAW);
  assert (target_format_of (TARGET_AUTO, "nbd://host/x") == TARGET_NBD);
  assert (target_format_of (TARGET_AUTO, "nbd+unix:///?socket=/s")
          == TARGET_NBD);
  assert (target_format_of (TARGET_RAW, "/b/disk.qcow2") == TARGET_RAW);
  assert (target_format_of (TARGET_QCOW2, "/b/disk.img") == TARGET_QCOW2);
  assert (target_parse_format ("qcow2", &f) == 0 && f == TARGET_QCOW2);
  assert (target_parse_format ("auto", &f) == -1);
  assert (strcmp (target_format_name (TARGET_NBD), "nbd") == 0);
}

/* target_check's message for name, or "" if accepted. */
static const char *
check (const char *name, enum target_format format, bool partial,
       const char *backing)
{
  static char msg[512];
  struct target_options o = { .format = format, .partial = partial,
                              .backing = backing };

  if (target_check ("t", name, &o, msg, sizeof msg) == 0)
    return "";
  return msg;
}

static void
test_checks (void)
{
  char *fifo = path ("fifo"), *link = path ("link"), *victim = path ("v");
  char *newraw = path ("new.img"), *expect;
  FILE *fp;

  assert (mkfifo (fifo, 0600) == 0);
  assert ((fp = fopen (victim, "w")) != NULL && fclose (fp) == 0);
  assert (symlink (victim, link) == 0);

  assert (asprintf (&expect, "t: %s: is a FIFO, not a regular file or "
                    "block device", fifo) != -1);
  assert (strcmp (check (fifo, TARGET_RAW, false, NULL), expect) == 0);
  free (expect);
  assert (asprintf (&expect, "t: %s: is a symbolic link, not a regular "
                    "file or block device", link) != -1);
  assert (strcmp (check (link, TARGET_RAW, false, NULL), expect) == 0);
  free (expect);
  assert (asprintf (&expect, "t: %s: is a directory, not a regular file "
                    "or block device", dir) != -1);
  assert (strcmp (check (dir, TARGET_RAW, false, NULL), expect) == 0);
  free (expect);

  /* An existing raw file whose name says qcow2. */
  assert (strstr (check (victim, TARGET_QCOW2, false, NULL),
                  "is not a qcow2 image but the target format is qcow2"));
  /* Partial backups need a whole target. */
  assert (strcmp (check (newraw, TARGET_RAW, false, NULL), "") == 0);
  assert (strstr (check (newraw, TARGET_RAW, true, NULL),
                  "a new raw file would hold only the changed clusters"));
  assert (strstr (check (newraw, TARGET_QCOW2, true, NULL),
                  "without a backing file would hold only the changed"));
  assert (strcmp (check (newraw, TARGET_QCOW2, true, "v"), "") == 0);
  assert (strcmp (check (victim, TARGET_RAW, true, NULL), "") == 0);
  assert (strcmp (check ("nbd://h/x", TARGET_NBD, true, NULL), "") == 0);

  unlink (fifo); unlink (link); unlink (victim);
  free (fifo); free (link); free (victim); free (newraw);
}

/* Create, write, publish; a leftover symlink is never followed. */
static void
test_life (enum target_format format, const char *name)
{
  char *p = path (name), *inc, *victim = path ("victim");
  struct target_options o = { .format = format };
  struct target *t;
  struct stat st;
  char buf[4096] = "hello", back[4096];
  FILE *fp;

  assert (asprintf (&inc, "%s.incomplete", p) != -1);
  assert ((fp = fopen (victim, "w")) != NULL);
  assert (fputs ("victim", fp) >= 0 && fclose (fp) == 0);
  assert (symlink (victim, inc) == 0);

  t = target_open ("t", p, 1 << 20, &o);
  assert (t != NULL);
  assert (strcmp (t->ops->kind, target_format_name (format)) == 0);
  assert (t->known_zero);
  assert (lstat (inc, &st) == 0 && S_ISREG (st.st_mode));
  assert ((st.st_mode & 0777) == 0600);
  assert (lstat (p, &st) == -1 && errno == ENOENT);
  assert (t->ops->pwrite (t, buf, sizeof buf, 65536) == 0);
  assert (t->ops->zero (t, 65536, 0) == 0);
  assert (t->ops->pread (t, back, sizeof back, 65536) == 0);
  assert (memcmp (buf, back, sizeof buf) == 0);
  assert (t->ops->finish (t, true) == 0);
  t->ops->close (t);
  assert (lstat (p, &st) == 0 && S_ISREG (st.st_mode));
  assert ((st.st_mode & 0777) == 0600);
  assert (lstat (inc, &st) == -1 && errno == ENOENT);
  assert (stat (victim, &st) == 0 && st.st_size == 6);

  /* Opened again, it is updated in place under its working name. */
  t = target_open ("t", p, 1 << 20, &o);
  assert (t != NULL && !t->known_zero);
  assert (lstat (p, &st) == -1 && lstat (inc, &st) == 0);
  assert (t->ops->pread (t, back, sizeof back, 65536) == 0);
  assert (memcmp (buf, back, sizeof buf) == 0);
  assert (t->ops->finish (t, false) == 0);
  t->ops->close (t);
  assert (lstat (p, &st) == -1 && lstat (inc, &st) == 0);

  unlink (inc); unlink (victim);
  free (p); free (inc); free (victim);
}

static char last_error[512];

static void
save_error (const char *msg)
{
  snprintf (last_error, sizeof last_error, "%s", msg);
}

/* An existing qcow2 target swapped for a symlink after target_check's
 * lstat (the open itself is called here, as if the swap had happened
 * in between) is refused, never followed.
 */
static void
test_qcow2_symlink (void)
{
  char *victim = path ("victim.qcow2"), *link = path ("link.qcow2");
  char *expect;
  struct qcow2_create_options co = { .size = 1 << 20 };
  struct target_options o = { .format = TARGET_QCOW2 };
  struct stat st;

  assert (qcow2_create (victim, &co) == 0);
  assert (symlink (victim, link) == 0);
  stub_error_hook = save_error;
  assert (target_qcow2_open ("t", link, EXISTING_FILE, 1 << 20, &o) == NULL);
  stub_error_hook = NULL;
  assert (asprintf (&expect, "t %s: is a symbolic link, not a regular file",
                    link) != -1);
  assert (strcmp (last_error, expect) == 0);
  /* Nothing renamed or created beside either name. */
  assert (lstat (link, &st) == 0 && S_ISLNK (st.st_mode));
  assert (lstat (victim, &st) == 0 && S_ISREG (st.st_mode));
  free (expect);
  assert (asprintf (&expect, "%s.incomplete", victim) != -1);
  assert (lstat (expect, &st) == -1 && errno == ENOENT);
  free (expect);
  assert (asprintf (&expect, "%s.incomplete", link) != -1);
  assert (lstat (expect, &st) == -1 && errno == ENOENT);
  free (expect);

  unlink (link); unlink (victim);
  free (link); free (victim);
}

int
main (void)
{
  assert (mkdtemp (dir) != NULL);
  test_format_rule ();
  test_checks ();
  test_life (TARGET_RAW, "b.img");
  test_life (TARGET_QCOW2, "b.qcow2");
  test_qcow2_symlink ();
  assert (rmdir (dir) == 0);
  return 0;
}
