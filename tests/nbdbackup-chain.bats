#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup pull --force must not silently break the incremental
# backups that use TARGET as their backing file: it is refused, naming
# them, unless --force-break-chain.  Dependents are found by device and
# inode through the chain, and the scan of the directory neither
# follows symlinks nor blocks on FIFOs.

load helpers

setup () {
    requires nbdbackup nbdcopy qemu-img
    d="$BATS_TEST_TMPDIR"
}

teardown () { stop_all_nbdkit; }

# Change 64 KiB of disk.img at offset $1 MiB (the server reads the
# file as it is now).
change_disk () {
    head -c 65536 /dev/urandom |
        dd of="$d/disk.img" bs=65536 seek="$(( $1 * 16 ))" conv=notrunc \
           status=none
}

# full.qcow2 <- inc1.qcow2 <- inc2.qcow2, each equal to the disk as it
# was then (state0.img, state1.img, state2.img).
make_chain () {
    make_disk "$d/disk.img" 8M 21
    start_nbdkit src file "$d/disk.img"
    cp "$d/disk.img" "$d/state0.img"
    nbdbackup pull "$src_uri" "$d/full.qcow2"
    change_disk 1; cp "$d/disk.img" "$d/state1.img"
    nbdbackup pull --backing=full.qcow2 "$src_uri" "$d/inc1.qcow2"
    change_disk 5; cp "$d/disk.img" "$d/state2.img"
    nbdbackup pull --backing=inc1.qcow2 "$src_uri" "$d/inc2.qcow2"
    change_disk 7
}

# The chain still reads as it did.
check_chain () {
    run -0 qemu-img check "$d/inc2.qcow2"
    run -0 qemu-img compare -f raw -F qcow2 "$d/state0.img" "$d/full.qcow2"
    run -0 qemu-img compare -f raw -F qcow2 "$d/state1.img" "$d/inc1.qcow2"
    run -0 qemu-img compare -f raw -F qcow2 "$d/state2.img" "$d/inc2.qcow2"
}

@test "nbdbackup pull --force over a full backup with incrementals is refused" {
    make_chain
    # Things the scan must pass over: a FIFO (never blocked on), a
    # symlink to a dependent (never followed), a raw file, an
    # unrelated qcow2 image.
    mkfifo "$d/fifo.qcow2"
    ln -s inc1.qcow2 "$d/link.qcow2"
    cp "$d/state0.img" "$d/raw.img"
    nbdbackup pull "$src_uri" "$d/other.qcow2"
    sum="$(sha256sum <"$d/full.qcow2")"

    run -1 timeout 60 nbdbackup pull --force "$src_uri" "$d/full.qcow2"
    [ "$output" = "nbdbackup: $d/full.qcow2 is the backing file of inc1.qcow2, inc2.qcow2; replacing it would break them (use --force-break-chain to do it anyway)" ]
    [ "$(sha256sum <"$d/full.qcow2")" = "$sum" ]
    [ ! -e "$d/full.qcow2.incomplete" ]
    check_chain

    # The middle of the chain too; the top has no dependents.
    run -1 timeout 60 nbdbackup pull --force --json "$src_uri" "$d/inc1.qcow2"
    [[ "$output" == *"nbdbackup: $d/inc1.qcow2 is the backing file of inc2.qcow2; replacing it would break it (use --force-break-chain to do it anyway)"* ]]
    [[ "$output" == *'"result":"error"'* ]]
    check_chain

    # --force over images nothing depends on still works.
    run -0 timeout 60 nbdbackup pull --force "$src_uri" "$d/other.qcow2"
    run -0 qemu-img compare -f raw -F qcow2 "$d/disk.img" "$d/other.qcow2"
    run -0 timeout 60 nbdbackup pull --force "$src_uri" "$d/raw.img"
    cmp "$d/disk.img" "$d/raw.img"
    check_chain
}

@test "nbdbackup pull --force-break-chain replaces it anyway" {
    make_chain
    run -0 nbdbackup pull --force-break-chain "$src_uri" "$d/full.qcow2"
    run -0 qemu-img compare -f raw -F qcow2 "$d/disk.img" "$d/full.qcow2"
    # Without an existing TARGET it is just a pull.
    run -0 nbdbackup pull --force-break-chain "$src_uri" "$d/new.qcow2"
    run -0 qemu-img compare -f raw -F qcow2 "$d/disk.img" "$d/new.qcow2"
    # Never its own backing file, whatever the options.
    sum="$(sha256sum <"$d/full.qcow2")"
    run -1 nbdbackup pull --force-break-chain --backing=full.qcow2 \
        "$src_uri" "$d/full.qcow2"
    [ "$output" = "nbdbackup: --backing=full.qcow2 is $d/full.qcow2 itself: the new image would be its own backing file" ]
    [ "$(sha256sum <"$d/full.qcow2")" = "$sum" ]
    # It is a file TARGET option.
    run -2 nbdbackup pull --force-break-chain "$src_uri" "$src_uri"
    [[ "$output" == *"--force-break-chain applies only to a file TARGET"* ]]
}

@test "nbdbackup pull --force: dependents found by device and inode" {
    make_disk "$d/disk.img" 4M 22
    start_nbdkit src file "$d/disk.img"
    nbdbackup pull "$src_uri" "$d/full.qcow2"
    # Backing names that are not the target's own name: through a
    # symlink, and an absolute path.
    ln -s full.qcow2 "$d/latest.qcow2"
    nbdbackup pull --backing=latest.qcow2 "$src_uri" "$d/via-link.qcow2"
    nbdbackup pull --backing="$d/full.qcow2" "$src_uri" "$d/absolute.qcow2"
    # The target named by another path to the same file.
    mkdir "$d/sub"
    run -1 nbdbackup pull --force "$src_uri" "$d/sub/../full.qcow2"
    [ "$output" = "nbdbackup: $d/sub/../full.qcow2 is the backing file of absolute.qcow2, via-link.qcow2; replacing it would break them (use --force-break-chain to do it anyway)" ]
    run -0 qemu-img check "$d/via-link.qcow2"
}
