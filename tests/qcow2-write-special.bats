# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Writing into compressed clusters (which are copied first), into
# images over qcow2 and raw backing files (where trims and zeroes must
# not expose backing data), and into preallocated images; QEMU checks
# and compares the result with pitwriter's model.

load qcow2-helpers

setup () {
    qcow2_requires
    [ -x "$abs_top_builddir/tests/pitwriter" ] || skip "pitwriter not built"
    cd "$BATS_TEST_TMPDIR"
}

write_one () {
    local img="$1" model="$2" seed="$3"; shift 3
    nbdkit -U - "$QCOW2_PLUGIN" file="$img" "$@" \
        --run "pitwriter --quiet --seed $seed --connections 4 --ops 500 \
                 --max-len 256K --model $model --verify \"\$uri\""
    check_clean "$img"
    run -0 qemu-img compare -f qcow2 -F raw "$img" "$model"
}

size=$((6 * 1024 * 1024))

compressed () {
    make_disk src.raw "$size" 11
    qemu-img convert -c -f raw -O qcow2 -o "$1" src.raw c.qcow2
    cp src.raw model.raw
    write_one c.qcow2 model.raw 21
}

@test "qcow2: writes into deflate-compressed clusters" {
    compressed cluster_size=64K
}

@test "qcow2: writes into zstd-compressed clusters, 4K clusters" {
    compressed cluster_size=4K,compression_type=zstd
}

@test "qcow2: writes into deflate-compressed clusters, compat 0.10" {
    compressed cluster_size=64K,compat=0.10
}

@test "qcow2: writes over a qcow2 backing file" {
    make_disk base.raw "$size" 12
    qemu-img convert -f raw -O qcow2 base.raw base.qcow2
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 -o cluster_size=4K top.qcow2
    cp base.raw model.raw
    write_one top.qcow2 model.raw 22
    map_matches top.qcow2 "$size" 4096
    # The backing file is untouched.
    run -0 qemu-img compare base.qcow2 base.raw
}

@test "qcow2: writes over a raw backing file, compat 0.10 (no zero flag)" {
    make_disk base.raw "$size" 13
    qemu-img create -q -f qcow2 -b base.raw -F raw -o compat=0.10 top.qcow2
    cp base.raw model.raw
    write_one top.qcow2 model.raw 23
}

@test "qcow2: writes into preallocation=metadata and full images" {
    qemu-img create -q -f qcow2 -o preallocation=metadata m.qcow2 "$size"
    truncate -s "$size" model.raw
    write_one m.qcow2 model.raw 24
    qemu-img create -q -f qcow2 -o preallocation=full,compat=0.10 f.qcow2 "$size"
    rm model.raw; truncate -s "$size" model.raw
    write_one f.qcow2 model.raw 25
}
