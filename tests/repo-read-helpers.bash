# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Helpers for the suites of the commands that read a repository
# (restore, verify, mount): load after helpers, dirtybitmap-helpers
# and repo-helpers.
#
# make_hand_repo makes a repository with `nbdbackup init` against a
# real server and adds backups to it by hand (add_backup_by_hand): a
# qcow2 file made by qemu-img from a raw image of the disk at "its
# instant" (an overlay holds only what changed), a digest list written
# here from the file format in nbdbackup(1) (an oracle independent of
# the tool's digest code), and a catalog entry added with jq.  So
# these suites test the reading side alone, with known instants.

# le N BYTES: N as BYTES little-endian bytes, as printf escapes.
le () {
    local v="$1" n="$2" i out=""
    for ((i = 0; i < n; i++)); do
        out+="$(printf '\\x%02x' $(( (v >> (8 * i)) & 255 )))"
    done
    printf '%s' "$out"
}

# write_digests RAW CHUNK OUT: the digest list of the raw image RAW.
write_digests () {
    local raw="$1" chunk="$2" out="$3" size n i hex
    size="$(stat -c %s "$raw")"
    n=$(( (size + chunk - 1) / chunk ))
    {
        printf 'NBDBDIG1'
        printf "$(le "$chunk" 4)$(le 0 4)$(le "$size" 8)$(le "$n" 8)"
        for ((i = 0; i < n; i++)); do
            hex="$(dd if="$raw" bs="$chunk" skip="$i" count=1 status=none |
                   sha256sum | cut -c1-64)"
            printf "$(sed 's/../\\x&/g' <<<"$hex")"
        done
    } >"$out"
}

# add_backup_by_hand REPO ID LEVEL PARENT RAW: add backup ID (level
# full, inc or diff; PARENT an id or "") of the disk image RAW.  An
# overlay holds only the clusters that differ from PARENT, with the
# relative backing name PARENT.qcow2.
add_backup_by_hand () {
    local repo="$1" id="$2" level="$3" parent="$4" raw="$5"
    local chunk size digest tmp
    chunk="$(jq -r '."chunk-size"' "$repo/catalog.json")"
    size="$(stat -c %s "$raw")"
    if [ -z "$parent" ]; then
        qemu-img convert -f raw -O qcow2 "$raw" "$repo/$id.qcow2"
    else
        # An empty overlay of RAW, rebased (safe mode) onto the parent:
        # it gets exactly the clusters where RAW and the parent differ.
        qemu-img create -q -f qcow2 -b "$(realpath "$raw")" -F raw \
            "$repo/$id.qcow2"
        (cd "$repo" && qemu-img rebase -f qcow2 -b "$parent.qcow2" \
            -F qcow2 "$id.qcow2")
    fi
    chmod 0600 "$repo/$id.qcow2"
    write_digests "$raw" "$chunk" "$repo/$id.digests"
    digest="$(sha256sum "$repo/$id.digests" | cut -c1-64)"
    tmp="$repo/catalog.json.hand"
    jq --arg id "$id" --arg level "$level" --arg parent "$parent" \
       --argjson size "$size" --arg digest "$digest" '
        .backups += [{
            id: $id, level: $level,
            parent: (if $parent == "" then null else $parent end),
            reason: "made by hand", instant: "2026-12-03T07:45:12.345Z",
            size: $size, bitmap: null,
            file: ($id + ".qcow2"), digests: ($id + ".digests"),
            digest: $digest,
            "bytes-copied": 0, "bytes-zero": 0, "bytes-skipped": 0,
            seconds: 0.5 }]' "$repo/catalog.json" >"$tmp"
    mv "$tmp" "$repo/catalog.json"
}

# write_at FILE OFFSET SEED LEN: LEN bytes of seeded data at OFFSET.
write_at () {
    local f="$1" off="$2" seed="$3" len="$4"
    awk -v seed="$seed" -v len="$len" 'BEGIN {
        srand(seed); for (i = 0; i < len; i++) printf "%c", 33 + int(rand() * 90) }' |
        dd of="$f" bs=4096 seek="$off" oflag=seek_bytes conv=notrunc \
           status=none
}

# flip_byte FILE OFFSET: invert one byte of FILE.
flip_byte () {
    local f="$1" off="$2" b
    b="$(dd if="$f" bs=1 skip="$off" count=1 status=none | od -An -tu1 | tr -d ' ')"
    printf "$(printf '\\x%02x' $(( b ^ 255 )))" |
        dd of="$f" bs=1 seek="$off" count=1 conv=notrunc status=none
}

# data_cluster IMAGE.qcow2 [FROM]: "DISK-OFFSET HOST-OFFSET" of the
# first data cluster the top layer of IMAGE holds at or after the disk
# offset FROM (default 0).
data_cluster () {
    qemu-img map --output=json "$1" |
        jq -r --argjson from "${2:-0}" '[.[] | select(.depth == 0 and .data and
            .start + .length > $from)][0] |
            (if .start >= $from then [.start, .offset]
             else [$from, .offset + ($from - .start)] end) | join(" ")'
}

# sha_files DIR: the sha256 of every file in DIR, sorted.
sha_files () { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }

# make_hand_repo: after repo_setup, a repository $repo of a 4 MiB disk
# with three backups taken by hand, and the disk as it was at each
# instant:
#   $id1 full  $d/t1.img  (make_disk: data runs, holes, a zero run;
#                           and data at 1 MiB and 2 MiB)
#   $id2 inc   $d/t2.img  (t1, 70000 bytes changed at 100000)
#   $id3 inc   $d/t3.img  (t2, 64 KiB changed at 3 MiB, 64 KiB at
#                           2 MiB zeroed)
# The data at 1 MiB is the full's in every backup.  The server is only
# needed for init: it is stopped afterwards.
id1=20261201-010000
id2=20261202-010000
id3=20261203-010000
make_hand_repo () {
    make_disk "$d/t1.img" 4M 3
    write_at "$d/t1.img" 1048576 5 131072
    write_at "$d/t1.img" 2097152 6 65536
    cp --sparse=always "$d/t1.img" "$d/disk.img"
    start_disk
    init_repo
    stop_nbdkit srv
    add_backup_by_hand "$repo" "$id1" full "" "$d/t1.img"
    cp --sparse=always "$d/t1.img" "$d/t2.img"
    write_at "$d/t2.img" 100000 7 70000
    add_backup_by_hand "$repo" "$id2" inc "$id1" "$d/t2.img"
    cp --sparse=always "$d/t2.img" "$d/t3.img"
    write_at "$d/t3.img" 3145728 8 65536
    dd if=/dev/zero of="$d/t3.img" bs=65536 seek=32 count=1 conv=notrunc \
       status=none
    add_backup_by_hand "$repo" "$id3" inc "$id2" "$d/t3.img"
}
