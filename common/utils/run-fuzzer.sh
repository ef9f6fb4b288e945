#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# run-fuzzer.sh HARNESS CORPUS-DIR MAX-LEN: build the libFuzzer harness
# HARNESS (a make target in the current directory) and run it from the
# seeds in CORPUS-DIR for a bounded time (FUZZ_SECONDS, default 20).
# Skips (77) without clang or its fuzzer runtime.  Any crash, leak,
# sanitizer report or timeout fails.  Shared by every fuzz-*.sh test.
set -euo pipefail
harness="$1" corpus="$2" max_len="$3"
if ! command -v clang >/dev/null 2>&1; then
    echo "clang not installed"; exit 77
fi
log="$harness-build.log"
if ! ${MAKE:-make} -s "$harness" >"$log" 2>&1; then
    cat "$log"
    if grep -q -e 'fuzzer' -e 'cannot find' "$log"; then
        echo "clang cannot build libFuzzer harnesses"; exit 77
    fi
    exit 1
fi
work="$(mktemp -d "/tmp/$harness.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir "$work/corpus"
cp "$corpus"/* "$work/corpus/"
"./$harness" -max_total_time="${FUZZ_SECONDS:-20}" -timeout=10 \
    -rss_limit_mb=2048 -max_len="$max_len" -print_final_stats=1 \
    -artifact_prefix="$work/crash-" "$work/corpus" 2>&1 | tail -n 30
status=${PIPESTATUS[0]}
if ls "$work"/crash-* >/dev/null 2>&1; then
    echo "fuzzer found a crash"; exit 1
fi
exit "$status"
