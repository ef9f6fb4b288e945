#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup restore against qemu-img convert of the same chain, in one
# run.  A repository of a quiet disk of random data (SIZE, fully
# allocated) holds a full backup and an incremental with 1% of its 64K
# clusters changed (nbdbackup backup).  Then the incremental's point in
# time is written to a new raw file:
#
# (a) qemu-img convert -O raw of the chain (the baseline: QEMU's own
#     reader, no checks);
# (b) nbdbackup restore (chain checks, nbdkit + the qcow2 plugin
#     serving it, the copy engine, a SHA-256 of every chunk checked
#     against the digest list before it is written);
# (c) nbdbackup restore --no-verify (the cost of the digests is
#     (b) - (c));
# and the same three to a new qcow2 image.  Wall-clock from start to
# exit; every output is compared with the disk once (not timed).
#
# Warm cache, stated: the repository was just written, a warm-up run
# of each kind precedes the measured ones, and `sync` runs between
# runs so that one run's writeback does not land in the next.
#
# Prints a table with ratios (convert time / this: above 1 is faster
# than qemu-img) and writes it to bench/results/repo-restore-bench-
# DATE.txt.  Asserts nothing about speed; exit 77 when a tool or the
# build is missing, 1 when a run fails.
#
# Environment: SIZE (default 2G), REPEAT (measured runs of each kind,
# best kept, default 2), TMPDIR (where the disks go, default /var/tmp).
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
SIZE="${SIZE:-2G}"
REPEAT="${REPEAT:-2}"
db="$abs_top_builddir/filters/dirtybitmap/.libs/nbdkit-dirtybitmap-filter.so"
fleece="$abs_top_builddir/filters/fleece/.libs/nbdkit-fleece-filter.so"
plugin="$abs_top_builddir/plugins/qcow2/.libs/nbdkit-qcow2-plugin.so"
export NBDBACKUP_QCOW2_PLUGIN="$plugin"
requires nbdkit qemu-io qemu-img jq
requires_built "$db" "$fleece" "$plugin" "$nbdbackup"

bytes="$(numfmt --from=iec "$SIZE")"
scratch repo-restore-bench "${TMPDIR:-/var/tmp}"
src="$data/src.img" ctl="$socks/c.ctl" repo="$data/repo"

results_open repo-restore-bench \
    "$(nbdkit --version), $(qemu-img --version | head -1)"
head -c "$bytes" /dev/urandom >"$src"
sync "$src"

# The repository: a full backup, 1% of the clusters written, an inc.
serve src -t 1 --filter="$db" --filter="$fleece" file "$src" \
    fleece-snapshot=on-command fleece-store="$data" \
    dirtybitmap-file="$data/bitmaps" dirtybitmap-control="$ctl"
"$nbdbackup" init "$repo" --uri="$src_uri" --control="$ctl" >/dev/null
"$nbdbackup" backup --no-progress "$repo" >/dev/null 2>&1
awk -v n="$((bytes / 65536))" \
    'BEGIN { for (c = 7; c < n; c += 100) printf "write -P 9 %d 64K\n", c * 65536 }' |
    qemu-io -f raw "$src_uri" >/dev/null
"$nbdbackup" backup --no-progress "$repo" >/dev/null 2>&1
stop src
top="$("$nbdbackup" list --json "$repo" | jq -r '.backups[-1].id')"
[ -f "$repo/$top.qcow2" ] || { echo "no incremental backup in $repo" >&2; exit 1; }
qemu-img info --backing-chain "$repo/$top.qcow2" | grep -q 'backing file:' ||
    { echo "$top is not an overlay" >&2; exit 1; }

# run KIND FORMAT: one restore of $top into a fresh file; sets $secs.
run () {
    local out="$data/out.$2"
    rm -f "$out"
    sync
    local t0; t0="$(now)"
    case "$1" in
    convert)
        qemu-img convert -O "$2" "$repo/$top.qcow2" "$out" ;;
    restore)
        "$nbdbackup" restore --no-progress "$repo" "$out" ;;
    noverify)
        "$nbdbackup" restore --no-progress --no-verify "$repo" "$out" ;;
    esac
    secs="$(since "$t0")"
}

# The outputs are the disk at the incremental's instant.
run restore raw
qemu-img convert -O raw "$repo/$top.qcow2" "$data/check.raw"
cmp "$data/out.raw" "$data/check.raw"
run restore qcow2
qemu-img compare -q "$data/out.qcow2" "$data/check.raw"
rm -f "$data/check.raw"

declare -A T
for fmt in raw qcow2; do
    for kind in convert restore noverify; do
        run "$kind" "$fmt"              # warm-up
        best_secs=""
        for ((rep = 0; rep < REPEAT; rep++)); do
            run "$kind" "$fmt"
            best_secs="$(best "$secs" "$best_secs")"
        done
        T[$kind.$fmt]="$best_secs"
    done
done

mibs () { awk -v s="$1" -v t="$2" 'BEGIN { printf "%.1f", s / 1048576 / t }'; }
out '\nrestore of a %s disk (full + inc, 1%% changed; warm cache, best of %s)\n\n' \
    "$SIZE" "$REPEAT"
out '%-46s %9s %9s %8s\n' "" seconds "MiB/s" ratio
for fmt in raw qcow2; do
    out '%-46s %9s %9s %8s\n' "qemu-img convert -O $fmt (baseline)" \
        "${T[convert.$fmt]}" "$(mibs "$bytes" "${T[convert.$fmt]}")" 1.00
    out '%-46s %9s %9s %8s\n' "nbdbackup restore to $fmt (convert / this)" \
        "${T[restore.$fmt]}" "$(mibs "$bytes" "${T[restore.$fmt]}")" \
        "$(ratio "${T[convert.$fmt]}" "${T[restore.$fmt]}")"
    out '%-46s %9s %9s %8s\n' "  --no-verify (convert / this)" \
        "${T[noverify.$fmt]}" "$(mibs "$bytes" "${T[noverify.$fmt]}")" \
        "$(ratio "${T[convert.$fmt]}" "${T[noverify.$fmt]}")"
done
results_close
