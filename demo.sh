#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# The live-backup demo (`bash setup.sh demo` runs it after building).
#
# It makes a 1 GiB disk of its own (random and patterned data, holes,
# an allocated run of zeroes), keeps a copy of it as the oracle of the
# snapshot instant, serves it with nbdkit and the cbw filter from this
# build tree, and writes to it through four connections while the
# backup job runs.  Then it shows that the backup equals the disk as it
# was at the snapshot instant, that the live disk holds every write,
# how long the backup took and how sparse it is.
#
# So that the writers and the job overlap for long enough to watch,
# nbdkit's delay filter below cbw adds DEMO_DELAY (default 40ms) to
# every read of the disk, standing in for a slow disk; the job's rate
# shown is the throttled disk's.  bench/cbw-bench.sh measures the
# unthrottled rate.
#
# Environment: DEMO_SEED (pitwriter's seed, default random),
# DEMO_DELAY (default 40ms), TMPDIR (default /var/tmp).
# Exit status: 0 when every check passes, 1 when one fails.
set -euo pipefail
export LC_ALL=C

top="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cbw="$top/filters/cbw/.libs/nbdkit-cbw-filter.so"
pitwriter="$top/tests/pitwriter"
wait_for_job="$top/tests/wait-for-job"
seed="${DEMO_SEED:-$((RANDOM * 32768 + RANDOM))}"
delay="${DEMO_DELAY:-40ms}"
MiB=1048576
slab=64                                 # MiB per region of the disk

die () { echo "demo: $*" >&2; exit 1; }
heading () { printf '\n== %s ==\n\n' "$*"; }
say () { if [ $# -gt 0 ]; then printf '   %s\n' "$*"; else echo; fi; }
mib () { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
allocated () { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }
# field NAME FILE: a number or string field of a one-line JSON object.
field () { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" "$2"; }

differs () { ! cmp -s "$1" "$2"; }

failures=0
# check DESCRIPTION COMMAND...: run COMMAND, print OK or FAIL.
check () {
    local what="$1"; shift
    if "$@"; then
        printf '   [ OK ] %s\n' "$what"
    else
        printf '   [FAIL] %s\n' "$what"
        failures=$((failures + 1))
    fi
}

# --- prerequisites -------------------------------------------------

for c in nbdkit cmp sha256sum awk make; do
    command -v "$c" >/dev/null || die "$c is not installed (try: bash setup.sh demo)"
done
[ -f "$cbw" ] || die "$cbw is missing: build first (bash setup.sh build)"
if [ ! -x "$pitwriter" ]; then
    echo "demo: building tests/pitwriter"
    make -s -C "$top/tests" pitwriter >/dev/null ||
        die "could not build tests/pitwriter"
fi

tmp="$(mktemp -d "${TMPDIR:-/var/tmp}/nbdkit-backup-demo.XXXXXX")"
server=""
cleanup () {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
        # The server and its --run command are in their own process
        # group (setsid below): stop the group we started.
        kill -TERM -- "-$server" 2>/dev/null || kill -TERM "$server" 2>/dev/null || :
        wait "$server" 2>/dev/null || :
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

avail=$(( $(df -Pk "$tmp" | awk 'NR == 2 { print $4 }') * 1024 ))
[ "$avail" -ge $((4 * 1024 * MiB)) ] ||
    die "need 4 GiB free in ${TMPDIR:-/var/tmp} (set TMPDIR elsewhere)"

disk="$tmp/disk.img"            # the live disk nbdkit serves
oracle="$tmp/snapshot.img"      # the disk at the snapshot instant
model="$tmp/model.img"          # what the live disk must hold after writes
backup="$tmp/backup.img"        # the cbw target
status="$tmp/status.json"

# --- the disk ------------------------------------------------------

heading "1. A 1 GiB disk with data, patterns and holes"

# 16 regions of 64 MiB.  r = random, p = patterned text, h = hole,
# z = allocated zeroes, R = random in the first half, hole after.
layout=prrrrhrrrphrrzRh
truncate -s 1G "$disk"
for ((i = 0; i < 16; i++)); do
    case "${layout:i:1}" in
    r) dd if=/dev/urandom of="$disk" bs=1M seek=$((i * slab)) count=$slab \
           iflag=fullblock conv=notrunc status=none ;;
    R) dd if=/dev/urandom of="$disk" bs=1M seek=$((i * slab)) count=$((slab / 2)) \
           iflag=fullblock conv=notrunc status=none ;;
    p) { yes "nbdkit-backup demo: region $i as it was at the snapshot instant." ||
             :; } |
           head -c $((slab * MiB)) |
           dd of="$disk" bs=1M seek=$((i * slab)) iflag=fullblock conv=notrunc status=none ;;
    z) dd if=/dev/zero of="$disk" bs=1M seek=$((i * slab)) count=$slab \
           conv=notrunc status=none ;;
    esac
done
# Scattered 100 KiB runs at unaligned offsets inside the holes, so that
# some clusters are only partly data.
for ((i = 0; i < 16; i++)); do
    [ "${layout:i:1}" = h ] || continue
    for ((j = 0; j < 8; j++)); do
        off=$(( i * slab * MiB + j * 8 * MiB + (RANDOM * 7 + 4321) % (4 * MiB) ))
        dd if=/dev/urandom of="$disk" bs=100K count=1 seek="$off" \
           oflag=seek_bytes iflag=fullblock conv=notrunc status=none
    done
done
disk_alloc=$(allocated "$disk")
say "layout, 64 MiB per letter: $layout"
say "  r random, p patterned text, z allocated zeroes,"
say "  h hole (with a few 100 KiB runs), R half random, half hole"
say "$disk: 1024 MiB, $(mib "$disk_alloc") allocated"

cp --sparse=always "$disk" "$oracle"
cp --sparse=always "$disk" "$model"
say "copied aside as the snapshot-instant oracle: $(basename "$oracle")"

# --- the live backup -----------------------------------------------

heading "2. Back it up while four writers change it"

say "nbdkit -U - --filter=cbw --filter=delay file disk.img delay-read=$delay \\"
say "       cbw-target=backup.img cbw-status=status.json \\"
say "       --run 'pitwriter --seed $seed --connections 4 --ops 1000 ...'"
say
say "The snapshot instant is when nbdkit starts.  pitwriter issues 1000"
say "random writes, zeroes and trims (1 byte to 1 MiB) through 4"
say "connections at once and keeps a model of what the disk must hold."
say "The delay filter adds $delay to every read of the disk (a slow"
say "disk), so that the job takes long enough to race the writers."
say

# The --run command: the writer, a copy of the status when it ends,
# then wait for the job.  Quoted with %q so that any TMPDIR works.
printf -v run 'date +%%s.%%N >%q && %q --seed %q --connections 4 --ops 1000 --max-len 1M --model %q "$uri" >%q && date +%%s.%%N >%q && cp %q %q && %q %q 150' \
    "$tmp/writer.start" "$pitwriter" "$seed" "$model" "$tmp/writer.out" \
    "$tmp/writer.end" "$status" "$tmp/status.writer-end.json" \
    "$wait_for_job" "$status"
t0=$(date +%s.%N)
setsid nbdkit -U - --filter="$cbw" --filter=delay file "$disk" \
    delay-read="$delay" cbw-target="$backup" cbw-status="$status" \
    --run "$run" >"$tmp/nbdkit.log" 2>&1 &
server=$!

printf '   %6s  %-10s %4s  %11s  %20s  %s\n' \
    time "job state" done "of snapshot" "copied before writes" writers
progress () {
    printf '   %5.1fs  %-10s %3d%%  %11s  %20s  %s\n' \
        "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" \
        "$1" $(( $(field bytes_done "$status") * 100 / $(field bytes_total "$status") )) \
        "$(mib "$(field bytes_done "$status")")" \
        "$(mib "$(field bytes_before_writes "$status")")" \
        "$([ -s "$tmp/writer.end" ] && echo done || echo writing)"
}
# A line a second, and one whenever the state changes.
shown=""
for ((n = 1; ; n++)); do
    sleep 0.25
    kill -0 "$server" 2>/dev/null || break
    [ -s "$status" ] || continue
    state=$(field state "$status")
    if [ $((n % 4)) -eq 0 ] || [ "$state" != "$shown" ]; then
        progress "$state"
        shown="$state"
    fi
    [ "$n" -lt 720 ] || die "the backup did not finish in 3 minutes"
done
rc=0; wait "$server" || rc=$?
server=""
[ "$shown" = "$(field state "$status")" ] || progress "$(field state "$status")"
if [ "$rc" -ne 0 ] || [ ! -s "$tmp/writer.end" ]; then
    echo "demo: the server or the writer failed (exit $rc):" >&2
    tail -n 20 "$tmp/nbdkit.log" >&2
    exit 1
fi

ws=$(awk -v a="$t0" -v b="$(cat "$tmp/writer.start")" 'BEGIN { printf "%.1f", b - a }')
we=$(awk -v a="$t0" -v b="$(cat "$tmp/writer.end")" 'BEGIN { printf "%.1f", b - a }')
wstate=$(field state "$tmp/status.writer-end.json")
wdone=$(( $(field bytes_done "$tmp/status.writer-end.json") * 100 / $(field bytes_total "$tmp/status.writer-end.json") ))
elapsed=$(field elapsed_seconds "$status")
before=$(field bytes_before_writes "$status")
say
say "timeline (seconds after the server started):"
printf '   %6.1f  snapshot instant, the backup job starts\n' 0
printf '   %6.1f  writers start\n' "$ws"
printf '   %6.1f  writers done: the job was %s, %d%% done\n' "$we" "$wstate" "$wdone"
printf '   %6.1f  job %s\n' "$elapsed" "$(field state "$status")"
say
# pitwriter's summary is one line of KEY=VALUE words.
pw () { tr ' ' '\n' <"$tmp/writer.out" | sed -n "s/^$1=//p"; }
say "pitwriter: $(pw ops) requests, $(mib "$(pw bytes)"): $(pw write) writes" \
    "($(mib "$(pw write_bytes)")),"
say "  $(pw zero) zeroes ($(mib "$(pw zero_bytes)")), $(pw trim) trims ($(mib "$(pw trim_bytes)"))"

# --- the checks ----------------------------------------------------

heading "3. The backup is the disk at the snapshot instant"

sum_backup=$(sha256sum <"$backup" | cut -d' ' -f1)
sum_oracle=$(sha256sum <"$oracle" | cut -d' ' -f1)
sum_disk=$(sha256sum <"$disk" | cut -d' ' -f1)
say "sha256 backup.img    $sum_backup"
say "sha256 snapshot.img  $sum_oracle   (oracle)"
say "sha256 disk.img      $sum_disk   (live, after the writes)"
say
check "job state is completed, no error" \
    grep -q '"state":"completed".*"error":null' "$status"
check "writes overlapped the job: $(mib "$before") copied ahead of writes" \
    test "$before" -gt 0
check "the job was still running when the writers finished" \
    test "$wstate" = running
check "cmp backup.img snapshot.img: identical" cmp "$backup" "$oracle"
check "sha256 of backup equals sha256 of the snapshot" \
    test "$sum_backup" = "$sum_oracle"
check "the live disk changed (cmp disk.img snapshot.img differs)" \
    differs "$disk" "$oracle"
check "cmp disk.img model.img: the live disk holds every write" \
    cmp "$disk" "$model"

heading "4. Time, throughput and sparseness"

say "backup job: $(mib "$(field bytes_total "$status")") snapshot in $(printf '%.1f' "$elapsed") s," \
    "$(printf '%.1f' "$(field rate_mib_per_second "$status")") MiB/s"
say "  data written to the target:       $(mib "$(field bytes_written "$status")")"
say "  zero clusters, not written:       $(mib "$(field bytes_zero "$status")")"
say "  copied ahead of client writes:    $(mib "$before")"
say "  (every read of the disk was delayed by $delay: see bench/cbw-bench.sh"
say "   for the unthrottled rate)"
say
backup_alloc=$(allocated "$backup")
say "allocated bytes (of 1024 MiB):"
say "  disk at the snapshot instant      $(mib "$disk_alloc")"
say "  oracle (cp --sparse=always)       $(mib "$(allocated "$oracle")")"
say "  backup                            $(mib "$backup_alloc")"
say "  live disk after the writes        $(mib "$(allocated "$disk")")"
say
check "the backup is sparse: no more allocated than the disk was" \
    test "$backup_alloc" -le "$disk_alloc"

echo
if [ "$failures" -eq 0 ]; then
    echo "demo: all checks passed (pitwriter seed $seed)"
else
    echo "demo: $failures check(s) FAILED (reproduce with DEMO_SEED=$seed)"
    exit 1
fi
