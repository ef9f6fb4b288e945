#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Backups on command: cbw idle until backup-start, query-jobs, QMP's
# job events, cancel and set-speed, refusals, and one transaction that
# starts a fleece snapshot and a cbw backup at the same instant.

load helpers

setup () {
    cbw="$(filter_path cbw)"
    fleece="$(filter_path fleece)"
    d="$BATS_TEST_TMPDIR"
    ctlsock="$(new_socket)"
    head -c 8M /dev/urandom > "$d/disk.img"
}

teardown () {
    stop_all_nbdkit
    rm -f "$ctlsock"
}

@test "cbw-control: idle until backup-start, then exact at that instant" {
    start_nbdkit srv --filter="$cbw" file "$d/disk.img" cbw-control="$ctlsock"
    # Idle: writes go straight down, nothing is copied anywhere.
    qemu-io -f raw "$srv_uri" -c "write -P 0x11 0 1M" >/dev/null
    ctl_connect C "$ctlsock"
    run -0 ctl C '{"execute":"query-jobs"}'
    [ "$output" = '{"return":[]}' ]
    cp "$d/disk.img" "$d/instant.img"
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$d/b.img"'","job-id":"nightly"}}'
    [ "$output" = '{"return":{"id":"nightly"}}' ]
    qemu-io -f raw "$srv_uri" -c "write -P 0x22 512k 4M" >/dev/null
    run -0 ctl_event C BLOCK_JOB_COMPLETED
    [[ "$output" == '{"event":"BLOCK_JOB_COMPLETED","data":{"device":"nightly","type":"backup","len":8388608,"offset":8388608,"speed":0},'* ]]
    grep -q '"event":"JOB_STATUS_CHANGE","data":{"id":"nightly","status":"running"}' "$BATS_TEST_TMPDIR/events.C"
    grep -q '"event":"JOB_STATUS_CHANGE","data":{"id":"nightly","status":"completed"}' "$BATS_TEST_TMPDIR/events.C"
    cmp "$d/b.img" "$d/instant.img"
    run -0 ctl C '{"execute":"query-jobs"}'
    [[ "$output" == '{"return":[{"id":"nightly","type":"backup","status":"completed","sync":"full",'* ]]
    [[ "$output" == *'"current-progress":8388608,"total-progress":8388608,'* ]]
    # A second backup replaces the finished job under the same id.
    cp "$d/disk.img" "$d/instant2.img"
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$d/b2.qcow2"'","format":"qcow2","job-id":"nightly"}}'
    [ "$output" = '{"return":{"id":"nightly"}}' ]
    qemu-io -f raw "$srv_uri" -c "write -P 0x33 0 8M" >/dev/null
    run -0 ctl_event C BLOCK_JOB_COMPLETED
    qemu-img compare -q -f raw -F qcow2 "$d/instant2.img" "$d/b2.qcow2"
    ctl_close C
}

@test "cbw-control: cancel, set-speed and refusals" {
    start_nbdkit srv --filter="$cbw" file "$d/disk.img" cbw-control="$ctlsock"
    ctl_connect C "$ctlsock"
    # 1 byte/s (then 2): after its first 1M chunk this job could not
    # copy another for days, so it cannot end by itself, however slow
    # the machine.
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$d/b.img"'","speed":1,"workers":1}}'
    [ "$output" = '{"return":{"id":"cbw"}}' ]
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$d/other.img"'"}}'
    [ "$output" = "{\"error\":{\"class\":\"GenericError\",\"desc\":\"a backup is already running (job 'cbw'): cancel it or wait for it to end\"}}" ]
    run -0 ctl C '{"execute":"job-set-speed","arguments":{"id":"cbw","speed":2}}'
    [ "$output" = '{"return":{}}' ]
    run -0 ctl C '{"execute":"query-jobs"}'
    [[ "$output" == *'"status":"running"'*'"speed":2,'* ]]
    run -0 ctl C '{"execute":"job-set-speed","arguments":{"id":"cbw","speed":-1}}'
    [[ "$output" == *"'speed' must be a number of bytes per second (0 for no limit)"* ]]
    run -0 ctl C '{"execute":"job-cancel","arguments":{"id":"nope"}}'
    [ "$output" = "{\"error\":{\"class\":\"DeviceNotFound\",\"desc\":\"job 'nope' not found\"}}" ]
    run -0 ctl C '{"execute":"job-cancel","arguments":{"id":"cbw"}}'
    [ "$output" = '{"return":{}}' ]
    run -0 ctl_event C BLOCK_JOB_CANCELLED
    [[ "$output" == *'"data":{"device":"cbw","type":"backup","len":8388608,'* ]]
    run -0 ctl C '{"execute":"job-cancel","arguments":{"id":"cbw"}}'
    [ "$output" = "{\"error\":{\"class\":\"GenericError\",\"desc\":\"job 'cbw' has already ended (cancelled)\"}}" ]
    # Cancelled: never published.
    [ ! -e "$d/b.img" ]
    [ -e "$d/b.img.incomplete" ]
    # Bad arguments name themselves.
    run -0 ctl C '{"execute":"backup-start","arguments":{}}'
    [ "$output" = "{\"error\":{\"class\":\"GenericError\",\"desc\":\"backup-start: missing argument 'target'\"}}" ]
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$d/x.img"'","sync":"sometimes"}}'
    [ "$output" = "{\"error\":{\"class\":\"GenericError\",\"desc\":\"sync: unknown sync mode 'sometimes' (expecting full, top, incremental or none)\"}}" ]
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$d/x.img"'","colour":"blue"}}'
    [ "$output" = "{\"error\":{\"class\":\"GenericError\",\"desc\":\"backup-start: unknown argument 'colour'\"}}" ]
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$d/disk.img"'"}}'
    echo "$output"; [ "$output" = "{\"error\":{\"class\":\"GenericError\",\"desc\":\"target: $d/disk.img is the source disk itself\"}}" ]
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$d/x.img"'","cluster-size":1000}}'
    [ "$output" = '{"error":{"class":"GenericError","desc":"cluster-size: '"'1000'"' must be a power of two from 4K to 16M"}}' ]
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":""}}'
    [ "$output" = '{"error":{"class":"GenericError","desc":"target: must not be empty"}}' ]
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"x.img"}}'
    [ "$output" = '{"error":{"class":"GenericError","desc":"backup-start: target '"'x.img'"' must be an absolute path (or an NBD URI)"}}' ]
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$d/x.img"'","job-id":"a\nb"}}'
    [ "$output" = '{"error":{"class":"GenericError","desc":"job-id must not contain control characters (byte 0x0a at offset 1)"}}' ]
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$d/x.img"'","job-id":""}}'
    [ "$output" = '{"error":{"class":"GenericError","desc":"job-id must be 1 to 128 bytes long"}}' ]
    [ ! -e "$d/x.img" ] && [ ! -e /x.img ]
    ctl_close C
}

@test "cbw-control: one transaction, a fleece snapshot and a cbw backup at one instant" {
    start_nbdkit srv --filter="$fleece" --filter="$cbw" file "$d/disk.img" \
        fleece-control="$ctlsock" fleece-snapshot=on-command fleece-store="$d"
    cp --sparse=always "$d/disk.img" "$d/model.img"
    ctl_connect C "$ctlsock"
    [[ "$C_greeting" == *'"filters":["cbw","fleece"]'* ]]
    # Writers race the transaction: every write is wholly before or
    # after the instant in both filters, so both copies agree.  (The
    # transaction goes in once writes reach the disk; how many come
    # before or after it does not change the outcome.)
    pitwriter --seed 5 --connections 4 --ops 400 --model "$d/model.img" "$srv_uri" &
    w=$!
    wait_for "pitwriter's writes reaching the server" \
        "grep -Eq 'debug: file: (pwrite|zero|trim)' '$d/srv.log'"
    run -0 ctl C '{"execute":"transaction","arguments":{"actions":[{"type":"snapshot-start"},{"type":"backup-start","data":{"target":"'"$d/b.img"'"}}]}}'
    [ "$output" = '{"return":{}}' ]
    nbdcopy "nbd+unix:///snapshot?socket=$srv_sock" "$d/snap.img"
    wait "$w"
    run -0 ctl_event C BLOCK_JOB_COMPLETED
    cmp "$d/snap.img" "$d/b.img"
    cmp "$d/disk.img" "$d/model.img"
    # A transaction that fails leaves nothing behind.
    run -0 ctl C '{"execute":"snapshot-stop"}'
    run -0 ctl C '{"execute":"transaction","arguments":{"actions":[{"type":"snapshot-start"},{"type":"backup-start","data":{"target":"'"$d/disk.img"'"}}]}}'
    echo "$output"; [ "$output" = "{\"error\":{\"class\":\"GenericError\",\"desc\":\"target: $d/disk.img is the source disk itself\"}}" ]
    run -0 ctl C '{"execute":"query-snapshots"}'
    [[ "$output" == *'"active":false'* ]]
    ctl_close C
}
