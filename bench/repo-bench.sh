#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup backup (the repository) against its baselines, in one run:
#
# (a) backup --level=full of a quiet disk of random data (SIZE, fully
#     allocated) into a repository, wall-clock from the command's start
#     to its exit (lock, catalog, transaction, copy with a SHA-256 per
#     chunk, digest list, catalog, bitmap clean-up), against nbdbackup
#     pull of the same snapshot export into a new qcow2 file (snapshot
#     started and stopped around it, not timed): the cost of the
#     digests and the catalog.  Aim: pull time / backup time >= 0.9.
# (b) an incremental backup (auto) after 1% of the disk's 64K clusters
#     were written, against the full: aim <= 3% of its time.
#
# Warm cache, stated: the disk was just written and a warm-up run of
# each kind precedes the measured ones; `sync` runs between runs.
# Each full backup goes into a fresh repository.
#
# Prints a table and writes it to bench/results/repo-bench-DATE.txt.
# Asserts nothing about speed; exit 77 when a tool or the build is
# missing, 1 when a run fails.
#
# Environment: SIZE (default 2G), REPEAT (measured runs of each kind,
# best kept, default 2), TMPDIR (where the disks go, default /var/tmp).
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
SIZE="${SIZE:-2G}"
REPEAT="${REPEAT:-2}"
db="$abs_top_builddir/filters/dirtybitmap/.libs/nbdkit-dirtybitmap-filter.so"
fleece="$abs_top_builddir/filters/fleece/.libs/nbdkit-fleece-filter.so"
requires nbdkit qemu-io
requires_built "$db" "$fleece" "$nbdbackup"

bytes="$(numfmt --from=iec "$SIZE")"
scratch repo-bench "${TMPDIR:-/var/tmp}"
src="$data/src.img" ctl="$socks/c.ctl"

results_open repo-bench "$(nbdkit --version), $(openssl version 2>/dev/null || echo libcrypto)"
head -c "$bytes" /dev/urandom >"$src"
sync "$src"

serve src -t 1 --filter="$db" --filter="$fleece" file "$src" \
    fleece-snapshot=on-command fleece-store="$data" \
    dirtybitmap-file="$data/bitmaps" dirtybitmap-control="$ctl"

nrepo=0
# full: a full backup into a fresh repository; sets $secs, $repo.
full () {
    nrepo=$((nrepo + 1))
    repo="$data/repo$nrepo"
    rm -rf "$data/repo$((nrepo - 1))"
    "$nbdbackup" init "$repo" --uri="$src_uri" --control="$ctl" >/dev/null
    sync
    local t0; t0="$(now)"
    "$nbdbackup" backup --level=full --no-progress "$repo" >/dev/null 2>&1
    secs="$(since "$t0")"
}

# pull: nbdbackup pull of the snapshot export; sets $secs.
pull () {
    rm -f "$data/p.qcow2"
    "$nbdbackup" snapshot start "$ctl" >/dev/null
    sync
    local t0; t0="$(now)"
    "$nbdbackup" pull --no-progress "nbd+unix:///snapshot?socket=$src_sock" \
        "$data/p.qcow2"
    secs="$(since "$t0")"
    "$nbdbackup" snapshot stop "$ctl" >/dev/null
}

# dirty_1pc SEED: write every 100th 64K cluster (from SEED), then an
# incremental backup of $repo; sets $secs and $copied.
inc () {
    awk -v n="$((bytes / 65536))" -v s="$1" \
        'BEGIN { for (c = s; c < n; c += 100) printf "write -P 9 %d 64K\n", c * 65536 }' |
        qemu-io -f raw "$src_uri" >/dev/null
    sync
    local t0; t0="$(now)"
    "$nbdbackup" backup --json --no-progress "$repo" >"$data/inc.json" 2>/dev/null
    secs="$(since "$t0")"
    copied="$(field bytes_copied "$data/inc.json")"
}

full; pull                              # warm-up
F="" P="" I="" C=0
for ((rep = 0; rep < REPEAT; rep++)); do
    full; F="$(best "$secs" "$F")"
    pull; P="$(best "$secs" "$P")"
done
for ((rep = 0; rep < REPEAT; rep++)); do
    inc "$rep"; I="$(best "$secs" "$I")"; C="$copied"
done
stop src

mibs () { awk -v s="$1" -v t="$2" 'BEGIN { printf "%.1f", s / 1048576 / t }'; }
out '\nbackups of a quiet %s disk of random data (warm cache, best of %s)\n\n' \
    "$SIZE" "$REPEAT"
out '%-44s %11s %9s %9s %8s\n' "" "copied MiB" seconds "MiB/s" ratio
out '%-44s %11s %9s %9s %8s\n' "nbdbackup pull of the snapshot (baseline)" \
    "$(mib "$bytes")" "$P" "$(mibs "$bytes" "$P")" 1.00
out '%-44s %11s %9s %9s %8s\n' "backup --level=full (pull time / this)" \
    "$(mib "$bytes")" "$F" "$(mibs "$bytes" "$F")" "$(ratio "$P" "$F")"
out '%-44s %11s %9s %9s %8s\n' "backup (inc), 1% of clusters (this / full)" \
    "$(mib "$C")" "$I" "$(mibs "$C" "$I")" "$(ratio "$I" "$F")"
results_close
