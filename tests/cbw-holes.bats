#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Holes cost nothing: a cluster that reads as zero at the snapshot
# instant is never read from the source, by the job or by a writer's
# copy-before-write.  On a new target (which reads as zeros) it is done
# at once; on an existing one it is written as zeroes.  Either way the
# backup stays exact when a client fills the hole after the instant.
# nbdkit's log filter below cbw (or fleece) records every read the
# engine makes of the source.

load helpers

setup () {
    cbw="$(filter_path cbw)"
    fleece="$(filter_path fleece)"
    d="$BATS_TEST_TMPDIR"
    # 8M, 64K clusters: data in [0, 1M) and [4M, 5M), holes elsewhere.
    truncate -s 8M "$d/disk.img"
    head -c 1M /dev/urandom | dd of="$d/disk.img" conv=notrunc status=none
    head -c 1M /dev/urandom |
        dd of="$d/disk.img" bs=1M seek=4 conv=notrunc status=none
    cp --sparse=always "$d/disk.img" "$d/orig.img"
}

teardown () { stop_all_nbdkit; }

# reads_in LOG START END: how many reads the log filter saw that
# overlap bytes [START, END).
reads_in () {
    local n=0 o c
    while read -r o c; do
        if (( o < $3 && $2 < o + c )); then n=$((n + 1)); fi
    done < <(sed -n 's/.* Read id=[0-9]* offset=\(0x[0-9a-f]*\) count=\(0x[0-9a-f]*\) .*/\1 \2/p' "$1")
    echo "$n"
}

# Writes into both holes and into both data runs, through $uri.
writes='qemu-io -f raw "$uri" -c "write -P 0x55 $((2 << 20)) 4096" \
            -c "write -P 0x66 $((6 << 20 | 12345)) 100000" \
            -c "write -P 0x77 $((512 << 10)) 4096" \
            -c "write -P 0x88 $((4 << 20)) 8192"'

@test "cbw-holes: a writer's copy-before-write never reads a hole" {
    run -0 nbdkit -U - --filter="$cbw" --filter=log file "$d/disk.img" \
        logfile="$d/log" cbw-target="$d/backup.img" cbw-sync=none \
        cbw-status="$d/status.json" --run "$writes"
    cat "$d/log" >&2
    # The data clusters written were copied, so read...
    [ "$(reads_in "$d/log" $((512 << 10)) $((576 << 10)))" -ge 1 ]
    [ "$(reads_in "$d/log" $((4 << 20)) $(((4 << 20) + 65536)))" -ge 1 ]
    # ...the holes were not, not even the clusters the writes touched.
    [ "$(reads_in "$d/log" $((1 << 20)) $((4 << 20)))" -eq 0 ]
    [ "$(reads_in "$d/log" $((5 << 20)) $((8 << 20)))" -eq 0 ]
    grep -q '"state":"completed"' "$d/status.json"
    # What sync=none copied is the old data of those clusters.
    cmp <(dd if="$d/backup.img" bs=64K skip=8 count=1 status=none) \
        <(dd if="$d/orig.img" bs=64K skip=8 count=1 status=none)
    cmp <(dd if="$d/backup.img" bs=1M skip=2 count=1 status=none) \
        <(dd if="$d/orig.img" bs=1M skip=2 count=1 status=none)
}

@test "cbw-holes: holes filled after the instant back up as zeros (new target)" {
    run -0 nbdkit -U - --filter="$cbw" --filter=log --filter=delay \
        file "$d/disk.img" delay-read=20ms logfile="$d/log" \
        cbw-target="$d/backup.img" cbw-status="$d/status.json" \
        --run "$writes"
    grep -q '"state":"completed"' "$d/status.json"
    cmp "$d/backup.img" "$d/orig.img"
    [ "$(reads_in "$d/log" $((1 << 20)) $((4 << 20)))" -eq 0 ]
    [ "$(reads_in "$d/log" $((5 << 20)) $((8 << 20)))" -eq 0 ]
    # The holes were done as zeros, and are still holes in the target.
    grep -q '"bytes_zero":6291456,' "$d/status.json"
    [ "$(allocated_bytes "$d/backup.img")" -le $((2 << 20)) ]
    # The live disk has the writes.
    run -0 qemu-io -f raw -c "read -P 0x55 $((2 << 20)) 4096" "$d/disk.img"
}

@test "cbw-holes: a zero cluster on a target holding data is written as zeroes" {
    # Yesterday's backup: data everywhere, holes included.
    head -c 8M /dev/urandom > "$d/backup.img"
    run -0 nbdkit -U - --filter="$cbw" --filter=log --filter=delay \
        file "$d/disk.img" delay-read=20ms logfile="$d/log" \
        cbw-target="$d/backup.img" cbw-status="$d/status.json" \
        --run "$writes"
    grep -q '"state":"completed"' "$d/status.json"
    cmp "$d/backup.img" "$d/orig.img"
    [ "$(reads_in "$d/log" $((1 << 20)) $((4 << 20)))" -eq 0 ]
    [ "$(reads_in "$d/log" $((5 << 20)) $((8 << 20)))" -eq 0 ]
    grep -q '"bytes_zero":6291456,' "$d/status.json"
    # Written as zeroes (unmapped), not as data.
    [ "$(allocated_bytes "$d/backup.img")" -le $((2 << 20)) ]
}

@test "cbw-holes: a hole on an NBD target is written as zeroes" {
    head -c 8M /dev/urandom > "$d/tgt.img"
    start_nbdkit tgt file "$d/tgt.img"
    run -0 nbdkit -U - --filter="$cbw" --filter=log file "$d/disk.img" \
        logfile="$d/log" cbw-target="$tgt_uri" cbw-status="$d/status.json" \
        --run "$writes"
    grep -q '"state":"completed"' "$d/status.json"
    stop_nbdkit tgt
    cmp "$d/tgt.img" "$d/orig.img"
    [ "$(reads_in "$d/log" $((1 << 20)) $((4 << 20)))" -eq 0 ]
}

@test "cbw-holes: sync=none with a target holding data zeroes the touched holes" {
    head -c 8M /dev/urandom > "$d/backup.img"
    cp "$d/backup.img" "$d/old.img"
    run -0 nbdkit -U - --filter="$cbw" --filter=log file "$d/disk.img" \
        logfile="$d/log" cbw-target="$d/backup.img" cbw-sync=none \
        --run "$writes"
    [ "$(reads_in "$d/log" $((1 << 20)) $((4 << 20)))" -eq 0 ]
    # The hole cluster at 2M was copied as zeros; the one at 3M, never
    # touched, keeps yesterday's data.
    cmp <(dd if="$d/backup.img" bs=64K skip=32 count=1 status=none) \
        <(head -c 64K /dev/zero)
    cmp <(dd if="$d/backup.img" bs=64K skip=48 count=1 status=none) \
        <(dd if="$d/old.img" bs=64K skip=48 count=1 status=none)
}

@test "cbw-holes: a fleece snapshot reads holes filled later as zeros, unread" {
    start_nbdkit fl --filter="$fleece" --filter=log file "$d/disk.img" \
        logfile="$d/log" fleece-store="$d/store"
    uri="$fl_uri"
    eval "$writes"
    nbdcopy "nbd+unix:///snapshot?socket=$fl_sock" "$d/snap.img"
    cmp "$d/snap.img" "$d/orig.img"
    # Neither the writes' copies nor the snapshot read touched a hole
    # on the source (the store, which reads as zeros, served them).
    [ "$(reads_in "$d/log" $((1 << 20)) $((4 << 20)))" -eq 0 ]
    [ "$(reads_in "$d/log" $((5 << 20)) $((8 << 20)))" -eq 0 ]
    stop_nbdkit fl
}
