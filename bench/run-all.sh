#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# run-all.sh [NAME...]: run every benchmark script in bench/ (every
# *.sh but this one and lib.sh), or the named ones (cbw, qcow2-bench,
# cbw-vs-qsd.sh), one after the other, never in parallel, since each
# measures the whole machine.  `make bench` runs it from the source
# directory with abs_top_builddir set.
#
# Exit status: 0 when every benchmark ran (or skipped itself with 77
# because a tool is missing), 1 when one failed.
set -uo pipefail
export LC_ALL=C

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
: "${abs_top_builddir:=$(cd .. && pwd)}"
export abs_top_builddir

if [ $# -gt 0 ]; then
    names=("$@")
else
    names=()
    for s in *.sh; do
        [ "$s" = run-all.sh ] || [ "$s" = lib.sh ] || names+=("$s")
    done
fi

failed=() skipped=()
for n in "${names[@]}"; do
    n="${n##*/}"; n="${n%.sh}"
    if [ -f "$here/$n.sh" ]; then
        script="$n.sh"
    elif [ -f "$here/$n-bench.sh" ]; then
        script="$n-bench.sh"
    else
        echo "run-all: no benchmark $n.sh or $n-bench.sh" >&2
        failed+=("$n")
        continue
    fi
    echo "=== $script"
    start=$SECONDS
    bash "$here/$script"
    rc=$?
    echo "=== $script: exit $rc after $((SECONDS - start)) s"
    echo
    case "$rc" in
    0) ;;
    77) skipped+=("$n") ;;
    *) failed+=("$n") ;;
    esac
done

[ ${#skipped[@]} -eq 0 ] || echo "run-all: skipped: ${skipped[*]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "run-all: FAILED: ${failed[*]}"
    exit 1
fi
echo "run-all: done"
