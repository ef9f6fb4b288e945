/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Number parsing for command-line programs (nbdbackup, nbdload,
 * pitwriter).  Filters and plugins use nbdkit_parse_* instead.
 *
 * Each function accepts only plain decimal digits, with no leading
 * space or sign (which strtoull would accept), and prints nothing:
 * the caller names the option in its own message.  On failure it
 * returns false, leaves *ret alone and sets errno to EINVAL (not a
 * number of that form) or ERANGE (a number, but too large or outside
 * the range).
 */

#ifndef NBDKIT_BACKUP_PARSE_H
#define NBDKIT_BACKUP_PARSE_H

#include <stdbool.h>
#include <stdint.h>

/* A decimal unsigned 64-bit integer. */
extern bool parse_u64 (const char *str, uint64_t *ret);

/* A decimal unsigned integer within [min, max]. */
extern bool parse_unsigned (const char *str, unsigned min, unsigned max,
                            unsigned *ret);

/* A size with an optional K, M, G or T suffix (powers of 1024, either
 * case): "4096", "64K", "1g".
 */
extern bool parse_size (const char *str, uint64_t *ret);

#endif /* NBDKIT_BACKUP_PARSE_H */
