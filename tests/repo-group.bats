#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Group repositories (issue 12): two disks, each its own server
# (dirtybitmap + fleece, a control socket), backed up at one instant
# by `nbdbackup backup REPO`.  The writer (tests/seqwriter) writes N
# to disk A, waits for the acknowledgement, then N to disk B, then
# N+1 to A...: in every restored pair B is A or A - 1.  The
# coordinator killed (-9) between prepare and commit, and a server
# killed there, leave every catalog exactly as before; a server killed
# after the commit fails the group backup and rolls back every disk.
# The kills happen at those exact steps through the test-only hooks
# NBDBACKUP_TEST_BEFORE_COMMIT (run while every write gate is closed)
# and NBDBACKUP_TEST_AFTER_COMMIT.

load helpers
load dirtybitmap-helpers

fleece="$(filter_path fleece)"

setup () {
    requires nbdbackup qemu-img nbdcopy jq
    d="$BATS_TEST_TMPDIR"
    repo="$d/repo"
    truncate -s 4M "$d/a.img" "$d/b.img"
    ctl_a="$(new_socket)"
    ctl_b="$(new_socket)"
    start_disk A a "$ctl_a"
    start_disk B b "$ctl_b"
    status_file="$d/writer.status"
    stopfile="$d/writer.stop"
    writer_pid=
}

teardown () {
    if [ -n "$writer_pid" ]; then
        touch "$stopfile"
        wait "$writer_pid" || :
    fi
    stop_all_nbdkit
    rm -f "$ctl_a" "$ctl_b"
}

# start_disk NAME FILE CONTROL: (again on the same socket if it ran
# before: the catalogs name it).
start_disk () {
    local v="${1}_sock"
    start_sock="${!v:-}" start_nbdkit "$1" -t 1 --filter="$dirtybitmap" --filter="$fleece" \
        file "$d/$2.img" fleece-snapshot=on-command fleece-store="$d" \
        dirtybitmap-control="$3" dirtybitmap-file="$d/$2.bitmaps"
}

init_group () {
    run -0 nbdbackup init "$repo" --disk "a=$A_uri,$ctl_a" \
        --disk "b=$B_uri,$ctl_b"
}

start_writer () {
    rm -f "$status_file" "$stopfile"
    seqwriter --status "$status_file" --stop "$stopfile" "$A_uri" "$B_uri" \
        3>&- &
    writer_pid=$!
    wait_for "the writer's first pair" "[ -s '$status_file' ]"
}

stop_writer () {
    touch "$stopfile"
    wait "$writer_pid"
    writer_pid=
}

written () { cat "$status_file" 2>/dev/null || echo 0; }

# number FILE: the writer's number in a disk image (0 if blank).
number () {
    local n
    n="$(head -c 20 "$1" | tr -d '\0')"
    echo $((10#${n:-0}))
}

# check_chain FILE: every file of the chain passes qemu-img check.
check_chain () {
    local f
    for f in $(qemu-img info --backing-chain --output=json "$1" |
               jq -r '.[].filename'); do
        qemu-img check "$f"
    done
}

# check_group_backup ID: restored pair consistent; chains and restored
# files equal (qemu-img alone).  Sets ra, rb (the numbers).
check_group_backup () {
    local id="$1" x
    for x in a b; do
        rm -f "$d/r$x.img"
        run -0 nbdbackup restore --id="$id" --disk="$x" "$repo" "$d/r$x.img"
        check_chain "$repo/$x/$id.qcow2"
        qemu-img compare -f qcow2 -F raw "$repo/$x/$id.qcow2" "$d/r$x.img"
    done
    ra="$(number "$d/ra.img")"
    rb="$(number "$d/rb.img")"
    echo "backup $id: A=$ra B=$rb"
    [ "$rb" -eq "$ra" ] || [ "$rb" -eq $((ra - 1)) ]
}

# snap_catalogs NAME: copies of every catalog, to compare later.
snap_catalogs () {
    mkdir -p "$d/$1"
    cp "$repo/group.json" "$repo/a/catalog.json" "$d/$1/"
    cp "$repo/b/catalog.json" "$d/$1/b-catalog.json"
}
same_catalogs () {
    cmp "$repo/group.json" "$d/$1/group.json"
    cmp "$repo/a/catalog.json" "$d/$1/catalog.json"
    cmp "$repo/b/catalog.json" "$d/$1/b-catalog.json"
}

# no_snapshot CONTROL: no snapshot active on that server.
no_snapshot () {
    [ "$(nbdbackup status --json "$1" | jq -r '.snapshots[0].active')" = false ]
}

@test "repo group: init --disk makes a group; its errors are named" {
    run -2 nbdbackup init "$repo" --disk "a=$A_uri,$ctl_a" \
        --disk "a=$B_uri,$ctl_b"
    [[ "$output" == *"--disk: the name 'a' is given twice"* ]]
    run -2 nbdbackup init "$repo" --disk "a/b=$A_uri,$ctl_a"
    [[ "$output" == *"--disk: 'a/b' is not a disk name (1 to 32 of A-Z a-z 0-9 _ -)"* ]]
    run -2 nbdbackup init "$repo" --disk "a=$A_uri"
    [[ "$output" == *"--disk: expected NAME=NBD-URI,SOCKET, got 'a=$A_uri'"* ]]
    run -2 nbdbackup init "$repo" --disk "a=$A_uri,$ctl_a" --uri="$A_uri"
    [[ "$output" == *"--disk makes a group repository"* ]]
    run -1 nbdbackup init "$repo" --disk "a=$A_uri,$ctl_a" \
        --disk "b=$B_uri,$d/nothing.sock"
    [ ! -e "$repo" ]
    init_group
    [ "$(jq -c .disks "$repo/group.json")" = '["a","b"]' ]
    [ "$(jq -r .uri "$repo/a/catalog.json")" = "$A_uri" ]
    [ "$(stat -c %a "$repo")" = 700 ]
    run -1 nbdbackup list --disk=c "$repo"
    [[ "$output" == *"repository $repo has no disk 'c' (its disks: a, b)"* ]]
    run -1 nbdbackup restore "$repo" "$d/x"
    [[ "$output" == *"repository $repo: no group backup yet"* ]]
    run -2 nbdbackup verify --disk=../a "$repo"
    [[ "$output" == *"--disk: '../a' is not a disk name"* ]]
    run -1 nbdbackup mount "$repo" "$d/m.sock"
    [[ "$output" == *"repository $repo is a group of disks (a, b): choose one with --disk=NAME"* ]]
    run -1 nbdbackup restore --disk=c "$repo" "$d/x.img"
    [[ "$output" == *"repository $repo has no disk 'c' (its disks: a, b)"* ]]
    run -2 nbdbackup backup --deadline=100 "$repo/a"
    [[ "$output" == *"--deadline and --parallel are for a group repository"* ]]
    run -2 nbdbackup backup --parallel=0 "$repo"
    [[ "$output" == *"--parallel: expected an integer from 1 to 64, got '0'"* ]]
    run -2 nbdbackup backup --deadline=x "$repo"
    [[ "$output" == *"--deadline: expected a number of milliseconds from 1 to 600000, got 'x'"* ]]
    # A hostile group.json: a disk name that is a path.
    cp "$repo/group.json" "$d/group.json"
    jq '.disks[1] = "../b"' "$d/group.json" >"$repo/group.json"
    run -1 nbdbackup backup "$repo"
    [[ "$output" == *"$repo/group.json: disk 2: not a disk name (1 to 32 of A-Z a-z 0-9 _ -)"* ]]
    jq '.version = 2' "$d/group.json" >"$repo/group.json"
    run -1 nbdbackup list "$repo"
    [[ "$output" == *"$repo/group.json: version 2 is not supported (this nbdbackup reads version 1)"* ]]
    cp "$d/group.json" "$repo/group.json"
    run -0 nbdbackup list "$repo"
}

@test "repo group: backups while the writer runs restore consistent pairs" {
    init_group
    start_writer
    for i in 1 2 3 4 5; do
        before="$(written)"
        run -0 nbdbackup backup --json "$repo"
        echo "$output"
        json="${lines[-1]}"
        [ "$(echo "$json" | jq -r .result)" = ok ]
        [ "$(echo "$json" | jq -r '.gate_closed_max_us >= .gate_closed_p50_us and .gate_closed_p50_us >= 0')" = true ]
        wait_for "the writer to go on" "[ \$(written) -gt $before ]"
    done
    stop_writer
    [ "$(jq '.backups | length' "$repo/group.json")" = 5 ]
    ids=($(jq -r '.backups[].id' "$repo/group.json"))
    # One instant, one id, one level per group backup.
    for id in "${ids[@]}"; do
        [ "$(jq -r --arg i "$id" '.backups[] | select(.id == $i) | .instant' "$repo/a/catalog.json")" = \
          "$(jq -r --arg i "$id" '.backups[] | select(.id == $i) | .instant' "$repo/b/catalog.json")" ]
        check_group_backup "$id"
    done
    [ "$(jq -r '.backups[0].level' "$repo/a/catalog.json")" = full ]
    [ "$(jq -r '.backups[4].level' "$repo/b/catalog.json")" = inc ]
    # The last one, restored for both disks at once, into a directory.
    run -0 nbdbackup restore --id="${ids[4]}" "$repo" "$d/all"
    cmp "$d/all/a.img" "$d/ra.img"
    cmp "$d/all/b.img" "$d/rb.img"
    # A backup now (quiet writer) equals the disks exactly.
    run -0 nbdbackup backup "$repo"
    id="$(jq -r '.backups[-1].id' "$repo/group.json")"
    check_group_backup "$id"
    cmp "$d/ra.img" "$d/a.img"
    cmp "$d/rb.img" "$d/b.img"
    run -0 nbdbackup estimate "$repo"
    [ "${lines[0]}" = "disk a:" ]
    [[ "$output" == *"disk b:"* ]]
    run -0 nbdbackup verify "$repo"
    [ "${lines[0]}" = "disk a:" ]
    [[ "$output" == *"disk b:"* ]]
    run -0 nbdbackup list "$repo"
    [[ "${lines[6]}" == "$id "*" a=inc b=inc" ]]
    run -0 nbdbackup list --json --disk=b "$repo"
    [ "$(echo "$output" | jq -r '.backups[-1].id')" = "$id" ]
    # mount --disk serves one disk's point in time.
    msock="$(new_socket)"
    nbdbackup mount --disk=b --id="$id" --pidfile="$d/mount.pid" "$repo" \
        "$msock" 2>"$d/mount.err" 3>&- &
    mpid=$!
    wait_for "nbdbackup mount serving" \
        "[ -s '$d/mount.pid' ] || ! kill -0 $mpid 2>/dev/null"
    nbdcopy "nbd+unix:///?socket=$msock" "$d/m.img"
    kill "$mpid"
    wait "$mpid"
    cmp "$d/m.img" "$d/b.img"
    # prune keeps the newest 2 group backups of every disk, exact.
    run -0 nbdbackup prune --keep-last=2 "$repo"
    [ "$(jq -c '[.backups[].id]' "$repo/group.json")" = \
      "$(jq -c '[.backups[].id]' "$repo/a/catalog.json")" ]
    [ "$(jq '.backups | length' "$repo/group.json")" = 2 ]
    run -0 nbdbackup verify "$repo"
    check_group_backup "$id"
    cmp "$d/ra.img" "$d/a.img"
    cmp "$d/rb.img" "$d/b.img"
}

@test "repo group: coordinator killed between prepare and commit: nothing applied" {
    init_group
    run -0 nbdbackup backup "$repo"
    bitmaps_a="$(nbdbackup bitmap list --json "$ctl_a" | jq -c '[.[] | {name, recording}]')"
    bitmaps_b="$(nbdbackup bitmap list --json "$ctl_b" | jq -c '[.[] | {name, recording}]')"
    start_writer
    # Killed while every gate is closed: the servers abort (the
    # connections that prepared are gone, or the deadline passes).
    NBDBACKUP_TEST_BEFORE_COMMIT='kill -9 $PPID' \
        run -137 nbdbackup backup --deadline=5000 "$repo"
    pending="$(jq -r .pending.id "$repo/a/catalog.json")"
    [ "$pending" != null ]
    [ "$(jq -r .pending.id "$repo/b/catalog.json")" = "$pending" ]
    before="$(written)"
    wait_for "the writer to resume" "[ \$(written) -gt $before ]"
    # Nothing applied: no snapshot, the bitmaps as they were.
    no_snapshot "$ctl_a"
    no_snapshot "$ctl_b"
    [ "$(nbdbackup bitmap list --json "$ctl_a" | jq -c '[.[] | {name, recording}]')" = "$bitmaps_a" ]
    [ "$(nbdbackup bitmap list --json "$ctl_b" | jq -c '[.[] | {name, recording}]')" = "$bitmaps_b" ]
    [ "$(jq '.backups | length' "$repo/group.json")" = 1 ]
    stop_writer
    # The next group backup rolls the pending records back and is exact.
    run -0 nbdbackup backup "$repo"
    [ "${lines[0]}" = "nbdbackup backup: rolled back the interrupted backup $pending: its bitmaps were merged back and its files removed" ]
    [ "${lines[1]}" = "${lines[0]}" ]
    id="$(jq -r '.backups[-1].id' "$repo/group.json")"
    [ "$(jq '.backups | length' "$repo/group.json")" = 2 ]
    check_group_backup "$id"
    cmp "$d/ra.img" "$d/a.img"
    cmp "$d/rb.img" "$d/b.img"
    [ "$(jq -r .pending "$repo/a/catalog.json")" = null ]
    [ "$(jq -r .pending "$repo/b/catalog.json")" = null ]
}

@test "repo group: a server killed between prepare and commit: the others abort, the repository is as before" {
    init_group
    run -0 nbdbackup backup "$repo"
    io "$A_uri" "write -P 7 0 64k"
    snap_catalogs before
    a_bitmaps="$(nbdbackup bitmap list --json "$ctl_a" | jq -c '[.[] | {name, recording}]')"
    NBDBACKUP_TEST_BEFORE_COMMIT="kill -9 $B_pid; \"$wait_for_cmd\" 'server B gone' '! kill -0 $B_pid 2>/dev/null'" \
        run -1 nbdbackup backup "$repo"
    echo "$output"
    [[ "$output" == *"$ctl_b"* ]]
    [[ "$output" == *"the group backup failed before the commit: nothing was applied on any server, and the repository is as it was"* ]]
    same_catalogs before
    no_snapshot "$ctl_a"
    [ "$(nbdbackup bitmap list --json "$ctl_a" | jq -c '[.[] | {name, recording}]')" = "$a_bitmaps" ]
    ls "$repo/a" "$repo/b" | grep -v incomplete >/dev/null
    ! ls "$repo"/*/*.incomplete 2>/dev/null
}

@test "repo group: a server killed after the commit fails the group backup; every disk rolls back" {
    init_group
    run -0 nbdbackup backup "$repo"
    first="$(jq -r '.backups[0].id' "$repo/group.json")"
    io "$A_uri" "write -P 7 2M 64k"
    io "$B_uri" "write -P 8 1M 64k"
    snap_catalogs before
    bitmaps_a="$(nbdbackup bitmap list --json "$ctl_a" | jq -c '[.[] | {name, recording}]')"
    NBDBACKUP_TEST_AFTER_COMMIT="kill -9 $B_pid; \"$wait_for_cmd\" 'server B gone' '! kill -0 $B_pid 2>/dev/null'" \
        run -1 nbdbackup backup "$repo"
    echo "$output"
    [[ "$output" == *"disk b: the copy failed"* ]]
    [[ "$output" == *"nbdbackup backup: disk a: the backup failed and was rolled back: the repository and the server's bitmaps are as they were"* ]]
    pending="$(jq -r .pending.id "$repo/b/catalog.json")"
    [[ "$output" == *"nbdbackup backup: disk b: the failed backup $pending could not be rolled back: it stays pending, and the next backup rolls it back"* ]]
    # Disk A is as before (but for the bitmap counter): catalog,
    # bitmaps, no snapshot, no new file.
    [ "$(jq -c 'del(."next-bitmap")' "$repo/a/catalog.json")" = \
      "$(jq -c 'del(."next-bitmap")' "$d/before/catalog.json")" ]
    cmp "$repo/group.json" "$d/before/group.json"
    no_snapshot "$ctl_a"
    [ "$(nbdbackup bitmap list --json "$ctl_a" | jq -c '[.[] | {name, recording}]')" = "$bitmaps_a" ]
    [ "$(ls "$repo/a" | grep -c qcow2)" = 1 ]
    # Disk B's server is gone: its record stays pending for the next run.
    pending="$(jq -r .pending.id "$repo/b/catalog.json")"
    [ "$pending" != null ]
    start_disk B b "$ctl_b"
    run -0 nbdbackup backup "$repo"
    [ "${lines[0]}" = "nbdbackup backup: rolled back the interrupted backup $pending: its bitmaps were merged back and its files removed" ]
    [[ "${lines[1]}" == "nbdbackup backup: disk a: level inc: 64.0 KiB changed since $first" ]]
    [[ "${lines[2]}" == "nbdbackup backup: disk b: level inc: 64.0 KiB changed since $first" ]]
    id="$(jq -r '.backups[-1].id' "$repo/group.json")"
    check_group_backup "$id"
    cmp "$d/ra.img" "$d/a.img"
    cmp "$d/rb.img" "$d/b.img"
}

@test "repo group: auto takes a full backup of every disk if one needs it, and says why" {
    init_group
    run -0 nbdbackup backup "$repo"
    io "$A_uri" "write -P 7 2M 64k"
    # Disk b's tracked bitmap is gone: b needs a full backup.
    inc_b="$(jq -r .tracking.inc "$repo/b/catalog.json")"
    run -0 nbdbackup bitmap remove "$ctl_b" "$inc_b"
    run -3 nbdbackup backup --level=inc "$repo"
    [[ "$output" == *"bitmap '$inc_b'"* ]]
    run -0 nbdbackup backup "$repo"
    [[ "${lines[0]}" == "nbdbackup backup: disk a: level full: disk b of the group needs a full backup: "*"'$inc_b'"* ]]
    [[ "${lines[1]}" == "nbdbackup backup: disk b: level full: "*"'$inc_b'"* ]]
    id="$(jq -r '.backups[-1].id' "$repo/group.json")"
    [ "$(jq -r '.backups[-1].level' "$repo/a/catalog.json")" = full ]
    check_group_backup "$id"
    cmp "$d/ra.img" "$d/a.img"
    cmp "$d/rb.img" "$d/b.img"
}
