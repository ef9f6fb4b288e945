#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Every bad cbw parameter stops the server at start with a message
# that names the parameter.

load helpers

setup () {
    cbw="$(filter_path cbw)"
    disk="$BATS_TEST_TMPDIR/disk.img"
    truncate -s 1M "$disk"
}

teardown () {
    stop_all_nbdkit
}

# refused MESSAGE ARGS...: nbdkit with cbw and ARGS must fail at start
# and print MESSAGE.
refused () {
    local msg="$1"; shift
    run ! nbdkit -U - --filter="$cbw" "$@" --run 'echo SERVED'
    echo "$output"
    [[ "$output" == *"$msg"* ]]
    [[ "$output" != *SERVED* ]]
}

@test "cbw-params: missing target" {
    refused "cbw-target parameter was not set" file "$disk"
}

@test "cbw-params: target is the source disk" {
    refused "cbw-target: $disk is the source disk itself" \
        file "$disk" cbw-target="$disk"
}

@test "cbw-params: target is the source through another name" {
    ln "$disk" "$BATS_TEST_TMPDIR/link.img"
    refused "is the source disk itself" \
        file "$disk" cbw-target="$BATS_TEST_TMPDIR/link.img"
}

@test "cbw-params: target is a directory" {
    refused "cbw-target: $BATS_TEST_TMPDIR: is a directory, not a regular file or block device" \
        file "$disk" cbw-target="$BATS_TEST_TMPDIR"
}

@test "cbw-params: existing target of the wrong size" {
    truncate -s 2M "$BATS_TEST_TMPDIR/t.img"
    refused "cbw-target: $BATS_TEST_TMPDIR/t.img is 2097152 bytes but the disk is 1048576 bytes" \
        file "$disk" cbw-target="$BATS_TEST_TMPDIR/t.img"
    # Refused, and left alone.
    [ "$(stat -c %s "$BATS_TEST_TMPDIR/t.img")" = 2097152 ]
    [ ! -e "$BATS_TEST_TMPDIR/t.img.incomplete" ]
}

@test "cbw-params: existing target of the wrong size, plugin size known late" {
    # The memory plugin's size is only known once the server has
    # started; nbdkit must still exit at start with the message.
    truncate -s 2M "$BATS_TEST_TMPDIR/t.img"
    sock="$(new_socket)"
    run ! timeout 60 nbdkit -f -U "$sock" --filter="$cbw" memory 1M \
        cbw-target="$BATS_TEST_TMPDIR/t.img"
    rm -f "$sock"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"cbw-target: $BATS_TEST_TMPDIR/t.img is 2097152 bytes but the disk is 1048576 bytes"* ]]
    [ -e "$BATS_TEST_TMPDIR/t.img" ]
    [ ! -e "$BATS_TEST_TMPDIR/t.img.incomplete" ]
}

@test "cbw-params: target in a missing directory" {
    refused "cbw-target: cannot create $BATS_TEST_TMPDIR/no/such/t.img: No such file or directory" \
        file "$disk" cbw-target="$BATS_TEST_TMPDIR/no/such/t.img"
}

@test "cbw-params: bad cluster sizes" {
    local t="cbw-target=$BATS_TEST_TMPDIR/t.img"
    for s in 1000 2K 32M 3M 0; do
        refused "cbw-cluster-size: '$s' must be a power of two from 4K to 16M" \
            memory 1M "$t" cbw-cluster-size="$s"
    done
    refused "could not parse size string (abc)" memory 1M "$t" cbw-cluster-size=abc
}

@test "cbw-params: unknown sync mode" {
    refused "cbw-sync: unknown sync mode 'sometimes' (expecting full, top, incremental or none)" \
        memory 1M cbw-target="$BATS_TEST_TMPDIR/t.img" cbw-sync=sometimes
}

@test "cbw-params: job ids with control characters, or empty" {
    refused "cbw-job-id must not contain control characters (byte 0x1b at offset 5)" \
        memory 1M cbw-target="$BATS_TEST_TMPDIR/t.img" cbw-job-id=$'night\e[2J'
    refused "cbw-job-id must be 1 to 128 bytes long" \
        memory 1M cbw-target="$BATS_TEST_TMPDIR/t.img" cbw-job-id=
}

@test "cbw-params: unwritable status path" {
    refused "cbw-status: cannot write $BATS_TEST_TMPDIR/nodir/status.json" \
        memory 1M cbw-target="$BATS_TEST_TMPDIR/t.img" \
        cbw-status="$BATS_TEST_TMPDIR/nodir/status.json"
}

@test "cbw-params: status path is the target" {
    refused "cbw-status: must not be the target file" \
        memory 1M cbw-target="$BATS_TEST_TMPDIR/t.img" \
        cbw-status="$BATS_TEST_TMPDIR/t.img"
}

@test "cbw-params: bad buffer sizes" {
    refused "cbw-buffer-size: 'lots' must be a size in bytes" \
        memory 1M cbw-target="$BATS_TEST_TMPDIR/t.img" cbw-buffer-size=lots
    refused "cbw-buffer-size: '-1' must be a size in bytes" \
        memory 1M cbw-target="$BATS_TEST_TMPDIR/t.img" cbw-buffer-size=-1
    refused "cbw-buffer-size: '2T' must be a size in bytes, with an optional K, M or G suffix, up to 1T" \
        memory 1M cbw-target="$BATS_TEST_TMPDIR/t.img" cbw-buffer-size=2T
}

@test "cbw-params: bad worker counts" {
    refused "cbw-workers: '0' must be from 1 to 64" \
        memory 1M cbw-target="$BATS_TEST_TMPDIR/t.img" cbw-workers=0
    refused "cbw-workers: '65' must be from 1 to 64" \
        memory 1M cbw-target="$BATS_TEST_TMPDIR/t.img" cbw-workers=65
    refused "cbw-workers" \
        memory 1M cbw-target="$BATS_TEST_TMPDIR/t.img" cbw-workers=many
}

@test "cbw-params: unknown exit and error policies" {
    refused "cbw-on-exit: unknown value 'later' (expecting finish or cancel)" \
        memory 1M cbw-target="$BATS_TEST_TMPDIR/t.img" cbw-on-exit=later
    refused "cbw-on-error: unknown policy 'ignore' (expecting break-snapshot or fail-write)" \
        memory 1M cbw-target="$BATS_TEST_TMPDIR/t.img" cbw-on-error=ignore
}

@test "cbw-params: a bad value gets the same message from backup-start" {
    requires socat
    local ctlsock t="$BATS_TEST_TMPDIR/t.img" i
    ctlsock="$(new_socket)"
    start_nbdkit srv --filter="$cbw" file "$disk" cbw-control="$ctlsock"
    ctl_connect C "$ctlsock"
    # parameter, argument, JSON value, what follows "NAME: ".
    local cases=(
        "sync|sync|\"sometimes\"|unknown sync mode 'sometimes' (expecting full, top, incremental or none)"
        "cluster-size|cluster-size|1000|'1000' must be a power of two from 4K to 16M"
        "cluster-size|cluster-size|\"3M\"|'3M' must be a power of two from 4K to 16M"
        "workers|workers|65|'65' must be from 1 to 64"
        "workers|workers|\"many\"|'many' must be from 1 to 64"
        "on-error|on-error|\"ignore\"|unknown policy 'ignore' (expecting break-snapshot or fail-write)"
        "copy-timeout|copy-timeout|-1|'-1' must be a number of seconds from 0 (no limit) to 86400"
        "speed|speed|\"fast\"|'fast' must be bytes per second, with an optional K, M or G suffix, or 0 (no limit)"
        "bitmap-mode|bitmap-mode|\"sometimes\"|unknown mode 'sometimes' (expecting on-success, never or always)"
        "target-format|format|\"vmdk\"|unknown format 'vmdk' (expecting raw, qcow2 or nbd)"
        "target-backing-format|backing-format|\"vmdk\"|unknown format 'vmdk' (expecting raw or qcow2)"
    )
    for i in "${cases[@]}"; do
        IFS='|' read -r param arg json msg <<<"$i"
        value="$json"
        [[ "$value" == \"*\" ]] && value="${value:1:-1}"
        refused "cbw-$param: $msg" memory 1M cbw-target="$t" "cbw-$param=$value"
        run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$t"'","'"$arg"'":'"$json"'}}'
        echo "$output"
        [ "$output" = '{"error":{"class":"GenericError","desc":"'"$arg: $msg"'"}}' ]
    done
    # Names: one check for both, naming the parameter or argument.
    refused "cbw-job-id must be 1 to 128 bytes long" memory 1M cbw-target="$t" cbw-job-id=
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$t"'","job-id":""}}'
    [ "$output" = '{"error":{"class":"GenericError","desc":"job-id must be 1 to 128 bytes long"}}' ]
    # An empty target names itself too (the socket said "out of memory").
    refused "cbw-target: must not be empty" memory 1M cbw-target=
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":""}}'
    [ "$output" = '{"error":{"class":"GenericError","desc":"target: must not be empty"}}' ]
    # Nothing was started by any of them.
    run -0 ctl C '{"execute":"query-jobs"}'
    [ "$output" = '{"return":[]}' ]
    ctl_close C
}

@test "cbw-params: help lists every parameter" {
    run -0 nbdkit --filter="$cbw" memory --help
    for k in cbw-target cbw-sync cbw-cluster-size cbw-status cbw-workers \
             cbw-on-exit cbw-on-error cbw-target-format cbw-target-backing \
             cbw-target-backing-format cbw-copy-timeout cbw-speed; do
        [[ "$output" == *"$k="* ]]
    done
}
