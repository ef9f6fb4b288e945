#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# cbw sync=top: only the clusters allocated in the top layer at the
# snapshot instant are copied.  Over the qcow2 plugin the target is a
# qcow2 image with the same backing file, and the target chain must
# read exactly as a copy of the source chain taken at the snapshot
# instant (qemu-img compare), while pitwriter changes the disk.

load helpers

setup () {
    cbw="$(filter_path cbw)"
    qcow2="$(plugin_path qcow2)"
    d="$BATS_TEST_TMPDIR"
    requires qemu-img qemu-io
}

# top_clusters IMAGE: the 64K clusters allocated in IMAGE itself (not
# in its backing file), one per line.
top_clusters () {
    qemu-img map --output=json "$1" |
        jq -r '.[] | select(.depth == 0) | "\(.start) \(.length)"' |
        while read -r start len; do
            seq $((start / 65536)) $(((start + len - 1) / 65536))
        done | sort -n -u
}

# make_chain SEED: base.img (raw, random) under top.qcow2, whose own
# clusters hold data, zeroes and unaligned writes; snap.qcow2 is the
# copy taken before the server starts, model.img its flat contents.
make_chain () {
    local seed="$1"
    head -c 16M /dev/urandom > "$d/base.img"
    qemu-img create -q -f qcow2 -b base.img -F raw "$d/top.qcow2"
    qemu-io -f qcow2 "$d/top.qcow2" \
        -c "write -P $((seed % 200 + 1)) 1M 2M" \
        -c "write -z 5M 1M" \
        -c "write -P 0x33 9000000 70000" \
        -c "write -P 0x44 $((12 * 1048576 + seed * 4096)) 300000" >/dev/null
    cp "$d/top.qcow2" "$d/snap.qcow2"
    qemu-img convert -O raw "$d/top.qcow2" "$d/model.img"
}

@test "cbw-top: qcow2 chain under writes, target chain equals the snapshot" {
    requires jq
    for seed in 1 2 3; do
        make_chain "$seed"
        rm -f "$d/backup.qcow2" "$d/status.json"
        run -0 nbdkit -U - --filter="$cbw" --filter=delay "$qcow2" \
            file="$d/top.qcow2" delay-read=10ms cbw-sync=top \
            cbw-target="$d/backup.qcow2" cbw-target-backing=base.img \
            cbw-status="$d/status.json" cbw-workers=$seed \
            --run "pitwriter --seed $seed --connections 4 --ops 200 \
                     --max-len 1M --model '$d/model.img' \"\$uri\" &&
                   '$abs_top_srcdir/tests/wait-for-job' '$d/status.json'"
        echo "$output"
        cat "$d/status.json"
        grep -q '"state":"completed"' "$d/status.json"
        grep -q '"sync":"top"' "$d/status.json"
        # Only the top's clusters were protected.
        ! grep -q '"bytes_total":16777216' "$d/status.json"

        # The target chain reads as the source chain did.
        run -0 qemu-img compare "$d/backup.qcow2" "$d/snap.qcow2"
        echo "$output"
        qemu-img check "$d/backup.qcow2"
        run -0 qemu-img info "$d/backup.qcow2"
        [[ "$output" == *"backing file: base.img"* ]]
        # Exactly the top's clusters are allocated in the target: the
        # rest still reads through to base.img.
        diff <(top_clusters "$d/backup.qcow2") <(top_clusters "$d/snap.qcow2")

        # Nothing acknowledged was lost.
        qemu-img convert -O raw "$d/top.qcow2" "$d/live.img"
        cmp "$d/live.img" "$d/model.img"
    done
}

@test "cbw-top: sparse raw source, only allocated extents are copied" {
    make_disk "$d/disk.img" 32M 9
    cp --sparse=always "$d/disk.img" "$d/orig.img"
    cp --sparse=always "$d/disk.img" "$d/model.img"
    run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" cbw-sync=top \
        cbw-target="$d/backup.img" cbw-status="$d/status.json" \
        --run "pitwriter --seed 7 --ops 100 --model '$d/model.img' \"\$uri\" &&
               '$abs_top_srcdir/tests/wait-for-job' '$d/status.json'"
    cat "$d/status.json"
    grep -q '"state":"completed"' "$d/status.json"
    cmp "$d/backup.img" "$d/orig.img"
    cmp "$d/disk.img" "$d/model.img"
    # Holes were never read nor written: far less than the disk.
    total=$(jq .bytes_total "$d/status.json" 2>/dev/null ||
            sed 's/.*"bytes_total":\([0-9]*\).*/\1/' "$d/status.json")
    [ "$total" -lt $((16 * 1048576)) ]
    # Whole clusters around the allocated extents, no more.
    [ "$(data_bytes "$d/backup.img")" -le "$total" ]
}

@test "cbw-top: clusters outside the top are never copied before writes" {
    requires jq
    make_chain 5
    # Overwrite the whole disk: only the top's clusters may reach the
    # target, even though every cluster is written.
    run -0 nbdkit -U - --filter="$cbw" "$qcow2" file="$d/top.qcow2" \
        cbw-sync=top cbw-target="$d/backup.qcow2" \
        cbw-target-backing=base.img --run '
        qemu-io -f raw "$uri" -c "write -P 0x77 0 16M" >/dev/null'
    run -0 qemu-img compare "$d/backup.qcow2" "$d/snap.qcow2"
    diff <(top_clusters "$d/backup.qcow2") <(top_clusters "$d/snap.qcow2")
}

@test "cbw-top: the qcow2 plugin's top layer, not its extents, decides" {
    requires jq
    make_chain 4
    # The export's extents say data over all of base.img (that is what
    # the chain reads as), yet only the top's clusters are protected.
    run -0 nbdkit -U - "$qcow2" file="$d/top.qcow2" readonly=true \
        --run 'nbdinfo --map "$uri"'
    echo "$output"
    [[ "$output" != *hole* || "$output" == *zero* ]]
    run -0 nbdkit -U - --filter="$cbw" "$qcow2" file="$d/top.qcow2" \
        cbw-sync=top cbw-target="$d/backup.qcow2" \
        cbw-target-backing=base.img cbw-status="$d/status.json" \
        --run "'$abs_top_srcdir/tests/wait-for-job' '$d/status.json'"
    cat "$d/status.json"
    grep -q '"state":"completed"' "$d/status.json"
    total=$(jq .bytes_total "$d/status.json")
    [ "$total" -eq "$(( $(top_clusters "$d/snap.qcow2" | wc -l) * 65536 ))" ]
    run -0 qemu-img compare "$d/backup.qcow2" "$d/snap.qcow2"
}

@test "cbw-top: a filter that resizes the qcow2 plugin's disk is refused" {
    make_chain 6
    run nbdkit -U - --filter="$cbw" --filter=truncate "$qcow2" \
        file="$d/top.qcow2" truncate=15M cbw-sync=top \
        cbw-target="$d/backup.qcow2" cbw-target-backing=base.img \
        cbw-status="$d/status.json" --run true
    echo "$output"
    grep -q '"state":"failed"' "$d/status.json"
    [[ "$output" == *"sync=top: the qcow2 image $d/top.qcow2 is 16777216 bytes but the disk below cbw is 15728640 bytes: a filter in between changes the disk, so the top layer's allocation cannot be used"* ]]
    [ ! -e "$d/backup.qcow2" ]
}
