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
# Seeds: a clean and an in-use file, as the filter writes them.
seed () {
    local hex="$1" out="$2"
    printf '%b' "$hex" > "$out"
}
# Header (40 bytes) + one record "a", 4K granularity over 64K (2
# bytes of bits) + CRC.  The CRC is left wrong on purpose in one seed;
# the fuzzer finds valid ones from the structure.
seed 'NBDKDIRT\x01\0\0\0\0\0\0\0\x47\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\x01\0\0\0\0\0\0\0\x01\0\0\0\x01\0\0\0\0\x10\0\0\0\0\0\0\x02\0\0\0\0\0\0\0a\xff\x0f\0\0\0\0' "$corpus/s1"
seed 'NBDKDIRT\x01\0\0\0\x01\0\0\0\x2c\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0' "$corpus/s2"
"$srcdir/../../common/utils/run-fuzzer.sh" fuzz-format "$corpus" 8192
