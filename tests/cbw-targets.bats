#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# cbw targets under the point-in-time oracle: a raw file, a new qcow2
# image, a qcow2 image with a backing file, an existing qcow2 image,
# and an NBD URI (a second nbdkit on a Unix socket).  In every case
# the finished target must read exactly as the disk did before the
# server started, while pitwriter changes the disk through four
# connections, and the live disk must equal pitwriter's model.

load helpers

setup () {
    cbw="$(filter_path cbw)"
    d="$BATS_TEST_TMPDIR"
}

teardown () { stop_all_nbdkit; }

# oracle SEED ARGS...: make a disk, back it up with the cbw ARGS while
# pitwriter writes, check the live disk against the model and the
# status file.  The target is checked by the caller.
oracle () {
    local seed="$1"; shift
    make_disk "$d/disk.img" 16M "$seed"
    head -c 6M /dev/urandom | dd of="$d/disk.img" bs=1M seek=5 conv=notrunc status=none
    cp --sparse=always "$d/disk.img" "$d/orig.img"
    cp --sparse=always "$d/disk.img" "$d/model.img"
    rm -f "$d/status.json"
    run -0 nbdkit -U - --filter="$cbw" --filter=delay file "$d/disk.img" \
        delay-read=10ms cbw-status="$d/status.json" "$@" \
        --run "pitwriter --seed $seed --connections 4 --ops 200 \
                 --max-len 1M --model '$d/model.img' \"\$uri\" &&
               '$abs_top_srcdir/tests/wait-for-job' '$d/status.json'"
    echo "$output"
    cat "$d/status.json"
    cmp "$d/disk.img" "$d/model.img"
    grep -q '"state":"completed"' "$d/status.json"
}

@test "cbw-targets: raw file" {
    oracle 1 cbw-target="$d/backup.img"
    cmp "$d/backup.img" "$d/orig.img"
    grep -q '"target_format":"raw"' "$d/status.json"
}

@test "cbw-targets: new qcow2 image, several cluster sizes" {
    requires qemu-img
    for cs in 64K 4K 1M; do
        rm -f "$d/backup.qcow2"
        oracle 2 cbw-target="$d/backup.qcow2" cbw-target-format=qcow2 \
            cbw-cluster-size=$cs
        [ ! -e "$d/backup.qcow2.incomplete" ]
        grep -q '"target_format":"qcow2"' "$d/status.json"
        qemu-img check "$d/backup.qcow2"
        run -0 qemu-img compare -f qcow2 -F raw "$d/backup.qcow2" "$d/orig.img"
        # Zero clusters are never data: no more allocated than the source.
        qemu-img convert -O raw "$d/backup.qcow2" "$d/flat.img"
        cmp "$d/flat.img" "$d/orig.img"
    done
}

@test "cbw-targets: qcow2 image with a backing file" {
    requires qemu-img
    # The backing file is yesterday's, full of different data: every
    # cluster of today's backup, zero ones too, must mask it.
    head -c 16M /dev/urandom > "$d/yesterday.img"
    oracle 3 cbw-target="$d/backup.qcow2" cbw-target-backing=yesterday.img
    qemu-img check "$d/backup.qcow2"
    run -0 qemu-img info "$d/backup.qcow2"
    [[ "$output" == *"backing file: yesterday.img"* ]]
    [[ "$output" == *"backing file format: raw"* ]]
    run -0 qemu-img compare -F raw "$d/backup.qcow2" "$d/orig.img"
}

@test "cbw-targets: existing qcow2 image is detected and overwritten" {
    requires qemu-img qemu-io
    qemu-img create -q -f qcow2 "$d/backup.qcow2" 16M
    qemu-io -f qcow2 -c "write -P 0x5a 0 16M" "$d/backup.qcow2" >/dev/null
    oracle 4 cbw-target="$d/backup.qcow2"
    grep -q '"target_format":"qcow2"' "$d/status.json"
    qemu-img check "$d/backup.qcow2"
    run -0 qemu-img compare -F raw "$d/backup.qcow2" "$d/orig.img"
}

@test "cbw-targets: NBD URI of a second nbdkit" {
    requires nbdcopy
    start_nbdkit tgt memory 16M
    # Yesterday's data on the target: zero clusters must be zeroed.
    nbdcopy /dev/urandom "$tgt_uri" --length=16M 2>/dev/null ||
        head -c 16M /dev/urandom | nbdcopy - "$tgt_uri"
    oracle 5 cbw-target="$tgt_uri"
    grep -q '"target_format":"nbd"' "$d/status.json"
    grep -q '"target_in_progress":null' "$d/status.json"
    nbdcopy "$tgt_uri" "$d/out.img"
    cmp "$d/out.img" "$d/orig.img"
}

# refused_late MESSAGE ARGS...: a server whose target is opened once
# the plugin is ready (.after_fork) must exit 1 with MESSAGE.  Run it
# in the foreground: with --run, nbdkit 1.32 starts the command first.
refused_late () {
    local msg="$1" sock; shift
    sock="$(new_socket)"
    run ! timeout 60 nbdkit -f -U "$sock" --filter="$cbw" "$@"
    rm -f "$sock"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$msg"* ]]
}

@test "cbw-targets: bad NBD and qcow2 targets are refused at start" {
    truncate -s 1M "$d/disk.img"
    start_nbdkit small memory 512K
    refused_late "cbw-target: $small_uri is 524288 bytes but the disk is 1048576 bytes" \
        file "$d/disk.img" cbw-target="$small_uri"
    start_nbdkit ro -r memory 1M
    refused_late "the export is read-only" \
        file "$d/disk.img" cbw-target="$ro_uri"
    refused_late "cbw-target: nbd+unix:///?socket=$d/nonexistent.sock" \
        file "$d/disk.img" cbw-target="nbd+unix:///?socket=$d/nonexistent.sock"
    refused_late "cbw-target: backing file $d/missing.img" \
        file "$d/disk.img" cbw-target="$d/b.qcow2" cbw-target-backing=missing.img
    [ ! -e "$d/b.qcow2" ] && [ ! -e "$d/b.qcow2.incomplete" ]

    run ! nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/b.img" cbw-target-backing=x.img \
        cbw-target-format=raw --run true
    [[ "$output" == *"cbw-target-backing: only a qcow2 target has a backing file"* ]]
    run ! nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/b.img" cbw-target-format=nbd --run true
    [[ "$output" == *"is not an NBD URI but cbw-target-format is nbd"* ]]
    run ! nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/b.img" cbw-target-format=vmdk --run true
    [[ "$output" == *"cbw-target-format: unknown format 'vmdk'"* ]]
    run ! nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/b.qcow2" cbw-target-format=qcow2 cbw-sync=top --run true
    [[ "$output" == *"cbw-sync=top with a new qcow2 target needs cbw-target-backing"* ]]
    run ! nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/b.img" cbw-copy-timeout=-1 --run true
    [[ "$output" == *"cbw-copy-timeout: '-1' must be a number of seconds"* ]]
    run ! nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/b.img" cbw-speed=fast --run true
    [[ "$output" == *"cbw-speed"* ]]
}

@test "cbw-targets: a failed qcow2 backup never looks complete" {
    requires qemu-img
    make_disk "$d/disk.img" 8M 6
    run nbdkit -U - --filter="$cbw" --filter=error file "$d/disk.img" \
        error-pread=EIO error-pread-rate=100% cbw-target-format=qcow2 \
        cbw-target="$d/backup.qcow2" cbw-status="$d/status.json" --run true
    [ ! -e "$d/backup.qcow2" ]
    [ -e "$d/backup.qcow2.incomplete" ]
    grep -q '"state":"failed"' "$d/status.json"
    qemu-img check "$d/backup.qcow2.incomplete"
}
