/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* UTF-8 validity (RFC 3629): no overlong forms, no surrogates, nothing
 * above U+10FFFF.  The control socket refuses requests that are not
 * valid UTF-8 and never sends a line that is not.
 */

#ifndef NBDKIT_BACKUP_UTF8_H
#define NBDKIT_BACKUP_UTF8_H

#include <stddef.h>

/* The length of the sequence at s (at most len bytes available), or
 * 0 if it is not a valid one.
 */
static inline size_t
utf8_sequence_length (const unsigned char *s, size_t len)
{
  unsigned char c = s[0];
  size_t n, i;
  unsigned char lo = 0x80, hi = 0xbf;   /* Range of the second byte. */

  if (c < 0x80)
    return 1;
  else if (c >= 0xc2 && c <= 0xdf)
    n = 2;
  else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;           /* Overlong. */
    if (c == 0xed) hi = 0x9f;           /* Surrogates. */
  }
  else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;           /* Overlong. */
    if (c == 0xf4) hi = 0x8f;           /* Above U+10FFFF. */
  }
  else
    return 0;
  if (len < n || s[1] < lo || s[1] > hi)
    return 0;
  for (i = 2; i < n; ++i)
    if (s[i] < 0x80 || s[i] > 0xbf)
      return 0;
  return n;
}

/* The offset of the first byte of s[0..len) that is not part of a
 * valid sequence, or len if all of it is valid UTF-8.
 */
static inline size_t
utf8_valid_prefix (const char *s, size_t len)
{
  const unsigned char *u = (const unsigned char *) s;
  size_t i = 0;

  while (i < len) {
    size_t n = utf8_sequence_length (u + i, len - i);
    if (n == 0)
      break;
    i += n;
  }
  return i;
}

#endif /* NBDKIT_BACKUP_UTF8_H */
