#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# cbw sync=none: the target gets exactly the old data of the clusters
# that writes touched, and nothing else is allocated.

load helpers

setup () {
    cbw="$(filter_path cbw)"
    d="$BATS_TEST_TMPDIR"
}

# cluster_of FILE N: bytes of 64K cluster N.
cluster_of () { dd if="$1" bs=65536 skip="$2" count=1 status=none | od -An -tx1 | md5sum; }

@test "cbw-none: only written clusters are copied, with their old data" {
    head -c 4M /dev/urandom > "$d/disk.img"
    cp "$d/disk.img" "$d/orig.img"
    # Clusters touched: 1 (one byte), 2-4 (straddling), 10 (zero),
    # 20 (trim), 40 (twice).
    run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" cbw-sync=none \
        cbw-target="$d/backup.img" cbw-status="$d/status.json" --run '
        qemu-io -f raw "$uri" \
            -c "write -P 0x01 100000 1" \
            -c "write -P 0x02 196598 131082" \
            -c "write -z 655360 65536" \
            -c "discard 1310720 65536" \
            -c "write -P 0x03 2621440 512" \
            -c "write -P 0x04 2622000 512" >/dev/null'
    echo "$output"
    touched="1 2 3 4 10 20 40"
    for c in $(seq 0 63); do
        if [[ " $touched " == *" $c "* ]]; then
            [ "$(cluster_of "$d/backup.img" $c)" = "$(cluster_of "$d/orig.img" $c)" ]
        else
            [ "$(cluster_of "$d/backup.img" $c)" = "$(cluster_of /dev/zero 0)" ]
        fi
    done
    # Nothing else allocated: exactly 7 clusters of data.
    [ "$(data_bytes "$d/backup.img")" -eq $((7 * 65536)) ]
    grep -q '"state":"completed"' "$d/status.json"
    grep -q '"bytes_written":458752' "$d/status.json"
    grep -q '"bytes_before_writes":458752' "$d/status.json"
}

@test "cbw-none: parallel writers to one cluster copy it once" {
    head -c 1M /dev/urandom > "$d/disk.img"
    cp "$d/disk.img" "$d/orig.img"
    run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" cbw-sync=none \
        cbw-target="$d/backup.img" cbw-status="$d/status.json" --run '
        for i in 1 2 3 4 5 6 7 8; do
            qemu-io -f raw "$uri" -c "aio_write -P $i $((i * 4096)) 4096" \
                -c "aio_write -P $i $((i * 4096 + 512)) 512" -c aio_flush \
                >/dev/null &
        done
        wait'
    [ "$(cluster_of "$d/backup.img" 0)" = "$(cluster_of "$d/orig.img" 0)" ]
    [ "$(data_bytes "$d/backup.img")" -eq 65536 ]
    grep -q '"bytes_written":65536' "$d/status.json"
}
