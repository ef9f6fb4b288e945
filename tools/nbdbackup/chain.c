/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* pull --force over an image that incremental backups use as their
 * backing file would leave them reading the new image's clusters
 * where they expect the old one's: they still open, and silently hold
 * another disk.  So before an existing TARGET is replaced, the images
 * beside it that depend on it are looked for (common/qcow2's
 * dependents.c: by device and inode, following the chain through
 * each other), and the replacement is refused with their names unless
 * the user said --force-break-chain.
 */

#include <config.h>

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cleanup.h"
#include "dependents.h"
#include "nbdkit-stubs.h"
#include "chain.h"

int
chain_check_replace (const char *path)
{
  char **names;
  size_t n, i;
  CLEANUP_FREE char *list = NULL;
  size_t len = 0;
  FILE *fp;

  if (qcow2_find_dependents (path, &names, &n) == -1)
    return -1;
  if (n == 0) {
    qcow2_free_names (names);
    return 0;
  }
  fp = open_memstream (&list, &len);
  if (fp == NULL) {
    nbdkit_error ("open_memstream: %m");
    qcow2_free_names (names);
    return -1;
  }
  for (i = 0; i < n; ++i)
    fprintf (fp, "%s%s", i ? ", " : "", names[i]);
  qcow2_free_names (names);
  if (fclose (fp) == EOF) {
    nbdkit_error ("open_memstream: %m");
    return -1;
  }
  nbdkit_error ("%s is the backing file of %s; replacing it would break "
                "%s (use --force-break-chain to do it anyway)",
                path, list, n == 1 ? "it" : "them");
  return -1;
}

int
chain_check_backing (const char *path, const char *backing)
{
  CLEANUP_FREE char *copy = NULL, *resolved = NULL;
  struct stat st, bst;

  if (stat (path, &st) == -1)
    return 0;                   /* nothing there to be replaced */
  copy = strdup (path);
  if (copy == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  if (backing[0] == '/')
    resolved = strdup (backing);
  else if (asprintf (&resolved, "%s/%s", dirname (copy), backing) == -1)
    resolved = NULL;
  if (resolved == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  if (stat (resolved, &bst) == -1)
    return 0;                   /* the qcow2 target reports it */
  if (bst.st_dev == st.st_dev && bst.st_ino == st.st_ino) {
    nbdkit_error ("--backing=%s is %s itself: the new image would be its "
                  "own backing file", backing, path);
    return -1;
  }
  return 0;
}
