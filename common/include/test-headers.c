/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* Unit tests for the header-only helpers. */

#include <config.h>

#undef NDEBUG
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ispowerof2.h"
#include "iszero.h"
#include "minmax.h"
#include "prng.h"
#include "nbd-uri.h"
#include "rounding.h"

int
main (void)
{
  char buf[1000];
  size_t i;

  assert (!is_power_of_2 (0));
  assert (is_power_of_2 (1));
  assert (is_power_of_2 (UINT64_C (1) << 63));
  assert (!is_power_of_2 (3));
  assert (!is_power_of_2 (65535));
  assert (log_2_bits (1) == 0);
  assert (log_2_bits (65536) == 16);
  assert (log_2_bits (UINT64_C (1) << 40) == 40);

  assert (ROUND_UP (0, 512) == 0);
  assert (ROUND_UP (1, 512) == 512);
  assert (ROUND_UP (UINT64_C (512), 512) == 512);
  assert (ROUND_UP (UINT64_C (513), 512) == 1024);
  assert (ROUND_DOWN (UINT64_C (1023), 512) == 512);
  assert (IS_ALIGNED (UINT64_C (4096), 4096));
  assert (!IS_ALIGNED (UINT64_C (4097), 4096));
  assert (DIV_ROUND_UP (10, 3) == 4);
  assert (MIN (3, 4) == 3 && MAX (3, 4) == 4);

  memset (buf, 0, sizeof buf);
  for (i = 0; i <= sizeof buf; ++i)
    assert (is_zero (buf, i));
  for (i = 0; i < sizeof buf; ++i) {
    buf[i] = 1;
    assert (!is_zero (buf, sizeof buf));
    assert (is_zero (buf, i));
    buf[i] = 0;
  }
  assert (is_nbd_uri ("nbd://host/export"));
  assert (is_nbd_uri ("nbds://host"));
  assert (is_nbd_uri ("nbd+unix:///?socket=/tmp/s"));
  assert (is_nbd_uri ("nbds+unix:///e?socket=/tmp/s"));
  assert (is_nbd_uri ("nbd+vsock://2"));
  assert (is_nbd_uri ("nbds+vsock://2"));
  assert (!is_nbd_uri (""));
  assert (!is_nbd_uri ("nbd:"));
  assert (!is_nbd_uri ("NBD://host"));
  assert (!is_nbd_uri ("/var/tmp/nbd://x"));
  assert (!is_nbd_uri ("backup.img"));
  /* The PRNG's sequences are part of the tests' reproducibility:
   * these values must never change.
   */
  {
    struct prng a, b;
    unsigned char bytes[11];

    prng_seed (&a, 0);
    assert (prng_next (&a) == UINT64_C (11091344671253066420));
    prng_seed_stream (&b, 42, 3);
    assert (prng_next (&b) == UINT64_C (3871649674348433983));
    prng_fill (&a, bytes, sizeof bytes);
    assert (prng_uniform (&a, 10) < 10);
  }

  printf ("test-headers: ok\n");
  return 0;
}
