#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# cbw sync=full on a quiet disk: the target equals the source, stays
# sparse, and is published only when complete.

load helpers

setup () {
    cbw="$(filter_path cbw)"
    d="$BATS_TEST_TMPDIR"
}

teardown () { stop_all_nbdkit; }

@test "cbw-full: quiet backup equals the source and stays sparse" {
    make_disk "$d/disk.img" 64M 7
    cp --sparse=always "$d/disk.img" "$d/orig.img"
    run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/backup.img" cbw-status="$d/status.json" --run true
    cmp "$d/backup.img" "$d/orig.img"
    cmp "$d/disk.img" "$d/orig.img"
    # Zero clusters are not written as data: no more allocated than the
    # source (the source's all-zero but allocated run stays a hole).
    src=$(data_bytes "$d/disk.img"); tgt=$(data_bytes "$d/backup.img")
    echo "source data $src, target data $tgt"
    [ "$tgt" -le "$src" ]
    [ "$tgt" -gt 0 ]
    [ ! -e "$d/backup.img.incomplete" ]
    grep -q '"state":"completed"' "$d/status.json"
    grep -q '"bytes_done":67108864,"bytes_total":67108864' "$d/status.json"
    grep -q '"error":null' "$d/status.json"
}

@test "cbw-full: the backup runs with no client connected" {
    make_disk "$d/disk.img" 16M 3
    cp "$d/disk.img" "$d/orig.img"
    start_nbdkit srv --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/backup.img" cbw-status="$d/status.json"
    # Nobody connects; the job still finishes and publishes the target.
    wait_for_job "$d/status.json"
    grep -q '"state":"completed"' "$d/status.json"
    cmp "$d/backup.img" "$d/orig.img"
    stop_nbdkit srv
}

@test "cbw-full: an existing target is overwritten, zero clusters unmapped" {
    make_disk "$d/disk.img" 16M 5
    head -c 16M /dev/urandom > "$d/backup.img"     # yesterday's data
    run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/backup.img" --run true
    cmp "$d/backup.img" "$d/disk.img"
    [ "$(data_bytes "$d/backup.img")" -le "$(data_bytes "$d/disk.img")" ]
}

@test "cbw-full: cluster sizes 4K and 1M, one worker and many" {
    make_disk "$d/disk.img" 8M 11
    for cs in 4K 1M; do
        for w in 1 16; do
            rm -f "$d/backup.img"
            run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" \
                cbw-target="$d/backup.img" cbw-cluster-size=$cs \
                cbw-workers=$w --run true
            cmp "$d/backup.img" "$d/disk.img"
        done
    done
}

@test "cbw-full: a disk whose size is not a multiple of the cluster size" {
    head -c 1000001 /dev/urandom > "$d/disk.img"
    run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/backup.img" --run \
        'qemu-io -f raw "$uri" -c "write -P 0x11 999000 1001" >/dev/null'
    [ "$(stat -c %s "$d/backup.img")" = 1000001 ]
    head -c 999000 "$d/disk.img" | cmp - <(head -c 999000 "$d/backup.img")
}

@test "cbw-full: a failing source never leaves a complete-looking target" {
    make_disk "$d/disk.img" 8M 2
    # Every read below cbw fails: the job cannot copy anything.
    run nbdkit -U - --filter="$cbw" --filter=error file "$d/disk.img" \
        error-pread=EIO error-pread-rate=100% \
        cbw-target="$d/backup.img" cbw-status="$d/status.json" --run true
    echo "$output"
    [ ! -e "$d/backup.img" ]
    [ -e "$d/backup.img.incomplete" ]
    grep -q '"state":"failed"' "$d/status.json"
    grep -q '"error":"reading the source at offset [0-9]* failed: Input/output error"' "$d/status.json"
    [[ "$output" == *"cbw: reading the source at offset"*"failed: Input/output error"* ]]
}

@test "cbw-full: writes go on after the source fails under the job" {
    head -c 4M /dev/urandom > "$d/disk.img"
    # Reads fail, writes do not: the snapshot breaks, the writer wins.
    run -0 nbdkit -U - --filter="$cbw" --filter=error file "$d/disk.img" \
        error-pread=EIO error-pread-rate=100% \
        cbw-target="$d/backup.img" cbw-status="$d/status.json" \
        cbw-cluster-size=4K \
        --run 'qemu-io -f raw "$uri" -c "write -P 0x42 12345 100000"'
    [ ! -e "$d/backup.img" ]
    grep -q '"state":"failed"' "$d/status.json"
    cmp <(dd if="$d/disk.img" bs=1 skip=12345 count=100000 status=none) \
        <(head -c 100000 /dev/zero | tr '\0' '\102')
}
