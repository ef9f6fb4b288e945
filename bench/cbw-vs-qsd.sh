#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdkit-cbw-filter against qemu-storage-daemon, side by side in one
# run, on the same disk and with the same writer (bench/nbdload):
#
#  (a) full push backup throughput of a quiet disk, cbw sync=full
#      against qsd's blockdev-backup sync=full, into a raw and into a
#      qcow2 target;
#  (b) writer throughput and latency (random 4K writes, queue depth
#      16) with no backup, and while each runs sync=none and
#      sync=full.  qsd serves the disk over NBD (nbd-server-start +
#      block-export-add); its backup job inserts its copy-before-write
#      filter above the exported node.
#
# Prints one line per measurement and the cbw/qsd ratios (higher is
# better for cbw, except latency where lower is); asserts nothing.
#
# Environment: SIZE (disk size, default 2G), SECONDS_PER (writer run,
# default 8), DIR (where disks live, default /var/tmp).
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
SIZE="${SIZE:-2G}"
SECS="${SECONDS_PER:-8}"
DIR="${DIR:-/var/tmp}"
cbw="$abs_top_builddir/filters/cbw/.libs/nbdkit-cbw-filter.so"
requires nbdkit qemu-storage-daemon qemu-img socat
requires_built "$cbw" "$nbdload"
scratch cbw-vs-qsd "$DIR"

bytes=$(numfmt --from=iec "$SIZE")
echo "# disk $SIZE of random data in $data, writer ${SECS}s rand 4K QD16"
head -c "$bytes" /dev/urandom > "$data/master.img"

fresh_source () { cp --reflink=auto "$data/master.img" "$data/src.img"; sync; }
new_target () {                 # new_target raw|qcow2 PATH
    rm -f "$2" "$2.incomplete"
    if [ "$1" = qcow2 ]; then qemu-img create -q -f qcow2 "$2" "$SIZE"
    else truncate -s "$SIZE" "$2"; fi
}

# ---- qemu-storage-daemon ----
# One QMP session per daemon: commands go in through a FIFO, replies
# and events collect in qmp.log, so that timing needs no polling.
qsd_start () {
    rm -f "$data/qin" "$data/qmp.log"
    new_socket
    start_server qsd "$sock" "$pidf" qemu-storage-daemon \
        --chardev socket,path="$sock",server=on,wait=off,id=m0 \
        --monitor chardev=m0 --pidfile "$pidf"
    mkfifo "$data/qin"
    socat UNIX-CONNECT:"$qsd_sock" - <"$data/qin" >"$data/qmp.log" 3>&- &
    socat_pid=$!; pids+=("$socat_pid")
    exec 7>"$data/qin"
    nreplies=0
    qmp '{"execute":"qmp_capabilities"}'
}
qsd_stop () {
    exec 7>&-
    stop qsd
    wait_gone "$socat_pid" || { echo "socat did not exit" >&2; exit 1; }
    forget "$socat_pid"
}
# qmp JSON...: send commands, wait for their replies; stop on error.
qmp () {
    local c
    for c in "$@"; do
        echo "$c" >&7
        nreplies=$((nreplies + 1))
        until [ "$(grep -c '"return"\|"error"' "$data/qmp.log")" -ge "$nreplies" ]; do
            sleep 0.01
        done
        if grep -q '"error"' "$data/qmp.log"; then
            echo "QMP error: $(cat "$data/qmp.log")" >&2; exit 1
        fi
    done
}
# Wall-clock time of the event NAME (QMP event timestamps).
qmp_event_time () {
    until grep -q "\"$1\"" "$data/qmp.log"; do sleep 0.01; done
    grep "\"$1\"" "$data/qmp.log" | head -1 |
        sed 's/.*"seconds": *\([0-9]*\), *"microseconds": *\([0-9]*\).*/\1 \2/' |
        { read -r s us; printf '%d.%06d\n' "$s" "$us"; }
}
qsd_nodes () {                  # qsd_nodes TARGET-FORMAT TARGET-PATH
    qmp '{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"src","file":{"driver":"file","filename":"'"$data/src.img"'"}}}' \
        '{"execute":"blockdev-add","arguments":{"driver":"'"$1"'","node-name":"tgt","file":{"driver":"file","filename":"'"$2"'"}}}' >/dev/null
}
qsd_backup () {                 # qsd_backup SYNC
    qmp '{"execute":"blockdev-backup","arguments":{"job-id":"j","device":"src","target":"tgt","sync":"'"$1"'"}}' >/dev/null
}

# ---- (a) full backup of a quiet disk ----
declare -A R
for fmt in raw qcow2; do
    fresh_source
    new_target "$fmt" "$data/tgt.$fmt"
    qsd_start; qsd_nodes "$fmt" "$data/tgt.$fmt"
    t0=$(now); qsd_backup full
    t1=$(qmp_event_time BLOCK_JOB_COMPLETED); qsd_stop
    R[qsd_full_$fmt]=$(echo "$bytes / 1048576 / ($t1 - $t0)" | bc -l)

    fresh_source
    rm -f "$data/tgt.$fmt" "$data/tgt.$fmt.incomplete" "$data/st.json"
    # From before nbdkit starts to the final status write (its mtime).
    t0=$(now)
    serve cbw --filter="$cbw" file "$data/src.img" \
        cbw-target="$data/tgt.$fmt" cbw-target-format="$fmt" cbw-status="$data/st.json"
    until grep -q '"state":"completed"' "$data/st.json" 2>/dev/null; do sleep 0.05; done
    t1=$(stat -c %.9Y "$data/st.json"); stop cbw
    R[cbw_full_$fmt]=$(echo "$bytes / 1048576 / ($t1 - $t0)" | bc -l)
    printf 'full backup to %-5s  cbw %8.1f MiB/s   qsd %8.1f MiB/s   ratio %.2f\n' \
        "$fmt" "${R[cbw_full_$fmt]}" "${R[qsd_full_$fmt]}" \
        "$(echo "${R[cbw_full_$fmt]} / ${R[qsd_full_$fmt]}" | bc -l)"
done

# ---- (b) the writer while each backs up ----
load () {                       # load URI -> iops p50 p99 (one line)
    local j
    j=$("$nbdload" --op write --pattern rand --bs 4K --qd 16 --seconds "$SECS" "$1")
    echo "$(field iops <<<"$j") $(field lat_us_p50 <<<"$j") $(field lat_us_p99 <<<"$j")"
}
for mode in nobackup none full; do
    # qemu-storage-daemon
    fresh_source; new_target raw "$data/tgt.raw"
    qsd_start; qsd_nodes raw "$data/tgt.raw"
    qmp '{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"'"$socks/q.sock"'"}}}}' \
        '{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"src","writable":true}}' >/dev/null
    [ "$mode" = nobackup ] || qsd_backup "$mode"
    R[qsd_$mode]=$(load "nbd+unix:///src?socket=$socks/q.sock")
    qsd_stop

    # nbdkit (cbw, or the bare file plugin)
    fresh_source; rm -f "$data/tgt.raw" "$data/tgt.raw.incomplete"
    if [ "$mode" = nobackup ]; then
        serve cbw file "$data/src.img"
    else
        serve cbw --filter="$cbw" file "$data/src.img" \
            cbw-target="$data/tgt.raw" cbw-sync="$mode" cbw-on-exit=cancel
    fi
    R[cbw_$mode]=$(load "$cbw_uri")
    stop cbw

    read -r ci cp50 cp99 <<<"${R[cbw_$mode]}"
    read -r qi qp50 qp99 <<<"${R[qsd_$mode]}"
    printf 'writer, %-8s  cbw %7.0f IOPS p50 %5.0f p99 %6.0f us   qsd %7.0f IOPS p50 %5.0f p99 %6.0f us   IOPS ratio %.2f  p99 ratio (qsd/cbw) %.2f\n' \
        "$mode" "$ci" "$cp50" "$cp99" "$qi" "$qp50" "$qp99" \
        "$(echo "$ci / $qi" | bc -l)" "$(echo "$qp99 / $cp99" | bc -l)"
done
