#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Fuzz the dirty-bitmap sidecar loader from a seed corpus of valid files
# as the filter writes them (common/utils/run-fuzzer.sh does the
# building and running).
set -euo pipefail
: "${srcdir:=.}"
corpus="$(mktemp -d /tmp/fuzz-format-seeds.XXXXXX)"
trap 'rm -rf "$corpus"' EXIT
# Seeds: a clean and an in-use version 1 file, and a version 2 file.
seed () {
    local hex="$1" out="$2"
    printf '%b' "$hex" > "$out"
}
# Header (40 bytes) + one record "a", 4K granularity over 64K (2
# bytes of bits) + CRC.  The CRC is left wrong on purpose in one seed;
# the fuzzer finds valid ones from the structure.
seed 'NBDKDIRT\x01\0\0\0\0\0\0\0\x47\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\x01\0\0\0\0\0\0\0\x01\0\0\0\x01\0\0\0\0\x10\0\0\0\0\0\0\x02\0\0\0\0\0\0\0a\xff\x0f\0\0\0\0' "$corpus/s1"
seed 'NBDKDIRT\x01\0\0\0\x01\0\0\0\x2c\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0' "$corpus/s2"
# Version 2 (the harness fixes both checksums of a file of 4096 bytes
# or more): a 128-byte header, record "a" (4K granularity over 64K,
# bits at 4096), zeroes up to 4096, the bits padded to 8.
{
    printf '%b' 'NBDKDIRT\x02\0\0\0\0\0\0\0\x08\x10\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\x01\0\0\0'
    printf '%b' '\0\0\0\0\0\0\0\0\0\x10\0\0'
    head -c 16 /dev/zero; printf '%b' '\x01\0\0\0\0\0\0\0'; head -c 56 /dev/zero
    printf '%b' '\x01\0\0\0\x01\0\0\0\0\x10\0\0\0\0\0\0\0\x10\0\0\0\0\0\0\x02\0\0\0\0\0\0\0a'
    head -c $((4096 - 128 - 33)) /dev/zero
    printf '%b' '\xff\x0f\0\0\0\0\0\0'
} > "$corpus/s3"
"$srcdir/../../common/utils/run-fuzzer.sh" fuzz-format "$corpus" 8192
