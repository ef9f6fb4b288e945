# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup restore: every point in time of a repository, to a raw
# file, a new qcow2 image and an NBD URI, equal to the disk at its
# instant; sparse; digests checked as it writes.

load helpers
load dirtybitmap-helpers
load repo-helpers
load repo-read-helpers

setup () {
    repo_setup
    make_hand_repo
}

teardown () {
    repo_teardown
}

@test "restore: the newest backup to a raw file, sparse" {
    run -0 nbdbackup restore "$d/repo" "$d/out.img"
    cmp "$d/out.img" "$d/t3.img"
    [ ! -e "$d/out.img.incomplete" ]
    # Holes stay holes, and zero data is not written either: no more
    # allocated than the disk itself (which has an allocated zero run).
    [ "$(allocated_bytes "$d/out.img")" -lt "$(allocated_bytes "$d/t3.img")" ]
    [ "$(stat -c %a "$d/out.img")" = 600 ]
}

@test "restore: every point in time, raw and qcow2" {
    # (Not "i": bats' run uses that name.)
    local k b
    for k in 1 2 3; do
        b="id$k"; b="${!b}"
        run -0 nbdbackup restore --id="$b" "$d/repo" "$d/r$k.img"
        cmp "$d/r$k.img" "$d/t$k.img"
        run -0 nbdbackup restore --id="$b" "$d/repo" "$d/r$k.qcow2"
        run -0 qemu-img check "$d/r$k.qcow2"
        qemu-img compare -f qcow2 -F raw "$d/r$k.qcow2" "$d/t$k.img"
        # A standalone image.
        run -0 qemu-img info --output=json "$d/r$k.qcow2"
        [ "$(jq -r '."backing-filename" // "none"' <<<"$output")" = none ]
    done
}

@test "restore: to an NBD URI" {
    start_nbdkit dst -t 1 memory 4M
    run -0 nbdbackup restore --id="$id2" "$d/repo" "$dst_uri"
    nbdcopy "$dst_uri" "$d/back.img"
    cmp "$d/back.img" "$d/t2.img"
}

@test "restore: SIGTERM stops it cleanly, and its server with it" {
    local pausesock st=0
    export TMPDIR="$d/tmp"
    mkdir "$TMPDIR"
    # The target holds every write: the restore cannot finish.
    pausesock="$(new_socket)"
    start_nbdkit dst -t 1 --filter=pause memory 4M pause-control="$pausesock"
    pause_ctl "$pausesock" p
    nbdbackup restore --json "$repo" "$dst_uri" >"$d/json" 2>"$d/err" 3>&- &
    local pid=$!
    # Connected to the target: the copy is under way.
    wait_for "the restore connected to its target" \
        "grep -aq 'handshake complete' '$BATS_TEST_TMPDIR/dst.log'"
    kill -TERM "$pid"
    pause_ctl "$pausesock" r
    wait "$pid" || st=$?
    cat "$d/err"
    [ "$st" = 143 ]
    grep -q 'interrupted by signal 15' "$d/err"
    [ "$(jq -r .result "$d/json")" = error ]
    # The server it started is gone, with its private directory; the
    # target's server was hung up on politely and still serves.
    [ -z "$(ls -A "$TMPDIR")" ]
    ! grep -aq 'Broken pipe\|Connection reset\|Assertion' "$BATS_TEST_TMPDIR/dst.log"
    run -0 nbdinfo --size "$dst_uri"
}

@test "restore: --json summary" {
    run -0 nbdbackup restore --json --id="$id1" "$d/repo" "$d/out.img"
    [ "$(jq -r .result <<<"$output")" = ok ]
    [ "$(jq -r .id <<<"$output")" = "$id1" ]
    [ "$(jq -r .bytes_total <<<"$output")" = 4194304 ]
    [ "$(jq -r .bytes_verified <<<"$output")" = 4194304 ]
    [ "$(jq -r .verified <<<"$output")" = true ]
    [ "$(jq -r .mismatches <<<"$output")" = 0 ]
}

@test "restore: refuses to replace a file without --force" {
    echo old >"$d/out.img"
    run -1 nbdbackup restore "$d/repo" "$d/out.img"
    [[ "$output" == *"target: $d/out.img: already exists (use --force to replace it)"* ]]
    [ "$(cat "$d/out.img")" = old ]
    run -0 nbdbackup restore --force "$d/repo" "$d/out.img"
    cmp "$d/out.img" "$d/t3.img"
}

@test "restore: a damaged chunk fails it and leaves the target incomplete" {
    local disk host
    read -r disk host < <(data_cluster "$d/repo/$id1.qcow2" 1048576)
    [ "$disk" = 1048576 ]
    flip_byte "$d/repo/$id1.qcow2" $((host + 100))
    run -1 nbdbackup restore --id="$id2" "$d/repo" "$d/out.img"
    [[ "$output" == *"backup $id2: offset 1048576: data differs from the recorded digest"* ]]
    [[ "$output" == *"target $d/out.img: not restored; $d/out.img.incomplete is left as it is"* ]]
    [ ! -e "$d/out.img" ]
    [ -f "$d/out.img.incomplete" ]
    # Nothing of the damaged request (the MiB at 1 MiB) was written,
    # though the workers write the others.
    run -0 cmp -n 131072 -i 1048576:0 "$d/out.img.incomplete" /dev/zero
    # --no-verify restores what the chain holds, damage and all.
    run -0 nbdbackup restore --no-verify --id="$id2" "$d/repo" "$d/nv.img"
    run ! cmp "$d/nv.img" "$d/t2.img"
}

@test "restore: bad arguments are refused with a message" {
    run -2 nbdbackup restore "$d/repo"
    [[ "$output" == *"missing TARGET"* ]]
    run -2 nbdbackup restore --format=qcow2 "$d/repo" "nbd+unix:///?socket=/nope"
    [[ "$output" == *"--format applies only to a file TARGET"* ]]
    run -2 nbdbackup restore --format=vmdk "$d/repo" "$d/x"
    [[ "$output" == *"--format: expected raw or qcow2, got 'vmdk'"* ]]
    run -1 nbdbackup restore --id=20200101-000000 "$d/repo" "$d/x.img"
    [[ "$output" == *"repository $d/repo has no backup '20200101-000000'"* ]]
    [ ! -e "$d/x.img" ] && [ ! -e "$d/x.img.incomplete" ]
    run -1 nbdbackup restore "$d/nonexistent" "$d/x.img"
    [ ! -e "$d/x.img" ]
}
