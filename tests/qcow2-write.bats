# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Writing: seeded random writes, zeroes and trims through several
# connections (tests/pitwriter), then QEMU is the referee: qemu-img
# check finds no errors and no leaks, and qemu-img compare says the
# image equals pitwriter's raw model.

load qcow2-helpers

setup () {
    qcow2_requires
    [ -x "$abs_top_builddir/tests/pitwriter" ] || skip "pitwriter not built"
}

# write_one IMG MODEL SEED [PLUGIN-ARGS...]: run pitwriter against the
# plugin serving IMG (the server exits, flushing, when it is done).
write_one () {
    local img="$1" model="$2" seed="$3"; shift 3
    nbdkit -U - "$QCOW2_PLUGIN" file="$img" "$@" \
        --run "pitwriter --quiet --seed $seed --connections 4 --ops 600 \
                 --max-len 300K --model $model --verify \"\$uri\""
    check_clean "$img"
    run -0 qemu-img compare -f qcow2 -F raw "$img" "$model"
}

fresh () {
    local cs="$1" compat="$2" size="$3"
    img="$BATS_TEST_TMPDIR/w.qcow2" model="$BATS_TEST_TMPDIR/model.raw"
    qemu-img create -q -f qcow2 -o cluster_size="$cs",compat="$compat" \
        "$img" "$size"
    truncate -s "$size" "$model"
}

@test "qcow2: random writes, 64K clusters, compat 1.1" {
    fresh 64K 1.1 8M
    write_one "$img" "$model" 1
    # And again over the now well-used image.
    write_one "$img" "$model" 2
    # Extents over what we wrote (zero flags, unmapped clusters) agree
    # with qemu-img map.
    map_matches "$img" $((8 * 1024 * 1024)) 65536
}

@test "qcow2: random writes, 4K clusters, compat 0.10" {
    fresh 4K 0.10 8M
    write_one "$img" "$model" 3
}

@test "qcow2: random writes, 512 byte clusters (refcount table grows)" {
    fresh 512 1.1 12M
    write_one "$img" "$model" 4
    run -0 qemu-img info --output=json "$img"
}

@test "qcow2: random writes, 2M clusters, compat 1.1" {
    fresh 2M 1.1 16M
    write_one "$img" "$model" 5
}

@test "qcow2: random writes, 512 byte clusters, compat 0.10" {
    fresh 512 0.10 6M
    write_one "$img" "$model" 6
}
