# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# restore, verify and mount of what nbdbackup backup wrote: each point
# in time of a real nightly sequence (full, auto, diff) over a live
# dirtybitmap + fleece server equals a copy of the disk taken at its
# instant.

load helpers
load dirtybitmap-helpers
load repo-helpers

setup () { repo_setup; }
teardown () { repo_teardown; }

@test "readback: full, inc, diff restored, verified and mounted exactly" {
    local k b msock
    make_disk "$d/disk.img" 16M 11
    start_disk
    init_repo
    run -0 nbdbackup backup "$repo"
    snap_disk o1.raw
    b1="$(last_id)"
    write_some 1 20
    snap_disk o2.raw
    run -0 nbdbackup backup "$repo"
    b2="$(last_id)"
    write_some 2 20
    snap_disk o3.raw
    run -0 nbdbackup backup --level=diff "$repo"
    b3="$(last_id)"
    [ "$(entry "$b2" level)" = inc ] && [ "$(entry "$b3" level)" = diff ]
    # The live disk changes on; the backups must not.
    write_some 3 20

    for k in 1 2 3; do
        b="b$k"; b="${!b}"
        run -0 nbdbackup restore --id="$b" "$repo" "$d/r$k.raw"
        cmp "$d/r$k.raw" "$d/o$k.raw"
        run -0 nbdbackup restore --id="$b" "$repo" "$d/r$k.qcow2"
        run -0 qemu-img check "$d/r$k.qcow2"
        qemu-img compare -f qcow2 -F raw "$d/r$k.qcow2" "$d/o$k.raw"
    done
    run -0 nbdbackup verify "$repo"
    [ "${lines[-1]}" = "verified 3 backups, 50331648 bytes (48.0 MiB), no errors" ]

    msock="$(new_socket)"
    run -0 nbdbackup mount --id="$b2" --run 'nbdcopy "$uri" "'"$d/m2.raw"'"' \
        "$repo" "$msock"
    cmp "$d/m2.raw" "$d/o2.raw"
}

@test "readback: a disk whose size is not a multiple of the chunk" {
    make_disk "$d/disk.img" 4M 12
    truncate -s $((4 * 1024 * 1024 + 12345)) "$d/disk.img"
    printf 'tail' | dd of="$d/disk.img" bs=1 seek=$((4 * 1024 * 1024 + 12000)) \
        conv=notrunc status=none
    start_disk
    init_repo --chunk-size=4K
    run -0 nbdbackup backup "$repo"
    snap_disk o1.raw
    run -0 nbdbackup restore "$repo" "$d/r1.raw"
    cmp "$d/r1.raw" "$d/o1.raw"
    run -0 nbdbackup verify "$repo"
    [[ "${lines[-1]}" == "verified 1 backup, 4206649 bytes "*", no errors" ]]
    # Served as the disk, not as the qcow2 image rounded up to 512.
    run -0 nbdbackup mount --writable \
        --run 'nbdinfo --size "$uri" && nbdcopy "$uri" "'"$d/m1.raw"'"' \
        "$repo" "$(new_socket)"
    [ "$output" = 4206649 ]
    cmp "$d/m1.raw" "$d/o1.raw"
}
