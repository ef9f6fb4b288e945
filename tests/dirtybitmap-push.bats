#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Incremental push backups: nbdkit-cbw-filter's cbw-sync=incremental
# copies the clusters a bitmap of nbdkit-dirtybitmap-filter marks into
# a qcow2 overlay of the previous backup, and QEMU's bitmap modes
# decide what the bitmap holds afterwards: on success, on cancel and
# on a read error injected under the filters.

load helpers
load dirtybitmap-helpers

setup () {
    requires qemu-img qemu-io
    d="$BATS_TEST_TMPDIR"
    cbw="$(filter_path cbw)"
    ctlsock="$(new_socket)"
}

teardown () {
    stop_all_nbdkit
    rm -f "$ctlsock"
}

same () {
    run -0 qemu-img compare -f "$2" -F "$4" "$1" "$3"
    [[ "$output" == *"Images are identical"* ]]
}

# The bitmaps in the sidecar file, through a server started for that:
# "NAME RANGES" per bitmap, after the query-bitmaps line.
saved_bitmaps () {
    local b names
    start_nbdkit q --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-file="$d/bitmaps" dirtybitmap-control="$ctlsock"
    ctl_connect Q "$ctlsock"
    bitmaps Q
    # (No pipe from ctl: coprocess descriptors do not reach one.)
    names="$(bitmaps Q)"
    for b in $(awk '{print $1}' <<<"$names"); do
        echo "$b: $(ranges Q "$b")"
    done
    ctl_close Q
    stop_nbdkit q
}

# Sets of whole 64K granules as "offset+length" words: expand to one
# offset per line, and back.
expand () {
    local w
    for w in $1; do
        seq "${w%+*}" 65536 $(( ${w%+*} + ${w#*+} - 1 ))
    done | sort -n
}
collapse () {
    awk 'BEGIN { s = -1 }
         { if (s >= 0 && $1 == e) e += 65536
           else { if (s >= 0) w = w (w ? " " : "") s "+" (e - s); s = $1; e = $1 + 65536 } }
         END { if (s >= 0) w = w (w ? " " : "") s "+" (e - s); print w }'
}
union () { cat <(expand "$1") <(expand "$2") | sort -nu | collapse; }
minus () { comm -23 <(expand "$1" | sort) <(expand "$2" | sort) | sort -n | collapse; }

@test "dirtybitmap push: a chain full, incremental 1, incremental 2 is exact" {
    make_disk "$d/disk.img" 32M 41
    cp "$d/disk.img" "$d/model.img"
    # Full backup and a new bitmap at the same instant: server start.
    cp "$d/disk.img" "$d/instant0.img"
    nbdkit -U - --filter="$cbw" --filter="$dirtybitmap" file "$d/disk.img" \
        cbw-target="$d/full.qcow2" cbw-target-format=qcow2 dirtybitmap-file="$d/bitmaps" \
        dirtybitmap-add=b0 --run '
        pitwriter --seed 41 --ops 200 --max-len 256K --quiet \
            --model '"$d/model.img"' "$uri"'
    same "$d/full.qcow2" qcow2 "$d/instant0.img" raw
    cmp "$d/disk.img" "$d/model.img"

    # Incremental 1, writers again.
    cp "$d/disk.img" "$d/instant1.img"
    run -0 saved_bitmaps
    b0="$(sed -n 's/^b0: //p' <<<"$output")"
    nbdkit -U - --filter="$cbw" --filter="$dirtybitmap" file "$d/disk.img" \
        cbw-sync=incremental cbw-bitmap=b0 cbw-target="$d/inc1.qcow2" \
        cbw-target-backing=full.qcow2 dirtybitmap-file="$d/bitmaps" --run '
        pitwriter --seed 42 --ops 200 --max-len 256K --quiet \
            --model '"$d/model.img"' "$uri"'
    run -0 qemu-img check "$d/inc1.qcow2"
    same "$d/inc1.qcow2" qcow2 "$d/instant1.img" raw
    # The overlay holds exactly the bitmap's clusters.
    [ "$(top_ranges "$d/inc1.qcow2")" = "$b0" ]

    # Incremental 2 on incremental 1 with the disk quiet: it is the
    # live disk.
    cp "$d/disk.img" "$d/instant2.img"
    nbdkit -U - --filter="$cbw" --filter="$dirtybitmap" file "$d/disk.img" \
        cbw-sync=incremental cbw-bitmap=b0 cbw-target="$d/inc2.qcow2" \
        cbw-target-backing=inc1.qcow2 dirtybitmap-file="$d/bitmaps" \
        --run true
    run -0 qemu-img check "$d/inc2.qcow2"
    same "$d/inc2.qcow2" qcow2 "$d/instant2.img" raw
    same "$d/inc2.qcow2" qcow2 "$d/disk.img" raw
    cmp "$d/disk.img" "$d/model.img"
    # Nothing was written since: the bitmap is empty now.
    run -0 saved_bitmaps
    [ "$(sed -n 's/^b0: //p' <<<"$output")" = "" ]
}

# The mode tests.  The bitmap b0 first records W0 (in a session of
# its own); then a backup session from b0 writes W1 while it runs.
W0g="0+65536 1048576+65536 5242880+131072"
W1g="1048576+65536 2097152+65536 5308416+65536"

seed_b0 () {
    head -c 8M /dev/urandom > "$d/disk.img"
    cp "$d/disk.img" "$d/base.img"
    rm -f "$d/bitmaps" "$d"/inc.qcow2*
    nbdkit -U - --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-file="$d/bitmaps" dirtybitmap-add=b0 --run '
        qemu-io -f raw "$uri" -c "write -P 1 1000 100" \
            -c "write -z 1M 4K" -c "write -P 2 5M 128K" >/dev/null'
    run -0 saved_bitmaps
    [ "$(sed -n 's/^b0: //p' <<<"$output")" = "$W0g" ]
    cp "$d/disk.img" "$d/instant.img"
}

# backup_session MODE OUTCOME: success, cancel or fail.  A slow job
# (one worker at 1 byte/s: a day per cluster) has copied at most its
# first run of clusters when the session ends, however slow the
# machine; copy-before-write copies what W1 overwrites.
backup_session () {
    local mode="$1" outcome="$2" extra=() trigger=":"
    case "$outcome" in
        cancel) extra=(cbw-on-exit=cancel cbw-workers=1 cbw-speed=1) ;;
        fail)   extra=(cbw-workers=1 cbw-speed=1)
                trigger="touch $d/trigger" ;;
    esac
    rm -f "$d/trigger"
    run nbdkit -U - -v --filter="$cbw" --filter="$dirtybitmap" --filter=error \
        file "$d/disk.img" error-pread-rate=100% \
        error-pread-file="$d/trigger" \
        cbw-sync=incremental cbw-bitmap=b0 cbw-bitmap-mode="$mode" \
        cbw-target="$d/inc.qcow2" cbw-target-backing=base.img \
        dirtybitmap-file="$d/bitmaps" "${extra[@]}" --run '
        qemu-io -f raw "$uri" -c "write -P 3 5308416 4096" \
            -c "write -P 4 2M 4096" >/dev/null &&
        '"$trigger"' &&
        qemu-io -f raw "$uri" -c "write -P 5 1M 4096" >/dev/null'
    [ "$status" = 0 ] || { echo "$output"; return 1; }
    grep -o 'cbw: backup [a-z]*' <<<"$output"
}

# What the target holds: the clusters copied.
copied () {
    local t="$d/inc.qcow2"
    [ -e "$t" ] || t="$d/inc.qcow2.incomplete"
    top_ranges "$t"
}

check_mode () {
    local mode="$1" outcome="$2" expect="$3" got
    seed_b0
    run -0 backup_session "$mode" "$outcome"
    echo "$mode/$outcome: $output"
    case "$outcome" in
        success) [ "$output" = "cbw: backup completed" ]
                 same "$d/inc.qcow2" qcow2 "$d/instant.img" raw ;;
        cancel)  [ "$output" = "cbw: backup cancelled" ] ;;
        fail)    [ "$output" = "cbw: backup failed" ] ;;
    esac
    run -0 saved_bitmaps
    got="$(sed -n 's/^b0: //p' <<<"$output")"
    echo "copied: $(copied)"
    echo "expected: $expect"; echo "got:      $got"
    [ "$got" = "$expect" ]
    [[ "$output" == "b0 "*" 65536 true false true false"* ]]
}

@test "dirtybitmap push: mode on-success" {
    check_mode on-success success "$W1g"
    check_mode on-success cancel "$(union "$W0g" "$W1g")"
    check_mode on-success fail "$(union "$W0g" "$W1g")"
}

@test "dirtybitmap push: mode never" {
    check_mode never success "$(union "$W0g" "$W1g")"
    check_mode never cancel "$(union "$W0g" "$W1g")"
    check_mode never fail "$(union "$W0g" "$W1g")"
}

@test "dirtybitmap push: mode always" {
    check_mode always success "$W1g"
    # What was copied leaves the bitmap even though the backup did not
    # complete; copy-before-write surely copied 5M+64K, the failed
    # read surely did not copy 1M.
    seed_b0
    run -0 backup_session always cancel
    [ "$output" = "cbw: backup cancelled" ]
    c="$(copied)"; echo "copied: $c"
    [[ " $c " == *" 1048576+65536 "* && " $c " == *" 5308416+65536"* ]]
    run -0 saved_bitmaps
    [ "$(sed -n 's/^b0: //p' <<<"$output")" = "$(union "$(minus "$W0g" "$c")" "$W1g")" ]

    seed_b0
    run -0 backup_session always fail
    [ "$output" = "cbw: backup failed" ]
    c="$(copied)"; echo "copied: $c"
    [[ " $c " == *" 5308416+65536"* && " $c " != *" 1048576+"* ]]
    run -0 saved_bitmaps
    got="$(sed -n 's/^b0: //p' <<<"$output")"
    echo "got: $got"
    [ "$got" = "$(union "$(minus "$W0g" "$c")" "$W1g")" ]
    # 5M stays dirty (not copied), 5M+64K is dirty again (W1).
    [[ "$got" == *"5242880+131072"* ]]
}

@test "dirtybitmap push: granularity and cluster size may differ" {
    head -c 8M /dev/urandom > "$d/disk.img"
    cp "$d/disk.img" "$d/base.img"
    # 4K granules into 64K clusters, and 1M granules into 64K clusters.
    nbdkit -U - --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-file="$d/bitmaps" dirtybitmap-add=fine \
        dirtybitmap-add=coarse dirtybitmap-granularity=4K --run '
        qemu-io -f raw "$uri" -c "write -P 1 70000 10" >/dev/null'
    run -0 saved_bitmaps
    [[ "$output" == *"fine: 69632+4096"* ]]
    # (coarse was made with 4K too; make it 1M through a merge.)
    start_nbdkit s --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-file="$d/bitmaps" dirtybitmap-control="$ctlsock"
    ctl_connect C "$ctlsock"
    run -0 qmp C transaction '{"actions":[
        {"type":"block-dirty-bitmap-remove","data":{"name":"coarse"}},
        {"type":"block-dirty-bitmap-add","data":{"name":"coarse","granularity":1048576}},
        {"type":"block-dirty-bitmap-merge","data":{"target":"coarse","bitmaps":["fine"]}}]}'
    [ "$output" = '{}' ]
    io "$s_uri" "write -P 2 3145733 1"
    run -0 ranges C coarse
    [ "$output" = "0+1048576 3145728+1048576" ]
    run -0 ranges C fine
    [ "$output" = "69632+4096 3145728+4096" ]
    # Frozen from now on, for the second backup below.
    run -0 qmp C block-dirty-bitmap-disable '{"name":"coarse"}'
    ctl_close C
    stop_nbdkit s
    cp "$d/disk.img" "$d/instant.img"

    nbdkit -U - --filter="$cbw" --filter="$dirtybitmap" file "$d/disk.img" \
        cbw-sync=incremental cbw-bitmap=fine cbw-target="$d/fine.qcow2" \
        cbw-target-backing=base.img dirtybitmap-file="$d/bitmaps" \
        --run 'qemu-io -f raw "$uri" -c "write -P 3 0 8M" >/dev/null'
    [ "$(top_ranges "$d/fine.qcow2")" = "65536+65536 3145728+65536" ]
    same "$d/fine.qcow2" qcow2 "$d/instant.img" raw

    # The disk changed everywhere since: back to the instant's copy,
    # through the filter (a copy behind its back would make every
    # bitmap inconsistent).
    nbdkit -U - --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-file="$d/bitmaps" \
        --run 'nbdcopy -- "'"$d/instant.img"'" "$uri"'
    nbdkit -U - --filter="$cbw" --filter="$dirtybitmap" file "$d/disk.img" \
        cbw-sync=incremental cbw-bitmap=coarse cbw-target="$d/coarse.qcow2" \
        cbw-target-backing=base.img cbw-cluster-size=64K \
        dirtybitmap-file="$d/bitmaps" --run true
    [ "$(top_ranges "$d/coarse.qcow2")" = "0+1048576 3145728+1048576" ]
    same "$d/coarse.qcow2" qcow2 "$d/instant.img" raw
}

@test "dirtybitmap push: a disk changed untracked refuses the incremental; a full backup starts over" {
    head -c 8M /dev/urandom > "$d/disk.img"
    start_nbdkit s --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-file="$d/bitmaps" dirtybitmap-add=b0
    io "$s_uri" "write -P 1 0 64K"
    stop_nbdkit s
    untracked_write "$d/disk.img"

    run ! nbdkit -U - --filter="$cbw" --filter="$dirtybitmap" \
        file "$d/disk.img" cbw-sync=incremental cbw-bitmap=b0 \
        cbw-target="$d/inc.qcow2" cbw-target-backing=full.qcow2 \
        dirtybitmap-file="$d/bitmaps" --run true
    echo "$output"
    [[ "$output" == *"cbw-bitmap: bitmap 'b0' is inconsistent ($(untracked_reason "$d/disk.img")), so it may have missed writes: an incremental backup from it is refused; a full backup is needed (then remove the bitmap and add a new one with the full backup)"* ]]
    [ ! -e "$d/inc.qcow2" ]

    # A full backup with a new bitmap, and the old one removed.
    cp "$d/disk.img" "$d/instant0.img"
    start_nbdkit s --filter="$cbw" --filter="$dirtybitmap" file "$d/disk.img" \
        cbw-target="$d/full.qcow2" cbw-target-format=qcow2 dirtybitmap-file="$d/bitmaps" \
        dirtybitmap-add=b1 dirtybitmap-control="$ctlsock"
    ctl_connect C "$ctlsock"
    run -0 qmp C block-dirty-bitmap-remove '{"name":"b0"}'
    io "$s_uri" "write -P 2 1M 4K"
    ctl_close C
    stop_nbdkit s
    same "$d/full.qcow2" qcow2 "$d/instant0.img" raw

    # And the next incremental works again.
    cp "$d/disk.img" "$d/instant1.img"
    nbdkit -U - --filter="$cbw" --filter="$dirtybitmap" file "$d/disk.img" \
        cbw-sync=incremental cbw-bitmap=b1 cbw-target="$d/inc.qcow2" \
        cbw-target-backing=full.qcow2 dirtybitmap-file="$d/bitmaps" --run true
    [ "$(top_ranges "$d/inc.qcow2")" = "1048576+65536" ]
    same "$d/inc.qcow2" qcow2 "$d/instant1.img" raw
}

@test "dirtybitmap push: parameters are checked at start" {
    truncate -s 1M "$d/disk.img"
    run ! nbdkit -U - --filter="$cbw" --filter="$dirtybitmap" file "$d/disk.img" \
        cbw-target="$d/t.qcow2" cbw-target-backing=x cbw-sync=incremental --run true
    [[ "$output" == *"cbw-sync=incremental needs cbw-bitmap=NAME: the dirty bitmap (nbdkit-dirtybitmap-filter) whose clusters to copy"* ]]
    run ! nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/t.img" cbw-bitmap=b0 --run true
    [[ "$output" == *"cbw-bitmap: only cbw-sync=incremental uses a bitmap"* ]]
    run ! nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/t.qcow2" cbw-target-format=qcow2 cbw-sync=incremental \
        cbw-bitmap=b0 --run true
    [[ "$output" == *"cbw-sync=incremental with a new qcow2 target needs cbw-target-backing: name the previous backup"* ]]
    run ! nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/t.img" cbw-sync=incremental cbw-bitmap=b0 \
        cbw-bitmap-mode=sometimes --run true
    [[ "$output" == *"cbw-bitmap-mode: unknown mode 'sometimes' (expecting on-success, never or always)"* ]]
    # An existing raw file is updated in place: then the bitmap counts.
    truncate -s 1M "$d/t.img"
    run ! nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/t.img" cbw-sync=incremental cbw-bitmap=b0 --run true
    [[ "$output" == *"cbw-bitmap: an incremental backup needs nbdkit-dirtybitmap-filter in the same server, below this filter (--filter=dirtybitmap after it)"* ]]
    # No such bitmap: refused at start, before --run runs.
    run ! nbdkit -U - --filter="$cbw" --filter="$dirtybitmap" \
        file "$d/disk.img" cbw-target="$d/t.img" cbw-sync=incremental \
        cbw-bitmap=b0 --run 'touch '"$d/ran"
    [[ "$output" == *"cbw-bitmap: bitmap 'b0' not found (there are no bitmaps)"* ]]
    [ ! -e "$d/ran" ]
    # One that dirtybitmap-add makes at start is fine.
    run -0 nbdkit -U - --filter="$cbw" --filter="$dirtybitmap" \
        file "$d/disk.img" cbw-target="$d/t.img" cbw-sync=incremental \
        cbw-bitmap=b0 dirtybitmap-add=b0 --run true
    [ -f "$d/t.img" ]
}

@test "dirtybitmap push: a mistyped cbw-bitmap stops the server and leaves the sidecar alone" {
    truncate -s 4M "$d/disk.img"
    nbdkit -U - --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-file="$d/bitmaps" dirtybitmap-add=b0 dirtybitmap-add=b1 \
        --run 'qemu-io -f raw "$uri" -c "write 0 64k" >/dev/null'
    qemu-img create -f raw "$d/full.img" 4M
    cp "$d/bitmaps" "$d/bitmaps.orig"
    args=(--filter="$cbw" --filter="$dirtybitmap" file "$d/disk.img"
          dirtybitmap-file="$d/bitmaps" cbw-sync=incremental cbw-bitmap=b00
          cbw-target="$d/inc.qcow2" cbw-target-backing="$d/full.img")
    want="cbw-bitmap: bitmap 'b00' not found (the bitmaps are: 'b0', 'b1')"

    # Captive: --run never runs, the exit status is not 0.
    run ! nbdkit -U - "${args[@]}" --run 'touch '"$d/ran"
    [[ "$output" == *"$want"* ]]
    [ ! -e "$d/ran" ]
    cmp "$d/bitmaps" "$d/bitmaps.orig"

    # Daemon mode: no server forks off, the exit status says why.
    sock="$(new_socket)"
    run ! nbdkit -U "$sock" -P "$d/daemon.pid" "${args[@]}"
    if [ -s "$d/daemon.pid" ]; then
        kill "$(cat "$d/daemon.pid")" || :
        false
    fi
    [[ "$output" == *"$want"* ]]
    rm -f "$sock"
    cmp "$d/bitmaps" "$d/bitmaps.orig"
    [ ! -e "$d/inc.qcow2" ] && [ ! -e "$d/inc.qcow2.incomplete" ]

    # And the bitmaps are still good: a clean incremental from b0.
    run -0 nbdkit -U - "${args[@]/cbw-bitmap=b00/cbw-bitmap=b0}" --run true
    [ "$(top_ranges "$d/inc.qcow2")" = "0+65536" ]
}

@test "dirtybitmap push: on command, bitmap actions and backup-start in one transaction" {
    fleece="$(filter_path fleece)"
    make_disk "$d/disk.img" 16M 43
    cp "$d/disk.img" "$d/model.img"
    start_nbdkit srv --filter="$fleece" --filter="$cbw" --filter="$dirtybitmap" \
        file "$d/disk.img" cbw-control="$ctlsock" fleece-snapshot=on-command \
        fleece-store="$d" dirtybitmap-file="$d/bitmaps"
    ctl_connect C "$ctlsock"
    snap="nbd+unix:///snapshot?socket=$srv_sock"
    events="$BATS_TEST_TMPDIR/events.C"

    # transaction ACTION-JSON...: snapshot-start plus the actions, with
    # writers racing it; the snapshot (same instant) lands in FILE $1.
    at_instant () {
        local out="$1" w; shift
        local IFS=,
        rm -f "$events" "$events.used"
        pitwriter --seed "$RANDOM" --connections 2 --ops 150 --max-len 256K \
            --quiet --model "$d/model.img" "$srv_uri" & w=$!
        run -0 qmp C transaction '{"actions":[{"type":"snapshot-start"},'"$*"']}'
        [ "$output" = '{}' ]
        nbdcopy "$snap" "$out"
        wait $w
        run -0 ctl_event C BLOCK_JOB_COMPLETED
        run -0 qmp C snapshot-stop
    }

    # Full backup and a new bitmap at one instant.
    at_instant "$d/snap0.img" \
        '{"type":"block-dirty-bitmap-add","data":{"name":"b0"}}' \
        '{"type":"backup-start","data":{"target":"'"$d/full.qcow2"'","format":"qcow2"}}'
    same "$d/full.qcow2" qcow2 "$d/snap0.img" raw

    # Incremental: the bitmap frozen at the instant, then on success
    # left with only the writes made since.
    at_instant "$d/snap1.img" \
        '{"type":"backup-start","data":{"target":"'"$d/inc1.qcow2"'","sync":"incremental","bitmap":"b0","backing":"full.qcow2"}}'
    same "$d/inc1.qcow2" qcow2 "$d/snap1.img" raw
    run -0 bitmaps C
    [[ "$output" == "b0 "*" 65536 true false true false" ]]

    # A second incremental on the first, the disk quiet.
    rm -f "$events" "$events.used"
    run -0 qmp C transaction '{"actions":[{"type":"backup-start","data":{"target":"'"$d/inc2.qcow2"'","sync":"incremental","bitmap":"b0","backing":"inc1.qcow2"}}]}'
    [ "$output" = '{}' ]
    run -0 ctl_event C BLOCK_JOB_COMPLETED
    same "$d/inc2.qcow2" qcow2 "$d/disk.img" raw
    run -0 qemu-img check "$d/inc2.qcow2"
    cmp "$d/disk.img" "$d/model.img"
    # Busy while a backup holds it (a slow one: 1 byte/s, one worker,
    # two clusters apart, so it cannot end by itself), and whole again
    # when it is cancelled.
    io "$srv_uri" "write -P 8 1M 4K" "write -P 8 5M 4K"
    rm -f "$events" "$events.used"
    run -0 qmp C backup-start '{"target":"'"$d/inc3.qcow2"'","sync":"incremental","bitmap":"b0","backing":"inc2.qcow2","speed":1,"workers":1}'
    [ "$output" = '{"id":"cbw-4"}' ]
    io "$srv_uri" "write -P 9 0 4K"
    run -0 bitmaps C
    [ "$output" = "b0 131072 65536 true true true false" ]
    run -0 qmp C block-dirty-bitmap-clear '{"name":"b0"}'
    [ "$output" = "error: bitmap 'b0' is busy (an incremental backup is using it): it cannot be cleared" ]
    run -0 qmp C block-dirty-bitmap-remove '{"name":"b0"}'
    [ "$output" = "error: bitmap 'b0' is busy (an incremental backup is using it): it cannot be removed" ]
    run -0 qmp C job-cancel '{"id":"cbw-4"}'
    run -0 ctl_event C BLOCK_JOB_CANCELLED
    run -0 bitmaps C
    [ "$output" = "b0 196608 65536 true false true false" ]
    run -0 ranges C b0
    [ "$output" = "0+65536 1048576+65536 5242880+65536" ]
    ctl_close C
}
