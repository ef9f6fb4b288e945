# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Reading: images that qemu-img and qemu-io made, for every cluster
# size class and both compat levels, read through the plugin equal
# `qemu-img convert -O raw`, and the extents agree with qemu-img map.

load qcow2-helpers

setup () { qcow2_requires; }

size=$((4 * 1024 * 1024))

read_one () {
    local cs="$1" compat="$2" img="$BATS_TEST_TMPDIR/t.qcow2"
    qemu-img create -q -f qcow2 -o cluster_size="$cs",compat="$compat" \
        "$img" "$size"
    fill_image "$img" "$size"
    read_matches "$img"
    if [ "$compat" = 1.1 ]; then
        map_matches "$img" "$size" 512
    fi
}

@test "qcow2: read, 512 byte clusters, compat 0.10" { read_one 512 0.10; }
@test "qcow2: read, 512 byte clusters, compat 1.1" { read_one 512 1.1; }
@test "qcow2: read, 4K clusters, compat 0.10" { read_one 4K 0.10; }
@test "qcow2: read, 4K clusters, compat 1.1" { read_one 4K 1.1; }
@test "qcow2: read, 64K clusters, compat 0.10" { read_one 64K 0.10; }
@test "qcow2: read, 64K clusters, compat 1.1" { read_one 64K 1.1; }
@test "qcow2: read, 2M clusters, compat 0.10" { read_one 2M 0.10; }
@test "qcow2: read, 2M clusters, compat 1.1" { read_one 2M 1.1; }

@test "qcow2: read, size not a multiple of the cluster size" {
    local img="$BATS_TEST_TMPDIR/odd.qcow2"
    qemu-img create -q -f qcow2 -o cluster_size=64K "$img" 1234432
    qemu-io -f qcow2 -c "write -P 0x5a 1200000 34432" -c "write -P 1 0 1" \
        "$img" >/dev/null
    read_matches "$img"
    run -0 nbdkit -U - "$QCOW2_PLUGIN" file="$img" --run 'nbdinfo --size "$uri"'
    [ "$output" = 1234432 ]
}
