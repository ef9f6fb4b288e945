#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdkit-cbw-filter against its baselines, in one run:
#
# (a) Full backup throughput of a quiet disk of random data, fully
#     allocated: the cbw job (cbw-sync=full, the default 4 workers and
#     a few other worker counts), timed by its status file's
#     elapsed_seconds, which runs from the snapshot instant to the
#     target being flushed and published, against nbdcopy --flush
#     copying the same disk, served by the plain file plugin, into a
#     file: the copy rate a backup can hope for.
# (b) What protection costs writers: random 4K writes at QD16 and
#     sequential 1M writes at QD4 (bench/nbdload) for SECONDS_PER
#     seconds each, through the plain file plugin (the baseline), cbw
#     sync=none, and cbw sync=full with the job running.  The disk is
#     bigger here (BSIZE, the (a) disk repeated) and the job has one
#     worker, so that the job outlasts the writer; the output says,
#     from the status file, whether it did.
#
# Warm cache, stated: the source is in the page cache for every run
# (it was just written, and a warm-up run of each kind precedes the
# measured ones), every run writes a fresh target, and `sync` runs
# between runs so that one run's writeback does not land in the next.
#
# Prints a table with ratios to the baselines and writes it to
# bench/results/cbw-bench-DATE.txt.  Asserts nothing about speed; exit
# 77 when a tool or the build is missing, 1 when a run fails.
#
# Environment: SIZE (disk size for (a), default 2G), BSIZE (for (b),
# default 8G), SECONDS_PER (default 5),
# WORKERS (worker counts besides the default 4, default "1 2 8"),
# REPEAT (measured runs of each kind in (a), best kept, default 2),
# TMPDIR (where the disks go, default /var/tmp).
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
SIZE="${SIZE:-2G}"
BSIZE="${BSIZE:-8G}"
SECS="${SECONDS_PER:-5}"
REPEAT="${REPEAT:-2}"
WORKERS="${WORKERS:-1 2 8}"
cbw="$abs_top_builddir/filters/cbw/.libs/nbdkit-cbw-filter.so"
requires nbdkit nbdcopy
requires_built "$cbw" "$nbdload"

bytes="$(numfmt --from=iec "$SIZE")"
bbytes="$(numfmt --from=iec "$BSIZE")"
scratch cbw-bench "${TMPDIR:-/var/tmp}"

src="$data/src.img" dst="$data/dst.img" st="$data/status.json"
fresh () { rm -f "$dst" "$dst.incomplete" "$st"; sync; }

results_open cbw-bench "$(nbdkit --version), $(nbdcopy --version | head -1)"

head -c "$bytes" /dev/urandom >"$src"
sync "$src"

# --- (a) full backup throughput ------------------------------------

# nbdcopy_run: copy the quiet disk into a file; sets $secs.
nbdcopy_run () {
    local t0 t1
    fresh
    serve src file "$src"
    t0=$(now)
    nbdcopy --flush "$src_uri" "$dst"
    t1=$(now)
    stop src
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
}

# cbw_run WORKERS: a full backup with no writer; sets $secs.
cbw_run () {
    fresh
    serve src --filter="$cbw" file "$src" cbw-target="$dst" cbw-status="$st" \
        cbw-workers="$1"
    wait_job "$st" "$src_pid"
    stop src
    grep -q '"state":"completed"' "$st" || { echo "job failed: $(cat "$st")" >&2; exit 1; }
    cmp -s "$src" "$dst" || { echo "backup differs from the disk" >&2; exit 1; }
    secs=$(printf '%.3f' "$(field elapsed_seconds "$st")")
}

nbdcopy_run                             # warm-up
cbw_run 4                               # warm-up
# Each round runs every kind once, in the opposite order to the round
# before, so that no kind always follows the same neighbour (deleting
# the last run's 2G target can slow the next run down).
declare -A T
kinds=(nbdcopy 4 $WORKERS)
for ((rep = 0; rep < REPEAT; rep++)); do
    for ((i = 0; i < ${#kinds[@]}; i++)); do
        k=${kinds[rep % 2 ? ${#kinds[@]} - 1 - i : i]}
        if [ "$k" = nbdcopy ]; then nbdcopy_run; else cbw_run "$k"; k=cbw$k; fi
        T[$k]=$(best "$secs" "${T[$k]:-}")
    done
done

mibs () { awk -v s="$bytes" -v t="$1" 'BEGIN { printf "%.1f", s / 1048576 / t }'; }
out '\n(a) full backup of a quiet %s disk of random data\n' "$SIZE"
out '    (warm cache, target flushed; best of %s rounds, order alternating)\n\n' "$REPEAT"
out '%-36s %9s %9s %8s\n' "" seconds "MiB/s" ratio
base=$(mibs "${T[nbdcopy]}")
out '%-36s %9s %9s %8s\n' "nbdcopy --flush, file plugin" "${T[nbdcopy]}" "$base" 1.00
for w in 4 $WORKERS; do
    label="cbw sync=full, workers=$w"
    [ "$w" != 4 ] || label="$label (default)"
    r=$(mibs "${T[cbw$w]}")
    out '%-36s %9s %9s %8s\n' "$label" "${T[cbw$w]}" "$r" "$(ratio "$r" "$base")"
done

# --- (b) writer throughput -----------------------------------------

# The bigger disk: the (a) disk over and over, random at every cluster.
( for ((i = 0; i < (bbytes + bytes - 1) / bytes; i++)); do
      cat "$src" || exit 0              # SIGPIPE from head at the end
  done ) | head -c "$bbytes" >"$data/big.img"
mv "$data/big.img" "$src"
sync "$src"

# writer SETUP OP-ARGS...: run nbdload against SETUP (plain, none,
# full), its JSON line into $data/j; for full, the job's status when
# the writer ended into $data/at-end.json.
writer () {
    local setup="$1"; shift
    fresh
    case "$setup" in
    plain) serve src file "$src" ;;
    none)  serve src --filter="$cbw" file "$src" cbw-target="$dst" \
               cbw-sync=none cbw-status="$st" ;;
    full)  serve src --filter="$cbw" file "$src" cbw-target="$dst" \
               cbw-status="$st" cbw-workers=1 cbw-on-exit=cancel ;;
    esac
    "$nbdload" --op write --seconds "$SECS" "$@" "$src_uri" >"$data/j"
    [ "$setup" != full ] || cp "$st" "$data/at-end.json"
    stop src
    case "$setup" in
    none) grep -q '"state":"completed"' "$st" || { echo "sync=none job: $(cat "$st")" >&2; exit 1; } ;;
    esac
}

out '\n(b) writers for %s s each on a %s disk of random data\n' "$SECS" "$BSIZE"
out '    (warm cache, a warm-up run of each workload first; ratio = MiB/s\n'
out '    over the file plugin'"'"'s; cbw sync=full has one job worker so that\n'
out '    the job runs beside the writer)\n\n'
out '%-22s %-15s %9s %9s %9s %9s %6s  %s\n' workload setup "MiB/s" IOPS \
    "p50 us" "p99 us" ratio "job when the writer ended"
for wl in "rand 4K write QD16:--pattern rand --bs 4K --qd 16" \
          "seq 1M write QD4:--pattern seq --bs 1M --qd 4"; do
    name="${wl%%:*}" args="${wl#*:}"
    # shellcheck disable=SC2086
    writer plain $args                   # warm-up
    base=""
    for setup in plain none full; do
        # shellcheck disable=SC2086
        writer "$setup" $args
        m=$(field mib_per_s "$data/j")
        [ -n "$base" ] || base="$m"
        note=""
        if [ "$setup" = full ]; then
            f="$data/at-end.json"
            d=$(( $(field bytes_done "$f") * 100 / $(field bytes_total "$f") ))
            if grep -q '"state":"running"' "$f"; then
                note="running ($d% done): outlasted the writer"
            else
                note="$(field state "$f") before the writer ended"
            fi
            note="$note; $(awk -v b="$(field bytes_before_writes "$f")" \
                'BEGIN { printf "%.0f MiB", b / 1048576 }') copied before writes"
        fi
        out '%-22s %-15s %9s %9s %9s %9s %6s  %s\n' "$name" \
            "$(case $setup in plain) echo file plugin;; *) echo "cbw sync=$setup";; esac)" \
            "$m" "$(field iops "$data/j")" "$(field lat_us_p50 "$data/j")" \
            "$(field lat_us_p99 "$data/j")" "$(ratio "$m" "$base")" "$note"
        name=""
    done
done

results_close
