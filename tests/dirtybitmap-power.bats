#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Change tracking across a power cut (simulated by syncshim, storage
# that keeps only what was synced), a failing sidecar storage, a
# sidecar restored from an older copy, and the sidecar's versions.

load helpers
load dirtybitmap-helpers

: "${POWER_CUTS:=8}"
: "${POWER_SEED:=5}"

setup () {
    requires jq qemu-io
    d="$(realpath "$BATS_TEST_TMPDIR")"
    ctlsock="$(new_socket)"
    shim="$abs_top_builddir/tests/.libs/libsyncshim.so"
    [ -f "$shim" ] || skip "libsyncshim.so not built (make check builds it)"
    cat /proc/sys/kernel/random/boot_id >"$d/boot_id"
}

teardown () {
    stop_all_nbdkit
    rm -f "$ctlsock"
}

# start_db MODE [ARGS...]: the server on syncshim's storage, with
# dirtybitmap-durability=MODE.
start_db () {
    local mode="$1"; shift
    LD_PRELOAD="$shim" SYNCSHIM_FILE="$d/bitmaps" \
    SYNCSHIM_DISK="$d/disk.img" SYNCSHIM_DISK_LOG="$d/disk.log" \
    SYNCSHIM_BOOT_ID="$d/boot_id" \
        start_nbdkit srv --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-control="$ctlsock" dirtybitmap-file="$d/bitmaps" \
        dirtybitmap-durability="$mode" "$@"
    ctl_connect C "$ctlsock"
}

crash () {
    ctl_close C
    kill -9 "$srv_pid" 2>/dev/null || :
    wait "$srv_pid" 2>/dev/null || :
    srv_pid=
}

# The power goes: only what was synced of the sidecar is left, and the
# host boots again (a new boot id).
power_cut () {
    [ -f "$d/bitmaps.durable" ]
    mv "$d/bitmaps.durable" "$d/bitmaps"
    rm -f "$d"/bitmaps.tmp.*
    cat /proc/sys/kernel/random/uuid >"$d/boot_id"
}

# covered RANGES: every write of disk.log ("OFFSET LENGTH", each one
# that reached the disk file) lies inside the merged "offset+length"
# RANGES.  Prints what does not.
covered () {
    awk -v ranges="$1" '
        BEGIN { n = split(ranges, r, " ");
                for (i = 1; i <= n; i++) { split(r[i], x, "+");
                    s[i] = x[1] + 0; e[i] = x[1] + x[2] } }
        { off = $1 + 0; end = $1 + $2; lo = 1; hi = n; f = 0;
          while (lo <= hi) { m = int((lo + hi) / 2);
              if (s[m] <= off) { f = m; lo = m + 1 } else hi = m - 1 }
          if (f == 0 || e[f] < end) { print "not covered: " $0; bad = 1 } }
        END { exit bad }' "$d/disk.log"
}

@test "dirtybitmap power: after $POWER_CUTS power cuts every write that reached the disk has its bit" {
    truncate -s 8M "$d/disk.img"
    start_db power
    run -0 qmp C block-dirty-bitmap-add '{"name":"b0","granularity":4096}'
    run -0 qmp C block-dirty-bitmap-add '{"name":"b1"}'
    : >"$d/disk.log"
    for ((r = 0; r < POWER_CUTS; r++)); do
        k=$(( (POWER_SEED * 7919 + r * 104729) % 120 + 1 ))
        echo "# cut $r at acknowledgement $k" >&3
        run ackwriter --seed $((POWER_SEED + r)) --connections 4 \
            --max-len 64k --kill-after "$k" --kill-pid "$srv_pid" \
            --log "$d/ack.$r" "$srv_uri"
        echo "$output"
        [ "$status" = 0 ]
        crash
        power_cut
        start_db power
        run -0 bitmaps C
        echo "$output"
        [[ "${lines[0]}" == "b0 "[0-9]*" 4096 true false true false" ]]
        [[ "${lines[1]}" == "b1 "[0-9]*" 65536 true false true false" ]]
        [ "$(wc -l <"$d/disk.log")" -ge "$k" ]
        covered "$(ranges C b0)"
        covered "$(ranges C b1)"
    done
}

@test "dirtybitmap power: in process mode a power cut makes the bitmaps inconsistent" {
    truncate -s 8M "$d/disk.img"
    start_db process
    run -0 qmp C block-dirty-bitmap-add '{"name":"b0","granularity":4096}'
    : >"$d/disk.log"
    run -0 ackwriter --seed 1 --ops 200 --log "$d/ack" "$srv_uri"
    crash
    cp "$d/bitmaps.durable" "$d/durable"
    power_cut
    start_db process
    run -0 reasons C
    [ "$output" = "b0: the host restarted while the last server ran with dirtybitmap-durability=process: bits not yet written back may have been lost" ]
    # Rightly: what the storage kept misses writes.  (The same file on
    # the same boot would be trusted: as after kill -9 alone.)
    crash
    cp "$d/durable" "$d/bitmaps"
    cat /proc/sys/kernel/random/boot_id >"$d/boot_id"
    start_db process
    run -0 bitmaps C
    [ "$output" = "b0 0 4096 true false true false" ]
    run ! covered "$(ranges C b0)"
    [[ "$output" == "not covered: "* ]]
}

@test "dirtybitmap power: a failing sidecar storage makes the bitmaps inconsistent, never hides a write" {
    truncate -s 8M "$d/disk.img"
    start_db power
    run -0 qmp C block-dirty-bitmap-add '{"name":"b0","granularity":4096}'
    io "$srv_uri" "write -P 1 0 4k"
    # The next sync fails: the write still goes down, the bitmap is
    # inconsistent, and the file says so.
    printf x >"$d/bitmaps.fail-sync"
    io "$srv_uri" "write -P 2 1M 4k"
    [ ! -e "$d/bitmaps.fail-sync" ]
    why="the bitmap file's storage failed (fdatasync: Input/output error)"
    run -0 reasons C
    [ "$output" = "b0: $why" ]
    server_log srv | grep -qF "dirtybitmap-file: $d/bitmaps: $why: every persistent bitmap is now inconsistent"
    crash
    start_db power
    run -0 reasons C
    [ "$output" = "b0: $why" ]
    # Two failing syncs: the file cannot say so either, so the write
    # is refused; the next one, with the file right again, goes down.
    run -0 qmp C block-dirty-bitmap-remove '{"name":"b0"}'
    run -0 qmp C block-dirty-bitmap-add '{"name":"b1"}'
    printf xx >"$d/bitmaps.fail-sync"
    run ! qemu-io -f raw "$srv_uri" -c "write -P 3 2M 4k"
    [[ "$output" == *"Input/output error"* ]]
    server_log srv | grep -qF "dirtybitmap-file: $d/bitmaps: cannot record that the bitmaps are inconsistent: Input/output error; writes fail until it can be written"
    io "$srv_uri" "write -P 4 3M 4k"
    run -0 reasons C
    [ "$output" = "b1: $why" ]
    cmp <(qemu-io -f raw -r "$srv_uri" -c "read -P 4 3M 4k" 2>&1 | grep -c 'read 4096') <(echo 1)
}

@test "dirtybitmap power: a sidecar restored from an older copy loads inconsistent" {
    truncate -s 8M "$d/disk.img"
    start_db process
    run -0 qmp C block-dirty-bitmap-add '{"name":"b0"}'
    io "$srv_uri" "write -P 1 0 64k"
    crash
    start_db process
    ctl_close C
    stop_nbdkit srv
    cp "$d/bitmaps" "$d/old"
    old_gen="$(od -An -tu8 -j64 -N8 "$d/old" | tr -d ' ')"
    start_db process
    run -0 bitmaps C
    [ "$output" = "b0 65536 65536 true false true false" ]
    io "$srv_uri" "write -P 2 1M 64k"
    ctl_close C
    stop_nbdkit srv
    last_gen="$(cut -d' ' -f2 <"$d/bitmaps.lock" | tr -d ' \n')"
    [ "$last_gen" -gt "$old_gen" ]
    cp "$d/old" "$d/bitmaps"
    start_db process
    run -0 reasons C
    [ "$output" = "b0: the bitmap file was restored from an older copy: it is generation $old_gen, but this server last wrote generation $last_gen" ]
    # query-bitmaps names the file and its generation, for the backups.
    run -0 ctl C '{"execute":"query-bitmaps"}'
    [ "$(jq -r '.return[0].generation' <<<"$output")" = "$old_gen" ]
    [ "$(jq -r '.return[0]."sidecar-uuid"' <<<"$output" | tr -d -)" = \
      "$(od -An -tx1 -j48 -N16 "$d/old" | tr -d ' \n')" ]
}

# le VALUE BYTES: VALUE as BYTES little-endian bytes.
le () {
    local i
    for ((i = 0; i < $2; i++)); do
        printf "\\x$(printf %02x $(( ($1 >> (8 * i)) & 255 )))"
    done
}

# v1_file IN-USE: a version 1 sidecar (the first release's) for a 1M
# disk with bitmap "old" at 64K, recording, granules 0, 2 and 15
# dirty (no bits if IN-USE).
v1_file () {
    local bits=2
    [ "$1" = 0 ] || bits=0
    {
        printf NBDKDIRT; le 1 4; le "$1" 4; le $((40 + 24 + 3 + bits + 4)) 8
        le 1048576 8; le 1 4; le 0 4
        le 3 4; le 1 4; le 65536 4; le 0 4; le "$bits" 8; printf old
        [ "$bits" = 0 ] || printf '\x05\x80'
    } >"$d/v1.body"
    { cat "$d/v1.body"; gzip -c "$d/v1.body" | tail -c8 | head -c4; } >"$d/bitmaps"
}

@test "dirtybitmap power: a version 1 sidecar loads, and is saved as version 2" {
    truncate -s 1M "$d/disk.img"
    v1_file 0
    start_db process
    run -0 ranges C old
    [ "$output" = "0+65536 131072+65536 983040+65536" ]
    ctl_close C
    stop_nbdkit srv
    [ "$(od -An -tu4 -j8 -N4 "$d/bitmaps" | tr -d ' ')" = 2 ]
    start_db process
    run -0 ranges C old
    [ "$output" = "0+65536 131072+65536 983040+65536" ]
    ctl_close C
    stop_nbdkit srv

    # One left in use kept no bits: inconsistent, and why.
    v1_file 1
    start_db process
    run -0 reasons C
    [ "$output" = "old: the server did not stop cleanly (a version 1 bitmap file keeps no bits while in use)" ]
}

@test "dirtybitmap power: dirtybitmap-durability is checked at start" {
    truncate -s 1M "$d/disk.img"
    run ! nbdkit -U - --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-file="$d/bitmaps" dirtybitmap-durability=always --run true
    [[ "$output" == *"dirtybitmap-durability: 'always' must be 'process' or 'power'"* ]]
    run ! nbdkit -U - --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-durability=power --run true
    [[ "$output" == *"dirtybitmap-durability=power needs dirtybitmap-file (without a file no bitmap outlives the server)"* ]]
    [ ! -e "$d/bitmaps" ]
}
