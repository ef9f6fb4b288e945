# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup mount: a point in time served over NBD equals the disk at
# its instant; --writable writes never touch the repository; the
# shared lock is held while it serves.

load helpers
load dirtybitmap-helpers
load repo-helpers
load repo-read-helpers

setup () {
    repo_setup
    make_hand_repo
    msock="$(new_socket)"
    mpid=""
    # The private directories mount makes (and must remove) go here.
    export TMPDIR="$d/tmp"
    mkdir "$TMPDIR"
}

teardown () {
    [ -z "$mpid" ] || kill "$mpid" 2>/dev/null || :
    rm -f "$msock"
    repo_teardown
}

# start_mount ARGS...: nbdbackup mount ARGS in the background, until
# its --pidfile says it serves.  Sets mpid.
start_mount () {
    nbdbackup mount --pidfile="$d/mount.pid" "$@" 2>"$d/mount.err" 3>&- &
    mpid=$!
    wait_for "nbdbackup mount serving" \
        "[ -s '$d/mount.pid' ] || ! kill -0 $mpid 2>/dev/null"
    [ -s "$d/mount.pid" ] || { cat "$d/mount.err"; return 1; }
    [ "$(cat "$d/mount.pid")" = "$mpid" ]
}

# stop_mount: SIGTERM by its pid; it exits 0 and cleans up.
stop_mount () {
    local st=0
    kill "$(cat "$d/mount.pid")"
    wait "$mpid" || st=$?
    mpid=""
    [ "$st" = 0 ]
    [ ! -e "$d/mount.pid" ] && [ ! -e "$msock" ]
    [ -z "$(ls -A "$TMPDIR")" ]
}

@test "mount: serves the newest point read-only until SIGTERM" {
    start_mount "$repo" "$msock"
    [[ "$(cat "$d/mount.err")" == *"serving backup $id3 (read-only) on nbd+unix:///?socket=$msock"* ]]
    nbdcopy "nbd+unix:///?socket=$msock" "$d/m.img"
    cmp "$d/m.img" "$d/t3.img"
    run ! qemu-io -f raw -c "write 0 4096" "nbd+unix:///?socket=$msock"
    # The shared lock: a command that writes the repository is refused.
    run -1 flock -n -x "$repo/lock" true
    stop_mount
    flock -n -x "$repo/lock" true
}

@test "mount: Ctrl-C (SIGINT to its process group) ends it cleanly" {
    local st=0
    setsid nbdbackup mount --pidfile="$d/mount.pid" "$repo" "$msock" \
        2>"$d/mount.err" 3>&- &
    mpid=$!
    wait_for "nbdbackup mount serving" "[ -s '$d/mount.pid' ]"
    # As a terminal does: the whole foreground process group.
    kill -INT -- "-$mpid"
    wait "$mpid" || st=$?
    mpid=""
    cat "$d/mount.err"
    [ "$st" = 0 ]
    [ "$(grep -c . "$d/mount.err")" = 1 ]     # only "serving ..."
    [ ! -e "$msock" ] && [ -z "$(ls -A "$TMPDIR")" ]
}

@test "mount: --run with \$uri, its exit status, an older point" {
    run -7 nbdbackup mount --id="$id1" \
        --run 'nbdcopy "$uri" "'"$d/m1.img"'" && test -S "$unixsocket" && exit 7' \
        "$repo" "$msock"
    cmp "$d/m1.img" "$d/t1.img"
    [ ! -e "$msock" ]
    [ -z "$(ls -A "$TMPDIR")" ]
}

@test "mount: --writable never touches the repository" {
    sha_files "$repo" >"$d/before"
    start_mount --writable --id="$id2" "$repo" "$msock"
    io "nbd+unix:///?socket=$msock" "write -P 0x55 0 1M" "write -z 2M 64k"
    cp "$d/t2.img" "$d/expect.img"
    printf '\x55%.0s' $(seq 1048576) |
        dd of="$d/expect.img" conv=notrunc status=none
    dd if=/dev/zero of="$d/expect.img" bs=65536 seek=32 count=1 \
       conv=notrunc status=none
    nbdcopy "nbd+unix:///?socket=$msock" "$d/m.img"
    cmp "$d/m.img" "$d/expect.img"
    stop_mount                  # and the throwaway overlay is gone
    sha_files "$repo" >"$d/after"
    diff "$d/before" "$d/after"
    run -0 nbdbackup verify "$repo"
}

@test "mount: --overlay=FILE is kept, a qcow2 overlay of the backup" {
    sha_files "$repo" >"$d/before"
    run -0 nbdbackup mount --writable --overlay="$d/ov.qcow2" \
        --run 'qemu-io -f raw -c "write -P 0x33 65536 65536" "$uri"' \
        "$repo" "$msock"
    sha_files "$repo" >"$d/after"
    diff "$d/before" "$d/after"
    run -0 qemu-img check "$d/ov.qcow2"
    run -0 qemu-img info --output=json "$d/ov.qcow2"
    [ "$(jq -r '."backing-filename"' <<<"$output")" = "$(realpath "$repo")/$id3.qcow2" ]
    cp "$d/t3.img" "$d/expect.img"
    printf '\x33%.0s' $(seq 65536) |
        dd of="$d/expect.img" bs=65536 seek=1 conv=notrunc status=none
    qemu-img compare -f qcow2 -F raw "$d/ov.qcow2" "$d/expect.img"
    [ "$(stat -c %a "$d/ov.qcow2")" = 600 ]
}

@test "mount: bad arguments and hostile paths are refused" {
    run -2 nbdbackup mount "$repo"
    [[ "$output" == *"missing SOCKET"* ]]
    run -2 nbdbackup mount --overlay="$d/ov.qcow2" "$repo" "$msock"
    [[ "$output" == *"--overlay needs --writable"* ]]
    touch "$d/exists"
    run -1 nbdbackup mount "$repo" "$d/exists"
    [[ "$output" == *"SOCKET $d/exists: already exists (a regular file)"* ]]
    run -1 nbdbackup mount --writable --overlay="$repo/ov.qcow2" "$repo" "$msock"
    [[ "$output" == *"--overlay $repo/ov.qcow2: is in the repository $repo, which mount never writes"* ]]
    [ ! -e "$repo/ov.qcow2" ]
    ln -s "$d/elsewhere" "$d/link.qcow2"
    run -1 nbdbackup mount --writable --overlay="$d/link.qcow2" "$repo" "$msock"
    [[ "$output" == *"--overlay $d/link.qcow2: already exists (a symbolic link)"* ]]
    [ ! -e "$d/elsewhere" ]
    run -1 nbdbackup mount --id=nope "$repo" "$msock"
    [[ "$output" == *"repository $repo has no backup 'nope'"* ]]
    # A symlinked backup file is refused as by verify.
    mv "$repo/$id3.qcow2" "$d/moved.qcow2"
    ln -s "$d/moved.qcow2" "$repo/$id3.qcow2"
    run -1 nbdbackup mount "$repo" "$msock"
    [[ "$output" == *"backup $repo/$id3.qcow2: is a symbolic link, not a regular file"* ]]
    [ ! -e "$msock" ]
    [ -z "$(ls -A "$TMPDIR")" ]
}
