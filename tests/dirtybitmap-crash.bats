#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Change tracking that survives kill -9: writers on several
# connections log each request when sent and when acknowledged, and
# kill the server at a seeded-random acknowledgement (ackwriter).
# After every restart each bitmap is consistent, covers every
# acknowledged write, and an incremental pull of it on top of the
# previous backup equals the disk.

load helpers
load dirtybitmap-helpers

# Kill points: CRASH_POINTS of them, from CRASH_SEED.
: "${CRASH_POINTS:=32}"
: "${CRASH_SEED:=13}"

setup () {
    requires nbdbackup qemu-img jq
    d="$BATS_TEST_TMPDIR"
    ctlsock="$(new_socket)"
    fleece="$(filter_path fleece)"
}

teardown () {
    stop_all_nbdkit
    rm -f "$ctlsock"
}

start_server () {
    start_nbdkit srv --filter="$dirtybitmap" --filter="$fleece" \
        file "$d/disk.img" fleece-snapshot=on-command fleece-store="$d" \
        dirtybitmap-control="$ctlsock" dirtybitmap-file="$d/bitmaps" "$@"
    ctl_connect C "$ctlsock"
}

# covered LOG RANGES: every request of LOG whose lines match "^A "
# (acknowledged) lies inside the "offset+length" RANGES (merged and
# sorted, as query-dirty-ranges gives them).  Prints what is not.
covered () {
    awk -v ranges="$2" '
        BEGIN { n = split(ranges, r, " ");
                for (i = 1; i <= n; i++) { split(r[i], x, "+");
                    s[i] = x[1] + 0; e[i] = x[1] + x[2] } }
        $1 == "A" { off = $5 + 0; end = $5 + $6;
            lo = 1; hi = n; f = 0;
            while (lo <= hi) { m = int((lo + hi) / 2);
                if (s[m] <= off) { f = m; lo = m + 1 } else hi = m - 1 }
            if (f == 0 || e[f] < end) { print "not covered: " $0; bad = 1 } }
        END { exit bad }' "$1"
}

@test "dirtybitmap crash: kill -9 at $CRASH_POINTS points, every acknowledged write tracked" {
    truncate -s 8M "$d/disk.img"
    head -c 3M /dev/urandom | dd of="$d/disk.img" bs=1M seek=2 conv=notrunc status=none
    start_server
    # The first backup, with b0 and a fine-grained "all" (never
    # rotated: it must hold every acknowledged write of every round).
    run -0 qmp C transaction '{"actions":[
        {"type":"block-dirty-bitmap-add","data":{"name":"b0"}},
        {"type":"block-dirty-bitmap-add","data":{"name":"all","granularity":4096}},
        {"type":"snapshot-start"}]}'
    [ "$output" = '{}' ]
    run -0 nbdbackup pull "nbd+unix:///snapshot?socket=$srv_sock" "$d/full.qcow2"
    run -0 nbdbackup snapshot stop "$ctlsock"
    prev="$d/full.qcow2"
    : >"$d/all.log"

    for ((r = 0; r < CRASH_POINTS; r++)); do
        # A kill point from 1 to 160 acknowledgements, seeded.
        k=$(( (CRASH_SEED * 7919 + r * 104729) % 160 + 1 ))
        echo "# round $r: kill at acknowledgement $k" >&3
        run ackwriter --seed $((CRASH_SEED + r)) --connections 4 \
            --max-len 128k --kill-after "$k" --kill-pid "$srv_pid" \
            --log "$d/ack.$r" "$srv_uri"
        echo "$output"
        [ "$status" = 0 ]
        wait "$srv_pid" 2>/dev/null || :
        ctl_close C
        n="$(grep -c '^A' "$d/ack.$r")"
        echo "acknowledged: $n; sent: $(grep -c '^S' "$d/ack.$r")"
        [ "$n" -ge "$k" ]
        cat "$d/ack.$r" >>"$d/all.log"
        srv_pid=
        [ $(( $(od -An -tu4 -j12 -N4 "$d/bitmaps") & 1 )) = 1 ]

        start_server
        # Both consistent, recording (name count granularity recording
        # busy persistent inconsistent).
        run -0 bitmaps C
        echo "$output"
        [ "${#lines[@]}" = 2 ]
        [[ "$output" == *"b$r "[0-9]*" 65536 true false true false"* ]]
        [[ "$output" == *"all "[0-9]*" 4096 true false true false"* ]]
        covered "$d/ack.$r" "$(ranges C "b$r")"
        covered "$d/all.log" "$(ranges C all)"

        # Rotate, pull the changes onto the previous backup, compare.
        run -0 qmp C transaction '{"actions":[
            {"type":"block-dirty-bitmap-add","data":{"name":"b'$((r + 1))'"}},
            {"type":"block-dirty-bitmap-disable","data":{"name":"b'$r'"}},
            {"type":"snapshot-start"}]}'
        [ "$output" = '{}' ]
        run -0 nbdbackup pull --incremental -b "$(basename "$prev")" \
            --control="$ctlsock" \
            "nbd+unix:///dirty:b$r?socket=$srv_sock" "$d/inc$r.qcow2"
        run -0 nbdbackup snapshot stop "$ctlsock"
        run -0 qmp C block-dirty-bitmap-remove '{"name":"b'$r'"}'
        # Nothing writes now: the chain must equal the disk.
        run -0 qemu-img compare -f qcow2 -F raw "$d/inc$r.qcow2" "$d/disk.img"
        prev="$d/inc$r.qcow2"
    done
    run -0 qemu-img check "$prev"
}
