#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Build the libFuzzer harness and run it from the seed corpus for a
# bounded time (FUZZ_SECONDS, default 20).  Skips (77) without clang's
# fuzzer runtime.  Any crash, leak, sanitizer report or timeout fails.
set -euo pipefail
: "${srcdir:=.}"
if ! command -v clang >/dev/null 2>&1; then
    echo "clang not installed"; exit 77
fi
if ! ${MAKE:-make} -s fuzz-qcow2 >fuzz-build.log 2>&1; then
    cat fuzz-build.log
    if grep -q -e 'fuzzer' -e 'cannot find' fuzz-build.log; then
        echo "clang cannot build libFuzzer harnesses"; exit 77
    fi
    exit 1
fi
work="$(mktemp -d /tmp/fuzz-qcow2.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cp "$srcdir"/fuzz-corpus/* "$work/"
./fuzz-qcow2 -max_total_time="${FUZZ_SECONDS:-20}" -timeout=10 \
    -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$work/crash-" "$work" 2>&1 | tail -n 30
status=${PIPESTATUS[0]}
if ls "$work"/crash-* >/dev/null 2>&1; then
    echo "fuzzer found a crash"; exit 1
fi
exit "$status"
