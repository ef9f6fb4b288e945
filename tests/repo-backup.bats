#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup backup: the nightly scenario of issue 10 over a real
# dirtybitmap + fleece server, every backup checked against a copy of
# the disk taken at its instant (the writer is quiet during a backup)
# with qemu-img alone (convert, compare, check, info --backing-chain)
# and its digest list against the copy's chunks; levels and reasons;
# bad options.

load helpers
load dirtybitmap-helpers
load repo-helpers

setup () { repo_setup; }
teardown () { repo_teardown; }

@test "repo backup: nightly full, auto (inc), diff, auto; each exact" {
    make_disk "$d/disk.img" 64M 10
    start_disk
    init_repo

    run -0 nbdbackup backup "$repo"
    [ "${lines[0]}" = "nbdbackup backup: level full: first backup in the repository" ]
    full="$(last_id)"
    [[ "${lines[1]}" == "backup $full (full) of $repo: "*" copied in "* ]]
    snap_disk o1.raw
    check_backup "$full" "$d/o1.raw"
    [ "$(entry "$full" parent)" = null ]
    [ "$(entry "$full" bitmap)" = null ]
    run -0 qemu-img info --output=json "$repo/$full.qcow2"
    [ "$(jq -r '."backing-filename"' <<<"$output")" = null ]
    check_tracking

    write_some 1 30
    snap_disk o2.raw
    run -0 nbdbackup backup "$repo"
    inc1="$(last_id)"
    [[ "${lines[0]}" == "nbdbackup backup: level inc: "*" changed since $full" ]]
    check_backup "$inc1" "$d/o2.raw"
    [ "$(entry "$inc1" parent)" = "$full" ]
    [ "$(entry "$inc1" level)" = inc ]
    run -0 qemu-img info --output=json "$repo/$inc1.qcow2"
    [ "$(jq -r '."backing-filename"' <<<"$output")" = "$full.qcow2" ]
    [ "$(jq -r '."backing-filename-format"' <<<"$output")" = qcow2 ]
    # Only what changed was copied.
    [ "$(entry "$inc1" bytes-skipped)" -gt $((50 * 1024 * 1024)) ]
    check_tracking

    write_some 2 30
    snap_disk o3.raw
    run -0 nbdbackup backup --level=diff "$repo"
    diff1="$(last_id)"
    [[ "${lines[0]}" == "nbdbackup backup: level diff: "*" changed since the full backup $full" ]]
    check_backup "$diff1" "$d/o3.raw"
    [ "$(entry "$diff1" parent)" = "$full" ]
    check_tracking

    write_some 3 30
    snap_disk o4.raw
    run -0 nbdbackup backup --json "$repo"
    inc2="$(last_id)"
    [ "$(jq -r '"\(.result) \(.id) \(.level) \(.parent)"' <<<"${lines[-1]}")" = \
      "ok $inc2 inc $diff1" ]
    check_backup "$inc2" "$d/o4.raw"
    check_tracking

    # Every point is still exact, the table lists them in order.
    check_backup "$full" "$d/o1.raw"
    check_backup "$inc1" "$d/o2.raw"
    check_backup "$diff1" "$d/o3.raw"
    run -0 nbdbackup list "$repo"
    [ "${#lines[@]}" = 5 ]
    [[ "${lines[1]}" == "$full "*" full  -  "* ]]
    [[ "${lines[2]}" == "$inc1 "*" inc   $full "* ]]
    [[ "${lines[3]}" == "$diff1 "*" diff  $full "* ]]
    [[ "${lines[4]}" == "$inc2 "*" inc   $diff1 "* ]]
    # Files are private, nothing is left half-written.
    run -0 find "$repo" -type f ! -perm 600
    [ -z "$output" ]
    run -0 find "$repo" -name '*.incomplete' -o -name '*.tmp*'
    [ -z "$output" ]
}

@test "repo backup: an incremental skips dirty chunks zero here and in its parent" {
    truncate -s 16M "$d/disk.img"
    dd if=/dev/urandom of="$d/disk.img" bs=64K count=4 seek=8 conv=notrunc status=none
    start_disk
    init_repo
    run -0 nbdbackup backup "$repo"
    # Dirty, but zero now and in the parent: not in the overlay.  Data
    # zeroed: a zero cluster in the overlay.  New data: copied.
    io "$live" "write -P 5 2M 64K" "write -z 2M 64K" "write -z 512K 64K" \
        "write -P 6 4M 64K"
    snap_disk o2.raw
    run -0 nbdbackup backup --json "$repo"
    summary="${lines[-1]}"
    inc="$(last_id)"
    check_backup "$inc" "$d/o2.raw"
    run -0 top_ranges "$repo/$inc.qcow2"
    [ "$output" = "524288+65536 4194304+65536" ]
    [ "$(jq -r '"\(.bytes_copied) \(.bytes_zero)"' <<<"$summary")" = "65536 131072" ]
}

@test "repo backup: a chunk size of 4K and a disk not a multiple of it" {
    make_disk "$d/disk.img" 8M 4
    # (qcow2 sizes are multiples of 512)
    truncate -s $((8 * 1024 * 1024 + 1536)) "$d/disk.img"
    start_disk
    init_repo --chunk-size=4K
    run -0 nbdbackup backup "$repo"
    snap_disk o1.raw
    check_backup "$(last_id)" "$d/o1.raw"
    io "$live" "write -P 3 100 5000" "write -P 4 8389120 1024"
    snap_disk o2.raw
    run -0 nbdbackup backup "$repo"
    check_backup "$(last_id)" "$d/o2.raw"
    # Two whole chunks and the short last one.
    [ "$(entry "$(last_id)" bytes-copied)" = $((2 * 4096 + 1536)) ]
}

@test "repo backup: refuses bad options, levels it cannot take, and the old syntax" {
    truncate -s 16M "$d/disk.img"
    start_disk
    init_repo
    run -2 nbdbackup backup
    [[ "$output" == "nbdbackup backup: missing REPO"* ]]
    run -2 nbdbackup backup "$repo" extra
    [[ "$output" == "nbdbackup backup: unexpected argument 'extra' after REPO"* ]]
    run -2 nbdbackup backup --level=weekly "$repo"
    [[ "$output" == "nbdbackup backup: --level: expected full, inc, diff or auto, got 'weekly'"* ]]
    run -2 nbdbackup backup -C 0 "$repo"
    [[ "$output" == "nbdbackup backup: --connections: expected an integer from 1 to 16, got '0'"* ]]
    run -2 nbdbackup backup -R x "$repo"
    [[ "$output" == "nbdbackup backup: --requests: expected an integer from 1 to 1024, got 'x'"* ]]
    run -2 nbdbackup backup "$ctlsock" --target=/tmp/x.qcow2
    [[ "$output" == "nbdbackup backup: backup now backs up into a repository (nbdbackup backup REPO); to start a push backup job on the server, use nbdbackup push SOCKET --target=..."* ]]
    run -3 nbdbackup backup --level=inc "$repo"
    [ "$output" = "nbdbackup backup: cannot take an inc backup: the repository has no backup yet" ]
    run -3 nbdbackup backup --level=diff "$repo"
    [ "$output" = "nbdbackup backup: cannot take a diff backup: the repository has no backup yet" ]
    # Refused levels change nothing.
    [ "$(jq -c '[.pending, .backups, ."next-bitmap"]' "$repo/catalog.json")" = '[null,[],1]' ]
    run -0 our_bitmaps
    [ -z "$output" ]
    run -1 nbdbackup backup "$d/nonexistent"
    [ "$output" = "nbdbackup backup: repository $d/nonexistent: No such file or directory" ]
    # A bitmap the catalog tracks is gone: inc is refused, auto says
    # why it takes a full.
    run -0 nbdbackup backup "$repo"
    read -r inc diff < <(tracked)
    run -0 nbdbackup bitmap remove "$ctlsock" "$inc"
    run -3 nbdbackup backup --level=inc "$repo"
    [ "$output" = "nbdbackup backup: cannot take an inc backup: bitmap '$inc' is missing on the server" ]
    run -0 nbdbackup backup "$repo"
    [ "${lines[0]}" = "nbdbackup backup: level full: bitmap '$inc' is missing on the server" ]
    check_tracking
}

@test "repo estimate: what the next inc, diff and full would copy" {
    truncate -s 16M "$d/disk.img"
    dd if=/dev/urandom of="$d/disk.img" bs=64K count=4 seek=32 conv=notrunc status=none
    start_disk
    init_repo
    run -0 nbdbackup estimate "$repo"
    [ "${lines[0]}" = "next inc   not possible: the repository has no backup yet" ]
    [ "${lines[1]}" = "next diff  not possible: the repository has no backup yet" ]
    [ "${lines[2]}" = "next full  256.0 KiB to copy (the data of the 16.0 MiB disk)" ]
    [ "${lines[3]}" = "next auto  full" ]
    run -0 nbdbackup backup "$repo"
    full="$(last_id)"
    # 64K of data and 64K of zeros dirty.
    io "$live" "write -P 1 1M 64K" "write -z 8M 64K"
    run -0 nbdbackup estimate "$repo"
    [ "${lines[0]}" = "next inc   64.0 KiB to copy (128.0 KiB changed since $full)" ]
    [ "${lines[1]}" = "next diff  64.0 KiB to copy (128.0 KiB changed since the full backup $full)" ]
    [ "${lines[3]}" = "next auto  inc" ]
    run -0 nbdbackup estimate --json "$repo"
    [ "$(jq -c '[.disk_size, .bytes_data, .next_auto, .inc.possible, .inc.bytes_dirty, .inc.bytes_to_copy, .inc.since, .diff.since]' <<<"$output")" = \
      "[16777216,327680,\"inc\",true,131072,65536,\"$full\",\"$full\"]" ]
    run -0 nbdbackup backup "$repo"
    [ "$(entry "$(last_id)" bytes-copied)" = 65536 ]
    run -2 nbdbackup estimate
    [[ "$output" == "nbdbackup estimate: missing REPO"* ]]
    run -2 nbdbackup estimate "$repo" x
    [[ "$output" == "nbdbackup estimate: unexpected argument 'x' after REPO"* ]]
}
