#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# The control socket: protocol, errors, several clients, permissions,
# and snapshots started and stopped on command.

load helpers

setup () {
    fleece="$(filter_path fleece)"
    d="$BATS_TEST_TMPDIR"
    ctlsock="$(new_socket)"
    head -c 4M /dev/urandom > "$d/disk.img"
    cp "$d/disk.img" "$d/orig.img"
}

teardown () {
    stop_all_nbdkit
    rm -f "$ctlsock"
}

start_fleece () {
    start_nbdkit srv --filter="$fleece" file "$d/disk.img" \
        fleece-control="$ctlsock" fleece-store="$d" "$@"
}

@test "control: greeting, mode 0600, query-status and query-commands" {
    start_fleece
    [ -S "$ctlsock" ]
    [ "$(stat -c %a "$ctlsock")" = 600 ]
    ctl_connect C "$ctlsock"
    [[ "$C_greeting" == '{"nbdkit-backup":{"version":"0.1.0","filters":["fleece"]}}' ]]
    run -0 ctl C '{"execute":"qmp_capabilities"}'
    [ "$output" = '{"return":{}}' ]
    run -0 ctl C '{"execute":"query-status","id":42}'
    [[ "$output" == '{"return":{"version":"0.1.0","pid":'*',"filters":["fleece"],'*'"id":42}' ]]
    run -0 ctl C '{"execute":"query-commands"}'
    [[ "$output" == *'{"name":"snapshot-start","transaction-action":true}'* ]]
    [[ "$output" == *'{"name":"snapshot-stop","transaction-action":false}'* ]]
    [[ "$output" == *'{"name":"transaction","transaction-action":false}'* ]]
    ctl_close C
    stop_nbdkit srv
    # The socket goes away with the server.
    [ ! -e "$ctlsock" ]
}

@test "control: errors get a class and a description, the connection carries on" {
    start_fleece
    ctl_connect C "$ctlsock"
    run -0 ctl C 'this is not json'
    [[ "$output" == '{"error":{"class":"GenericError","desc":"JSON parse error: '* ]]
    run -0 ctl C '{"execute":"no-such-command","id":"x"}'
    [ "$output" = '{"error":{"class":"CommandNotFound","desc":"the command no-such-command has not been found"},"id":"x"}' ]
    run -0 ctl C '{"execute":"snapshot-stop","arguments":{"force":true}}'
    [ "$output" = '{"error":{"class":"GenericError","desc":"snapshot-stop takes no arguments"}}' ]
    run -0 ctl C '{"execute":"query-status","arguments":"no"}'
    [ "$output" = "{\"error\":{\"class\":\"GenericError\",\"desc\":\"'arguments' must be a JSON object\"}}" ]
    run -0 ctl C '{"execute":"snapshot-start"}'
    [ "$output" = '{"error":{"class":"GenericError","desc":"a snapshot is already active: stop it first"}}' ]
    run -0 ctl C '{"execute":"query-snapshots"}'
    [[ "$output" == '{"return":[{"name":"fleece","export":"snapshot","active":true,"broken":false,'* ]]
}

@test "control: two clients at once; a client dying mid-line harms nobody" {
    start_fleece
    ctl_connect A "$ctlsock"
    ctl_connect B "$ctlsock"
    run -0 ctl A '{"execute":"query-status","id":"a"}'
    [[ "$output" == *'"id":"a"}' ]]
    run -0 ctl B '{"execute":"query-status","id":"b"}'
    [[ "$output" == *'"id":"b"}' ]]
    # A third client writes half a request and dies.
    printf '{"execute":"query-st' | socat -u - UNIX-CONNECT:"$ctlsock"
    run -0 ctl A '{"execute":"query-status","id":"a2"}'
    [[ "$output" == *'"id":"a2"}' ]]
    # The data path never noticed.
    run -0 qemu-io -f raw "$srv_uri" -c "write -P 0x33 0 64k"
    ctl_close A
    ctl_close B
}

@test "control: snapshot on command is exact at the command's instant" {
    start_fleece fleece-snapshot=on-command
    snap="nbd+unix:///snapshot?socket=$srv_sock"
    # No snapshot yet: the export refuses connections.
    run ! nbdinfo "$snap"
    qemu-io -f raw "$srv_uri" -c "write -P 0x11 0 1M" >/dev/null
    cp "$d/disk.img" "$d/instant.img"
    ctl_connect C "$ctlsock"
    run -0 ctl C '{"execute":"transaction","arguments":{"actions":[{"type":"snapshot-start"}]}}'
    [ "$output" = '{"return":{}}' ]
    run -0 ctl_event C SNAPSHOT_STARTED
    [[ "$output" == *'"data":{"export":"snapshot"}'* ]]
    qemu-io -f raw "$srv_uri" -c "write -P 0x22 512k 2M" >/dev/null
    nbdcopy "$snap" "$d/copy.img"
    cmp "$d/copy.img" "$d/instant.img"
    run -0 ctl C '{"execute":"snapshot-stop"}'
    [ "$output" = '{"return":{}}' ]
    run -0 ctl C '{"execute":"query-snapshots"}'
    [[ "$output" == '{"return":[{"name":"fleece","export":"snapshot","active":false,'* ]]
    run ! nbdinfo "$snap"
    run -0 ctl C '{"execute":"snapshot-stop"}'
    [ "$output" = '{"error":{"class":"DeviceNotFound","desc":"no snapshot is active"}}' ]
    # And again: a second snapshot at a new instant.
    cp "$d/disk.img" "$d/instant2.img"
    run -0 ctl C '{"execute":"snapshot-start"}'
    qemu-io -f raw "$srv_uri" -c "write -P 0x44 0 4M" >/dev/null
    nbdcopy "$snap" "$d/copy2.img"
    cmp "$d/copy2.img" "$d/instant2.img"
    ctl_close C
}

@test "control: a socket path that cannot be bound stops the server" {
    run ! nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-control="$d/no/such/dir/sock" --run true
    [[ "$output" == *"control socket: $d/no/such/dir/sock: No such file or directory"* ]]
}
