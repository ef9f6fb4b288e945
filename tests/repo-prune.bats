# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup prune --keep-last=N: every kept point in time stays
# restorable and equal to the disk at its instant; a kept backup whose
# parent goes becomes a standalone full backup, checked before it
# replaces anything; an interrupted prune is finished by the next
# command that takes the exclusive lock.

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

# restored_equal ID ORACLE: restore ID to raw and compare.
restored_equal () {
    rm -f "$d/r.img"
    run -0 nbdbackup restore --id="$1" "$repo" "$d/r.img"
    cmp "$d/r.img" "$2"
}

@test "prune: --keep-last=2 folds the oldest kept backup into a full" {
    run -0 nbdbackup prune --keep-last=2 "$repo"
    [ "${lines[0]}" = "backup $id2: now a full backup" ]
    [ "${lines[1]}" = "backup $id1: removed" ]
    [ "${lines[2]}" = "kept the last 2 backups of $repo" ]
    [ ! -e "$repo/$id1.qcow2" ] && [ ! -e "$repo/$id1.digests" ]
    [ -z "$(ls "$repo" | grep '\.new')" ]
    [ "$(jq -r '[.backups[].id] | join(" ")' "$repo/catalog.json")" = "$id2 $id3" ]
    [ "$(entry "$id2" level)" = full ] && [ "$(entry "$id2" parent)" = null ]
    [ "$(entry "$id3" parent)" = "$id2" ]
    [ "$(jq -r .pending "$repo/catalog.json")" = null ]
    # Standalone, and qemu-img alone still reads the chain.
    run -0 qemu-img info --output=json "$repo/$id2.qcow2"
    [ "$(jq -r '."backing-filename" // "none"' <<<"$output")" = none ]
    run -0 qemu-img check "$repo/$id2.qcow2"
    qemu-img compare -f qcow2 -F raw "$repo/$id2.qcow2" "$d/t2.img"
    qemu-img compare -f qcow2 -F raw "$repo/$id3.qcow2" "$d/t3.img"
    restored_equal "$id2" "$d/t2.img"
    restored_equal "$id3" "$d/t3.img"
    run -0 nbdbackup verify "$repo"
    [ "${lines[-1]}" = "verified 2 backups, 8388608 bytes (8.0 MiB), no errors" ]
}

@test "prune: --keep-last=1, and nothing to do" {
    run -0 nbdbackup prune --keep-last=1 "$repo"
    [ "$(jq -r '[.backups[] | "\(.id):\(.level)"] | join(" ")' "$repo/catalog.json")" = "$id3:full" ]
    [ "$(ls "$repo" | grep -c qcow2)" = 1 ]
    restored_equal "$id3" "$d/t3.img"
    run -0 nbdbackup verify "$repo"
    run -0 nbdbackup prune --keep-last=1 "$repo"
    [ "$output" = "nothing to prune: 1 backup, keeping the last 1" ]
}

@test "prune: a damaged chunk stops it and changes nothing" {
    local disk host
    read -r disk host < <(data_cluster "$repo/$id1.qcow2" 1048576)
    flip_byte "$repo/$id1.qcow2" $((host + 7))
    sha_files "$repo" >"$d/before"
    run -1 nbdbackup prune --keep-last=2 "$repo"
    [[ "$output" == *"backup $id2: offset 1048576: data differs from the recorded digest"* ]]
    [[ "$output" == *"prune stopped: the repository is as it was"* ]]
    sha_files "$repo" >"$d/after"
    diff "$d/before" "$d/after"
}

@test "prune: an interrupted prune is finished by the next locked command" {
    local tmp="$repo/catalog.json.hand"
    # The state a prune leaves when killed after recording itself: the
    # checked standalone copy beside the backup, and pending.
    run -0 nbdbackup restore --id="$id2" --format=qcow2 "$repo" "$d/standalone"
    mv "$d/standalone" "$repo/$id2.qcow2.new"
    jq --arg f "$id2" --arg x "$id1" '.pending = {op: "prune", fold: [$f], drop: [$x]}' \
        "$repo/catalog.json" >"$tmp"
    mv "$tmp" "$repo/catalog.json"
    # Readers refuse: the files may be half renamed.
    run -1 nbdbackup verify "$repo"
    [[ "$output" == *"repository $repo: a prune was interrupted and its files may be half renamed: run 'nbdbackup prune'"* ]]
    run -1 nbdbackup restore "$repo" "$d/out.img"
    [[ "$output" == *"a prune was interrupted"* ]]
    # Killed half way through the renames: the new file already moved.
    mv "$repo/$id2.qcow2.new" "$repo/$id2.qcow2"
    run -0 nbdbackup prune --keep-last=5 "$repo"
    [[ "$output" == *"nbdbackup prune: finished the interrupted prune of $repo"* ]]
    [[ "$output" == *"nothing to prune: 2 backups, keeping the last 5"* ]]
    [ ! -e "$repo/$id1.qcow2" ]
    [ "$(entry "$id2" level)" = full ]
    run -0 nbdbackup verify "$repo"
    restored_equal "$id2" "$d/t2.img"
    restored_equal "$id3" "$d/t3.img"
}

@test "prune: refused while the repository is mounted; bad arguments" {
    local msock
    msock="$(new_socket)"
    run -5 nbdbackup mount --run 'nbdbackup prune --keep-last=1 "'"$repo"'"; exit $?' \
        "$repo" "$msock"
    [[ "$output" == *"repository $repo is busy"* ]]
    [ "$(jq '.backups | length' "$repo/catalog.json")" = 3 ]
    run -2 nbdbackup prune "$repo"
    [[ "$output" == *"missing --keep-last=N"* ]]
    run -2 nbdbackup prune --keep-last=0 "$repo"
    [[ "$output" == *"--keep-last: expected an integer from 1 to 1000000, got '0'"* ]]
}
