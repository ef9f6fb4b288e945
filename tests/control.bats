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

# refuse_path PATH KIND: a second server on PATH stops at start, says
# why, and serves nothing.
refuse_path () {
    run ! nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-control="$1" fleece-store="$d" --run 'echo served'
    [[ "$output" == *"control socket $1: $2"* ]]
    [[ "$output" != *served* ]]
}

@test "control: a live server's socket is never taken over" {
    start_fleece
    refuse_path "$ctlsock" "another server is listening on it: refusing to take it over (stop that server, or give another path)"
    # The first server still has its socket, and answers on it.
    [ -S "$ctlsock" ]
    ctl_connect C "$ctlsock"
    run -0 ctl C '{"execute":"query-status"}'
    [[ "$output" == '{"return":{"version":"0.1.0","pid":'"$srv_pid"',"filters":["fleece"],'* ]]
    ctl_close C
}

@test "control: a path that is not a socket is refused, never removed" {
    p="$(new_socket)"
    echo precious > "$p"
    refuse_path "$p" "the path exists and is a regular file, not a socket: refusing to replace it"
    [ "$(cat "$p")" = precious ]
    rm "$p"
    ln -s "$d/orig.img" "$p"
    refuse_path "$p" "the path exists and is a symbolic link, not a socket: refusing to replace it"
    [ -L "$p" ]
    rm "$p"
    mkdir "$p"
    refuse_path "$p" "the path exists and is a directory, not a socket: refusing to replace it"
    rmdir "$p"
    mkfifo "$p"
    refuse_path "$p" "the path exists and is a FIFO, not a socket: refusing to replace it"
    [ -p "$p" ]
    rm "$p"
}

@test "control: a dead server's socket is replaced" {
    start_fleece
    kill -9 "$srv_pid"
    wait "$srv_pid" 2>/dev/null || :
    [ -S "$ctlsock" ]
    start_fleece
    ctl_connect C "$ctlsock"
    run -0 ctl C '{"execute":"query-status"}'
    [[ "$output" == '{"return":{"version":"0.1.0","pid":'"$srv_pid"',"filters":["fleece"],'* ]]
    ctl_close C
}

@test "control: requests that are not valid UTF-8 or hold NUL are refused" {
    requires jq
    start_fleece
    ctl_connect C "$ctlsock"
    run -0 ctl C "$(printf '{"execute":"query-status","id":"\xff\xfe"}')"
    [ "$output" = '{"error":{"class":"GenericError","desc":"the request is not valid UTF-8 (byte 0xff at offset 32)"}}' ]
    run -0 ctl C '{"execute":"query-status","id":"a\u0000b"}'
    [ "$output" = '{"error":{"class":"GenericError","desc":"a string in the request contains NUL (\\u0000)"}}' ]
    # Valid UTF-8 comes back as it went in.
    run -0 ctl C '{"execute":"query-status","id":"café"}'
    [ "$(jq -r .id <<<"$output")" = café ]
    ctl_close C
}
