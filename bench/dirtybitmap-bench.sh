#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdkit-dirtybitmap-filter and incremental backups, in one run:
#
# (a) Incremental push backups (cbw-sync=incremental) of a SIZE disk of
#     random data with 1%, 10% and 100% of its 64K clusters dirty,
#     against a full backup (cbw-sync=full) of the same disk, both into
#     a new qcow2 image (the incremental one an overlay of a sparse
#     "previous backup").  Time and bytes are the job's own, from the
#     line it logs when it completes (-v): snapshot instant to target
#     flushed and published.
#     The goal: time proportional to the dirty data.  The bitmap is
#     made by writing every 100th, every 10th or every cluster through
#     the filter; cbw-bitmap-mode=never keeps it for the repeats.
#     The same for pull backups: nbdbackup pull of fleece's snapshot
#     export against nbdbackup pull --incremental of dirty:b0 (the
#     bitmap disabled, as the rotation would leave it), timed by the
#     tool's --json "seconds".
# (b) What tracking costs writers: random 4K writes at QD16 and
#     sequential 1M writes at QD4 (bench/nbdload) for SECONDS_PER
#     seconds each, through the plain file plugin (the baseline), and
#     through the filter recording in one bitmap (64K) and in four
#     (64K, 64K, 4K, 1M), with a sidecar file.
# (c) Memory: the server's resident size (VmRSS) over a 1 TiB memory
#     disk with no bitmap, then after adding bitmaps of 64K and 4K
#     granularity through the control socket: bytes per TiB of disk.
#
# Warm cache, stated: the source is in the page cache for every run,
# every run writes a fresh target, `sync` runs between runs.  Prints a
# table and writes it to bench/results/dirtybitmap-bench-DATE.txt.
# Asserts nothing about speed; exit 77 when a tool or the build is
# missing, 1 when a run fails.
#
# Environment: SIZE (default 4G), SECONDS_PER (default 5), REPEAT
# (measured runs of each backup, best kept, default 2), TMPDIR (where
# the disks go, default /var/tmp).
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
SIZE="${SIZE:-4G}"
SECS="${SECONDS_PER:-5}"
REPEAT="${REPEAT:-2}"
cbw="$abs_top_builddir/filters/cbw/.libs/nbdkit-cbw-filter.so"
db="$abs_top_builddir/filters/dirtybitmap/.libs/nbdkit-dirtybitmap-filter.so"
fleece="$abs_top_builddir/filters/fleece/.libs/nbdkit-fleece-filter.so"
requires nbdkit qemu-io qemu-img socat
requires_built "$cbw" "$db" "$fleece" "$nbdload" "$nbdbackup"

bytes="$(numfmt --from=iec "$SIZE")"
clusters=$(( bytes / 65536 ))
scratch dirtybitmap-bench "${TMPDIR:-/var/tmp}"

# control SOCKET REQUEST...: send request lines to the filter's control
# socket, print the replies.
control () {
    local ctl="$1"
    shift
    { printf '%s\n' "$@"; sleep 0.5; } | socat - UNIX-CONNECT:"$ctl" | tail -n +2
}

src="$data/src.img" bm="$data/bitmaps"

results_open dirtybitmap-bench "$(nbdkit --version)"

head -c "$bytes" /dev/urandom >"$src"
truncate -s "$bytes" "$data/previous.img"
sync

# --- (a) incremental against full ---------------------------------

# seed EVERY: a fresh bitmap b0 holding every EVERY-th cluster.
seed () {
    rm -f "$bm"
    awk -v n="$clusters" -v every="$1" 'BEGIN {
        if (every == 1)
            for (o = 0; o < n * 65536; o += 16777216)
                printf "write -P 7 %.0f 16M\n", o
        else
            for (c = 0; c < n; c += every)
                printf "write -P 7 %.0f 64K\n", c * 65536 }' >"$data/cmds"
    # shellcheck disable=SC2016 # nbdkit --run expands $uri
    nbdkit -U - --filter="$db" file "$src" dirtybitmap-file="$bm" \
        dirtybitmap-add=b0 --run 'qemu-io -f raw "$uri" <'"$data/cmds"' >/dev/null'
    sync
}

# backup SYNC: one backup; sets $secs and $written.
backup () {
    local sync_args line
    rm -f "$data"/t.qcow2*
    sync
    if [ "$1" = full ]; then
        sync_args=(cbw-sync=full)
    else
        sync_args=(cbw-sync=incremental cbw-bitmap=b0 cbw-bitmap-mode=never
                   cbw-target-backing="$data/previous.img"
                   cbw-target-backing-format=raw)
    fi
    nbdkit -U - -v --filter="$cbw" --filter="$db" file "$src" \
        dirtybitmap-file="$bm" cbw-target="$data/t.qcow2" \
        cbw-target-format=qcow2 "${sync_args[@]}" --run true 2>"$data/backup.log"
    # "cbw: job completed: N bytes written, N zero, N before writes, in S s"
    line="$(grep -o 'cbw: job completed: .*' "$data/backup.log")" ||
        { grep 'cbw: job' "$data/backup.log" >&2; echo "backup failed" >&2; exit 1; }
    written=$(awk '{ print $4 }' <<<"$line")
    secs=$(awk '{ printf "%.3f", $(NF - 1) }' <<<"$line")
}

# pull SOURCE-EXPORT [nbdbackup options]: one pull from a fleece
# server, src; sets $secs and $written (data and zeros written).
pull () {
    local export="$1"; shift
    rm -f "$data"/t.qcow2*
    sync
    serve src --filter="$db" --filter="$fleece" file "$src" \
        fleece-store="$data" dirtybitmap-file="$bm" \
        dirtybitmap-control="$socks/p.ctl"
    control "$socks/p.ctl" \
        '{"execute":"block-dirty-bitmap-disable","arguments":{"name":"b0"}}' >/dev/null
    "$nbdbackup" pull --json "$@" "nbd+unix:///$export?socket=$src_sock" \
        "$data/t.qcow2" >"$data/pull.json"
    stop src
    secs=$(printf '%.3f' "$(field seconds "$data/pull.json")")
    written=$(( $(field bytes_copied "$data/pull.json") + \
                $(field bytes_zero "$data/pull.json") ))
}

declare -A T W P PW
backup full                             # warm-up
for ((rep = 0; rep < REPEAT; rep++)); do
    backup full; T[full]=$(best "$secs" "${T[full]:-}"); W[full]=$written
    pull snapshot; P[full]=$(best "$secs" "${P[full]:-}"); PW[full]=$written
done
for every in 100 10 1; do
    seed "$every"
    for ((rep = 0; rep < REPEAT; rep++)); do
        backup incremental
        T[$every]=$(best "$secs" "${T[$every]:-}"); W[$every]=$written
        pull dirty:b0 --incremental -b "$data/previous.img" -F raw
        P[$every]=$(best "$secs" "${P[$every]:-}"); PW[$every]=$written
    done
done

mibs () { awk -v s="$1" -v t="$2" 'BEGIN { printf "%.1f", s / 1048576 / t }'; }
out '\n(a) backups of a quiet %s disk of random data into a new qcow2 image\n' "$SIZE"
out '    (warm cache, target flushed; best of %s runs)\n\n' "$REPEAT"
out '%-34s %12s %9s %9s %11s %11s\n' "" "written MiB" seconds "MiB/s" \
    "time/full" "dirty/all"
out '%-34s %12s %9s %9s %11s %11s\n' "full (cbw-sync=full)" \
    "$(( W[full] / 1048576 ))" "${T[full]}" "$(mibs "${W[full]}" "${T[full]}")" \
    1.00 1.00
for every in 100 10 1; do
    out '%-34s %12s %9s %9s %11s %11s\n' \
        "incremental, $((100 / every))% of clusters dirty" \
        "$(( W[$every] / 1048576 ))" "${T[$every]}" \
        "$(mibs "${W[$every]}" "${T[$every]}")" \
        "$(ratio "${T[$every]}" "${T[full]}")" \
        "$(ratio "${W[$every]}" "${W[full]}")"
done
out '%-34s %12s %9s %9s %11s %11s\n' "pull: full (nbdbackup pull)" \
    "$(( PW[full] / 1048576 ))" "${P[full]}" "$(mibs "${PW[full]}" "${P[full]}")" \
    1.00 1.00
for every in 100 10 1; do
    out '%-34s %12s %9s %9s %11s %11s\n' \
        "pull --incremental, $((100 / every))% dirty" \
        "$(( PW[$every] / 1048576 ))" "${P[$every]}" \
        "$(mibs "${PW[$every]}" "${P[$every]}")" \
        "$(ratio "${P[$every]}" "${P[full]}")" \
        "$(ratio "${PW[$every]}" "${PW[full]}")"
done

# --- (b) writer throughput ----------------------------------------

# writer SETUP OP-ARGS...: run nbdload against SETUP (plain, one,
# four), served as src; its JSON line into $data/j.
writer () {
    local setup="$1"; shift
    rm -f "$bm"
    case "$setup" in
    plain) serve src file "$src" ;;
    one)   serve src --filter="$db" file "$src" dirtybitmap-file="$bm" \
               dirtybitmap-add=a ;;
    four)  serve src --filter="$db" file "$src" dirtybitmap-file="$bm" \
               dirtybitmap-control="$socks/w.ctl" dirtybitmap-add=a \
               dirtybitmap-add=b
           control "$socks/w.ctl" \
               '{"execute":"block-dirty-bitmap-add","arguments":{"name":"c","granularity":4096}}' \
               '{"execute":"block-dirty-bitmap-add","arguments":{"name":"d","granularity":1048576}}' \
               >/dev/null ;;
    esac
    "$nbdload" --op write --seconds "$SECS" "$@" "$src_uri" >"$data/j"
    stop src
    sync
}

out '\n(b) writers for %s s each on the %s disk\n' "$SECS" "$SIZE"
out '    (warm cache, a warm-up run first; ratio = MiB/s over the file plugin'"'"'s)\n\n'
out '%-22s %-30s %9s %9s %9s %9s %6s\n' workload setup "MiB/s" IOPS \
    "p50 us" "p99 us" ratio
for wl in "rand 4K write QD16:--pattern rand --bs 4K --qd 16" \
          "seq 1M write QD4:--pattern seq --bs 1M --qd 4"; do
    name="${wl%%:*}" args="${wl#*:}"
    # shellcheck disable=SC2086
    writer plain $args                   # warm-up
    base=""
    for setup in plain one four; do
        # shellcheck disable=SC2086
        writer "$setup" $args
        m=$(field mib_per_s "$data/j")
        [ -n "$base" ] || base="$m"
        out '%-22s %-30s %9s %9s %9s %9s %6s\n' "$name" \
            "$(case $setup in plain) echo file plugin;;
                              one) echo "dirtybitmap, 1 bitmap";;
                              four) echo "dirtybitmap, 4 bitmaps";; esac)" \
            "$m" "$(field iops "$data/j")" "$(field lat_us_p50 "$data/j")" \
            "$(field lat_us_p99 "$data/j")" "$(ratio "$m" "$base")"
        name=""
    done
done

# --- (c) memory per TiB -------------------------------------------

# rss: the resident size of the server mem, in bytes.
rss () { awk '/^VmRSS/ { print $2 * 1024 }' "/proc/$mem_pid/status"; }
serve mem --filter="$db" memory 1T dirtybitmap-control="$socks/m.ctl"
r0=$(rss)
control "$socks/m.ctl" \
    '{"execute":"block-dirty-bitmap-add","arguments":{"name":"g64k"}}' >/dev/null
r1=$(rss)
control "$socks/m.ctl" \
    '{"execute":"block-dirty-bitmap-add","arguments":{"name":"g4k","granularity":4096}}' >/dev/null
r2=$(rss)
stop mem
# mib1 BYTES: MiB to one place (lib.sh's mib rounds to whole MiB).
mib1 () { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
out '\n(c) memory over a 1 TiB disk (server VmRSS)\n\n'
out '%-36s %12s\n' "" "MiB"
out '%-36s %12s\n' "filter, no bitmap" "$(mib1 "$r0")"
out '%-36s %12s\n' "+ one 64K bitmap" "$(mib1 $(( r1 - r0 )))"
out '%-36s %12s\n' "+ one 4K bitmap" "$(mib1 $(( r2 - r1 )))"
out '%-36s %12s\n' "(expected: disk / granularity / 8)" "2.0 and 32.0"

results_close
