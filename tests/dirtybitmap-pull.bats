#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Incremental pull backups: the rotation transaction freezes a bitmap
# at the snapshot instant, the dirty:NAME export reports its changes
# as extents, and nbdbackup pull --incremental (or qemu-img convert
# -B) writes a qcow2 overlay of the previous backup.

load helpers
load dirtybitmap-helpers

setup () {
    requires nbdbackup qemu-img nbdinfo
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
    snap="nbd+unix:///snapshot?socket=$srv_sock"
}

dirty_uri () { echo "nbd+unix:///dirty:$1?socket=$srv_sock"; }

# same FILE-A FORMAT-A FILE-B FORMAT-B: qemu-img compare says equal.
same () {
    run -0 qemu-img compare -f "$2" -F "$4" "$1" "$3"
    [[ "$output" == *"Images are identical"* ]]
}

# rotate OLD NEW: the rotation transaction.
rotate () {
    run -0 qmp C transaction '{"actions":[
        {"type":"block-dirty-bitmap-add","data":{"name":"'"$2"'"}},
        {"type":"block-dirty-bitmap-disable","data":{"name":"'"$1"'"}},
        {"type":"snapshot-start"}]}'
    [ "$output" = '{}' ]
}

# MD5 of each 64K granule of a file, one per line.
granule_sums () { split -b 64K --filter=md5sum "$1" | awk '{print $1}'; }

# The 64K granules (as offset+65536 words, merged) where two files
# differ.
differing () {
    paste -d' ' <(granule_sums "$1") <(granule_sums "$2") |
        awk '$1 != $2 { print (NR - 1) * 65536 }' |
        awk 'BEGIN { s = -1 }
             { if (s >= 0 && $1 == e) { e += 65536 }
               else { if (s >= 0) w = w (w ? " " : "") s "+" (e - s); s = $1; e = $1 + 65536 } }
             END { if (s >= 0) w = w (w ? " " : "") s "+" (e - s); print w }'
}

# covers "RANGES" "SUBSET": every range of SUBSET lies in RANGES
# (both as offset+length words of whole 64K granules).
covers () {
    local big="$1" small="$2"
    awk -v big="$big" -v small="$small" 'BEGIN {
        n = split(big, b, " ");
        for (i = 1; i <= n; i++) { split(b[i], x, "+");
            for (o = x[1]; o < x[1] + x[2]; o += 65536) have[o] = 1 }
        m = split(small, s, " ");
        for (i = 1; i <= m; i++) { split(s[i], x, "+");
            for (o = x[1]; o < x[1] + x[2]; o += 65536)
                if (!(o in have)) { print "missing " o; bad = 1 } }
        exit bad }'
}

@test "dirtybitmap pull: a chain full, incremental 1, incremental 2 is exact" {
    make_disk "$d/disk.img" 32M 21
    start_server
    cp "$d/disk.img" "$d/model.img"

    # Full: the anchor bitmap and the snapshot in one transaction,
    # writers running during the copy.
    cp "$d/disk.img" "$d/instant0.img"
    run -0 qmp C transaction '{"actions":[
        {"type":"block-dirty-bitmap-add","data":{"name":"b0"}},
        {"type":"snapshot-start"}]}'
    pitwriter --seed 31 --ops 150 --max-len 256K --quiet \
        --model "$d/model.img" "$srv_uri" & w=$!
    nbdbackup pull "$snap" "$d/full.qcow2"
    wait $w
    run -0 qmp C snapshot-stop
    same "$d/full.qcow2" qcow2 "$d/instant0.img" raw
    cmp "$d/disk.img" "$d/model.img"

    # Incremental 1, writers again.
    cp "$d/disk.img" "$d/instant1.img"
    rotate b0 b1
    changed="$(differing "$d/instant0.img" "$d/instant1.img")"
    b0="$(ranges C b0)"
    echo "changed: $changed"; echo "b0: $b0"
    covers "$b0" "$changed"
    pitwriter --seed 32 --ops 150 --max-len 256K --quiet \
        --model "$d/model.img" "$srv_uri" & w=$!
    run -0 nbdbackup pull --json --incremental -b full.qcow2 \
        "$(dirty_uri b0)" "$d/inc1.qcow2"
    echo "$output"
    wait $w
    unchanged=$(jq .bytes_unchanged <<<"$output")
    [ "$unchanged" -gt 0 ]
    [ "$(jq '.bytes_copied + .bytes_zero + .bytes_unchanged' <<<"$output")" = 33554432 ]
    run -0 qmp C snapshot-stop
    run -0 qmp C block-dirty-bitmap-remove '{"name":"b0"}'
    run -0 qemu-img check "$d/inc1.qcow2"
    same "$d/inc1.qcow2" qcow2 "$d/instant1.img" raw
    # The overlay holds exactly the dirty clusters.
    [ "$(top_ranges "$d/inc1.qcow2")" = "$b0" ]
    [ "$(qemu-img info --output=json "$d/inc1.qcow2" | jq -r '."backing-filename"')" = full.qcow2 ]

    # Incremental 2 with the disk quiet: it also equals the live disk.
    cp "$d/disk.img" "$d/instant2.img"
    rotate b1 b2
    covers "$(ranges C b1)" "$(differing "$d/instant1.img" "$d/instant2.img")"
    run nbdbackup pull --incremental -b inc1.qcow2 \
        "$(dirty_uri b1)" "$d/inc2.qcow2"
    echo "$output"
    [ "$status" = 0 ]
    # Without the tool: qemu-img convert -B copies only the allocated
    # (dirty) extents too.
    qemu-img create -q -f qcow2 -b inc1.qcow2 -F qcow2 "$d/inc2q.qcow2"
    qemu-img convert -n -O qcow2 -B inc1.qcow2 "$(dirty_uri b1)" "$d/inc2q.qcow2"
    run -0 qmp C snapshot-stop
    same "$d/inc2.qcow2" qcow2 "$d/instant2.img" raw
    same "$d/inc2.qcow2" qcow2 "$d/disk.img" raw
    same "$d/inc2q.qcow2" qcow2 "$d/disk.img" raw
    run -0 qemu-img check "$d/inc2.qcow2"
    cmp "$d/disk.img" "$d/model.img"
}

@test "dirtybitmap pull: the rotation splits concurrent writes at the instant" {
    for seed in 1 2 3; do
        head -c 16M /dev/urandom > "$d/disk.img"
        cp "$d/disk.img" "$d/orig.img"
        cp "$d/disk.img" "$d/model.img"
        rm -f "$d/bitmaps"
        start_server dirtybitmap-add=old
        pitwriter --seed "$seed" --connections 4 --ops 400 --max-len 128K \
            --quiet --model "$d/model.img" "$srv_uri" & w=$!
        # Somewhere in the middle of the writes.
        qemu-io -f raw "$srv_uri" -c "read 0 4M" >/dev/null
        rotate old new
        nbdcopy "$snap" "$d/snap.img"
        wait $w
        before="$(differing "$d/orig.img" "$d/snap.img")"
        after="$(differing "$d/snap.img" "$d/disk.img")"
        echo "seed $seed: before: $before"; echo "after: $after"
        # No write is missed on either side of the instant.
        covers "$(ranges C old)" "$before"
        covers "$(ranges C new)" "$after"
        run -0 qmp C snapshot-stop
        ctl_close C
        stop_nbdkit srv
        cmp "$d/disk.img" "$d/model.img"
    done
}

@test "dirtybitmap pull: the dirty export reports holes without zero, reads the snapshot" {
    head -c 4M /dev/urandom > "$d/disk.img"
    start_server
    run -0 qmp C block-dirty-bitmap-add '{"name":"b0","granularity":4096}'
    io "$srv_uri" "write -P 1 100000 5000" "write -z 1M 64K"
    cp "$d/disk.img" "$d/instant.img"
    rotate b0 b1
    io "$srv_uri" "write -P 2 0 4M"
    run -0 nbdinfo --list "$srv_uri"
    [[ "$output" == *'export="dirty:b0":'*'description: dirty clusters of the snapshot (read-only)'* ]]
    [[ "$output" != *'dirty:b1'* ]]
    run -0 nbdinfo --map "$(dirty_uri b0)"
    echo "$output"
    [ "$(awk '{print $1, $2, $3}' <<<"$output")" = "0 98304 1
98304 8192 0
106496 942080 1
1048576 65536 0
1114112 3080192 1" ]
    # Reads are the snapshot's, holes or not.
    nbdcopy "$(dirty_uri b0)" "$d/read.img"
    cmp "$d/read.img" "$d/instant.img"
    run -0 nbdinfo "$(dirty_uri b0)"
    [[ "$output" == *"is_read_only: true"* ]]
}

@test "dirtybitmap pull: the dirty export's refusals; busy while open" {
    truncate -s 4M "$d/disk.img"
    start_server dirtybitmap-add=rec
    # (nbdkit tells the client only the errno: the log has the why.)
    run ! nbdinfo "$(dirty_uri rec)"
    server_log srv | grep -q "dirtybitmap: export dirty:rec: bitmap 'rec' is recording: disable it at the snapshot instant (block-dirty-bitmap-disable in the snapshot-start transaction) before reading its dirty ranges"
    run ! nbdinfo "$(dirty_uri nope)"
    server_log srv | grep -q "dirtybitmap: export dirty:nope: bitmap 'nope' not found"
    rotate rec new
    # Hold a connection open: the bitmap is busy.
    mkfifo "$d/fifo"
    qemu-io -r -f raw "$(dirty_uri rec)" <"$d/fifo" >/dev/null & q=$!
    exec 7>"$d/fifo"
    wait_for "bitmap 'rec' busy" \
        '[[ "$(bitmaps C)" == *"rec 0 65536 false true"* ]]'
    run -0 bitmaps C
    [[ "$output" == *"rec 0 65536 false true true false"* ]]
    run -0 qmp C block-dirty-bitmap-remove '{"name":"rec"}'
    [ "$output" = "error: bitmap 'rec' is busy (a dirty export is open on it): it cannot be removed" ]
    run -0 qmp C block-dirty-bitmap-enable '{"name":"rec"}'
    [ "$output" = "error: bitmap 'rec' is busy (a dirty export is open on it): it cannot be enabled" ]
    exec 7>&-
    wait $q
    wait_for "bitmap 'rec' no longer busy" \
        '[[ "$(bitmaps C)" == *"rec 0 65536 false false"* ]]'
    run -0 qmp C block-dirty-bitmap-remove '{"name":"rec"}'
    [ "$output" = '{}' ]
    # The export refuses an inconsistent bitmap (the disk changed
    # while no server tracked it).
    io "$srv_uri" "write 0 512"
    ctl_close C
    stop_nbdkit srv
    untracked_write "$d/disk.img"
    start_server
    run ! nbdinfo "$(dirty_uri new)"
    server_log srv | grep -qF "dirtybitmap: export dirty:new: bitmap 'new' is inconsistent ($(untracked_reason "$d/disk.img")): a full backup is needed"
}

@test "dirtybitmap pull: nbdbackup pull --incremental needs a qcow2 overlay" {
    run -2 nbdbackup pull --incremental nbd://localhost/x "$d/out.img"
    [[ "$output" == *"--incremental needs a qcow2 TARGET with --backing=PREVIOUS-BACKUP"* ]]
    run -2 nbdbackup pull --incremental nbd://localhost/x "$d/out.qcow2"
    [[ "$output" == *"--incremental needs a qcow2 TARGET with --backing=PREVIOUS-BACKUP"* ]]
    run -0 nbdbackup pull --help
    [[ "$output" == *"--incremental"* ]]
}
