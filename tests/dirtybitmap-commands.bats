#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# The dirtybitmap filter's commands: QMP's bitmap commands and their
# errors, exact bitmap contents after every kind of write at several
# granularities, merge/clear/enable/disable, and transactions.

load helpers
load dirtybitmap-helpers

setup () {
    d="$BATS_TEST_TMPDIR"
    ctlsock="$(new_socket)"
}

teardown () {
    stop_all_nbdkit
    rm -f "$ctlsock"
}

start_db () {
    start_nbdkit srv --filter="$dirtybitmap" memory "${SIZE:-16M}" \
        dirtybitmap-control="$ctlsock" "$@"
    ctl_connect C "$ctlsock"
}

@test "dirtybitmap: add, query and remove, with QMP's names and errors" {
    start_db
    [[ "$C_greeting" == *'"filters":["dirtybitmap"]'* ]]
    run -0 qmp C block-dirty-bitmap-add '{"name":"b0"}'
    [ "$output" = '{}' ]
    run -0 qmp C block-dirty-bitmap-add \
        '{"node":"drive0","name":"b1","granularity":4096,"disabled":true}'
    [ "$output" = '{}' ]
    run -0 bitmaps C
    [ "$output" = "b0 0 65536 true false false false
b1 0 4096 false false false false" ]
    run -0 qmp C block-dirty-bitmap-add '{"name":"b0"}'
    [ "$output" = "error: bitmap 'b0' already exists" ]
    run -0 qmp C block-dirty-bitmap-add '{"name":"x","granularity":3000}'
    [ "$output" = "error: block-dirty-bitmap-add: granularity 3000 must be a power of two from 512 to 2147483648" ]
    run -0 qmp C block-dirty-bitmap-add '{"name":"x","granularity":256}'
    [ "$output" = "error: block-dirty-bitmap-add: granularity 256 must be a power of two from 512 to 2147483648" ]
    run -0 qmp C block-dirty-bitmap-add '{"name":"x","persistent":true}'
    [ "$output" = "error: block-dirty-bitmap-add: a persistent bitmap needs a bitmap file: start the server with dirtybitmap-file=PATH" ]
    run -0 qmp C block-dirty-bitmap-add '{"name":"x","bogus":1}'
    [ "$output" = "error: block-dirty-bitmap-add: unknown argument 'bogus'" ]
    run -0 qmp C block-dirty-bitmap-add '{"granularity":4096}'
    [ "$output" = "error: block-dirty-bitmap-add: 'name' must be given as a string" ]
    run -0 qmp C block-dirty-bitmap-add '{"name":""}'
    [ "$output" = "error: a bitmap name must be 1 to 1023 bytes long" ]
    run -0 qmp C block-dirty-bitmap-add '{"name":"a\tb"}'
    [ "$output" = "error: a bitmap name must not contain control characters (byte 0x09 at offset 1)" ]
    run -0 qmp C block-dirty-bitmap-add '{"name":"x\u001b[2J"}'
    [ "$output" = "error: a bitmap name must not contain control characters (byte 0x1b at offset 1)" ]
    run -0 ctl C '{"execute":"block-dirty-bitmap-remove","arguments":{"name":"zz"}}'
    [ "$output" = '{"error":{"class":"DeviceNotFound","desc":"block-dirty-bitmap-remove: bitmap '"'zz'"' not found"}}' ]
    run -0 qmp C block-dirty-bitmap-remove '{"name":"b1"}'
    [ "$output" = '{}' ]
    run -0 bitmaps C
    [ "$output" = "b0 0 65536 true false false false" ]
    # Every bitmap command is a transaction action.
    run -0 ctl C '{"execute":"query-commands"}'
    for c in add remove clear enable disable merge; do
        [[ "$output" == *'{"name":"block-dirty-bitmap-'$c'","transaction-action":true}'* ]]
    done
    [[ "$output" == *'{"name":"query-bitmaps","transaction-action":false}'* ]]
    [[ "$output" == *'{"name":"query-dirty-ranges","transaction-action":false}'* ]]
}

@test "dirtybitmap: writes, zeroes and trims at 4K, 64K and 1M granularity" {
    start_db
    for g in 4096 65536 1048576; do
        run -0 qmp C block-dirty-bitmap-add '{"name":"g'$g'","granularity":'$g'}'
    done
    # A write straddling 64K, zeroes straddling 1M, a trim on 4K
    # boundaries, and the disk's last byte.
    io "$srv_uri" "write -P 0x11 65000 1000" "write -z 1048000 1000" \
        "discard 3149824 8192" "write -P 0x22 16777215 1"
    run -0 ranges C g4096
    [ "$output" = "61440+8192 1044480+8192 3149824+8192 16773120+4096" ]
    run -0 ranges C g65536
    [ "$output" = "0+131072 983040+131072 3145728+65536 16711680+65536" ]
    run -0 ranges C g1048576
    [ "$output" = "0+2097152 3145728+1048576 15728640+1048576" ]
    run -0 bitmaps C
    [ "$output" = "g4096 28672 4096 true false false false
g65536 393216 65536 true false false false
g1048576 4194304 1048576 true false false false" ]
    # Reads change nothing.
    qemu-io -f raw "$srv_uri" -c "read 0 16M" >/dev/null
    run -0 ranges C g4096
    [ "$output" = "61440+8192 1044480+8192 3149824+8192 16773120+4096" ]
    # Paging through the ranges.
    run -0 qmp C query-dirty-ranges '{"name":"g4096","offset":1000000,"length":3000000,"max-ranges":1}'
    [ "$output" = '{"name":"g4096","granularity":4096,"disk-size":16777216,"ranges":[{"offset":1044480,"length":8192}],"next-offset":1052672}' ]
    run -0 qmp C query-dirty-ranges '{"name":"g4096","offset":1052672,"length":2100000}'
    [ "$output" = '{"name":"g4096","granularity":4096,"disk-size":16777216,"ranges":[{"offset":3149824,"length":2848}]}' ]
}

@test "dirtybitmap: a disk that ends inside a granule counts only its bytes" {
    SIZE=1049088 start_db
    run -0 qmp C block-dirty-bitmap-add '{"name":"b"}'
    io "$srv_uri" "write -P 0x33 1049087 1"
    run -0 ranges C b
    [ "$output" = "1048576+512" ]
    run -0 bitmaps C
    [ "$output" = "b 512 65536 true false false false" ]
}

@test "dirtybitmap: clear, disable, enable and merge" {
    start_db
    run -0 qmp C block-dirty-bitmap-add '{"name":"a"}'
    run -0 qmp C block-dirty-bitmap-add '{"name":"b"}'
    run -0 qmp C block-dirty-bitmap-add '{"name":"c","granularity":4096,"disabled":true}'
    io "$srv_uri" "write -P 1 0 4096"
    run -0 qmp C block-dirty-bitmap-disable '{"name":"a"}'
    [ "$output" = '{}' ]
    io "$srv_uri" "write -P 2 1048576 4096"
    run -0 qmp C block-dirty-bitmap-enable '{"name":"c"}'
    io "$srv_uri" "write -P 3 2097252 10"
    run -0 ranges C a
    [ "$output" = "0+65536" ]
    run -0 ranges C b
    [ "$output" = "0+65536 1048576+65536 2097152+65536" ]
    run -0 ranges C c
    [ "$output" = "2097152+4096" ]
    run -0 bitmaps C
    [ "$output" = "a 65536 65536 false false false false
b 196608 65536 true false false false
c 4096 4096 true false false false" ]
    # Merging 64K bitmaps into a 4K one marks their whole granules.
    run -0 qmp C block-dirty-bitmap-merge '{"node":"drive0","target":"c","bitmaps":["a",{"node":"drive0","name":"b"}]}'
    [ "$output" = '{}' ]
    run -0 ranges C c
    [ "$output" = "0+65536 1048576+65536 2097152+65536" ]
    # And a 4K one into a 64K one marks each granule it overlaps.
    run -0 qmp C block-dirty-bitmap-clear '{"name":"c"}'
    io "$srv_uri" "write -P 4 131068 8"
    run -0 ranges C c
    [ "$output" = "126976+8192" ]
    run -0 qmp C block-dirty-bitmap-merge '{"target":"a","bitmaps":["c"]}'
    run -0 ranges C a
    [ "$output" = "0+196608" ]
    # Merging is cumulative and a bitmap may be named twice.
    run -0 qmp C block-dirty-bitmap-merge '{"target":"a","bitmaps":["b","b","a"]}'
    run -0 ranges C a
    [ "$output" = "0+196608 1048576+65536 2097152+65536" ]
    # A failed merge leaves the target as it was.
    run -0 qmp C block-dirty-bitmap-merge '{"target":"c","bitmaps":["a","nope"]}'
    [ "$output" = "error: block-dirty-bitmap-merge: bitmap 'nope' not found" ]
    run -0 ranges C c
    [ "$output" = "126976+8192" ]
    run -0 qmp C block-dirty-bitmap-merge '{"target":"c","bitmaps":[]}'
    [ "$output" = "error: block-dirty-bitmap-merge: 'bitmaps' must be a non-empty array of bitmap names" ]
    # Clear empties; a disabled bitmap stays disabled and clean.
    run -0 qmp C block-dirty-bitmap-clear '{"name":"a"}'
    io "$srv_uri" "write -P 5 8M 4096"
    run -0 ranges C a
    [ "$output" = "" ]
    run -0 qmp C block-dirty-bitmap-enable '{"name":"a"}'
    io "$srv_uri" "write -z 9M 4096"
    run -0 ranges C a
    [ "$output" = "9437184+65536" ]
    run -0 bitmaps C
    [ "$output" = "a 65536 65536 true false false false
b 458752 65536 true false false false
c 16384 4096 true false false false" ]
}

@test "dirtybitmap: a transaction applies all its actions or none" {
    start_db
    run -0 qmp C block-dirty-bitmap-add '{"name":"b0"}'
    io "$srv_uri" "write -P 1 0 4096"
    # The last action fails: b1 is not added, b0 still records.
    run -0 qmp C transaction '{"actions":[
        {"type":"block-dirty-bitmap-add","data":{"name":"b1"}},
        {"type":"block-dirty-bitmap-disable","data":{"name":"b0"}},
        {"type":"block-dirty-bitmap-clear","data":{"name":"b0"}},
        {"type":"block-dirty-bitmap-merge","data":{"target":"b1","bitmaps":["zz"]}}]}'
    [ "$output" = "error: block-dirty-bitmap-merge: bitmap 'zz' not found" ]
    run -0 bitmaps C
    [ "$output" = "b0 65536 65536 true false false false" ]
    # The rotation: a new bitmap from now on, the old one frozen.
    run -0 qmp C transaction '{"actions":[
        {"type":"block-dirty-bitmap-add","data":{"name":"b1"}},
        {"type":"block-dirty-bitmap-disable","data":{"name":"b0"}}]}'
    [ "$output" = '{}' ]
    io "$srv_uri" "write -P 2 1M 4096"
    run -0 ranges C b0
    [ "$output" = "0+65536" ]
    run -0 ranges C b1
    [ "$output" = "1048576+65536" ]
    # Later actions see earlier ones: add, merge into it, remove the
    # source, and re-add a bitmap of the removed one's name.
    run -0 qmp C transaction '{"actions":[
        {"type":"block-dirty-bitmap-add","data":{"name":"sum","disabled":true}},
        {"type":"block-dirty-bitmap-merge","data":{"target":"sum","bitmaps":["b0","b1"]}},
        {"type":"block-dirty-bitmap-remove","data":{"name":"b0"}},
        {"type":"block-dirty-bitmap-add","data":{"name":"b0","granularity":1048576}}]}'
    [ "$output" = '{}' ]
    run -0 ranges C sum
    [ "$output" = "0+65536 1048576+65536" ]
    run -0 bitmaps C
    [ "$output" = "b1 65536 65536 true false false false
sum 131072 65536 false false false false
b0 0 1048576 true false false false" ]
    # A failing transaction undoes removes and merges too.
    run -0 qmp C transaction '{"actions":[
        {"type":"block-dirty-bitmap-remove","data":{"name":"b1"}},
        {"type":"block-dirty-bitmap-merge","data":{"target":"b0","bitmaps":["sum"]}},
        {"type":"block-dirty-bitmap-add","data":{"name":"sum"}}]}'
    [ "$output" = "error: bitmap 'sum' already exists" ]
    # (The bitmap whose removal was undone is listed last now.)
    run -0 bitmaps C
    [ "$output" = "sum 131072 65536 false false false false
b0 0 1048576 true false false false
b1 65536 65536 true false false false" ]
    run -0 ranges C b1
    [ "$output" = "1048576+65536" ]
}

@test "dirtybitmap: bitmaps made at start from the command line" {
    start_db dirtybitmap-add=first dirtybitmap-add=second \
        dirtybitmap-granularity=4K
    run -0 bitmaps C
    [ "$output" = "first 0 4096 true false false false
second 0 4096 true false false false" ]
    io "$srv_uri" "write -P 1 5000 1"
    run -0 ranges C second
    [ "$output" = "4096+4096" ]
    # Without a control socket the filter still tracks.
    run -0 nbdkit -U - --filter="$dirtybitmap" memory 1M \
        dirtybitmap-add=b --run 'qemu-io -f raw "$uri" -c "write 0 512"'
}

@test "dirtybitmap: parameters are checked at start" {
    run ! nbdkit -U - --filter="$dirtybitmap" memory 1M \
        dirtybitmap-granularity=3K --run true
    [[ "$output" == *"dirtybitmap-granularity: '3K' must be a power of two from 512 to 2G"* ]]
    run ! nbdkit -U - --filter="$dirtybitmap" memory 1M \
        dirtybitmap-add= --run true
    [[ "$output" == *"dirtybitmap-add: a bitmap name must be 1 to 1023 bytes long"* ]]
    run ! nbdkit -U - --filter="$dirtybitmap" memory 1M \
        dirtybitmap-file="$d/no/such/dir/bitmaps" --run true
    [[ "$output" == *"dirtybitmap-file: cannot write files in the directory of $d/no/such/dir/bitmaps: No such file or directory"* ]]
}
