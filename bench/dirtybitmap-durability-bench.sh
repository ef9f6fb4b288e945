#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# What crash-proof change tracking costs writers (issue 13), in one
# run: bench/nbdload writes through
#
#   none     the plain file plugin (no tracking)
#   today    the filter as it tracked before issue 13: bits in memory
#            only.  With OLD_DB=path/to/an/older/nbdkit-dirtybitmap-
#            filter.so (and its libnbdkit-backup beside it) that build,
#            with a sidecar; without, this build with a transient
#            bitmap (no sidecar: the same hot path, memory only)
#   process  dirtybitmap-durability=process (bits in the sidecar's
#            shared mapping)
#   power    dirtybitmap-durability=power (a new bit is synced before
#            its write goes down)
#
# in two workloads:
#
#   first touch   every write dirties a clean granule: one sequential
#                 pass of 64K writes at QD16 over the whole disk, a
#                 fresh 64K bitmap; and random 4K writes at QD16 for
#                 SECONDS_PER s with a fresh 4K bitmap (on a disk this
#                 size nearly every write is a first touch)
#   steady state  every granule already dirty: random 4K writes at QD16
#                 for SECONDS_PER s after a pass that dirtied all
#
# Ratios are printed against none and against today; nothing is
# asserted.  Writes go to a preallocated file in TMPDIR (default
# /var/tmp), the sidecar beside it: power mode's cost is the sync of
# that file system.  Prints a table and writes it to bench/results/.
#
# Environment: SIZE (default 2G), SECONDS_PER (default 5), TMPDIR,
# OLD_DB.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
SIZE="${SIZE:-2G}"
SECS="${SECONDS_PER:-5}"
db="$abs_top_builddir/filters/dirtybitmap/.libs/nbdkit-dirtybitmap-filter.so"
old_db="${OLD_DB:-}"
requires nbdkit
requires_built "$db" "$nbdload"
[ -z "$old_db" ] || requires_built "$old_db"

bytes="$(numfmt --from=iec "$SIZE")"
scratch dirtybitmap-durability-bench "${TMPDIR:-/var/tmp}"
disk="$data/disk.img" bm="$data/bitmaps"
results_open dirtybitmap-durability-bench "$(nbdkit --version)"
fallocate -l "$bytes" "$disk"
sync

# start SETUP GRANULARITY: serve the disk as src.
start () {
    rm -f "$bm" "$bm.lock"
    case "$1" in
    none)    serve src file "$disk" ;;
    today)   if [ -n "$old_db" ]; then
                 serve src --filter="$old_db" file "$disk" \
                     dirtybitmap-file="$bm" dirtybitmap-add=b0 \
                     dirtybitmap-granularity="$2"
             else
                 serve src --filter="$db" file "$disk" dirtybitmap-add=b0 \
                     dirtybitmap-granularity="$2"
             fi ;;
    process|power)
             serve src --filter="$db" file "$disk" dirtybitmap-file="$bm" \
                 dirtybitmap-add=b0 dirtybitmap-granularity="$2" \
                 dirtybitmap-durability="$1" ;;
    esac
}

# load ARGS...: nbdload against src; MiB/s into $m, the line into $j.
load () {
    "$nbdload" --op write "$@" "$src_uri" >"$data/j"
    m=$(field mib_per_s "$data/j")
}

declare -A R
setups=(none today process power)
run () {
    local wl="$1" setup
    for setup in "${setups[@]}"; do
        case "$wl" in
        first-seq)
            start "$setup" 64K
            load --pattern seq --bs 64K --qd 16 --bytes "$bytes" ;;
        first-rand)
            start "$setup" 4K
            load --pattern rand --bs 4K --qd 16 --seconds "$SECS" --seed 1 ;;
        steady)
            start "$setup" 64K
            "$nbdload" --op write --pattern seq --bs 1M --qd 4 \
                --bytes "$bytes" "$src_uri" >/dev/null
            load --pattern rand --bs 4K --qd 16 --seconds "$SECS" --seed 2 ;;
        esac
        R[$wl,$setup]="$m"
        R[$wl,$setup,p99]=$(field lat_us_p99 "$data/j")
        stop src
        sync
    done
}

# A warm-up, then each workload.
start none 64K
"$nbdload" --op write --pattern seq --bs 1M --qd 4 --bytes "$bytes" \
    "$src_uri" >/dev/null
stop src
for wl in first-seq first-rand steady; do run "$wl"; done

out '\n(writers through nbdkit on a %s file; today = %s)\n\n' "$SIZE" \
    "$([ -n "$old_db" ] && echo "$old_db with a sidecar" || echo "a transient bitmap")"
out '%-40s %-8s %9s %9s %8s %9s\n' workload setup "MiB/s" "p99 us" \
    "x none" "x today"
for wl in first-seq first-rand steady; do
    name="$(case $wl in
              first-seq) echo "first touch: seq 64K QD16, 64K granules";;
              first-rand) echo "first touch: rand 4K QD16, 4K granules";;
              steady) echo "steady: rand 4K QD16, all dirty (64K)";; esac)"
    for setup in "${setups[@]}"; do
        out '%-40s %-8s %9s %9s %8s %9s\n' "$name" "$setup" \
            "${R[$wl,$setup]}" "${R[$wl,$setup,p99]}" \
            "$(ratio "${R[$wl,$setup]}" "${R[$wl,none]}")" \
            "$(ratio "${R[$wl,$setup]}" "${R[$wl,today]}")"
        name=""
    done
done
out '\n(power: each batch of first touches waits for one fdatasync of the\n'
out ' sidecar on %s; writes to dirty granules never wait)\n' \
    "$(df -PT "$data" | awk 'NR == 2 { print $2 }')"
results_close
