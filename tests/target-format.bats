#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# One format rule for every target, in the filters and the tool: the
# explicit option, else the name (.qcow2 or .qcow is qcow2, an NBD URI
# is nbd), else raw.  An existing file whose content disagrees is
# refused; a new file that would hold only the changed clusters of a
# partial backup (sync=top, incremental) is refused.

load helpers

setup () {
    cbw="$(filter_path cbw)"
    d="$BATS_TEST_TMPDIR"
    make_disk "$d/disk.img" 4M 5
}

teardown () { stop_all_nbdkit; }

cbw_run () {
    timeout 60 nbdkit -U - --filter="$cbw" file "$d/disk.img" "$@" --run true
}

format_of () { qemu-img info --output=json "$1" | grep -o '"format": *"[a-z0-9]*"' | grep -o '[a-z0-9]*"$' | tr -d '"'; }

@test "target format: cbw makes a qcow2 image of a .qcow2 or .qcow name" {
    for t in b.qcow2 b.qcow; do
        run -0 cbw_run cbw-target="$d/$t"
        [ "$(format_of "$d/$t")" = qcow2 ]
        qemu-img check "$d/$t"
        qemu-img compare -f raw -F qcow2 "$d/disk.img" "$d/$t"
    done
    run -0 cbw_run cbw-target="$d/b.img"
    [ "$(format_of "$d/b.img")" = raw ]
    run -0 cbw_run cbw-target="$d/b.bin" cbw-target-format=qcow2
    [ "$(format_of "$d/b.bin")" = qcow2 ]
}

@test "target format: backup-start follows the same rule" {
    ctlsock="$(new_socket)"
    start_nbdkit srv --filter="$cbw" file "$d/disk.img" cbw-control="$ctlsock"
    ctl_connect C "$ctlsock"
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$d/c.qcow2"'","job-id":"j1"}}'
    [[ "$output" == '{"return":'* ]]
    run -0 ctl_event C BLOCK_JOB_COMPLETED
    ctl_close C
    stop_nbdkit srv
    [ "$(format_of "$d/c.qcow2")" = qcow2 ]
    qemu-img compare -f raw -F qcow2 "$d/disk.img" "$d/c.qcow2"
}

@test "target format: an existing file that disagrees with the rule is refused" {
    truncate -s 4M "$d/raw.qcow2"
    run ! cbw_run cbw-target="$d/raw.qcow2"
    [[ "$output" == *"cbw-target: $d/raw.qcow2 is not a qcow2 image but the target format is qcow2"* ]]
    qemu-img create -q -f qcow2 "$d/q.img" 4M
    run ! cbw_run cbw-target="$d/q.img"
    [[ "$output" == *"cbw-target: $d/q.img is a qcow2 image but the target format is raw (name it .qcow2 or ask for the qcow2 format)"* ]]
    [ "$(format_of "$d/q.img")" = qcow2 ]
    # Asked for explicitly, it is used.
    run -0 cbw_run cbw-target="$d/q.img" cbw-target-format=qcow2
    qemu-img compare -f raw -F qcow2 "$d/disk.img" "$d/q.img"
}

@test "target format: a new raw target of a partial backup is refused" {
    # sync=top of a qcow2 overlay: its unallocated clusters read the
    # backing file, which a new raw file would not hold.
    cp "$d/disk.img" "$d/base.img"
    qemu-img create -q -f qcow2 -b base.img -F raw "$d/top.qcow2"
    run ! timeout 60 nbdkit -U - --filter="$cbw" "$(plugin_path qcow2)" \
        file="$d/top.qcow2" cbw-target="$d/top.img" cbw-sync=top --run true
    [[ "$output" == *"cbw-target: $d/top.img does not exist, and a new raw file would hold only the changed clusters (zeros elsewhere)"* ]]
    [ ! -e "$d/top.img" ] && [ ! -e "$d/top.img.incomplete" ]
    # sync=top of a raw file is whole: its holes read as zeros.
    run -0 cbw_run cbw-target="$d/top.img" cbw-sync=top
    cmp "$d/top.img" "$d/disk.img"
    rm "$d/top.img"
    run ! timeout 60 nbdkit -U - --filter="$cbw" --filter="$(filter_path dirtybitmap)" \
        file "$d/disk.img" dirtybitmap-file="$d/bitmaps" \
        cbw-target="$d/inc.img" cbw-sync=incremental cbw-bitmap=b0 --run true
    [[ "$output" == *"cbw-target: $d/inc.img does not exist, and a new raw file would hold only the changed clusters"* ]]
    [ ! -e "$d/inc.img" ]
    # An existing full backup is updated in place: fine.
    cp "$d/disk.img" "$d/full.img"
    run -0 cbw_run cbw-target="$d/full.img" cbw-sync=top
    cmp "$d/full.img" "$d/disk.img"
}

@test "target format: nbdbackup pull makes qcow2 of .qcow too" {
    start_nbdkit src file "$d/disk.img" --readonly
    run -0 nbdbackup pull "$src_uri" "$d/p.qcow"
    [ "$(format_of "$d/p.qcow")" = qcow2 ]
    qemu-img compare -f raw -F qcow2 "$d/disk.img" "$d/p.qcow"
}
