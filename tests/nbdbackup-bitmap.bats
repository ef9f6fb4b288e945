#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup bitmap add|remove|clear|enable|disable|merge|list against a
# real server with the dirtybitmap filter: counts after real writes,
# the table and its JSON, the server's refusals (exit 3, its message),
# usage errors (exit 2, nothing sent), and status showing bitmaps.

load helpers
load dirtybitmap-helpers

setup () {
    requires nbdbackup nbdcopy jq
    d="$BATS_TEST_TMPDIR"
    ctlsock="$(new_socket)"
    truncate -s 16M "$d/disk.img"
}

teardown () {
    stop_all_nbdkit
    rm -f "$ctlsock"
}

start_db () {
    start_nbdkit srv --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-control="$ctlsock" "$@"
}

# write_head BYTES: write BYTES random bytes at offset 0 with nbdcopy.
write_head () {
    head -c "$1" /dev/urandom > "$d/data"
    nbdcopy "$d/data" "$srv_uri"
}

# field NAME KEY: one member of bitmap NAME in `bitmap list --json`.
field () {
    nbdbackup bitmap list --json "$ctlsock" |
        jq -r --arg n "$1" --arg k "$2" '.[] | select(.name == $n) | .[$k]'
}

@test "nbdbackup bitmap: add, list, writes counted, remove" {
    start_db
    run -0 nbdbackup bitmap list "$ctlsock"
    [ "$output" = "bitmaps: none" ]
    run -0 nbdbackup bitmap add "$ctlsock" b0
    [ -z "$output" ]
    run -0 nbdbackup bitmap add --granularity=4K --disabled "$ctlsock" b1
    run -0 nbdbackup bitmap add "$ctlsock" a-much-longer-name --granularity 1M
    write_head 100000

    run -0 nbdbackup bitmap list "$ctlsock"
    [ "$output" = "NAME                GRANULARITY  RECORDING           COUNT  BUSY  INCONSISTENT
b0                        65536  yes                131072  no    no
b1                         4096  no                      0  no    no
a-much-longer-name      1048576  yes               1048576  no    no" ]

    run -0 nbdbackup bitmap list --json "$ctlsock"
    [ "${#lines[@]}" -eq 1 ]
    [ "$(jq -c '[.[] | [.name, .count, .granularity, .recording, .busy, .inconsistent]]' <<<"$output")" = \
      '[["b0",131072,65536,true,false,false],["b1",0,4096,false,false,false],["a-much-longer-name",1048576,1048576,true,false,false]]' ]

    run -0 nbdbackup bitmap remove "$ctlsock" a-much-longer-name
    [ -z "$output" ]
    run -0 nbdbackup bitmap list "$ctlsock"
    [ "${#lines[@]}" -eq 3 ]
    [[ "$output" != *a-much-longer-name* ]]
}

@test "nbdbackup bitmap: --persistent and --no-persistent reach the server" {
    start_db dirtybitmap-file="$d/bitmaps"
    run -0 nbdbackup bitmap add "$ctlsock" p
    run -0 nbdbackup bitmap add --no-persistent "$ctlsock" t
    [ "$(field p persistent)" = true ]
    [ "$(field t persistent)" = false ]
    stop_nbdkit srv
    start_db dirtybitmap-file="$d/bitmaps"
    run -0 nbdbackup bitmap list "$ctlsock"
    [ "${#lines[@]}" -eq 2 ]
    [[ "${lines[1]}" == "p "* ]]
}

@test "nbdbackup bitmap: enable, disable and clear change what is counted" {
    start_db
    run -0 nbdbackup bitmap add --granularity=4096 "$ctlsock" b0
    run -0 nbdbackup bitmap disable "$ctlsock" b0
    [ -z "$output" ]
    [ "$(field b0 recording)" = false ]
    write_head 10000
    [ "$(field b0 count)" = 0 ]
    run -0 nbdbackup bitmap enable "$ctlsock" b0
    [ -z "$output" ]
    [ "$(field b0 recording)" = true ]
    write_head 10000
    [ "$(field b0 count)" = 12288 ]
    run -0 nbdbackup bitmap clear "$ctlsock" b0
    [ -z "$output" ]
    [ "$(field b0 count)" = 0 ]
    [ "$(field b0 recording)" = true ]
}

@test "nbdbackup bitmap: merge marks every source's granules in the target" {
    start_db
    run -0 nbdbackup bitmap add --granularity=512 "$ctlsock" small
    write_head 1000
    run -0 nbdbackup bitmap add --granularity=1M --disabled "$ctlsock" big
    run -0 nbdbackup bitmap add --granularity=4K --disabled "$ctlsock" t
    run -0 nbdbackup bitmap merge "$ctlsock" t small
    [ -z "$output" ]
    [ "$(field t count)" = 4096 ]
    [ "$(field small count)" = 1024 ]
    # Several sources at once, of other granularities.
    run -0 nbdbackup bitmap add "$ctlsock" m
    run -0 nbdbackup bitmap disable "$ctlsock" m
    run -0 nbdbackup bitmap merge "$ctlsock" m big t
    [ "$(field m count)" = 65536 ]
}

@test "nbdbackup bitmap: the server's refusals exit 3 with its message" {
    start_db
    run -3 nbdbackup bitmap remove "$ctlsock" zz
    [ "$output" = "nbdbackup: block-dirty-bitmap-remove: block-dirty-bitmap-remove: bitmap 'zz' not found (DeviceNotFound)" ]
    for op in clear enable disable; do
        run -3 nbdbackup bitmap $op "$ctlsock" zz
        [[ "$output" == "nbdbackup: block-dirty-bitmap-$op: "*"bitmap 'zz' not found (DeviceNotFound)" ]]
    done
    run -0 nbdbackup bitmap add "$ctlsock" b0
    run -3 nbdbackup bitmap add "$ctlsock" b0
    [ "$output" = "nbdbackup: block-dirty-bitmap-add: bitmap 'b0' already exists (GenericError)" ]
    run -3 nbdbackup bitmap add "$ctlsock" "$(printf 'a\tb')"
    [ "$output" = "nbdbackup: block-dirty-bitmap-add: a bitmap name must not contain control characters (byte 0x09 at offset 1) (GenericError)" ]
    run -3 nbdbackup bitmap add "$ctlsock" ""
    [ "$output" = "nbdbackup: block-dirty-bitmap-add: a bitmap name must be 1 to 1023 bytes long (GenericError)" ]
    run -3 nbdbackup bitmap add --granularity=3000 "$ctlsock" x
    [ "$output" = "nbdbackup: block-dirty-bitmap-add: block-dirty-bitmap-add: granularity 3000 must be a power of two from 512 to 2147483648 (GenericError)" ]
    run -3 nbdbackup bitmap add --persistent "$ctlsock" x
    [ "$output" = "nbdbackup: block-dirty-bitmap-add: block-dirty-bitmap-add: a persistent bitmap needs a bitmap file: start the server with dirtybitmap-file=PATH (GenericError)" ]
    run -3 nbdbackup bitmap merge "$ctlsock" b0 nope
    [[ "$output" == "nbdbackup: block-dirty-bitmap-merge: "*"'nope'"*"(DeviceNotFound)" ]]
    # Nothing was added by the refusals.
    run -0 nbdbackup bitmap list "$ctlsock"
    [ "${#lines[@]}" -eq 2 ]
}

@test "nbdbackup bitmap: usage errors exit 2 and send nothing" {
    start_db
    run -2 nbdbackup bitmap
    [ "${lines[0]}" = "nbdbackup bitmap: missing add, remove, clear, enable, disable, merge or list" ]
    [ "${lines[1]}" = "Try 'nbdbackup bitmap --help' for more information." ]
    run -2 nbdbackup bitmap frob "$ctlsock"
    [ "${lines[0]}" = "nbdbackup bitmap: unknown action 'frob' (expected add, remove, clear, enable, disable, merge or list)" ]
    run -2 nbdbackup bitmap add
    [ "${lines[0]}" = "nbdbackup bitmap add: missing SOCKET" ]
    [ "${lines[1]}" = "Try 'nbdbackup bitmap add --help' for more information." ]
    run -2 nbdbackup bitmap add "$ctlsock"
    [ "${lines[0]}" = "nbdbackup bitmap add: missing NAME" ]
    run -2 nbdbackup bitmap remove "$ctlsock" b0 b1
    [ "${lines[0]}" = "nbdbackup bitmap remove: unexpected argument 'b1' after NAME" ]
    run -2 nbdbackup bitmap merge "$ctlsock"
    [ "${lines[0]}" = "nbdbackup bitmap merge: missing TARGET and SOURCE" ]
    run -2 nbdbackup bitmap merge "$ctlsock" t
    [ "${lines[0]}" = "nbdbackup bitmap merge: missing SOURCE" ]
    run -2 nbdbackup bitmap list "$ctlsock" extra
    [ "${lines[0]}" = "nbdbackup bitmap list: unexpected argument 'extra' after SOCKET" ]
    run -2 nbdbackup bitmap add --granularity=lots "$ctlsock" x
    [ "${lines[0]}" = "nbdbackup bitmap add: --granularity: expected a size in bytes with an optional K, M or G suffix, got 'lots'" ]
    run -2 nbdbackup bitmap clear --disabled "$ctlsock" x
    [ "${lines[0]}" = "nbdbackup bitmap clear: --disabled is not an option of 'clear'" ]
    run -2 nbdbackup bitmap remove --json "$ctlsock" x
    [ "${lines[0]}" = "nbdbackup bitmap remove: --json is not an option of 'remove'" ]
    run -2 nbdbackup bitmap list --bogus "$ctlsock"
    [ "${lines[0]}" = "nbdbackup bitmap list: unrecognized option '--bogus'" ]
    # None of them reached the server.
    run -0 nbdbackup bitmap list "$ctlsock"
    [ "$output" = "bitmaps: none" ]
    run -0 nbdbackup bitmap --help
    [ "${lines[0]}" = "Usage: nbdbackup bitmap add [OPTIONS] SOCKET NAME" ]
    run -0 nbdbackup bitmap merge --help
    [ "${lines[0]}" = "Usage: nbdbackup bitmap add [OPTIONS] SOCKET NAME" ]
    run -0 nbdbackup --help
    [[ "$output" == *"  bitmap     add, remove, clear, enable, disable, merge or list dirty bitmaps"* ]]
}

@test "nbdbackup bitmap: no server, or one without dirty bitmaps" {
    run -1 nbdbackup bitmap list "$d/no-such.sock"
    [ "$output" = "nbdbackup: control socket $d/no-such.sock: connect: No such file or directory" ]
    start_nbdkit srv --filter="$(filter_path fleece)" file "$d/disk.img" \
        fleece-control="$ctlsock" fleece-store="$d" fleece-snapshot=on-command
    run -3 nbdbackup bitmap add "$ctlsock" b0
    [[ "$output" == "nbdbackup: block-dirty-bitmap-add: "*"(CommandNotFound)" ]]
    run -0 nbdbackup bitmap list "$ctlsock"
    [ "$output" = "bitmaps: none" ]
}

@test "nbdbackup bitmap list: an inconsistent bitmap, and why" {
    start_db dirtybitmap-file="$d/bitmaps"
    run -0 nbdbackup bitmap add --granularity=4K "$ctlsock" b0
    run -0 nbdbackup bitmap add "$ctlsock" b1
    write_head 4096
    # A crash keeps the bitmaps ...
    kill -9 "$srv_pid"
    wait "$srv_pid" 2>/dev/null || :
    rm -f "$ctlsock"
    start_db dirtybitmap-file="$d/bitmaps"
    run -0 nbdbackup bitmap list "$ctlsock"
    [ "${lines[1]}" = "b0           4096  yes                  4096  no    no" ]
    [ "${#lines[@]}" = 3 ]
    # ... a disk changed while no server ran does not.
    stop_nbdkit srv
    untracked_write "$d/disk.img"
    start_db dirtybitmap-file="$d/bitmaps"
    why="$(untracked_reason "$d/disk.img")"
    run -0 nbdbackup bitmap list "$ctlsock"
    [ "$output" = "NAME  GRANULARITY  RECORDING           COUNT  BUSY  INCONSISTENT
b0           4096  yes                     0  no    yes
b1          65536  yes                     0  no    yes
b0: inconsistent: $why
b1: inconsistent: $why" ]
    run -0 nbdbackup status "$ctlsock"
    [ "${lines[5]}" = "bitmap b0: recording, 0 B dirty, granularity 4.0 KiB, inconsistent: $why" ]
    run -0 nbdbackup bitmap list --json "$ctlsock"
    [ "$(jq -r '.[0]."inconsistent-reason"' <<<"$output")" = "$why" ]
    [[ "$(jq -r '.[0]."sidecar-uuid"' <<<"$output")" =~ ^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$ ]]
    [ "$(jq -r '.[0].generation' <<<"$output")" -ge 1 ]
    run -3 nbdbackup bitmap enable "$ctlsock" b0
    [ "$output" = "nbdbackup: block-dirty-bitmap-enable: bitmap 'b0' is inconsistent ($why): it cannot be enabled, only removed (GenericError)" ]
    run -0 nbdbackup bitmap remove "$ctlsock" b0
}

@test "nbdbackup status: shows every bitmap, for people and as JSON" {
    start_db
    run -0 nbdbackup status "$ctlsock"
    [ "${lines[5]}" = "bitmaps: none" ]
    run -0 nbdbackup bitmap add --granularity=4K "$ctlsock" b0
    run -0 nbdbackup bitmap add --disabled "$ctlsock" b1
    write_head 100000
    run -0 nbdbackup status "$ctlsock"
    [ "${lines[1]}" = "filters: dirtybitmap" ]
    [ "${lines[5]}" = "bitmap b0: recording, 100.0 KiB dirty, granularity 4.0 KiB" ]
    [ "${lines[6]}" = "bitmap b1: disabled, 0 B dirty, granularity 64.0 KiB" ]
    run -0 nbdbackup status --json "$ctlsock"
    [ "${#lines[@]}" -eq 1 ]
    [ "$(jq -c '[.bitmaps[] | [.name, .count, .granularity, .recording]]' <<<"$output")" = \
      '[["b0",102400,4096,true],["b1",0,65536,false]]' ]
}

@test "nbdbackup bitmap: a busy bitmap is listed so and refused" {
    requires qemu-io
    start_nbdkit srv --filter="$dirtybitmap" --filter="$(filter_path fleece)" \
        file "$d/disk.img" fleece-snapshot=on-command fleece-store="$d" \
        dirtybitmap-control="$ctlsock"
    run -0 nbdbackup bitmap add "$ctlsock" b0
    write_head 70000
    run -0 nbdbackup control "$ctlsock" '{"execute":"transaction","arguments":{"actions":[
        {"type":"block-dirty-bitmap-disable","data":{"name":"b0"}},
        {"type":"snapshot-start"}]}}'
    # Hold the dirty export open: the bitmap is busy until it closes.
    mkfifo "$d/fifo"
    qemu-io -r -f raw "nbd+unix:///dirty:b0?socket=$srv_sock" \
        <"$d/fifo" >/dev/null & q=$!
    exec 7>"$d/fifo"
    wait_for "bitmap b0 busy" '[ "$(field b0 busy)" = true ]'
    run -0 nbdbackup bitmap list "$ctlsock"
    [ "${lines[1]}" = "b0          65536  no                 131072  yes   no" ]
    run -0 nbdbackup status "$ctlsock"
    [ "${lines[5]}" = "bitmap b0: disabled, 128.0 KiB dirty, granularity 64.0 KiB, busy" ]
    run -3 nbdbackup bitmap remove "$ctlsock" b0
    [ "$output" = "nbdbackup: block-dirty-bitmap-remove: bitmap 'b0' is busy (a dirty export is open on it): it cannot be removed (GenericError)" ]
    exec 7>&-
    wait $q
    wait_for "bitmap b0 no longer busy" '[ "$(field b0 busy)" = false ]'
    run -0 nbdbackup bitmap remove "$ctlsock" b0
}
