/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "parse.h"

/* Parse the leading decimal digits of str into *r and point *end
 * after them.  False (errno set) if str does not start with a digit
 * or the digits overflow.
 */
static bool
parse_digits (const char *str, uint64_t *r, char **end)
{
  unsigned long long v;

  /* strtoull accepts leading spaces and a sign: we don't. */
  if (*str < '0' || *str > '9') {
    errno = EINVAL;
    return false;
  }
  errno = 0;
  v = strtoull (str, end, 10);
  if (errno != 0)
    return false;
  *r = v;
  return true;
}

bool
parse_u64 (const char *str, uint64_t *ret)
{
  uint64_t r;
  char *end;

  if (!parse_digits (str, &r, &end))
    return false;
  if (*end != '\0') {
    errno = EINVAL;
    return false;
  }
  *ret = r;
  return true;
}

bool
parse_unsigned (const char *str, unsigned min, unsigned max, unsigned *ret)
{
  uint64_t r;

  if (!parse_u64 (str, &r))
    return false;
  if (r < min || r > max) {
    errno = ERANGE;
    return false;
  }
  *ret = r;
  return true;
}

bool
parse_size (const char *str, uint64_t *ret)
{
  uint64_t r;
  char *end;
  unsigned shift = 0;

  if (!parse_digits (str, &r, &end))
    return false;
  switch (*end) {
  case '\0': break;
  case 'k': case 'K': shift = 10; end++; break;
  case 'm': case 'M': shift = 20; end++; break;
  case 'g': case 'G': shift = 30; end++; break;
  case 't': case 'T': shift = 40; end++; break;
  default:
    errno = EINVAL;
    return false;
  }
  if (*end != '\0') {
    errno = EINVAL;
    return false;
  }
  if (r > (UINT64_MAX >> shift)) {
    errno = ERANGE;
    return false;
  }
  *ret = r << shift;
  return true;
}
