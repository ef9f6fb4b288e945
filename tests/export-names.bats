#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Export names: a name that no filter of the suite serves is refused
# (the file plugin would serve any name as the live disk), the pull
# fails and says which exports exist and, with --control, why the
# server refused; pass-through keeps the old behaviour.

load helpers
load dirtybitmap-helpers

setup () {
    requires nbdbackup nbdinfo socat jq
    d="$BATS_TEST_TMPDIR"
    ctlsock="$(new_socket)"
    fleece="$(filter_path fleece)"
    head -c 4M /dev/urandom > "$d/disk.img"
}

teardown () {
    stop_all_nbdkit
    rm -f "$ctlsock"
}

uri () { echo "nbd+unix:///$1?socket=$srv_sock"; }

@test "exports: a mistyped snapshot export is refused, not served live" {
    start_nbdkit srv --filter="$fleece" file "$d/disk.img" fleece-store="$d"
    run -1 nbdbackup pull "$(uri snap)" "$d/x.img"
    echo "$output"
    [ ! -e "$d/x.img" ] && [ ! -e "$d/x.img.incomplete" ]
    [[ "$output" == *"nbdbackup: the server does not serve an export named 'snap'; it serves: '' (the default export), 'snapshot' (point-in-time snapshot (read-only))"* ]]
    [[ "$output" == *"nbdkit does not tell a client why it refuses an export: the server's log says, or give --control=SOCKET to ask its control socket"* ]]
    server_log srv | grep -qF "fleece: no export named 'snap': this server serves '' (the live disk), 'snapshot' (fleece-exports=passthrough would pass other names to the plugin)"
    # The real names still work: the live disk and the snapshot.
    run -0 nbdbackup pull "$(uri snapshot)" "$d/snap.img"
    cmp "$d/snap.img" "$d/disk.img"
    run -0 nbdbackup pull "$(uri '')" "$d/live.img"
    cmp "$d/live.img" "$d/disk.img"
}

@test "exports: fleece-exports=passthrough passes other names to the plugin" {
    start_nbdkit srv --filter="$fleece" file "$d/disk.img" fleece-store="$d" \
        fleece-exports=passthrough
    run -0 nbdbackup pull "$(uri snap)" "$d/x.img"
    cmp "$d/x.img" "$d/disk.img"
    run ! nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-exports=lax --run true
    [[ "$output" == *"fleece-exports: unknown value 'lax' (expecting strict or passthrough)"* ]]
}

@test "exports: a refused dirty export says why (recording, no such bitmap, no snapshot)" {
    start_nbdkit srv --filter="$dirtybitmap" --filter="$fleece" \
        file "$d/disk.img" fleece-snapshot=on-command fleece-store="$d" \
        dirtybitmap-control="$ctlsock" dirtybitmap-add=b0
    ctl_connect C "$ctlsock"
    pull () { nbdbackup pull --control="$ctlsock" "$(uri "$1")" "$d/x.img"; }
    why="nbdbackup: why the server refuses export"

    run -1 pull dirty:b0
    echo "$output"
    [[ "$output" == *"nbdbackup: the server does not serve an export named 'dirty:b0'; it serves: '' (the default export)"* ]]
    [[ "$output" == *"$why 'dirty:b0' (its control socket says): bitmap 'b0' is recording: disable it at the snapshot instant (block-dirty-bitmap-disable in the snapshot-start transaction) before reading its dirty ranges"* ]]
    run -1 pull dirty:b00
    [[ "$output" == *"$why 'dirty:b00' (its control socket says): bitmap 'b00' not found (the bitmaps are: 'b0')"* ]]
    run -1 pull snapshot
    [[ "$output" == *"$why 'snapshot' (its control socket says): no snapshot is active (fleece-snapshot=on-command: start one with snapshot-start)"* ]]
    run -0 qmp C block-dirty-bitmap-disable '{"name":"b0"}'
    run -1 pull dirty:b0
    [[ "$output" == *"$why 'dirty:b0' (its control socket says): the snapshot export 'snapshot' is not available: no snapshot is active (fleece-snapshot=on-command: start one with snapshot-start)"* ]]
    # dirtybitmap is the outermost: it refuses the unknown name itself.
    run -1 pull snap
    [[ "$output" == *"$why 'snap' (its control socket says): no export named 'snap' (this server serves '' (the live disk), 'snapshot', 'dirty:BITMAP')"* ]]
    server_log srv | grep -qF "dirtybitmap: no export named 'snap': this server serves '' (the live disk), 'snapshot', 'dirty:BITMAP' (dirtybitmap-exports=passthrough would pass other names to the plugin)"
    [ ! -e "$d/x.img" ]

    # Once the snapshot runs, the listing and the pull agree.
    run -0 qmp C snapshot-start
    run -0 nbdinfo --list "$(uri '')"
    [[ "$output" == *'export="snapshot"'*'export="dirty:b0"'* ]]
    run -0 pull dirty:b0
    cmp "$d/x.img" "$d/disk.img"
    run -0 qmp C query-export '{"name":"dirty:b0"}'
    [ "$output" = '{"name":"dirty:b0","served-by":"dirtybitmap","available":true,"reason":null}' ]
}

@test "exports: a dirty export never reads the live disk through a misordered stack" {
    # fleece outside dirtybitmap: dirty:b0 would read the plugin's
    # "snapshot" export, which the file plugin serves as the live disk.
    start_nbdkit srv --filter="$fleece" --filter="$dirtybitmap" \
        file "$d/disk.img" fleece-store="$d" \
        dirtybitmap-control="$ctlsock" dirtybitmap-add=b0
    ctl_connect C "$ctlsock"
    run -0 qmp C block-dirty-bitmap-disable '{"name":"b0"}'
    run -1 nbdbackup pull --control="$ctlsock" "$(uri dirty:b0)" "$d/x.img"
    echo "$output"
    [[ "$output" == *"(its control socket says): no filter below this one serves the snapshot export 'snapshot' (load nbdkit-fleece-filter after dirtybitmap: --filter=dirtybitmap --filter=fleece)"* ]]
    # dirtybitmap-exports=passthrough: the user says the plugin serves it.
    stop_all_nbdkit
    start_nbdkit srv --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-add=b0 dirtybitmap-exports=passthrough \
        dirtybitmap-snapshot-export=snapshot dirtybitmap-control="$ctlsock"
    ctl_connect D "$ctlsock"
    run -0 qmp D block-dirty-bitmap-disable '{"name":"b0"}'
    run -0 nbdinfo --size "$(uri dirty:b0)"
    [ "$output" = 4194304 ]
}

@test "exports: a dirty export of an inconsistent bitmap says why" {
    start_nbdkit srv --filter="$dirtybitmap" --filter="$fleece" \
        file "$d/disk.img" fleece-store="$d" dirtybitmap-file="$d/bitmaps" \
        dirtybitmap-control="$ctlsock" dirtybitmap-add=b0
    io "$srv_uri" "write 0 512"
    stop_nbdkit srv
    rm -f "$ctlsock"
    # Written while no server tracked it.
    touch -d '+1 min' "$d/disk.img"
    start_nbdkit srv --filter="$dirtybitmap" --filter="$fleece" \
        file "$d/disk.img" fleece-store="$d" dirtybitmap-file="$d/bitmaps" \
        dirtybitmap-control="$ctlsock"
    run -1 nbdbackup pull --control="$ctlsock" "$(uri dirty:b0)" "$d/x.img"
    echo "$output"
    [[ "$output" == *"nbdbackup: why the server refuses export 'dirty:b0' (its control socket says): bitmap 'b0' is inconsistent (the disk file $d/disk.img was modified while no server tracked it (its mtime is not the one the last server left)): a full backup is needed"* ]]
    [ ! -e "$d/x.img" ]
}
