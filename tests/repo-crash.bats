#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup backup when things go wrong: the server killed between two
# backups (its bitmaps survive: the next auto is an exact inc), the
# disk changed while no server ran (the bitmaps load inconsistent: the
# next auto is a full one and says why), nbdbackup killed (-9) or
# stopped (SIGTERM) in the middle of a copy (the repository and the bitmaps come back so that
# the next backup is exact and no change is lost from tracking), and a
# repository busy with a backup.  A copy is held in the middle by
# nbdkit-pause-filter: the backup is provably mid-copy once its dirty
# export is open (the bitmap is busy) and a request of it is held.

load helpers
load dirtybitmap-helpers
load repo-helpers

setup () { repo_setup; }
teardown () { repo_teardown; }

# busy NAME: bitmap NAME is busy on the server (a dirty export is
# open on it).
busy () {
    [ "$(nbdbackup bitmap list --json "$ctlsock" |
         jq -r --arg n "$1" '.[] | select(.name == $n) | .busy')" = true ]
}

# start_paused_backup: pause the server, start nbdbackup backup (auto,
# an incremental) in the background as $bpid, and wait until it is in
# the middle of its copy.
start_paused_backup () {
    read -r held_inc _ < <(tracked)
    pause_ctl "$pausesock" p
    nbdbackup backup "$repo" >"$d/bg.out" 2>"$d/bg.err" 3>&- &
    bpid=$!
    wait_for "the backup's dirty export open" "busy $held_inc"
    pending_id="$(jq -r .pending.id "$repo/catalog.json")"
    [ "$pending_id" != null ]
    # The incomplete file exists: the copy has started.
    [ -f "$repo/$pending_id.qcow2.incomplete" ]
}

@test "repo crash: server killed between backups: its bitmaps survive, the next auto is an exact inc" {
    make_disk "$d/disk.img" 32M 5
    start_disk
    init_repo
    run -0 nbdbackup backup "$repo"
    full1="$(last_id)"
    read -r inc diff < <(tracked)
    write_some 1 20
    kill -9 "$srv_pid"
    wait_for "the server killed" "! kill -0 $srv_pid 2>/dev/null"
    start_disk
    write_some 2 20
    snap_disk o2.raw
    # The sidecar is mapped: both bitmaps load consistent after kill -9.
    run -0 our_bitmaps
    [ "$output" = "$(printf '%s true false\n%s true false\n' "$diff" "$inc" | sort)" ]
    run -0 nbdbackup backup "$repo"
    [[ "${lines[0]}" == "nbdbackup backup: level inc: "*" changed since $full1" ]]
    [ "$(entry "$(last_id)" level)" = inc ]
    check_backup "$(last_id)" "$d/o2.raw"
    check_tracking
}

@test "repo crash: a disk changed while no server ran: the next auto is full and says why" {
    make_disk "$d/disk.img" 32M 5
    start_disk
    init_repo
    run -0 nbdbackup backup "$repo"
    read -r inc diff < <(tracked)
    write_some 1 20
    stop_nbdkit srv
    # Written behind every server's back (the mtime changes).
    printf x | dd of="$d/disk.img" bs=1 seek=7M conv=notrunc status=none
    touch -d '+1 min' "$d/disk.img"
    start_disk
    write_some 2 20
    snap_disk o2.raw
    run -0 our_bitmaps
    [ "$output" = "$(printf '%s true true\n%s true true\n' "$diff" "$inc" | sort)" ]
    why="the disk file $d/disk.img was modified while no server tracked it (its mtime is not the one the last server left)"
    run -3 nbdbackup backup --level=inc "$repo"
    [ "$output" = "nbdbackup backup: cannot take an inc backup: bitmap '$inc' is inconsistent ($why)" ]
    run -3 nbdbackup backup --level=diff "$repo"
    [ "$output" = "nbdbackup backup: cannot take a diff backup: bitmap '$diff' is inconsistent ($why)" ]
    run -0 nbdbackup backup "$repo"
    [ "${lines[0]}" = "nbdbackup backup: level full: bitmap '$inc' is inconsistent ($why)" ]
    full2="$(last_id)"
    [ "$(entry "$full2" level)" = full ]
    [ "$(entry "$full2" reason)" = "bitmap '$inc' is inconsistent ($why)" ]
    check_backup "$full2" "$d/o2.raw"
    # The inconsistent bitmaps are gone, the new ones track.
    check_tracking
    write_some 3 20
    snap_disk o3.raw
    run -0 nbdbackup backup "$repo"
    [[ "${lines[0]}" == "nbdbackup backup: level inc: "*" changed since $full2" ]]
    check_backup "$(last_id)" "$d/o3.raw"
}

@test "repo crash: nbdbackup killed mid-copy: the next backup rolls back and is exact" {
    make_disk "$d/disk.img" 32M 6
    pause=1 start_disk
    init_repo
    run -0 nbdbackup backup "$repo"
    full="$(last_id)"
    write_some 1 20
    start_paused_backup

    # Busy: a second backup and list are refused, naming the holder.
    run -5 nbdbackup backup "$repo"
    [[ "$output" == "nbdbackup backup: repository $repo is busy: locked by pid $bpid on host $(hostname), nbdbackup backup, since "*Z ]]
    run -5 nbdbackup list "$repo"
    [[ "$output" == "nbdbackup list: repository $repo is busy: locked by pid $bpid on host $(hostname), nbdbackup backup, since "*Z ]]

    kill -9 "$bpid"
    wait "$bpid" || :
    pause_ctl "$pausesock" r
    wait_for "the killed client's dirty export closed" "! busy $held_inc"
    run -0 nbdbackup list "$repo"
    [ "${lines[-1]}" = "(backup $pending_id was interrupted: the next backup rolls it back)" ]

    # More changes; the next backup has all of them since the full.
    write_some 2 20
    snap_disk o2.raw
    run -0 nbdbackup backup "$repo"
    [ "${lines[0]}" = "nbdbackup backup: rolled back the interrupted backup $pending_id: its bitmaps were merged back and its files removed" ]
    [[ "${lines[1]}" == "nbdbackup backup: level inc: "*" changed since $full" ]]
    inc="$(last_id)"
    check_backup "$inc" "$d/o2.raw"
    check_tracking
    [ "$(jq -r '.pending' "$repo/catalog.json")" = null ]
    run -0 find "$repo" -name "$pending_id.*"
    [ -z "$output" ] || [ "$pending_id" = "$inc" ]
    run -0 find "$repo" -name '*.incomplete'
    [ -z "$output" ]
}

@test "repo crash: SIGTERM mid-copy rolls back at once; no change lost" {
    make_disk "$d/disk.img" 32M 7
    pause=1 start_disk
    init_repo
    run -0 nbdbackup backup "$repo"
    full="$(last_id)"
    write_some 1 20
    run -0 nbdbackup bitmap list --json "$ctlsock"
    count="$(jq --arg n "$(tracked | cut -d' ' -f1)" '.[] | select(.name == $n) | .count' <<<"$output")"
    [ "$count" -gt 0 ]
    catalog_before="$(cat "$repo/catalog.json")"
    start_paused_backup
    kill -TERM "$bpid"
    pause_ctl "$pausesock" r
    rc=0; wait "$bpid" || rc=$?
    [ "$rc" = 143 ]
    grep -F "nbdbackup backup: the backup failed and was rolled back: the repository and the server's bitmaps are as they were" "$d/bg.err"
    # As before, but for the bitmap counter.
    [ "$(jq -c 'del(."next-bitmap")' "$repo/catalog.json")" = \
      "$(jq -c 'del(."next-bitmap")' <<<"$catalog_before")" ]
    check_tracking
    run -0 nbdbackup bitmap list --json "$ctlsock"
    [ "$(jq --arg n "$held_inc" '.[] | select(.name == $n) | .count' <<<"$output")" = "$count" ]
    run -0 find "$repo" -name "$pending_id.*"
    [ -z "$output" ]
    write_some 2 20
    snap_disk o2.raw
    run -0 nbdbackup backup "$repo"
    [[ "${lines[0]}" == "nbdbackup backup: level inc: "*" changed since $full" ]]
    check_backup "$(last_id)" "$d/o2.raw"
}

@test "repo crash: killed after the catalog names the backup: the next command finishes it" {
    make_disk "$d/disk.img" 32M 5
    start_disk
    init_repo
    run -0 nbdbackup backup "$repo"
    full1="$(last_id)"
    read -r inc1 diff1 < <(tracked)
    write_some 1 20
    snap_disk o1.raw
    # Killed (-9) right after the catalog write that records the
    # backup, before snapshot-stop and the old bitmaps' removal.
    NBDBACKUP_TEST_BEFORE_FINISH='kill -9 $PPID' \
        run -137 nbdbackup backup "$repo"
    inc2="$(last_id)"
    [ "$inc2" != "$full1" ]
    [ "$(jq -r .pending.op "$repo/catalog.json")" = finish ]
    [ "$(jq -r .pending.id "$repo/catalog.json")" = "$inc2" ]
    # The snapshot is still active and the old inc bitmap still there.
    [ "$(nbdbackup status --json "$ctlsock" | jq -r '.snapshots[0].active')" = true ]
    our_bitmaps | grep -q "^$inc1 "
    # The backup itself is complete and exact.
    check_backup "$inc2" "$d/o1.raw"
    run -0 nbdbackup list "$repo"
    [[ "$output" == *"(backup $inc2 is complete; the next backup stops its snapshot and removes the old bitmaps)"* ]]
    # The next backup finishes it (it used to fail: a snapshot is
    # already active), then takes an exact inc.
    write_some 2 20
    snap_disk o2.raw
    run -0 nbdbackup backup "$repo"
    [ "${lines[0]}" = "nbdbackup backup: finished backup $inc2, interrupted after it was recorded: its snapshot was stopped and the old bitmaps removed" ]
    [[ "${lines[1]}" == "nbdbackup backup: level inc: "*" changed since $inc2" ]]
    [ "$(jq -r .pending "$repo/catalog.json")" = null ]
    check_backup "$(last_id)" "$d/o2.raw"
    check_tracking
}
