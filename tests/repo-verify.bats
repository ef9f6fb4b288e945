# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup verify: a single flipped byte anywhere in a repository
# (a data cluster, a digest list, the catalog) is found and reported
# with the backup ids and the offset; hostile files are refused.

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

@test "verify: a sound repository" {
    run -0 nbdbackup verify "$repo"
    [ "${lines[0]}" = "backup $id1 (full): ok" ]
    [ "${lines[1]}" = "backup $id2 (inc): ok" ]
    [ "${lines[2]}" = "backup $id3 (inc): ok" ]
    [ "${lines[3]}" = "verified 3 backups, 12582912 bytes (12.0 MiB), no errors" ]
    run -0 nbdbackup verify --json "$repo"
    [ "$(jq -r .result <<<"$output")" = ok ]
    [ "$(jq -r '[.backups[].result] | join(" ")' <<<"$output")" = "ok ok ok" ]
    run -0 nbdbackup verify --id="$id2" "$repo"
    [ "${lines[1]}" = "verified 1 backup, 4194304 bytes (4.0 MiB), no errors" ]
}

@test "verify: a flipped byte in a full's data names every backup on it" {
    local disk host
    read -r disk host < <(data_cluster "$repo/$id1.qcow2" 1048576)
    [ "$disk" = 1048576 ]
    flip_byte "$repo/$id1.qcow2" $((host + 4097))
    run -1 nbdbackup verify "$repo"
    [[ "$output" == *"backup $id1: offset 1048576: data differs from the recorded digest"* ]]
    [[ "$output" == *"backup $id2: offset 1048576: data differs from the recorded digest"* ]]
    [[ "$output" == *"backup $id3: offset 1048576: data differs from the recorded digest"* ]]
    [ "$(grep -c "data differs" <<<"$output")" = 3 ]
    [[ "$output" == *"3 of 3 backups have errors"* ]]
    run -1 --separate-stderr nbdbackup verify --json "$repo"
    [ "$(jq -r '[.backups[] | "\(.result):\(.mismatch_offsets | join(","))"] | join(" ")' \
         <<<"$output")" = "error:1048576 error:1048576 error:1048576" ]
}

@test "verify: the first 10 mismatches of a backup are named, the rest counted" {
    local disk host n=0
    # One byte in each of the first 12 data clusters of the full.
    while read -r disk host; do
        flip_byte "$repo/$id1.qcow2" "$host"
        n=$((n + 1))
    done < <(qemu-img map --output=json "$repo/$id1.qcow2" |
             jq -r '.[] | select(.data) | range(.start; .start + .length; 65536) as $o |
                    "\($o) \(.offset + $o - .start)"' | head -12)
    [ "$n" = 12 ]
    run -1 nbdbackup verify --id="$id1" "$repo"
    [ "$(grep -c "backup $id1: offset [0-9]*: data differs" <<<"$output")" = 10 ]
    [[ "$output" == *"backup $id1: 2 more chunks differ from the recorded digests"* ]]
    run -1 --separate-stderr nbdbackup verify --json --id="$id1" "$repo"
    [ "$(jq -r '.backups[0] | "\(.mismatches) \(.mismatch_offsets | length)"' <<<"$output")" = "12 10" ]
}

@test "verify: damage in several requests at once is each reported once, at its offset" {
    # The chunks are hashed on worker threads: one flipped byte in
    # the first data cluster of the full in each MiB (each a request
    # of its own) must come back as exactly those offsets.
    local from disk host want=()
    for from in 0 1048576 2097152; do
        read -r disk host < <(data_cluster "$repo/$id1.qcow2" "$from")
        [ "$disk" -lt $((from + 1048576)) ]
        flip_byte "$repo/$id1.qcow2" $((host + 1))
        want+=($((disk / 65536 * 65536)))
    done
    [ "${#want[@]}" = 3 ]
    run -1 --separate-stderr nbdbackup verify --json --id="$id1" "$repo"
    [ "$(jq -r '.backups[0] | "\(.result) \(.mismatches)"' <<<"$output")" = "error ${#want[@]}" ]
    [ "$(jq -r '.backups[0].mismatch_offsets | sort | join(" ")' <<<"$output")" = "${want[*]}" ]
    run -1 nbdbackup verify --id="$id1" "$repo"
    for disk in "${want[@]}"; do
        [ "$(grep -c "backup $id1: offset $disk: data differs from the recorded digest" <<<"$output")" = 1 ]
    done
}

@test "verify: a flipped byte in an incremental names only it" {
    local disk host
    read -r disk host < <(data_cluster "$repo/$id3.qcow2" 3145728)
    [ "$disk" = 3145728 ]
    flip_byte "$repo/$id3.qcow2" "$host"
    run -1 nbdbackup verify "$repo"
    [ "$(grep -c "data differs" <<<"$output")" = 1 ]
    [[ "$output" == *"backup $id3: offset 3145728: data differs from the recorded digest"* ]]
    [[ "$output" == *"backup $id2 (inc): ok"* ]]
    [[ "$output" == *"1 of 3 backups has errors"* ]]
}

@test "verify: a flipped byte in a digest list" {
    flip_byte "$repo/$id2.digests" 100
    run -1 nbdbackup verify "$repo"
    [[ "$output" == *"digest list $repo/$id2.digests"* ]]
    [[ "$output" == *"backup $id2: its digest list is damaged"* ]]
    [[ "$output" == *"backup $id1 (full): ok"* ]]
    [[ "$output" == *"backup $id3 (inc): ok"* ]]
}

@test "verify: a flipped byte in the catalog" {
    local want pos tmp="$repo/catalog.json.hand"
    want="$(entry "$id3" digest)"
    pos="$(grep -b -o "\"digest\": \"$want" "$repo/catalog.json" | cut -d: -f1)"
    cp "$repo/catalog.json" "$d/catalog.orig"
    # Inverted: no longer a digest at all.
    flip_byte "$repo/catalog.json" $((pos + 11))
    run -1 nbdbackup verify "$repo"
    [[ "$output" == *"$repo/catalog.json: backups[2]: \"digest\" must be 64 lower-case hex digits"* ]]
    # One hex digit for another: the list no longer matches it.
    jq --arg id "$id3" --arg v "$( [ "${want:0:1}" = 0 ] && echo 1 || echo 0)${want:1}" \
        '(.backups[] | select(.id == $id) | .digest) = $v' "$d/catalog.orig" >"$tmp"
    mv "$tmp" "$repo/catalog.json"
    run -1 nbdbackup verify "$repo"
    [[ "$output" == *"backup $id3: its digest list is damaged"* ]]
    [[ "$output" == *"1 of 3 backups has errors"* ]]
    # A byte that breaks the JSON itself: nothing is trusted.
    flip_byte "$repo/catalog.json" 0
    run -1 nbdbackup verify "$repo"
    [[ "$output" == *"$repo/catalog.json: not valid JSON"* ]]
}

@test "verify: a backing file that is not the recorded parent" {
    (cd "$repo" && qemu-img rebase -u -f qcow2 -b "$id1.qcow2" -F qcow2 "$id3.qcow2")
    run -1 nbdbackup verify --id="$id3" "$repo"
    [[ "$output" == *"backup $id3: $repo/$id3.qcow2 names backing file '$id1.qcow2', but its parent $id2 is '$id2.qcow2'"* ]]
}

@test "verify, restore: a symlinked backup file is refused" {
    mv "$repo/$id1.qcow2" "$d/elsewhere.qcow2"
    ln -s "$d/elsewhere.qcow2" "$repo/$id1.qcow2"
    run -1 nbdbackup verify "$repo"
    [[ "$output" == *"backup $repo/$id1.qcow2: is a symbolic link, not a regular file"* ]]
    [[ "$output" == *"3 of 3 backups have errors"* ]]
    run -1 nbdbackup restore "$repo" "$d/out.img"
    [[ "$output" == *"is a symbolic link"* ]]
    [ ! -e "$d/out.img" ] && [ ! -e "$d/out.img.incomplete" ]
}

@test "verify, restore: a FIFO is refused without blocking" {
    rm "$repo/$id2.qcow2"
    mkfifo "$repo/$id2.qcow2"
    run -1 timeout 60 nbdbackup verify --id="$id3" "$repo"
    [[ "$output" == *"backup $repo/$id2.qcow2: is a FIFO, not a regular file"* ]]
    rm "$repo/$id3.digests"
    mkfifo "$repo/$id3.digests"
    run -1 timeout 60 nbdbackup restore --id="$id3" "$repo" "$d/out.img"
    [[ "$output" == *"FIFO"* ]]
}

@test "verify: a catalog naming a file outside the repository is refused" {
    local tmp="$repo/catalog.json.hand"
    jq --arg id "$id1" '(.backups[] | select(.id == $id) | .file) = "../x.qcow2"' \
        "$repo/catalog.json" >"$tmp"
    mv "$tmp" "$repo/catalog.json"
    cp "$repo/$id1.qcow2" "$d/x.qcow2"
    run -1 nbdbackup verify "$repo"
    [[ "$output" == *"$repo/catalog.json"*"../x.qcow2"* ]]
    run -1 nbdbackup restore "$repo" "$d/out.img"
    [[ "$output" == *"../x.qcow2"* ]]
    [ ! -e "$d/out.img" ]
}

@test "verify: bad arguments are refused with a message" {
    run -2 nbdbackup verify
    [[ "$output" == *"missing REPO"* ]]
    run -2 nbdbackup verify "$repo" extra
    [[ "$output" == *"unexpected argument 'extra' after REPO"* ]]
    run -1 nbdbackup verify --id=nope "$repo"
    [[ "$output" == *"repository $repo has no backup 'nope'"* ]]
}
