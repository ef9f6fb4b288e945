#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Push backup with fleecing against a slow target, in one run: does
# nbdkit-fleece-filter keep writers fast when the backup target is
# slow, where copy-before-write straight into the target does not?
#
# The slow target is a second nbdkit (file plugin, a sparse scratch
# file the size of the disk) behind nbdkit's rate filter, RATE bits per
# second (the rate filter's unit; default 50M, about 6 MiB/s).  A
# writer (bench/nbdload, random 4K at QD16, then sequential 1M at QD4)
# runs for SECONDS_PER seconds against a disk of random data served:
#
# (a) by the plain file plugin, with no backup: the baseline;
# (b) through the fleece filter (snapshot at start, store in the bench
#     directory) while `nbdbackup pull` copies the snapshot export into
#     the slow target;
# (b') the same with fleece-discard-source=true and `nbdbackup pull
#     --discard-source`, which gives the store back behind the copy
#     (bench/fleece-discard-bench.sh measures that at full speed);
# (c) through the cbw filter (cbw-sync=full) pushing straight into the
#     slow target.
#
# The backup must still be running when the writer ends, or the run
# measures nothing; the output says whether it was, and how far it had
# got.  Then the rate limit is lifted (the rate filter's rate-file), the
# backup finishes at full speed, and the target is compared with cmp to
# a copy of the disk taken before the server started: the backup must
# hold the disk as it was at the snapshot instant.  Before every run
# the disk is restored from that copy and the machine settles (lib.sh:
# I/O pressure, then memory warmed).  (a), (b) and (b') run in rounds,
# each round starting one setup later (a b b', b b' a, b' a b, ...);
# the first round is a warm-up and is not counted, and the table gives
# medians with min and max.  (c) runs once, at the end.
#
# Also the snapshot's read throughput: nbdcopy to null: of the fleece
# snapshot export of a quiet disk, against nbdcopy of the same disk
# served by the plain file plugin.
#
# Warm cache, stated: the disk is in the page cache throughout (it was
# just written or restored), and `sync` runs before every measured run.
#
# Prints a table with ratios to the baselines and writes it to
# bench/results/fleece-bench-DATE.txt.  Asserts nothing about speed;
# exit 77 when a tool or the build is missing, 1 when a run fails or a
# backup differs from the disk.
#
# Environment: SIZE (disk size, default 2G), SECONDS_PER (writer
# seconds, default 8), RATE (target rate in bits per second, default
# 50M), REPEAT (measured snapshot reads of each kind, best kept,
# default 2), WREPS (counted rounds of the writers in (2), default 3),
# WARM (lib.sh's settle), TMPDIR
# (where the disks go, default /var/tmp).  Needs
# about 4 * SIZE of free space.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
SIZE="${SIZE:-2G}"
SECS="${SECONDS_PER:-8}"
RATE="${RATE:-50M}"
REPEAT="${REPEAT:-2}"
WREPS="${WREPS:-3}"
fleece="$abs_top_builddir/filters/fleece/.libs/nbdkit-fleece-filter.so"
cbw="$abs_top_builddir/filters/cbw/.libs/nbdkit-cbw-filter.so"
requires nbdkit nbdcopy cmp numfmt
nbdkit --filter=rate null rate=1M --run true 2>/dev/null ||
    { echo "nbdkit rate filter not installed" >&2; exit 77; }
requires_built "$fleece" "$cbw" "$nbdload" "$nbdbackup"

bytes="$(numfmt --from=iec "$SIZE")"
rate_bits="$(numfmt --from=iec "$RATE")"   # nbdkit_parse_size: K = 1024
scratch fleece-bench "${TMPDIR:-/var/tmp}"

src="$data/src.img" orig="$data/orig.img" tgt="$data/target.img"
st="$data/status.json" ratef="$data/rate"

# slow_target: a fresh sparse target behind the rate filter, server
# tgt.  The limit holds until lift_rate.
slow_target () {
    rm -f "$tgt" "$ratef"
    truncate -s "$bytes" "$tgt"
    serve tgt --filter=rate file "$tgt" rate="$RATE" rate-file="$ratef"
}
lift_rate () { echo 1000G >"$ratef.new"; mv "$ratef.new" "$ratef"; }

# restore: put the disk back as it was (random data, == $orig).
restore () { cp "$orig" "$src"; sync; }

results_open fleece-bench "$(nbdkit --version), $(nbdcopy --version | head -1)"
out '# disk %s of random data; slow target: rate=%s (bits/s, %.2f MiB/s)\n' \
    "$SIZE" "$RATE" "$(awk -v r="$rate_bits" 'BEGIN { print r / 8 / 1048576 }')"

head -c "$bytes" /dev/urandom >"$src"
cp "$src" "$orig"
sync

# --- snapshot read throughput --------------------------------------

# read_run plain|fleece: nbdcopy the quiet disk to null:; sets $secs.
read_run () {
    local t0 export=""
    sync
    if [ "$1" = plain ]; then
        serve src file "$src"
    else
        serve src --filter="$fleece" file "$src" fleece-store="$data"
        export=snapshot
    fi
    t0=$(now)
    nbdcopy "nbd+unix:///$export?socket=$src_sock" null:
    secs=$(since "$t0")
    stop src
}

read_run plain                          # warm-up
read_run fleece                         # warm-up
declare -A T
for ((rep = 0; rep < REPEAT; rep++)); do
    for k in $( ((rep % 2)) && echo fleece plain || echo plain fleece); do
        read_run "$k"
        T[$k]=$(best "$secs" "${T[$k]:-}")
    done
done
mibs () { awk -v s="$bytes" -v t="$1" 'BEGIN { printf "%.1f", s / 1048576 / t }'; }
out '\n(1) reading a quiet %s disk with nbdcopy to null: (warm cache,\n' "$SIZE"
out '    best of %s, order alternating)\n\n' "$REPEAT"
out '%-40s %9s %9s %8s\n' "" seconds "MiB/s" ratio
base=$(mibs "${T[plain]}")
out '%-40s %9s %9s %8s\n' "file plugin, default export" "${T[plain]}" "$base" 1.00
r=$(mibs "${T[fleece]}")
out '%-40s %9s %9s %8s\n' "fleece filter, snapshot export" "${T[fleece]}" "$r" \
    "$(ratio "$r" "$base")"

# --- writers against a slow target ---------------------------------

# writer SETUP OP-ARGS...: run nbdload against SETUP (plain, fleece,
# cbw), its JSON line into $data/j; sets $note (the backup when the
# writer ended) and $check (the backup against the disk at the
# instant).
failed=0
writer () {
    local setup="$1" t0 pull_pid prog
    shift
    note="" check=""
    restore
    settle
    case "$setup" in
    plain)
        serve src file "$src"
        "$nbdload" --op write --seconds "$SECS" "$@" "$src_uri" >"$data/j"
        stop src
        return
        ;;
    fleece|fleece-discard)
        slow_target
        serve src --filter="$fleece" file "$src" fleece-store="$data" \
            fleece-control="$socks/ctl" \
            fleece-discard-source=$([ "$setup" = fleece ] && echo false || echo true)
        "$nbdbackup" pull --json --progress \
            $([ "$setup" = fleece ] || echo --discard-source) \
            "nbd+unix:///snapshot?socket=$src_sock" "$tgt_uri" \
            >"$data/pull.json" 2>"$data/pull.err" &
        pull_pid=$!
        pids+=("$pull_pid")
        "$nbdload" --op write --seconds "$SECS" "$@" "$src_uri" >"$data/j"
        if kill -0 "$pull_pid" 2>/dev/null; then
            prog=$(tr '\r' '\n' <"$data/pull.err" |
                       grep -o '[0-9.]*/[0-9.]* MiB' | tail -1 || :)
            note="pull running (${prog:-?} done): outlasted the writer"
        else
            note="pull ENDED before the writer"
        fi
        "$nbdbackup" status --json "$socks/ctl" >"$data/ctl.json"
        note="$note; store $(mib "$(field store-used "$data/ctl.json")") MiB"
        note="$note (peak $(mib "$(field store-peak "$data/ctl.json")"))"
        t0=$(now)
        lift_rate
        wait "$pull_pid" || { echo "pull failed: $(cat "$data/pull.err")" >&2; exit 1; }
        forget "$pull_pid"
        check="pull finished $(since "$t0") s after the limit was lifted"
        stop src
        ;;
    cbw)
        slow_target
        rm -f "$st"
        serve src --filter="$cbw" file "$src" cbw-target="$tgt_uri" \
            cbw-sync=full cbw-status="$st"
        "$nbdload" --op write --seconds "$SECS" "$@" "$src_uri" >"$data/j"
        cp "$st" "$data/at-end.json"
        f="$data/at-end.json"
        prog="$(mib "$(field bytes_done "$f")")/$(mib "$(field bytes_total "$f")") MiB"
        if grep -q '"state":"running"' "$f"; then
            note="job running ($prog done): outlasted the writer"
        else
            note="job $(field state "$f") before the writer ended"
        fi
        note="$note; $(mib "$(field bytes_before_writes "$f")") MiB copied before writes"
        t0=$(now)
        lift_rate
        wait_job "$st" "$src_pid"
        grep -q '"state":"completed"' "$st" ||
            { echo "cbw job: $(cat "$st")" >&2; exit 1; }
        check="job completed $(since "$t0") s after the limit was lifted"
        stop src
        ;;
    esac
    if cmp -s "$tgt" "$orig"; then
        check="$check; target == disk at the instant (cmp)"
    else
        check="$check; target DIFFERS from the disk at the instant"
        failed=1
    fi
    stop tgt
}

label () {
    case "$1" in
    plain)  echo "file plugin, no backup" ;;
    fleece) echo "fleece + nbdbackup pull" ;;
    fleece-discard) echo "fleece + pull --discard" ;;
    cbw)    echo "cbw sync=full, push" ;;
    esac
}
# median_range V...: "median (min-max)".
median_range () {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
              printf "%g (%g-%g)", m, v[1], v[NR] }'
}

out '\n(2) writers for %s s each on the %s disk, the backup target\n' "$SECS" "$SIZE"
out '    limited to rate=%s (warm cache; rounds of the three setups in\n' "$RATE"
out '    rotated order, the first round a warm-up, not counted; before\n'
out '    each run the disk is restored and the machine settles; the\n'
out '    cbw push runs once, last)\n\n'
out '%-19s %-23s %5s %9s %8s %9s %9s  %s\n' workload setup round "MiB/s" IOPS \
    "p50 us" "p99 us" "backup when the writer ended"
checks=()
declare -A M
summary=()
for wl in "rand 4K write QD16:--pattern rand --bs 4K --qd 16" \
          "seq 1M write QD4:--pattern seq --bs 1M --qd 4"; do
    name="${wl%%:*}" args="${wl#*:}"
    order=(plain fleece fleece-discard)
    M=()
    runs=()
    for ((rep = 0; rep <= WREPS; rep++)); do
        for ((i = 0; i < 3; i++)); do
            runs+=("$rep:${order[(rep + i) % 3]}")
        done
    done
    runs+=("1:cbw")
    for run in "${runs[@]}"; do
        rep="${run%%:*}" setup="${run#*:}"
        # shellcheck disable=SC2086
        writer "$setup" $args
        m=$(field mib_per_s "$data/j")
        [ "$rep" = 0 ] || M[$setup]+="$m "
        out '%-19s %-23s %5s %9s %8s %9s %9s  %s\n' "$name" "$(label "$setup")" \
            "$([ "$rep" = 0 ] && echo warm || echo "$rep")" \
            "$m" "$(field iops "$data/j")" "$(field lat_us_p50 "$data/j")" \
            "$(field lat_us_p99 "$data/j")" "$note"
        [ -z "$check" ] || checks+=("${wl%%:*}, $(label "$setup"), round $rep: $check")
        name=""
    done
    base=$(median_range ${M[plain]} | cut -d' ' -f1)
    for setup in plain fleece fleece-discard cbw; do
        # shellcheck disable=SC2086
        summary+=("$(printf '%-19s %-23s %-34s %6s' "$([ "$setup" = plain ] && echo "${wl%%:*}")" \
            "$(label "$setup")" "$(median_range ${M[$setup]})" \
            "$(ratio "$(median_range ${M[$setup]} | cut -d' ' -f1)" "$base")")")
    done
done
out '\nsummary: MiB/s, median (min-max) of %s counted rounds (cbw: one run);\n' "$WREPS"
out 'ratio = median over the file plugin'"'"'s median\n\n'
out '%-19s %-23s %-34s %6s\n' workload setup "MiB/s" ratio
for l in "${summary[@]}"; do out '%s\n' "$l"; done

out '\ncorrectness (rate limit lifted after the writer, backup finished,\n'
out 'target compared with a copy of the disk taken before the server started):\n'
for c in "${checks[@]}"; do out '  %s\n' "$c"; done

results_close
exit "$failed"
