#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Giving back what was read (nbdkit-fleece-filter's
# fleece-discard-source, nbdbackup pull --discard-source): how big does
# the fleece store get, and how fast is the writer, during a pull of
# an allocated disk under a first-touch writer?
#
# The disk (SIZE, default 2G) is random data, fully allocated.  The
# writer (bench/nbdload) does a fixed number of random 4K writes at
# QD16, one per 64K cluster on average (SIZE / 64K writes, seeded per
# repetition, the same seeds for every mode), so almost every write is
# the first to its cluster, as in a real backup window.  Two paces:
#
#   burst    all of them at once, from the start (the issue's harness:
#            the writer is done long before the pull);
#   spread   in SLICES (default 8) equal slices, slice i starting at
#            i/SLICES of the time a pull alone takes (measured first,
#            median of 3), as a writer that keeps going through the
#            backup window; the writer's rate is its IOPS while
#            writing (all writes over the slices' summed times).
#
# Modes:
#
#   none     the writer alone, file plugin, no backup: the baseline;
#   pull     fleece (no discard: what there was before) while
#            `nbdbackup pull` copies the snapshot to a local raw file;
#   discard  the same with fleece-discard-source=true and
#            `nbdbackup pull --discard-source`.
#
# One start event for each run: the pull (if any) and the writer are
# started together right after the server is up.  The writer's figures
# are nbdload's; the pull's time is from that start until it exited
# (target flushed and renamed); the store's peak is the server's own
# high-water mark (query-status store-peak), so no sampling.  Every
# pulled target is compared with the disk at the instant (cmp).
#
# A warm-up run of each mode is dropped, then REPS (default 3) counted
# repetitions, the order of the modes rotating each time (A B C, B C
# A, ...).  Prints medians with min and max, the load average at the
# start and end, and ratios; writes the table to
# bench/results/fleece-discard-bench-DATE.txt.  Asserts nothing about
# speed: exit 1 only when a run fails or a copy differs.
#
# Environment: SIZE, REPS, SLICES, TMPDIR (default /var/tmp; needs
# 3 * SIZE).
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
SIZE="${SIZE:-2G}"
REPS="${REPS:-3}"
SLICES="${SLICES:-8}"
fleece="$abs_top_builddir/filters/fleece/.libs/nbdkit-fleece-filter.so"
requires nbdkit cmp numfmt
requires_built "$fleece" "$nbdload" "$nbdbackup"

bytes="$(numfmt --from=iec "$SIZE")"
writes=$((bytes / 65536))
scratch fleece-discard-bench "${TMPDIR:-/var/tmp}"
src="$data/src.img" orig="$data/orig.img" tgt="$data/target.img"

results_open fleece-discard-bench "$(nbdkit --version)"
out '# disk %s of random data; writer: %s random 4K writes at QD16\n' \
    "$SIZE" "$writes"
out '# (one per 64K cluster on average); pull: nbdbackup pull to a raw\n'
out '# file on the same file system, default options.  2 CPUs shared with\n'
out '# other work: read the load averages.\n'

head -c "$bytes" /dev/urandom >"$src"
cp "$src" "$orig"
sync

# writer PACE SEED T0: the writes, burst or spread (from T0 over
# $alone seconds); sets w_mibs w_iops.
writer () {
    local pace="$1" seed="$2" t0="$3" i wait n=$((writes / SLICES))
    if [ "$pace" = burst ]; then
        "$nbdload" --op write --pattern rand --bs 4K --qd 16 \
            --bytes $((writes * 4096)) --seed "$seed" "$src_uri" >"$data/j"
        w_mibs=$(field mib_per_s "$data/j")
        w_iops=$(field iops "$data/j")
        return
    fi
    : >"$data/slices"
    for ((i = 0; i < SLICES; i++)); do
        wait=$(awk -v t0="$t0" -v now="$(now)" -v a="$alone" -v i="$i" \
                   -v k="$SLICES" 'BEGIN { w = t0 + a * i / k - now;
                                           print (w > 0 ? w : 0) }')
        sleep "$wait"
        "$nbdload" --op write --pattern rand --bs 4K --qd 16 \
            --bytes $((n * 4096)) --seed $((seed * 1000 + i)) "$src_uri" \
            >>"$data/slices"
    done
    read -r w_iops w_mibs < <(sed 's/.*"seconds":\([0-9.]*\).*"ops":\([0-9]*\).*/\1 \2/' \
        "$data/slices" | awk '{ t += $1; o += $2 }
            END { printf "%.1f %.2f\n", o / t, o * 4096 / 1048576 / t }')
}

# run MODE PACE SEED: one run; sets w_mibs w_iops p_secs peak.
run () {
    local mode="$1" pace="$2" seed="$3" t0 pull_pid ctl
    cp "$orig" "$src"
    rm -f "$tgt"
    sync
    ctl="$socks/ctl"
    case "$mode" in
    none)    serve src file "$src" ;;
    pull)    serve src --filter="$fleece" file "$src" fleece-store="$data" \
                 fleece-control="$ctl" ;;
    discard) serve src --filter="$fleece" file "$src" fleece-store="$data" \
                 fleece-control="$ctl" fleece-discard-source=true ;;
    esac
    t0=$(now)
    if [ "$mode" != none ]; then
        "$nbdbackup" pull --no-progress \
            $([ "$mode" = discard ] && echo --discard-source) \
            "nbd+unix:///snapshot?socket=$src_sock" "$tgt" \
            2>"$data/pull.err" &
        pull_pid=$!
        pids+=("$pull_pid")
    fi
    w_mibs="" w_iops=""
    [ "$pace" = alone ] || writer "$pace" "$seed" "$t0"
    p_secs="" peak=""
    if [ "$mode" != none ]; then
        wait "$pull_pid" ||
            { echo "pull failed: $(cat "$data/pull.err")" >&2; exit 1; }
        forget "$pull_pid"
        p_secs=$(since "$t0")
        "$nbdbackup" status --json "$ctl" >"$data/ctl.json"
        peak=$(mib "$(field store-peak "$data/ctl.json")")
    fi
    stop src
    if [ "$mode" != none ] && ! cmp -s "$tgt" "$orig"; then
        echo "$mode: the pulled copy DIFFERS from the disk at the instant" >&2
        exit 1
    fi
}

# stats V...: "median (min-max)".
stats () {
    printf '%s\n' "$@" | sort -g | awk '
        { v[NR] = $1 }
        END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
              printf "%g (%g-%g)", m, v[1], v[NR] }'
}
median () { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# The time a pull alone takes (for the spread pace).
run pull alone 0                                       # warm-up
t=()
for i in 1 2 3; do run pull alone 0; t+=("$p_secs"); done
alone=$(median "${t[@]}")
out '# a pull alone: %s s (median of 3: %s)\n' "$alone" "${t[*]}"

modes=(none pull discard)
for pace in burst spread; do
    out '\n== writer pace: %s\n' "$pace"
    for m in "${modes[@]}"; do run "$m" "$pace" 0; done   # warm-up, dropped
    declare -A W=() I=() P=() K=()
    for ((rep = 1; rep <= REPS; rep++)); do
        for ((k = 0; k < ${#modes[@]}; k++)); do
            m=${modes[$(((k + rep) % ${#modes[@]}))]}
            run "$m" "$pace" "$rep"
            W[$m]+="$w_mibs " I[$m]+="$w_iops " P[$m]+="$p_secs " K[$m]+="$peak "
            out '  rep %d %-8s writer %8s MiB/s %9s IOPS; pull %6s s; store peak %6s MiB\n' \
                "$rep" "$m" "$w_mibs" "$w_iops" "${p_secs:--}" "${peak:--}"
        done
    done
    out '\nmedian (min-max) of %s repetitions, pace %s:\n' "$REPS" "$pace"
    out '%-8s %-26s %-26s %-20s %-20s\n' mode "writer MiB/s" "writer IOPS" \
        "pull seconds" "store peak MiB"
    for m in "${modes[@]}"; do
        # shellcheck disable=SC2086
        out '%-8s %-26s %-26s %-20s %-20s\n' "$m" "$(stats ${W[$m]})" \
            "$(stats ${I[$m]})" \
            "$([ "$m" = none ] && echo - || stats ${P[$m]})" \
            "$([ "$m" = none ] && echo - || stats ${K[$m]})"
    done
    # shellcheck disable=SC2086
    {
        wn=$(median ${W[none]}) wp=$(median ${W[pull]})
        wd=$(median ${W[discard]})
        kp=$(median ${K[pull]}) kd=$(median ${K[discard]})
    }
    out 'ratios of medians (%s): store peak discard/pull %s; writer\n' \
        "$pace" "$(ratio "$kd" "$kp")"
    out '  discard/pull %s, pull/no backup %s, discard/no backup %s\n' \
        "$(ratio "$wd" "$wp")" "$(ratio "$wp" "$wn")" "$(ratio "$wd" "$wn")"
done
out '\nevery pulled copy equals the disk at the instant (cmp)\n'
results_close
