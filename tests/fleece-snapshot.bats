#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# The fleece filter's snapshot export: exactly the disk at the
# snapshot instant, whatever writers do to the live export.

load helpers

setup () {
    fleece="$(filter_path fleece)"
    d="$BATS_TEST_TMPDIR"
}

teardown () { stop_all_nbdkit; }

@test "fleece: the snapshot export is listed and read-only" {
    truncate -s 1M "$d/disk.img"
    run -0 nbdkit -U - --filter="$fleece" file "$d/disk.img" --run '
        nbdinfo --list "$uri"
        nbdinfo "nbd+unix:///snapshot?socket=$unixsocket"'
    echo "$output"
    [[ "$output" == *'export="snapshot":'*'description: point-in-time snapshot (read-only)'* ]]
    [[ "$output" == *"is_read_only: true"* ]]
    run ! nbdkit -U - --filter="$fleece" file "$d/disk.img" --run '
        qemu-io -f raw "nbd+unix:///snapshot?socket=$unixsocket" -c "write 0 512"'
    [[ "$output" == *"Permission denied"* || "$output" == *"read-only"* || "$output" == *"read only"* ]]
}

@test "fleece: nbdcopy and qemu-img convert of the snapshot equal the disk at the instant" {
    make_disk "$d/disk.img" 32M 9
    cp --sparse=always "$d/disk.img" "$d/orig.img"
    cp --sparse=always "$d/disk.img" "$d/model.img"
    run -0 nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-store="$d" --run '
        snap="nbd+unix:///snapshot?socket=$unixsocket"
        pitwriter --seed 4 --ops 200 --model '"$d/model.img"' "$uri" &&
        nbdcopy "$snap" '"$d/copy1.img"' &&
        qemu-img convert -f raw -O raw "$snap" '"$d/copy2.img"' &&
        nbdinfo --map "$snap" > '"$d/map.txt"
    cmp "$d/copy1.img" "$d/orig.img"
    cmp "$d/copy2.img" "$d/orig.img"
    cmp "$d/disk.img" "$d/model.img"
    ! cmp -s "$d/disk.img" "$d/orig.img"
    # Extents hold for the instant: every range said to read as zero
    # does so in the original disk.
    grep -q zero "$d/map.txt"
    while read -r off len type desc; do
        cmp -n "$len" /dev/zero \
            <(dd if="$d/orig.img" iflag=skip_bytes,count_bytes \
                 skip="$off" count="$len" status=none)
    done < <(awk '/zero/ { print $1, $2, $3, $4 }' "$d/map.txt")
}

@test "fleece: the point-in-time oracle, readers racing writers" {
    for seed in $(seq 1 "${ORACLE_SEEDS:-6}"); do
        make_disk "$d/disk.img" 16M "$seed"
        head -c 8M /dev/urandom | dd of="$d/disk.img" bs=1M seek=4 conv=notrunc status=none
        cp --sparse=always "$d/disk.img" "$d/orig.img"
        cp --sparse=always "$d/disk.img" "$d/model.img"
        rm -f "$d"/copy-*.img
        cs_list=(64K 4K 1M)
        run -0 nbdkit -U - --filter="$fleece" --filter=delay file "$d/disk.img" \
            delay-read=2ms fleece-store="$d" \
            fleece-cluster-size="${cs_list[$((seed % 3))]}" --run '
            snap="nbd+unix:///snapshot?socket=$unixsocket"
            pitwriter --seed '"$seed"' --connections 4 --ops 300 \
                --model '"$d/model.img"' "$uri" & w=$!
            nbdcopy --connections=2 "$snap" '"$d"'/copy-1.img & r1=$!
            nbdcopy "$snap" '"$d"'/copy-2.img & r2=$!
            nbdcopy --requests=4 "$snap" '"$d"'/copy-3.img & r3=$!
            qemu-img convert -f raw -O raw "$snap" '"$d/copy-4.img"' & r4=$!
            s=0
            for p in $w $r1 $r2 $r3 $r4; do wait $p || s=1; done
            exit $s'
        echo "seed $seed: $output"
        for i in 1 2 3 4; do cmp "$d/copy-$i.img" "$d/orig.img"; done
        cmp "$d/disk.img" "$d/model.img"
    done
}

@test "fleece: a full store breaks the snapshot, never the writer" {
    head -c 4M /dev/urandom > "$d/disk.img"
    cp "$d/disk.img" "$d/orig.img"
    cp "$d/disk.img" "$d/model.img"
    # Room for 4 clusters of old data; pitwriter touches far more.
    run -0 nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-store="$d" fleece-store-limit=256K --run '
        snap="nbd+unix:///snapshot?socket=$unixsocket"
        pitwriter --seed 8 --ops 200 --model '"$d/model.img"' "$uri" || exit 1
        if nbdcopy "$snap" '"$d/copy.img"'; then exit 2; fi
        exit 0'
    echo "$output"
    # Every write succeeded and the live disk holds them all.
    cmp "$d/disk.img" "$d/model.img"
    [[ "$output" == *"fleece store is full: it may hold 262144 bytes"* ]]
    [[ "$output" =~ "fleece: writing the fleece store at offset "[0-9]+" failed: No space left on device" ]]
    [[ "$output" != *"the target"* ]]
    [[ "$output" == *"the snapshot is broken"* ]]
}

@test "fleece: parameters are checked at start" {
    truncate -s 1M "$d/disk.img"
    run ! nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-cluster-size=3K --run true
    [[ "$output" == *"fleece-cluster-size: '3K' must be a power of two from 4K to 16M"* ]]
    run ! nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-snapshot=later --run true
    [[ "$output" == *"fleece-snapshot: unknown value 'later' (expecting at-start or on-command)"* ]]
    run ! nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-snapshot=on-command --run true
    [[ "$output" == *"fleece-snapshot=on-command needs a control socket: set fleece-control=SOCKET"* ]]
    run ! nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-store="$d/no/such/store" --run true
    [[ "$output" == *"fleece-store: cannot create a store in $d/no/such: No such file or directory"* ]]
    run ! nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-export= --run true
    [[ "$output" == *"fleece-export: the snapshot export needs a name"* ]]
    run ! nbdkit -U - --filter="$fleece" file "$d/disk.img" \
        fleece-store-limit=lots --run true
    [[ "$output" == *"could not parse size string (lots)"* ]]
}
