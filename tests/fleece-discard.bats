#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# fleece-discard-source: a snapshot reader trims what it has read
# (QEMU's discard-source); nbdbackup pull --discard-source does so
# behind its copy.  The copy stays exact, the store's space is given
# back, and nothing that is not such a snapshot is ever trimmed.

load helpers

setup () {
    requires nbdbackup qemu-io jq
    fleece="$(filter_path fleece)"
    d="$BATS_TEST_TMPDIR"
}

teardown () { stop_all_nbdkit; }

# snap_field NAME: the snapshot's NAME in query-status of server srv.
snap_field () {
    nbdbackup status --json "$ctl" | jq -r ".snapshots[0].\"$1\""
}

@test "fleece: without fleece-discard-source the snapshot stays read-only" {
    truncate -s 1M "$d/disk.img"
    run -0 nbdkit -U - --filter="$fleece" file "$d/disk.img" --run '
        nbdinfo "nbd+unix:///snapshot?socket=$unixsocket"'
    [[ "$output" == *"is_read_only: true"* ]]
    [[ "$output" == *"can_trim: false"* ]]
    run ! nbdkit -U - --filter="$fleece" file "$d/disk.img" --run '
        qemu-io -r -f raw "nbd+unix:///snapshot?socket=$unixsocket" \
            -c "discard 0 64k"'
    [[ "$output" == *"qemu-io: Block node is read-only"* ]]
}

@test "fleece: trim frees the store, later writes copy nothing, reads fail" {
    # 4M and 12K (the last cluster is short) of bytes 0xaa.
    size=$((4 * 1048576 + 12288))
    truncate -s "$size" "$d/disk.img"
    qemu-io -f raw "$d/disk.img" -c "write -P 170 0 $size" >/dev/null
    ctl="$(new_socket)"
    start_nbdkit srv --filter="$fleece" file "$d/disk.img" \
        fleece-discard-source=true fleece-store="$d/store" \
        fleece-store-limit=1100K fleece-control="$ctl"
    snap="nbd+unix:///snapshot?socket=$srv_sock"
    run -0 nbdinfo "$snap"
    [[ "$output" == *"is_read_only: false"* ]]
    [[ "$output" == *"can_trim: true"* ]]
    [[ "$output" == *"block_size_preferred: 65536"* ]]
    [ "$(snap_field discard-source)" = true ]

    # 768K of old data into the store.
    qemu-io -f raw "$srv_uri" -c "write -P 1 0 768k" >/dev/null
    [ "$(snap_field store-used)" = 786432 ]
    [ "$(data_bytes "$d/store")" -ge 786432 ]

    # Discard 64K..512K+100: clusters 1 to 7 go; 0 and 8 are partly
    # covered and stay.
    qemu-io -f raw "$snap" -c "discard 64k 458852" >/dev/null
    [ "$(snap_field bytes-discarded)" = 458752 ]
    [ "$(snap_field store-used)" = 327680 ]
    [ "$(data_bytes "$d/store")" -le 327680 ]
    [ "$(snap_field store-peak)" = 786432 ]

    # Discarded clusters are read no more; the others still are.
    run -1 qemu-io -f raw "$snap" -c "read 60k 8k"
    [[ "$output" == *"read failed: Operation not permitted"* ]]
    grep -q "fleece: the snapshot's data at offset 65536 (4096 bytes) was discarded by a reader (discard-source): it can no longer be read" "$d/srv.log"
    run -0 qemu-io -f raw "$snap" -c "read -P 170 0 64k" \
        -c "read -P 170 512k 256k" -c "read -P 170 768k 3M"
    [[ "$output" != *"fail"* && "$output" != *"ismatch"* ]]

    # Writes to discarded clusters copy nothing.
    copied="$(snap_field bytes-copied)"
    qemu-io -f raw "$srv_uri" -c "write -P 2 64k 448k" >/dev/null
    [ "$(snap_field bytes-copied)" = "$copied" ]

    # The limit counts what is held now: 768K more (1.5M copied in
    # all) is 1088K held, under the 1100K limit; the snapshot stays
    # whole.
    qemu-io -f raw "$srv_uri" -c "write -P 3 1M 768k" >/dev/null
    [ "$(snap_field store-used)" = 1114112 ]
    [ "$(snap_field broken)" = false ]
    [ "$(snap_field bytes-copied)" = 1572864 ]
    qemu-io -f raw "$snap" -c "discard 1M 768k" >/dev/null
    [ "$(snap_field store-used)" = 327680 ]

    # The short last cluster goes with a trim to the end.
    qemu-io -f raw "$snap" -c "discard $((size - 12288)) 12288" >/dev/null
    run -1 qemu-io -f raw "$snap" -c "read $((size - 512)) 512"
    [[ "$output" == *"Operation not permitted"* ]]

    # The snapshot export never takes data.
    run -1 qemu-io -f raw "$snap" -c "write 2M 4k"
    [[ "$output" == *"write failed: Operation not permitted"* ]]
    run -1 qemu-io -f raw "$snap" -c "write -z 2M 64k"
    [[ "$output" == *"Operation not permitted"* ]]
    grep -q "fleece: export snapshot is a read-only snapshot: write refused (it accepts only trim, to discard what was read)" "$d/srv.log"
    # No WRITE_ZEROES is advertised: qemu writes zeros, refused too.
    [ "$(grep -c "write refused" "$d/srv.log")" = 2 ]
    run -0 qemu-io -f raw "$snap" -c "read -P 170 2M 64k"
    [[ "$output" != *"fail"* && "$output" != *"ismatch"* ]]
}

@test "nbdbackup pull --discard-source: exact under the oracle, store given back" {
    for seed in 1 2 3; do
        cs_list=(64K 4K 1M)
        cs="${cs_list[$((seed - 1))]}"
        make_disk "$d/disk.img" 16M "$seed"
        head -c 6M /dev/urandom |
            dd of="$d/disk.img" bs=1M seek=5 conv=notrunc status=none
        # A size that is no multiple of the cluster size.
        truncate -s $((16 * 1048576 + 20480)) "$d/disk.img"
        cp --sparse=always "$d/disk.img" "$d/orig.img"
        cp --sparse=always "$d/disk.img" "$d/model.img"
        target="$d/copy-$seed.img"
        [ "$seed" != 2 ] || target="$d/copy-$seed.qcow2"
        ctl="$(new_socket)"
        rm -f "$d/store"
        start_nbdkit srv --filter="$fleece" --filter=delay \
            file "$d/disk.img" delay-read=1ms fleece-discard-source=true \
            fleece-store="$d/store" fleece-cluster-size="$cs" \
            fleece-control="$ctl"
        # Writes before the pull (so the store holds old data), then
        # while it runs.
        pitwriter --seed "$seed" --ops 200 --quiet --model "$d/model.img" \
            "$srv_uri"
        [ "$(snap_field store-used)" -gt 0 ]
        pitwriter --seed $((seed + 10)) --connections 4 --ops 400 \
            --model "$d/model.img" "$srv_uri" & w=$!
        run -0 nbdbackup pull --json --discard-source --connections 2 \
            --chunk 64K --requests 4 \
            "nbd+unix:///snapshot?socket=$srv_sock" "$target"
        wait "$w"
        echo "seed $seed, cluster $cs: $output"
        size=$((16 * 1048576 + 20480))
        [ "$(jq .bytes_discarded <<<"$output")" = "$size" ]
        qemu-img compare "$target" "$d/orig.img"
        cmp "$d/disk.img" "$d/model.img"
        # Everything left the snapshot: the store holds nothing.
        [ "$(snap_field bytes-discarded)" = "$size" ]
        [ "$(snap_field store-used)" = 0 ]
        [ "$(data_bytes "$d/store")" = 0 ]
        [ "$(snap_field store-peak)" -gt 0 ]
        [ "$(snap_field broken)" = false ]
        stop_nbdkit srv
    done
    qemu-img check "$d/copy-2.qcow2"
}

@test "nbdbackup pull --discard-source refuses a source it may not trim" {
    head -c 1M /dev/urandom >"$d/disk.img"
    cp "$d/disk.img" "$d/orig.img"
    # A snapshot without fleece-discard-source.
    run -1 nbdkit -U - --filter="$fleece" file "$d/disk.img" --run '
        nbdbackup pull --discard-source \
            "nbd+unix:///snapshot?socket=$unixsocket" '"$d/t1.img"
    [[ "$output" == *"nbdbackup: --discard-source: the source nbd+unix:///snapshot?socket="*" does not accept trim (a snapshot export of nbdkit-fleece-filter needs fleece-discard-source=true)"* ]]
    # A live disk takes trim, and would lose data.
    run -1 nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-discard-source=true --run '
        nbdbackup pull --discard-source "$uri" '"$d/t2.img"
    [[ "$output" == *"nbdbackup: --discard-source: the source nbd+unix://?socket="*" accepts trim but is not a snapshot export that readers may discard (its description is not \"point-in-time snapshot (read-only, readers may discard)\"): refusing to trim what may be a live disk"* ]]
    cmp "$d/disk.img" "$d/orig.img"
    for f in t1.img t1.img.incomplete t2.img t2.img.incomplete; do
        [ ! -e "$d/$f" ]
    done
}
