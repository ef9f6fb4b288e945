# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Reading special images: compressed (deflate and zstd), preallocated,
# and backing chains (qcow2 and raw backing, several levels), with
# qemu-img convert as the referee and qemu-img map for the extents.

load qcow2-helpers

setup () { qcow2_requires; }

size=$((4 * 1024 * 1024))

compressed_one () {
    local type="$1" compat="$2" cs="$3"
    local raw="$BATS_TEST_TMPDIR/src.raw" img="$BATS_TEST_TMPDIR/c.qcow2"
    make_disk "$raw" "$size" 7
    # Compressible runs too, so that some clusters shrink a lot.
    printf 'abc%.0s' $(seq 20000) | dd of="$raw" bs=4096 seek=100 conv=notrunc status=none
    local opts="cluster_size=$cs,compat=$compat"
    [ -n "$type" ] && opts="$opts,compression_type=$type"
    qemu-img convert -c -f raw -O qcow2 -o "$opts" "$raw" "$img"
    read_matches "$img"
    [ "$compat" = 0.10 ] || map_matches "$img" "$size" 4096
    # Compressed clusters written by qemu-io, mixed with plain ones.
    rm "$img"
    qemu-img create -q -f qcow2 -o "$opts" "$img" "$size"
    qemu-io -f qcow2 -c "write -c -P 0x77 0 $cs" \
        -c "write -c -P 0x79 $((size - cs)) $cs" \
        -c "write -P 0x78 $((size / 2 + 1000)) 1000" "$img" >/dev/null
    read_matches "$img"
    [ "$compat" = 0.10 ] || map_matches "$img" "$size" 4096
}

@test "qcow2: read deflate-compressed clusters, compat 1.1" {
    compressed_one "" 1.1 65536
}
@test "qcow2: read deflate-compressed clusters, compat 0.10, 4K" {
    compressed_one "" 0.10 4096
}
@test "qcow2: read zstd-compressed clusters, 64K" {
    compressed_one zstd 1.1 65536
}
@test "qcow2: read zstd-compressed clusters, 512 byte clusters" {
    compressed_one zstd 1.1 512
}
@test "qcow2: read zstd-compressed clusters, 2M clusters" {
    compressed_one zstd 1.1 2097152
}

@test "qcow2: read preallocation=metadata" {
    local img="$BATS_TEST_TMPDIR/p.qcow2"
    qemu-img create -q -f qcow2 -o preallocation=metadata "$img" "$size"
    fill_image "$img" "$size"
    read_matches "$img"
}

@test "qcow2: read preallocation=full, compat 0.10" {
    local img="$BATS_TEST_TMPDIR/p.qcow2"
    qemu-img create -q -f qcow2 -o preallocation=full,compat=0.10 "$img" "$size"
    fill_image "$img" "$size"
    read_matches "$img"
}

@test "qcow2: read through a qcow2 backing chain of three levels" {
    cd "$BATS_TEST_TMPDIR"
    qemu-img create -q -f qcow2 -o cluster_size=4K base.qcow2 "$size"
    qemu-io -f qcow2 -c "write -P 1 0 $size" base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 -o cluster_size=64K mid.qcow2
    qemu-io -f qcow2 -c "write -P 2 100k 300k" -c "write -z 1M 128k" mid.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 -o cluster_size=512 top.qcow2
    qemu-io -f qcow2 -c "write -P 3 150k 1k" -c "discard 2M 64k" \
        -c "write -z 3M 4k" top.qcow2 >/dev/null
    read_matches top.qcow2
    map_matches top.qcow2 "$size" 512
}

@test "qcow2: read through a raw backing file, smaller than the image" {
    cd "$BATS_TEST_TMPDIR"
    make_disk base.raw $((2 * 1024 * 1024)) 3
    qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 "$size"
    qemu-io -f qcow2 -c "write -P 9 64k 64k" -c "write -P 8 3M 1k" \
        top.qcow2 >/dev/null
    read_matches top.qcow2
    map_matches top.qcow2 "$size" 65536
}

@test "qcow2: read through a compat 0.10 image over a qcow2 backing" {
    cd "$BATS_TEST_TMPDIR"
    qemu-img create -q -f qcow2 base.qcow2 "$size"
    qemu-io -f qcow2 -c "write -P 1 0 2M" base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 -o compat=0.10 top.qcow2
    qemu-io -f qcow2 -c "write -P 3 10k 100k" -c "write -z 1M 64k" top.qcow2 >/dev/null
    read_matches top.qcow2
}
