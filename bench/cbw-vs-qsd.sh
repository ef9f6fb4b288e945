#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdkit-backup's cbw and fleece filters against qemu-storage-daemon
# (qsd), side by side in one run, on the same disks, with the same
# writer (bench/nbdload, random 4K writes at queue depth 16) and the
# same clock.  Prints medians with min and max and the ratios; asserts
# nothing.
#
# Method (why the figures can be trusted):
#  - Every row runs its sides in turn, each rep starting one side
#    later (A B C, B C A, C A B, ...): a run inherits the machine's
#    state from the one before it (memory freed by the last target,
#    dirty pages), and in a fixed order the side after base, which
#    frees no target, always paid for it (cbw's first-touch writer
#    measured 20k IOPS after base, 37k after itself).  Rep 0 is a
#    warm-up and is dropped, reps 1..REPS are counted.  Medians, with
#    the min and max, are printed, and the load average before and
#    after each row.
#  - One clock for everyone: the script's own wall clock.  A push
#    backup is timed from just before the command that starts it
#    (QMP blockdev-backup to qsd, backup-start on the cbw control
#    socket, or launching nbdcopy) until the job's completion event
#    has arrived *and* the target file has been fsync'd by the script
#    (coreutils `sync FILE`): qsd's job does not flush its target, cbw
#    and nbdcopy --flush do, so the fsync makes all three pay for the
#    same durable result.  Both servers are up before the clock starts.
#    A writer's figure is nbdload's own IOPS (same tool both sides).
#  - Disks: 2 GiB (SIZE) "alloc" (random data everywhere) and
#    "sparse" (10% of the clusters hold random data, in 1 MiB runs at
#    random places, the rest are holes).  The sparse disk is restored
#    from its master (cp --sparse=always) before every run that writes
#    to it; the allocated one is not (its content does not change its
#    speed).  Every run writes a fresh target; `sync` runs between
#    runs so that one run's writeback does not land in the next, and a
#    push starts with its source in the page cache, whoever ran before
#    (nbdcopy evicts what it read: the side after it paid for that).
#
# Rows (WHAT selects them; default all):
#  first   writer, first touch: 32768 random 4K writes (one per 64K
#          cluster on average) during sync=none; sides: file plugin
#          with no backup (the limit), cbw, qsd.
#  steady  writer, steady state: a sequential 1M pass over the whole
#          disk first (every cluster gets copied), `sync`, then random
#          4K writes for SECONDS_PER seconds; same sides.
#  slow    writer, first touch, into a slow NBD target: cbw-target is
#          a second nbdkit behind the rate filter (SLOW_RATE bits/s,
#          default 400M, 50 MiB/s) with burstiness=0.1: the filter's
#          default lets 2 s worth (100 MB) through at full speed
#          first, which is more than the whole timed run, so without
#          it the target is not slow at all while it is measured.
#          cbw-buffer-size=SLOW_BUFFER (default 256M, all of it the
#          pre-faulted pool) and as many writes as the buffer holds
#          clusters, so the figure is the writer's rate while the
#          buffer lasts; sides: file plugin with no backup, cbw (and
#          old).  Each cbw run then drains the buffer at the slow rate
#          before the server exits (untimed).
#  raw     full push backup of the quiet disk into a new raw file;
#          sides: cbw, qsd, and nbdcopy --flush file to file (the
#          copy limit).
#  qcow2   full push backup into a new qcow2 image; cbw, qsd.
#  snap    snapshot export read (nbdcopy to null:) while the first-
#          touch writer runs on the live export; nbdkit's fleece
#          filter against qsd's copy-before-write + snapshot-access.
#          Also the store's size when the read is done (du).
#
# qemu-storage-daemon, set up as a user who knows QEMU would:
#  - raw format node over a file node, cache=writeback (the page
#    cache, as nbdkit's file plugin uses it), aio=threads (the
#    default for buffered I/O; io_uring gains nothing there);
#  - no iothread: the main loop serves the NBD exports and runs the
#    job.  QEMU 10.0.2 aborts (bdrv_insert_node: assertion on the
#    AioContext) when blockdev-backup's source sits in an iothread, and
#    on 2 CPUs a second thread buys nothing; the same for both QEMUs;
#  - blockdev-backup with the job's defaults (64K clusters for a raw
#    target, 64 parallel workers, no copy offload: copy_file_range
#    would make the kernel do the copy and is not what a backup to
#    another host can use) and "auto-finalize"/"auto-dismiss" on;
#  - targets added with discard=unmap so the job's zero writes punch
#    holes instead of writing zeroes, as a new sparse target wants;
#  - fleecing as QEMU documents it (docs/interop/... image fleecing
#    with snapshot-access, QEMU >= 7.1): a qcow2 temporary node whose
#    backing is the source, a copy-before-write filter node (source as
#    file, temporary as target) exported writable for the writer, and
#    a snapshot-access node over it exported read-only.
# nbdkit-backup: nbdkit's file plugin (default thread model, 16
# threads); cbw with cbw-control (backup-start) and default settings
# (64K clusters, 4 workers); fleece with its store in $DIR.
#
# QEMU versions: Debian 12's (on PATH) and, if found, QEMU 10 from
# bookworm-backports unpacked into $QEMU10 (default /var/tmp/qemu10/
# root/usr/bin).  GET_QEMU10=1 downloads it there first with a private
# apt list (apt-get download + dpkg -x: nothing is installed, the
# system's QEMU is untouched); without it, a missing QEMU 10 is
# skipped with a note.
#
# Environment: SIZE (2G), REPS (3), SECONDS_PER (5), WHAT (first
# steady slow raw qcow2 snap), SLOW_RATE, SLOW_BUFFER, DISKS (alloc sparse), SIDES (which sides:
# base cbw q7 q10, and old: cbw and fleece from the build tree
# OLD_BUILDDIR, to compare two versions in one run; default all but
# old), CBW_NBDKIT_ARGS (more nbdkit options for the cbw and fleece
# sides, such as --threads=4; none by default), DIR (/var/tmp),
# QEMU10, GET_QEMU10.
# Needs about 5 x SIZE of free space in DIR.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
SIZE="${SIZE:-2G}"
REPS="${REPS:-3}"
SECS="${SECONDS_PER:-5}"
DIR="${DIR:-/var/tmp}"
WHAT="${WHAT:-first steady slow raw qcow2 snap}"
DISKS="${DISKS:-alloc sparse}"
SIDES="${SIDES:-base cbw q7 q10}"
QEMU10="${QEMU10:-/var/tmp/qemu10/root/usr/bin}"
read -r -a nbdkit_args <<<"${CBW_NBDKIT_ARGS:-}"
cbw="$abs_top_builddir/filters/cbw/.libs/nbdkit-cbw-filter.so"
fleece="$abs_top_builddir/filters/fleece/.libs/nbdkit-fleece-filter.so"
requires nbdkit qemu-storage-daemon qemu-img socat nbdcopy
requires_built "$cbw" "$fleece" "$nbdload"

# ---- QEMU 10 from bookworm-backports, unpacked, never installed ----
get_qemu10 () {
    local top="${QEMU10%/root/usr/bin}" o
    mkdir -p "$top/apt/lists/partial" "$top/apt/cache/archives/partial" "$top/debs"
    echo "deb http://deb.debian.org/debian bookworm-backports main" \
        > "$top/apt/sources.list"
    o=(-o Dir::Etc::sourcelist="$top/apt/sources.list"
       -o Dir::Etc::sourceparts=/dev/null
       -o Dir::State::Lists="$top/apt/lists" -o Dir::Cache="$top/apt/cache")
    apt-get "${o[@]}" update >/dev/null &&
        (cd "$top/debs" && apt-get "${o[@]}" download qemu-system-common qemu-utils) &&
        for d in "$top"/debs/*.deb; do dpkg -x "$d" "$top/root"; done
}
declare -A QSD
QSD[q7]="$(command -v qemu-storage-daemon)"
if [ -n "${GET_QEMU10:-}" ] && ! [ -x "$QEMU10/qemu-storage-daemon" ]; then
    get_qemu10 >&2 || echo "# could not fetch QEMU 10" >&2
fi
if [ -x "$QEMU10/qemu-storage-daemon" ] &&
       "$QEMU10/qemu-storage-daemon" --version >/dev/null 2>&1; then
    QSD[q10]="$QEMU10/qemu-storage-daemon"
fi
sides=()
for s in $SIDES; do
    case "$s" in
        q7|q10) [ -n "${QSD[$s]:-}" ] && sides+=("$s") ||
                    echo "# note: $s skipped (no qemu-storage-daemon for it; GET_QEMU10=1 fetches QEMU 10)" ;;
        base|cbw) sides+=("$s") ;;
        old) [ -n "${OLD_BUILDDIR:-}" ] && sides+=("$s") ||
                 echo "# note: old skipped (set OLD_BUILDDIR to an older build tree)" ;;
        *) echo "SIDES: unknown side $s" >&2; exit 2 ;;
    esac
done

scratch cbw-vs-qsd "$DIR"
bytes=$(numfmt --from=iec "$SIZE")
ncl=$((bytes / 65536))
results_open cbw-vs-qsd "nbdkit $(nbdkit --version | awk '{print $2}'), qsd $("${QSD[q7]}" --version | awk 'NR==1 {print $3}')${QSD[q10]:+ and $("${QSD[q10]}" --version | awk 'NR==1 {print $3}')}"
out '# disks %s (%s), reps %s + 1 warm-up, sides: %s\n' "$SIZE" "$DISKS" "$REPS" "${sides[*]}"
[ -z "${CBW_NBDKIT_ARGS:-}" ] || out '# cbw and fleece sides served with: nbdkit %s\n' "$CBW_NBDKIT_ARGS"

# ---- disks ----
mk_disks () {
    local d
    for d in $DISKS; do
        case "$d" in
        alloc) head -c "$bytes" /dev/urandom > "$data/alloc.master" ;;
        sparse)
            # 10% of the clusters: 1 MiB runs of data at random places.
            truncate -s "$bytes" "$data/sparse.master"
            local runs=$((bytes / 1048576 / 10)) i
            for i in $(shuf -i 0-$((bytes / 1048576 - 1)) -n "$runs" --random-source=<(yes)); do
                head -c 1048576 /dev/urandom
                printf '%s\n' "$i" >&3
            done 3>"$data/sparse.idx" > "$data/sparse.data"
            i=0
            while read -r m; do
                dd if="$data/sparse.data" of="$data/sparse.master" bs=1M \
                   skip=$i seek="$m" count=1 conv=notrunc status=none
                i=$((i + 1))
            done < "$data/sparse.idx"
            rm -f "$data/sparse.data" ;;
        *) echo "DISKS: unknown disk $d" >&2; exit 2 ;;
        esac
    done
    sync
}
# src DISK: the source disk for a run (restored if it may have changed).
src () {
    if [ "$1" = sparse ] || ! [ -e "$data/src.$1" ]; then
        rm -f "$data/src.$1"
        cp --sparse=always "$data/$1.master" "$data/src.$1"
        sync "$data/src.$1"     # Not written back during the run.
    fi
    echo "$data/src.$1"
}
# clean_targets: remove the last run's files, and let the machine
# settle (lib.sh) before the next run.
clean_targets () {
    rm -f "$data"/tgt.* "$data"/tmp.qcow2 "$data"/store.img
    settle
}

# ---- QMP sessions (qsd's monitor, cbw's control socket) ----
# qmp_open NAME SOCKET: commands go in through a FIFO and replies and
# events collect in $data/NAME.qmp, so no reply is missed.
declare -A qmp_n qmp_fd qmp_socat
qmp_open () {
    local n="$1" fd
    rm -f "$data/$n.in" "$data/$n.qmp"
    mkfifo "$data/$n.in"
    : > "$data/$n.qmp"
    socat UNIX-CONNECT:"$2" - <"$data/$n.in" >"$data/$n.qmp" 3>&- &
    qmp_socat[$n]=$!; pids+=("$!")
    exec {fd}>"$data/$n.in"
    qmp_fd[$n]=$fd; qmp_n[$n]=0
    qmp "$n" '{"execute":"qmp_capabilities"}'
}
qmp_close () {
    local fd="${qmp_fd[$1]}"
    exec {fd}>&-
    wait_gone "${qmp_socat[$1]}" || :
    kill "${qmp_socat[$1]}" 2>/dev/null || :
    forget "${qmp_socat[$1]}"
}
# qmp NAME JSON...: send, wait for each reply; stop on an error.
qmp () {
    local n="$1" c
    shift
    for c in "$@"; do
        echo "$c" >&"${qmp_fd[$n]}"
        qmp_n[$n]=$((qmp_n[$n] + 1))
        until [ "$(grep -c '"return"\|"error"' "$data/$n.qmp")" -ge "${qmp_n[$n]}" ]; do
            kill -0 "${qmp_socat[$n]}" 2>/dev/null ||
                { echo "$n went away after $c: $(cat "$data/$n.qmp")" >&2; exit 1; }
            sleep 0.005
        done
        if grep -q '"error"' "$data/$n.qmp"; then
            echo "QMP error ($n): $(cat "$data/$n.qmp")" >&2; exit 1
        fi
    done
}
# qmp_wait NAME EVENT: until EVENT has arrived.
qmp_wait () {
    until grep -q "\"$2\"" "$data/$1.qmp"; do
        kill -0 "${qmp_socat[$1]}" 2>/dev/null ||
            { echo "$1 went away: $(cat "$data/$1.qmp")" >&2; exit 1; }
        sleep 0.005
    done
}

qsd_start () {                  # qsd_start q7|q10
    new_socket
    start_server qsd "$sock" "$pidf" "${QSD[$1]}" \
        --chardev socket,path="$sock",server=on,wait=off,id=m0 \
        --monitor chardev=m0 --pidfile "$pidf"
    qmp_open qsd "$qsd_sock"
}
qsd_stop () { qmp_close qsd; stop qsd; }
qsd_src () {                    # qsd_src FILE: node "src"
    qmp qsd '{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"src","file":{"driver":"file","filename":"'"$1"'","aio":"threads","cache":{"direct":false}}}}'
}
qsd_tgt () {                    # qsd_tgt raw|qcow2 FILE: node "tgt"
    qmp qsd '{"execute":"blockdev-add","arguments":{"driver":"'"$1"'","node-name":"tgt","discard":"unmap","file":{"driver":"file","filename":"'"$2"'","discard":"unmap"}}}'
}
qsd_export () {                 # qsd_export NODE NAME WRITABLE
    qmp qsd '{"execute":"block-export-add","arguments":{"type":"nbd","id":"'"$2"'","node-name":"'"$1"'","name":"'"$2"'","writable":'"$3"'}}'
}
qsd_nbd () { qmp qsd '{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"'"$socks/q.sock"'"}}}}'; }
qsd_backup () {                 # qsd_backup SYNC
    qmp qsd '{"execute":"blockdev-backup","arguments":{"job-id":"j","device":"src","target":"tgt","sync":"'"$1"'"}}'
}
new_target () {                 # new_target raw|qcow2 PATH
    rm -f "$2" "$2.incomplete"
    if [ "$1" = qcow2 ]; then qemu-img create -q -f qcow2 "$2" "$SIZE"
    else truncate -s "$SIZE" "$2"; fi
}
cbw_start () {                  # cbw_start FILE: cbw, idle, with a control socket
    new_socket
    local ctl="$socks/ctl.$nserved"
    serve cbw "${nbdkit_args[@]}" --filter="$cbw" file "$1" cbw-control="$ctl"
    qmp_open cbw "$ctl"
}
cbw_stop () { qmp_close cbw; stop cbw; }

# ---- measurement ----
# Each run_ROW SIDE DISK sets V to one number (- if the side has no
# such run).  Results go to R[row,disk,side] as space-separated reps.
declare -A R X
load () { cut -d' ' -f1 /proc/loadavg; }
t_end () { sync "$1"; V=$(since "$t0"); }

# first / steady: the writer's IOPS during sync=none.
writer () {                     # writer URI first|steady
    if [ "$2" = first ]; then
        "$nbdload" --op write --pattern rand --bs 4K --qd 16 \
                   --bytes $((ncl * 4096)) "$1" | field iops
    else
        "$nbdload" --op write --pattern seq --bs 1M --qd 4 --bytes "$bytes" "$1" >/dev/null
        # The pass leaves gigabytes dirty: write them back now, or
        # their writeback lands in the timed run (more of it the
        # faster the pass was).
        sync
        "$nbdload" --op write --pattern rand --bs 4K --qd 16 --seconds "$SECS" "$1" | field iops
    fi
}
run_writer () {                 # run_writer first|steady SIDE DISK
    local s; s="$(src "$3")"
    case "$2" in
    base) serve f file "$s"; V=$(writer "$f_uri" "$1"); stop f ;;
    cbw) cbw_start "$s"
         qmp cbw '{"execute":"backup-start","arguments":{"target":"'"$data/tgt.raw"'","sync":"none"}}'
         V=$(writer "$cbw_uri" "$1"); cbw_stop ;;
    q*) new_target raw "$data/tgt.raw"; qsd_start "$2"; qsd_src "$s"
        qsd_tgt raw "$data/tgt.raw"; qsd_nbd; qsd_export src src true
        qsd_backup none
        V=$(writer "nbd+unix:///src?socket=$socks/q.sock" "$1"); qsd_stop ;;
    esac
}
run_first () { run_writer first "$@"; }

run_slow () {                   # run_slow SIDE DISK
    local s n; s="$(src "$2")"
    n=$(($(numfmt --from=iec "${SLOW_BUFFER:-256M}") / 65536))
    case "$1" in
    base) serve f file "$s" ;;
    cbw) truncate -s "$SIZE" "$data/tgt.raw"
         serve t --filter=rate file "$data/tgt.raw" rate="${SLOW_RATE:-400M}" \
             burstiness=0.1
         serve f "${nbdkit_args[@]}" --filter="$cbw" file "$s" cbw-target="$t_uri" cbw-sync=none \
             cbw-buffer-size="${SLOW_BUFFER:-256M}" ;;
    *) V=-; return ;;
    esac
    V=$("$nbdload" --op write --pattern rand --bs 4K --qd 16 \
                   --bytes $((n * 4096)) "$f_uri" | field iops)
    stop f
    [ "$1" = base ] || stop t
}
run_steady () { run_writer steady "$@"; }

# raw / qcow2: seconds for a full push (start command -> target fsync'd).
run_push () {                   # run_push raw|qcow2 SIDE DISK
    local s f="$1" t="$data/tgt.$1"; s="$(src "$3")"
    # Every side starts with the source in the page cache (nbdcopy
    # drops what it read from the cache: the side after it would
    # otherwise read from the disk).
    cat "$s" > /dev/null
    case "$2" in
    base) [ "$f" = raw ] || { V=-; return; }
          t0=$(now); nbdcopy --flush "$s" "$t"; t_end "$t" ;;
    cbw) rm -f "$t" "$t.incomplete"; cbw_start "$s"
         t0=$(now)
         qmp cbw '{"execute":"backup-start","arguments":{"target":"'"$t"'","format":"'"$f"'","sync":"full"}}'
         qmp_wait cbw BLOCK_JOB_COMPLETED; t_end "$t"
         grep -q '"error"' "$data/cbw.qmp" && { echo "cbw failed: $(cat "$data/cbw.qmp")" >&2; exit 1; }
         cbw_stop ;;
    q*) new_target "$f" "$t"; qsd_start "$2"; qsd_src "$s"; qsd_tgt "$f" "$t"
        t0=$(now); qsd_backup full
        qmp_wait qsd BLOCK_JOB_COMPLETED; t_end "$t"; qsd_stop ;;
    esac
}
run_raw () { run_push raw "$@"; }
run_qcow2 () { run_push qcow2 "$@"; }

# snap: seconds to read the whole snapshot export under the writer;
# X[] gets the store's size at the end and the writer's IOPS.
run_snap () {                   # run_snap SIDE DISK
    local s live snap st wpid; s="$(src "$2")"
    case "$1" in
    base) V=-; return ;;
    cbw) serve fl "${nbdkit_args[@]}" --filter="$fleece" file "$s" fleece-store="$data/store.img"
         live="$fl_uri" snap="nbd+unix:///snapshot?socket=$fl_sock" st="$data/store.img" ;;
    q*) qemu-img create -q -f qcow2 "$data/tmp.qcow2" "$SIZE"
        qsd_start "$1"; qsd_src "$s"
        qmp qsd '{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"tmp","file":{"driver":"file","filename":"'"$data/tmp.qcow2"'"},"backing":"src"}}' \
            '{"execute":"blockdev-add","arguments":{"driver":"copy-before-write","node-name":"cbw","file":"src","target":"tmp"}}' \
            '{"execute":"blockdev-add","arguments":{"driver":"snapshot-access","node-name":"acc","file":"cbw"}}'
        qsd_nbd; qsd_export cbw live true; qsd_export acc snap false
        live="nbd+unix:///live?socket=$socks/q.sock"
        snap="nbd+unix:///snap?socket=$socks/q.sock" st="$data/tmp.qcow2" ;;
    esac
    writer "$live" first > "$data/w.iops" & wpid=$!
    t0=$(now); nbdcopy "$snap" null:; V=$(since "$t0")
    wait "$wpid"
    if [ "$rep" -gt 0 ]; then
        X[snapstore,$2,$cur_side]+="$(du -B1 "$st" | cut -f1) "
        X[snapw,$2,$cur_side]+="$(cat "$data/w.iops") "
    fi
    if [ "$1" = cbw ]; then stop fl; else qsd_stop; fi
}

# stats "V1 V2 ...": median min max.
stats () {
    tr ' ' '\n' <<<"$1" | { grep -v '^-\?$' || :; } | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) { print "- - -"; exit }
              m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              printf "%.4g %.4g %.4g\n", m, v[1], v[NR] }'
}
med () { stats "$1" | cut -d' ' -f1; }

new_cbw="$cbw" new_fleece="$fleece"
mk_disks
for row in $WHAT; do
    for d in $DISKS; do
        l0=$(load)
        for rep in $(seq 0 "$REPS"); do
            # Each rep starts one side later (A B C, B C A, C A B...),
            # so that no side always runs right after the same one.
            order=("${sides[@]:rep % ${#sides[@]}}" "${sides[@]:0:rep % ${#sides[@]}}")
            for side in "${order[@]}"; do
                clean_targets
                cur_side="$side"
                if [ "$side" = old ]; then
                    cbw="$OLD_BUILDDIR/filters/cbw/.libs/nbdkit-cbw-filter.so"
                    fleece="$OLD_BUILDDIR/filters/fleece/.libs/nbdkit-fleece-filter.so"
                    "run_$row" cbw "$d"
                    cbw="$new_cbw" fleece="$new_fleece"
                else
                    "run_$row" "$side" "$d"
                fi
                [ "$rep" -eq 0 ] || R[$row,$d,$side]+="$V "
            done
        done
        out '\n%-6s %-6s (load %s -> %s)\n' "$row" "$d" "$l0" "$(load)"
        case "$row" in first|steady|slow) unit="IOPS (writer)" ;; *) unit="seconds" ;; esac
        for side in "${sides[@]}"; do
            read -r m lo hi <<<"$(stats "${R[$row,$d,$side]}")"
            [ "$m" = - ] && continue
            out '  %-4s median %9s  min %9s  max %9s  %s\n' "$side" "$m" "$lo" "$hi" "$unit"
            if [ "$row" = snap ]; then
                out '       store %s MB   writer %s IOPS (medians)\n' \
                    "$(awk -v b="$(med "${X[snapstore,$d,$side]}")" 'BEGIN { printf "%.0f", b / 1e6 }')" \
                    "$(med "${X[snapw,$d,$side]}")"
            fi
        done
        # Ratios: higher is better for cbw (time rows are inverted).
        c=$(med "${R[$row,$d,cbw]:-}")
        [ "$c" = - ] && continue
        for side in "${sides[@]}"; do
            [ "$side" = cbw ] && continue
            o=$(med "${R[$row,$d,$side]:-}")
            [ "$o" = - ] && continue
            case "$row" in
                first|steady|slow) r=$(ratio "$c" "$o") ;;
                *) r=$(ratio "$o" "$c") ;;
            esac
            out '  cbw / %-4s %s\n' "$side" "$r"
        done
    done
done
results_close
