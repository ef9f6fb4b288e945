#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Build the sidecar-format fuzzer and run it for a bounded time
# (FUZZ_SECONDS, default 20) from a seed corpus of valid files that
# test-format-style images are made of.  Skips (77) without clang's
# fuzzer runtime.  Any crash, leak or sanitizer report fails.
set -euo pipefail
: "${srcdir:=.}"
if ! command -v clang >/dev/null 2>&1; then
    echo "clang not installed"; exit 77
fi
if ! ${MAKE:-make} -s fuzz-format >fuzz-build.log 2>&1; then
    cat fuzz-build.log
    if grep -q -e 'fuzzer' -e 'cannot find' fuzz-build.log; then
        echo "clang cannot build libFuzzer harnesses"; exit 77
    fi
    exit 1
fi
work="$(mktemp -d /tmp/fuzz-format.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/corpus"
# Seeds: a clean and an in-use file, as the filter writes them.
seed () {
    local hex="$1" out="$2"
    printf '%b' "$hex" > "$out"
}
# Header (40 bytes) + one record "a", 4K granularity over 64K (2
# bytes of bits) + CRC.  The CRC is left wrong on purpose in one seed;
# the fuzzer finds valid ones from the structure.
seed 'NBDKDIRT\x01\0\0\0\0\0\0\0\x47\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\x01\0\0\0\0\0\0\0\x01\0\0\0\x01\0\0\0\0\x10\0\0\0\0\0\0\x02\0\0\0\0\0\0\0a\xff\x0f\0\0\0\0' "$work/corpus/s1"
seed 'NBDKDIRT\x01\0\0\0\x01\0\0\0\x2c\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0' "$work/corpus/s2"
./fuzz-format -max_total_time="${FUZZ_SECONDS:-20}" -timeout=10 \
    -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
    -artifact_prefix="$work/crash-" "$work/corpus" 2>&1 | tail -n 20
status=${PIPESTATUS[0]}
if ls "$work"/crash-* >/dev/null 2>&1; then
    echo "fuzzer found a crash"; exit 1
fi
exit "$status"
