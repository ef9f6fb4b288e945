#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Group snapshots (issue 12): what does one instant across N servers
# cost the writers?  For N = 2, 4 and 8 (NS), N nbdkit servers, each
# the file plugin under nbdkit-fleece-filter (fleece-snapshot=
# on-command) on its own disk, each with a writer (bench/nbdload,
# random 4K writes at QD 4) for SECONDS_PER seconds:
#
# (a) no snapshot: the baseline;
# (b) group snapshots over and over while the writers run:
#     `nbdbackup snapshot start --group` on all N servers, then
#     `snapshot stop` on each, and again.
#
# Reported per N: the writers' p50, p99 and max latency (the worst
# server's), the ratio of p99 to the baseline, how many group
# snapshots were taken, and the gates' closed time (from the servers'
# group-commit replies: the median over the snapshots of each group's
# p50 over servers, and the largest max).  The closed time is the
# gate's own cost; the rest of (b)'s latency is the snapshots' copy-
# before-write.
#
# Writes bench/results/group-bench-DATE.txt.  Asserts nothing about
# speed; exit 77 when a tool or the build is missing.
#
# Environment: NS (default "2 4 8"), SIZE (each disk, default 256M),
# SECONDS_PER (default 6), TMPDIR (default /var/tmp).
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
NS="${NS:-2 4 8}"
SIZE="${SIZE:-256M}"
SECS="${SECONDS_PER:-6}"
fleece="$abs_top_builddir/filters/fleece/.libs/nbdkit-fleece-filter.so"
requires nbdkit numfmt
requires_built "$fleece" "$nbdload" "$nbdbackup"

bytes="$(numfmt --from=iec "$SIZE")"
scratch group-bench "${TMPDIR:-/var/tmp}"
results_open group-bench "$(nbdkit --version)"
out '# N servers, each a %s disk under the fleece filter, each with a\n' "$SIZE"
out '# writer (random 4K writes, QD 4) for %s s\n\n' "$SECS"

# max_field NAME FILES...: the largest value of NAME over the files.
max_field () {
    local f
    for f in "${@:2}"; do field "$1" "$f"; done | sort -g | tail -1
}

# run N MODE: N servers, N writers; MODE none or group.  Sets
# $p50 $p99 $max (worst server), $groups, $closed_p50, $closed_max.
run () {
    local n="$1" mode="$2" i ctls=() wpids=() t0
    for ((i = 0; i < n; i++)); do
        truncate -s "$bytes" "$data/d$i.img"
        new_socket
        ctls+=("$sock.ctl")
        start_server "s$i" "$sock" "$pidf" \
            nbdkit --exit-with-parent -f -U "$sock" -P "$pidf" \
            --filter="$fleece" file "$data/d$i.img" \
            fleece-snapshot=on-command fleece-control="$sock.ctl" \
            fleece-store="$data"
    done
    for ((i = 0; i < n; i++)); do
        local sv="s${i}_uri"
        "$nbdload" --op write --pattern rand --bs 4K --qd 4 \
            --seconds "$SECS" --seed "$i" "${!sv}" >"$data/w$i.json" &
        wpids+=($!)
    done
    groups=0
    : >"$data/closed"
    if [ "$mode" = group ]; then
        t0=$(now)
        # Until the writers end (less a margin, so that every snapshot
        # falls inside their run).
        while awk -v t="$(since "$t0")" -v s="$SECS" 'BEGIN { exit !(t < s - 0.5) }'; do
            "$nbdbackup" snapshot start --group --json --deadline=60000 \
                "${ctls[@]}" >"$data/g.json"
            field gate-closed-p50-us "$data/g.json" >>"$data/closed.p50"
            field gate-closed-max-us "$data/g.json" >>"$data/closed"
            for c in "${ctls[@]}"; do "$nbdbackup" snapshot stop "$c"; done
            groups=$((groups + 1))
        done
    fi
    for p in "${wpids[@]}"; do wait "$p"; done
    p50=$(max_field lat_us_p50 "$data"/w*.json)
    p99=$(max_field lat_us_p99 "$data"/w*.json)
    max=$(max_field lat_us_max "$data"/w*.json)
    closed_p50=- closed_max=-
    if [ "$groups" -gt 0 ]; then
        closed_p50=$(sort -g "$data/closed.p50" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
        closed_max=$(sort -g "$data/closed" | tail -1)
    fi
    rm -f "$data"/w*.json "$data/closed" "$data/closed.p50"
    for ((i = 0; i < n; i++)); do stop "s$i"; rm -f "$data/d$i.img"; done
}

out '%3s %-16s %9s %9s %9s %7s %7s %11s %11s\n' N writers "p50 us" \
    "p99 us" "max us" "p99 x" groups "closed p50" "closed max"
for n in $NS; do
    run "$n" none                       # warm-up
    run "$n" none
    base=$p99
    out '%3s %-16s %9s %9s %9s %7s %7s %11s %11s\n' "$n" "no snapshot" \
        "$p50" "$p99" "$max" 1.00 - - -
    run "$n" group
    out '%3s %-16s %9s %9s %9s %7s %7s %11s %11s\n' "$n" "group snapshots" \
        "$p50" "$p99" "$max" "$(ratio "$p99" "$base")" "$groups" \
        "$closed_p50" "$closed_max"
done
out '\n(closed: how long each server'"'"'s write gate was closed, in us, from\n'
out ' group-prepare to group-commit: the median of the groups'"'"' p50 over\n'
out ' servers, and the largest.)\n'
results_close
