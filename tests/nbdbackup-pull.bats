#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup pull: copies to raw, qcow2 and NBD targets equal the
# source and stay sparse; a target that did not complete never looks
# complete; exit statuses, messages and the JSON summary.

load helpers

setup () {
    requires nbdbackup nbdcopy
    d="$BATS_TEST_TMPDIR"
}

teardown () { stop_all_nbdkit; }

# Read a whole NBD export into a file.
export_to_file () { nbdcopy "$1" "$2"; }

@test "nbdbackup: --help, --version and the exit status table" {
    run -0 nbdbackup --help
    [[ "$output" == *"pull"* ]]
    [[ "$output" == *"2  usage error"* ]]
    [[ "$output" == *"3  the server refused the command"* ]]
    run -0 nbdbackup pull --help
    [[ "$output" == *"--requests"* ]]
    [[ "$output" == *"--json"* ]]
    run -0 nbdbackup --version
    [[ "$output" == "nbdbackup "[0-9]* ]]
}

@test "nbdbackup pull: captive nbdkit file to raw equals the source, sparse" {
    make_disk "$d/disk.img" 64M 11
    export out="$d/out.img"
    run -0 nbdkit -U - file "$d/disk.img" --run 'nbdbackup pull "$uri" "$out"'
    # Quiet on success when stderr is not a terminal.
    [ -z "$output" ]
    cmp "$d/disk.img" "$out"
    src=$(data_bytes "$d/disk.img"); tgt=$(data_bytes "$out")
    echo "source data $src, target data $tgt"
    [ "$tgt" -le "$src" ]
    [ "$tgt" -gt 0 ]
    [ ! -e "$out.incomplete" ]
}

@test "nbdbackup pull: memory and pattern sources, several connections" {
    make_disk "$d/disk.img" 32M 12
    start_nbdkit mem memory 32M
    nbdcopy "$d/disk.img" "$mem_uri"
    run -0 nbdbackup pull -C 3 -R 4 --chunk 64K "$mem_uri" "$d/mem.img"
    cmp "$d/disk.img" "$d/mem.img"
    [ "$(data_bytes "$d/mem.img")" -le "$(data_bytes "$d/disk.img")" ]

    start_nbdkit pat pattern 8M
    nbdcopy "$pat_uri" "$d/pattern-ref.img"
    run -0 nbdbackup pull --chunk 4M "$pat_uri" "$d/pattern.img"
    cmp "$d/pattern-ref.img" "$d/pattern.img"
}

@test "nbdbackup pull: a source without extents is still copied sparsely" {
    make_disk "$d/disk.img" 16M 13
    start_nbdkit src --filter=noextents file "$d/disk.img"
    run -0 nbdbackup pull "$src_uri" "$d/out.img"
    cmp "$d/disk.img" "$d/out.img"
    [ "$(data_bytes "$d/out.img")" -le "$(data_bytes "$d/disk.img")" ]
}

@test "nbdbackup pull: qcow2 target passes qemu-img check and compare" {
    requires qemu-img
    make_disk "$d/disk.img" 64M 14
    start_nbdkit src file "$d/disk.img"
    # Format from the suffix.
    run -0 nbdbackup pull "$src_uri" "$d/out.qcow2"
    run -0 qemu-img check "$d/out.qcow2"
    run -0 qemu-img compare -f raw -F qcow2 "$d/disk.img" "$d/out.qcow2"
    [[ "$output" == *"Images are identical"* ]]
    [ ! -e "$d/out.qcow2.incomplete" ]
    # Zero ranges stay unallocated (the disk is mostly holes).
    [ "$(stat -c %s "$d/out.qcow2")" -lt 33554432 ]

    # Explicit format and cluster size, any name.
    run -0 nbdbackup pull --format=qcow2 --cluster-size=4K "$src_uri" "$d/img"
    run -0 qemu-img info --output=json "$d/img"
    [[ "$output" == *'"format": "qcow2"'* ]]
    [[ "$output" == *'"cluster-size": 4096'* ]]
    run -0 qemu-img check "$d/img"
    run -0 qemu-img compare -f raw -F qcow2 "$d/disk.img" "$d/img"
}

@test "nbdbackup pull: qcow2 overlay with --backing reads as the new source" {
    requires qemu-img
    make_disk "$d/disk.img" 16M 15
    start_nbdkit src file "$d/disk.img"
    run -0 nbdbackup pull "$src_uri" "$d/full.qcow2"
    stop_nbdkit src
    # Change the disk: new data, zeroed data, a punched hole.
    dd if=/dev/urandom of="$d/disk.img" bs=64K seek=7 count=5 conv=notrunc status=none
    dd if=/dev/zero of="$d/disk.img" bs=1M seek=0 count=4 conv=notrunc status=none
    fallocate -p -o 8M -l 4M "$d/disk.img"
    start_nbdkit src2 file "$d/disk.img"
    mkdir "$d/inc"
    run -0 nbdbackup pull --backing=../full.qcow2 "$src2_uri" "$d/inc/day1.qcow2"
    run -0 qemu-img info "$d/inc/day1.qcow2"
    [[ "$output" == *"backing file: ../full.qcow2"* ]]
    [[ "$output" == *"backing file format: qcow2"* ]]
    run -0 qemu-img check "$d/inc/day1.qcow2"
    run -0 qemu-img compare -f raw -F qcow2 "$d/disk.img" "$d/inc/day1.qcow2"

    run -1 nbdbackup pull --backing=missing.qcow2 "$src2_uri" "$d/x.qcow2"
    [[ "$output" == *"missing.qcow2"* ]]
    [ ! -e "$d/x.qcow2" ]
}

@test "nbdbackup pull --incremental: HOLE|ZERO is written as zeros, not skipped" {
    requires qemu-img qemu-io
    # A qcow2 chain whose top zeroes a cluster the base holds data in:
    # the qcow2 plugin reports it HOLE|ZERO.  Only plain HOLE means
    # "unchanged, read the backing file".
    qemu-img create -q -f qcow2 "$d/base.qcow2" 1M
    qemu-io -f qcow2 -c "write -P 0x5a 0 1M" "$d/base.qcow2" >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$d/top.qcow2"
    qemu-io -f qcow2 -c "write -z 0 64k" -c "write -P 0x11 128k 64k" "$d/top.qcow2" >/dev/null
    cp "$d/base.qcow2" "$d/prev.qcow2"
    nbdkit -U - "$(plugin_path qcow2)" "$d/top.qcow2" \
        --run 'nbdbackup pull --incremental --backing=prev.qcow2 "$uri" "'"$d"'/inc.qcow2"'
    run -0 qemu-img check "$d/inc.qcow2"
    run -0 qemu-img compare -f qcow2 -F qcow2 "$d/top.qcow2" "$d/inc.qcow2"
}

@test "nbdbackup pull: NBD target overwritten with data and zeros" {
    make_disk "$d/disk.img" 32M 16
    start_nbdkit src file "$d/disk.img"
    # Targets full of old data, so zero ranges must really be zeroed:
    # one with write-zeroes, one without (zeros written as data).
    start_nbdkit dst memory 32M
    start_nbdkit dstnz --filter=nozero memory 40M
    head -c 40M /dev/urandom >"$d/garbage.img"
    truncate -s 32M "$d/garbage32.img"
    dd if="$d/garbage.img" of="$d/garbage32.img" bs=1M count=32 conv=notrunc status=none
    nbdcopy "$d/garbage32.img" "$dst_uri"
    nbdcopy "$d/garbage.img" "$dstnz_uri"

    run -0 nbdbackup pull -C 2 "$src_uri" "$dst_uri"
    export_to_file "$dst_uri" "$d/dst.img"
    cmp "$d/disk.img" "$d/dst.img"

    run -0 nbdbackup pull "$src_uri" "$dstnz_uri"
    export_to_file "$dstnz_uri" "$d/dstnz.img"
    # The first 32M are the source; the 8M past its end are untouched.
    cmp -n 33554432 "$d/disk.img" "$d/dstnz.img"
    cmp -i 33554432 "$d/garbage.img" "$d/dstnz.img"

    # Zero pieces bigger than the target's largest zero request: data
    # that reads as zeros (no extents) in 8M chunks.
    nbdcopy "$d/garbage.img" "$dstnz_uri"
    cp "$d/disk.img" "$d/disk2.img"
    fallocate -p -o 8M -l 8M "$d/disk2.img"
    start_nbdkit srcnx --filter=noextents file "$d/disk2.img"
    run -0 nbdbackup pull --chunk=8M "$srcnx_uri" "$dstnz_uri"
    export_to_file "$dstnz_uri" "$d/dstnz.img"
    cmp -n 33554432 "$d/disk2.img" "$d/dstnz.img"
}

@test "nbdbackup pull: NBD target that is read-only or too small" {
    start_nbdkit src pattern 16M
    start_nbdkit ro pattern 16M
    start_nbdkit small memory 8M
    run -1 nbdbackup pull "$src_uri" "$ro_uri"
    [[ "$output" == *"read-only"* ]]
    run -1 nbdbackup pull "$src_uri" "$small_uri"
    [[ "$output" == *"is 8388608 bytes but the disk is 16777216 bytes"* ]]
    # File-only options are usage errors with an NBD target.
    run -2 nbdbackup pull --format=qcow2 "$src_uri" "$small_uri"
    [[ "$output" == *"--format applies only to a file TARGET"* ]]
}

@test "nbdbackup pull: --json summary" {
    requires jq
    make_disk "$d/disk.img" 16M 17
    start_nbdkit src file "$d/disk.img"
    run -0 --separate-stderr nbdbackup pull --json "$src_uri" "$d/out.img"
    echo "$output"
    [ "$(echo "$output" | wc -l)" -eq 1 ]
    echo "$output" | jq -e '
        .command == "pull" and .source == "'"$src_uri"'" and
        .target == "'"$d/out.img"'" and .format == "raw" and
        .bytes_total == 16777216 and .bytes_copied > 0 and
        .bytes_zero > 0 and .bytes_copied + .bytes_zero == .bytes_total and
        (.seconds | type) == "number" and
        (.mib_per_second | type) == "number" and
        .result == "ok" and .error == null'

    run -1 --separate-stderr nbdbackup pull --json \
        "nbd+unix:///?socket=$d/nothing" "$d/out2.img"
    echo "$output" | jq -e '.result == "error" and .format == "raw" and
        (.error | contains("nothing"))'
}

@test "nbdbackup pull: usage errors exit 2 and name the problem" {
    run -2 nbdbackup pull --no-such-option a b
    [[ "$output" == *"unrecognized option '--no-such-option'"* ]]
    run -2 nbdbackup pull nbd+unix:///?socket=/x
    [[ "$output" == *"missing TARGET"* ]]
    run -2 nbdbackup pull
    [[ "$output" == *"missing SOURCE-URI and TARGET"* ]]
    run -2 nbdbackup pull --requests=0 nbd://x out.img
    [[ "$output" == *"--requests"* ]]
    run -2 nbdbackup pull --chunk=3M nbd://x out.img
    [[ "$output" == *"--chunk"* ]]
    run -2 nbdbackup pull --backing=b.img nbd://x out.img
    [[ "$output" == *"--backing needs a qcow2 TARGET"* ]]
    run -2 nbdbackup pull disk.img out.img
    [[ "$output" == *"not an NBD URI"* ]]
    run -2 nbdbackup pull --requests
    [[ "$output" == *"requires an argument"* ]]
    run -2 nbdbackup no-such-subcommand
    [[ "$output" == *"unknown subcommand"* ]]
    run -2 nbdbackup
}

@test "nbdbackup pull: unreachable source exits 1 and creates nothing" {
    cd "$d"
    run -1 nbdbackup pull "nbd+unix:///?socket=$d/no-socket" out.img
    [[ "$output" == *"no-socket"* ]]
    [ ! -e out.img ]
    [ ! -e out.img.incomplete ]
}

@test "nbdbackup pull: a read error mid-copy leaves only TARGET.incomplete" {
    # 64 reads of 1M, each failing with probability 1/2.
    start_nbdkit src --filter=error pattern 64M \
        error-pread=EIO error-pread-rate=0.5
    run -1 nbdbackup pull "$src_uri" "$d/out.img"
    [[ "$output" == *"Input/output error"* ]]
    [ ! -e "$d/out.img" ]
    [ -e "$d/out.img.incomplete" ]
    run -1 nbdbackup pull "$src_uri" "$d/out.qcow2"
    [ ! -e "$d/out.qcow2" ]
    [ -e "$d/out.qcow2.incomplete" ]
    # A later good run replaces the stale TARGET.incomplete.
    start_nbdkit good pattern 64M
    run -0 nbdbackup pull "$good_uri" "$d/out.img"
    [ -e "$d/out.img" ]
    [ ! -e "$d/out.img.incomplete" ]
}

@test "nbdbackup pull: an existing TARGET needs --force" {
    start_nbdkit src pattern 4M
    echo "yesterday" >"$d/out.img"
    run -1 nbdbackup pull "$src_uri" "$d/out.img"
    [[ "$output" == *"already exists"*"--force"* ]]
    [ "$(cat "$d/out.img")" = yesterday ]
    [ ! -e "$d/out.img.incomplete" ]
    run -0 nbdbackup pull --force "$src_uri" "$d/out.img"
    nbdcopy "$src_uri" "$d/ref.img"
    cmp "$d/ref.img" "$d/out.img"
    # Not a regular file: refused even with --force.
    mkdir "$d/dir"
    run -1 nbdbackup pull --force "$src_uri" "$d/dir"
    [[ "$output" == *"not a regular file"* ]]
}

# start_held_source: a source server "src" that holds every read
# until the test resumes it: the copy cannot end before the test acts.
# (No extents, so that the copy's first request is a read, issued once
# TARGET.incomplete exists.)  held_reads waits until reads are held.
start_held_source () {
    psock="$(new_socket)"
    start_nbdkit src --filter=noextents --filter=pause pattern 1G \
        pause-control="$psock"
    pause_ctl "$psock" p
}
held_reads () {
    wait_for "reads of the copy held by the paused source" \
        "grep -q 'debug: pause: pread' '$d/src.log'"
}

@test "nbdbackup pull: SIGINT stops the copy, leaves TARGET.incomplete" {
    start_held_source
    nbdbackup pull --json "$src_uri" "$d/out.img" >"$d/json" 2>"$d/err" &
    pid=$!
    held_reads
    [ -e "$d/out.img.incomplete" ]
    kill -INT "$pid"
    status=0; wait "$pid" || status=$?
    cat "$d/err"
    [ "$status" -eq 130 ]
    grep -q '"result":"error"' "$d/json"
    grep -q 'interrupted' "$d/err"
    [ ! -e "$d/out.img" ]
    [ -e "$d/out.img.incomplete" ]
}

@test "nbdbackup pull: the source server dying mid-copy is an error" {
    start_held_source
    nbdbackup pull "$src_uri" "$d/out.img" 2>"$d/err" &
    pid=$!
    held_reads
    # Dies with reads in flight (SIGTERM would wait for them).
    kill -9 "$src_pid"
    status=0; wait "$pid" || status=$?
    cat "$d/err"
    [ "$status" -eq 1 ]
    # (closed or reset, as the kernel has it)
    grep -q '^nbdbackup: source: ' "$d/err"
    [ ! -e "$d/out.img" ]
    [ -e "$d/out.img.incomplete" ]
}

@test "nbdbackup pull: --progress draws a bar, cleared at the end" {
    start_nbdkit src --filter=delay pattern 64M delay-read=10ms
    run -0 --separate-stderr nbdbackup pull --progress "$src_uri" "$d/out.img"
    printf '%s' "$stderr" | od -c | tail -4
    [[ "$stderr" == *"%"*"MiB/s"*"ETA"* ]]
    # Ends by erasing the line.
    [[ "$stderr" == *$'\r\e[K' ]]
    run -0 --separate-stderr nbdbackup pull --force --no-progress \
        "$src_uri" "$d/out.img"
    [ -z "$stderr" ]
}
