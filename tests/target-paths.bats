#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Hostile paths at a target, a status file and a fleece store: a
# planted symlink is never followed, a FIFO never blocked on, a
# directory never taken for a file; each is refused by name, and what
# the suite creates is mode 0600.  Every nbdkit run has a timeout: a
# hang is a failure, not a stuck suite.

load helpers

setup () {
    cbw="$(filter_path cbw)"
    fleece="$(filter_path fleece)"
    d="$BATS_TEST_TMPDIR"
    make_disk "$d/disk.img" 4M 3
    printf 'victim data\n' > "$d/victim"
    cp "$d/victim" "$d/victim.orig"
}

# cbw_run ARGS...: a captive cbw backup of disk.img, at most 60 s.
cbw_run () {
    timeout 60 nbdkit -U - --filter="$cbw" file "$d/disk.img" "$@" --run true
}

@test "target paths: cbw does not follow a leftover TARGET.incomplete symlink" {
    for t in b.img b.qcow2; do
        ln -s "$d/victim" "$d/$t.incomplete"
        run -0 cbw_run cbw-target="$d/$t"
        cmp "$d/victim" "$d/victim.orig"
        [ ! -L "$d/$t" ] && [ -f "$d/$t" ] && [ ! -e "$d/$t.incomplete" ]
        [ "$(stat -c %a "$d/$t")" = 600 ]
    done
    cmp "$d/b.img" "$d/disk.img"
    qemu-img compare -f raw -F qcow2 "$d/disk.img" "$d/b.qcow2"
}

@test "target paths: nbdbackup pull does not follow a leftover symlink, makes 0600" {
    start_nbdkit src file "$d/disk.img" --readonly
    for t in p.img p.qcow2; do
        ln -s "$d/victim" "$d/$t.incomplete"
        run -0 nbdbackup pull "$src_uri" "$d/$t"
        cmp "$d/victim" "$d/victim.orig"
        [ -f "$d/$t" ] && [ ! -L "$d/$t" ] && [ ! -e "$d/$t.incomplete" ]
        [ "$(stat -c %a "$d/$t")" = 600 ]
    done
    cmp "$d/p.img" "$d/disk.img"
}

@test "target paths: a cbw target that is a symlink, FIFO or directory is refused" {
    ln -s "$d/victim" "$d/link.img"
    run ! cbw_run cbw-target="$d/link.img"
    [[ "$output" == *"cbw-target: $d/link.img: is a symbolic link, not a regular file or block device"* ]]
    cmp "$d/victim" "$d/victim.orig"
    [ -L "$d/link.img" ] && [ ! -e "$d/link.img.incomplete" ]

    mkfifo "$d/fifo.img"
    run ! cbw_run cbw-target="$d/fifo.img"
    [[ "$output" == *"cbw-target: $d/fifo.img: is a FIFO, not a regular file or block device"* ]]

    mkdir "$d/dir.img"
    run ! cbw_run cbw-target="$d/dir.img"
    [[ "$output" == *"cbw-target: $d/dir.img: is a directory, not a regular file or block device"* ]]
}

@test "target paths: a symlink target given to backup-start is refused" {
    ln -s "$d/victim" "$d/link.img"
    ctlsock="$(new_socket)"
    start_nbdkit srv --filter="$cbw" file "$d/disk.img" cbw-control="$ctlsock"
    ctl_connect C "$ctlsock"
    run -0 ctl C '{"execute":"backup-start","arguments":{"target":"'"$d/link.img"'"}}'
    [[ "$output" == *"target: $d/link.img: is a symbolic link, not a regular file or block device"* ]]
    ctl_close C
    cmp "$d/victim" "$d/victim.orig"
}

@test "target paths: nbdbackup pull refuses a symlink or FIFO TARGET, even with --force" {
    start_nbdkit src file "$d/disk.img" --readonly
    ln -s "$d/victim" "$d/link.img"
    run -1 timeout 60 nbdbackup pull --force "$src_uri" "$d/link.img"
    [[ "$output" == *"target: $d/link.img: is a symbolic link, not a regular file or block device"* ]]
    cmp "$d/victim" "$d/victim.orig"
    mkfifo "$d/fifo.img"
    run -1 timeout 60 nbdbackup pull --force "$src_uri" "$d/fifo.img"
    [[ "$output" == *"target: $d/fifo.img: is a FIFO, not a regular file or block device"* ]]
}

@test "target paths: the cbw status file is 0600; a FIFO or symlink there is refused" {
    run -0 cbw_run cbw-target="$d/b.img" cbw-status="$d/status.json"
    [ "$(stat -c %a "$d/status.json")" = 600 ]
    grep -q '"state":"completed"' "$d/status.json"

    mkfifo "$d/fifo.json"
    run ! cbw_run cbw-target="$d/c.img" cbw-status="$d/fifo.json"
    [[ "$output" == *"status file $d/fifo.json: is a FIFO, not a regular file"* ]]
    [ -p "$d/fifo.json" ]

    ln -s "$d/victim" "$d/link.json"
    run ! cbw_run cbw-target="$d/c.img" cbw-status="$d/link.json"
    [[ "$output" == *"status file $d/link.json: is a symbolic link, not a regular file"* ]]
    cmp "$d/victim" "$d/victim.orig"
}

@test "target paths: a fleece store path that is a FIFO or symlink is refused" {
    mkfifo "$d/store.fifo"
    run ! timeout 60 nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-store="$d/store.fifo" --run true
    [[ "$output" == *"fleece-store: $d/store.fifo: is a FIFO, not a regular file or directory"* ]]

    ln -s "$d/victim" "$d/store.link"
    run ! timeout 60 nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-store="$d/store.link" --run true
    [[ "$output" == *"fleece-store: $d/store.link: is a symbolic link, not a regular file or directory"* ]]
    cmp "$d/victim" "$d/victim.orig"

    # A file path is created 0600 (and removed at the end).  With
    # --run, nbdkit 1.32 starts the command before .after_fork makes
    # the store: a first request waits for the server to be ready.
    run -0 timeout 60 nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-store="$d/store.file" \
        --run 'nbdinfo --size "$uri" >/dev/null &&
               stat -c %a '"$d/store.file"' > '"$d/mode"
    [ "$(cat "$d/mode")" = 600 ]
}

# A loop device over a file in the test's directory, or skip.
loop_device () {
    [ "$(id -u)" = 0 ] || skip "needs root for a loop device"
    command -v losetup >/dev/null || skip "no losetup"
    truncate -s "$2" "$1"
    loopdev="$(losetup -f --show "$1" 2>/dev/null)" || skip "no loop device"
    echo "$loopdev" >> "$d/loopdevs"
}

teardown () {
    stop_all_nbdkit
    if [ -f "$d/loopdevs" ]; then
        while read -r dev; do losetup -d "$dev" || :; done < "$d/loopdevs"
    fi
}

@test "target paths: a block device target is written in place, on purpose" {
    loop_device "$d/backing.img" 4M
    run -0 cbw_run cbw-target="$loopdev"
    [ -b "$loopdev" ] && [ ! -e "$loopdev.incomplete" ]
    cmp "$d/backing.img" "$d/disk.img"
    run ! cbw_run cbw-target="$loopdev" cbw-target-format=qcow2
    [[ "$output" == *"cbw-target: $loopdev is a block device: only a raw target may be one"* ]]

    truncate -s 0 "$d/backing.img"; truncate -s 4M "$d/backing.img"
    losetup -c "$loopdev"
    start_nbdkit src file "$d/disk.img" --readonly
    run -1 nbdbackup pull "$src_uri" "$loopdev"
    [[ "$output" == *"already exists (use --force to replace it)"* ]]
    run -0 nbdbackup pull --force "$src_uri" "$loopdev"
    [ -b "$loopdev" ] && [ ! -e "$loopdev.incomplete" ]
    cmp "$d/backing.img" "$d/disk.img"
}
