#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# The point-in-time oracle: pitwriter writes, zeroes and trims through
# four connections at seeded-random unaligned offsets (1 byte to 1M,
# crossing cluster boundaries) while a full backup runs, slowed by the
# delay filter below cbw so that the writes and the job overlap.  Then
# the target must equal the disk as it was before the server started,
# and the live disk must equal pitwriter's model of every acknowledged
# request.  Correctness must hold whatever the interleaving; the
# delay only makes the interesting interleavings likely.

load helpers

setup () {
    cbw="$(filter_path cbw)"
    d="$BATS_TEST_TMPDIR"
}

# oracle SEED [EXTRA CBW ARGS...]
oracle () {
    local seed="$1"; shift
    local cs_list=(64K 4K 1M 64K 16K)
    local cs="${cs_list[$((seed % 5))]}"
    make_disk "$d/disk.img" 24M "$seed"
    # Plus some fully random data, so the job has reading to do.
    head -c 14M /dev/urandom | dd of="$d/disk.img" bs=1M seek=6 conv=notrunc status=none
    cp --sparse=always "$d/disk.img" "$d/orig.img"
    cp --sparse=always "$d/disk.img" "$d/model.img"
    rm -f "$d/backup.img" "$d/status.json"
    run -0 nbdkit -U - --filter="$cbw" --filter=delay file "$d/disk.img" \
        delay-read=20ms cbw-target="$d/backup.img" cbw-cluster-size="$cs" \
        cbw-workers=$((seed % 2 + 1)) cbw-status="$d/status.json" "$@" \
        --run "pitwriter --seed $seed --connections 4 --ops 300 \
                 --max-len 1M --model '$d/model.img' \"\$uri\" &&
               cat '$d/status.json' &&
               '$abs_top_srcdir/tests/wait-for-job' '$d/status.json'"
    echo "seed $seed cluster $cs: $output"
    cmp "$d/backup.img" "$d/orig.img"
    cmp "$d/disk.img" "$d/model.img"
    grep -q '"state":"completed"' "$d/status.json"
}

# `make soak` sets ORACLE_SEEDS to run many more.
@test "cbw-oracle: 20 seeds (more in make soak), backup equals the disk at the snapshot instant" {
    for seed in $(seq 1 "${ORACLE_SEEDS:-20}"); do
        oracle "$seed"
    done
}

@test "cbw-oracle: break-snapshot and fail-write policies with a healthy target" {
    oracle 101 cbw-on-error=fail-write
    oracle 102 cbw-on-error=break-snapshot
}

@test "cbw-oracle: copy-before-write buffer off, tiny (often full) and large" {
    oracle 201 cbw-buffer-size=0
    oracle 202 cbw-buffer-size=64K
    oracle 203 cbw-buffer-size=4K
    oracle 204 cbw-buffer-size=1G
}
