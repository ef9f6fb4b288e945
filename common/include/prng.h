/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* A small seeded PRNG for tests and benchmarks: xoshiro256** seeded
 * through splitmix64.  Fast, and the same sequence on every platform
 * for a seed, so a test's seed replays exactly.  Not for secrets.
 */

#ifndef NBDKIT_BACKUP_PRNG_H
#define NBDKIT_BACKUP_PRNG_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct prng {
  uint64_t s[4];
};

/* splitmix64: advances *x and returns the next value. */
static inline uint64_t
splitmix64 (uint64_t *x)
{
  uint64_t z = (*x += UINT64_C (0x9e3779b97f4a7c15));

  z = (z ^ (z >> 30)) * UINT64_C (0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C (0x94d049bb133111eb);
  return z ^ (z >> 31);
}

/* Seed from seed. */
static inline void
prng_seed (struct prng *r, uint64_t seed)
{
  uint64_t x = seed;
  unsigned i;

  for (i = 0; i < 4; ++i)
    r->s[i] = splitmix64 (&x);
}

/* Seed stream number stream of seed: distinct streams get distinct
 * splitmix64 states and so distinct sequences (one per thread).
 */
static inline void
prng_seed_stream (struct prng *r, uint64_t seed, uint64_t stream)
{
  uint64_t x = seed;
  unsigned i;

  x = splitmix64 (&x) ^ ((stream + 1) * UINT64_C (0xd1342543de82ef95));
  for (i = 0; i < 4; ++i)
    r->s[i] = splitmix64 (&x);
}

static inline uint64_t
prng_rotl64 (uint64_t x, int k)
{
  return (x << k) | (x >> (64 - k));
}

/* The next 64 random bits. */
static inline uint64_t
prng_next (struct prng *r)
{
  uint64_t *s = r->s;
  const uint64_t result = prng_rotl64 (s[1] * 5, 7) * 9;
  const uint64_t t = s[1] << 17;

  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = prng_rotl64 (s[3], 45);
  return result;
}

/* Uniform in [0, n), n > 0.  The modulo bias is negligible for the
 * sizes drawn here (far below 2^64).
 */
static inline uint64_t
prng_uniform (struct prng *r, uint64_t n)
{
  return prng_next (r) % n;
}

/* Fill buf with len random bytes. */
static inline void
prng_fill (struct prng *r, unsigned char *buf, size_t len)
{
  uint64_t v;

  while (len >= 8) {
    v = prng_next (r);
    memcpy (buf, &v, 8);
    buf += 8;
    len -= 8;
  }
  if (len > 0) {
    v = prng_next (r);
    memcpy (buf, &v, len);
  }
}

#endif /* NBDKIT_BACKUP_PRNG_H */
