# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Images created by the plugin (create=true, through common/qcow2's
# qcow2_create) pass qemu-img check and read back correctly in QEMU.

load qcow2-helpers

setup () {
    qcow2_requires
    cd "$BATS_TEST_TMPDIR"
}

create_one () {
    local cs="$1" compat="$2" size=$((8 * 1024 * 1024))
    make_disk src.raw "$size" 5
    run -0 nbdkit -U - "$QCOW2_PLUGIN" file=new.qcow2 create=true \
        create-size="$size" create-cluster-size="$cs" create-compat="$compat" \
        --run 'nbdcopy src.raw "$uri"'
    check_clean new.qcow2
    run -0 qemu-img info --output=json new.qcow2
    [[ "$output" == *"\"cluster-size\": $cs,"* ]]
    [[ "$output" == *"\"compat\": \"$compat\""* ]]
    [[ "$output" == *"\"virtual-size\": $size,"* ]]
    run -0 qemu-img compare -f qcow2 -F raw new.qcow2 src.raw
}

@test "qcow2: create, 512 byte clusters, compat 1.1" { create_one 512 1.1; }
@test "qcow2: create, 4K clusters, compat 0.10" { create_one 4096 0.10; }
@test "qcow2: create, 64K clusters, compat 1.1" { create_one 65536 1.1; }
@test "qcow2: create, 2M clusters, compat 0.10" { create_one 2097152 0.10; }

@test "qcow2: create an empty image; QEMU sees zeros" {
    run -0 nbdkit -U - "$QCOW2_PLUGIN" file=e.qcow2 create=true \
        create-size=1G --run 'nbdinfo --size "$uri"'
    [ "$output" = 1073741824 ]
    check_clean e.qcow2
    run -0 qemu-img map --output=json e.qcow2
    [[ "$output" == *'"present": false, "zero": true'* ]]
}

@test "qcow2: create with a backing file" {
    make_disk base.raw $((4 * 1024 * 1024)) 9
    run -0 nbdkit -U - "$QCOW2_PLUGIN" file=top.qcow2 create=true \
        create-size=4M create-backing=base.raw create-backing-format=raw \
        --run 'printf "%s" hello | nbdcopy - "$uri" --length=5 2>/dev/null || :'
    check_clean top.qcow2
    run -0 qemu-img info --output=json top.qcow2
    [[ "$output" == *'"backing-filename": "base.raw"'* ]]
    [[ "$output" == *'"backing-filename-format": "raw"'* ]]
    run -0 qemu-img compare top.qcow2 base.raw
    # Write through the plugin, over the backing; QEMU agrees.
    cp base.raw model.raw
    requires pitwriter
    nbdkit -U - "$QCOW2_PLUGIN" file=top.qcow2 \
        --run 'pitwriter --quiet --seed 7 --ops 300 --model model.raw "$uri"'
    check_clean top.qcow2
    run -0 qemu-img compare -f qcow2 -F raw top.qcow2 model.raw
}

@test "qcow2: create refuses an existing file only if it is not qcow2" {
    head -c 1M /dev/zero > exists.img
    run nbdkit -U - "$QCOW2_PLUGIN" file=exists.img create=true create-size=1M --run true
    [ "$status" -eq 1 ]
    [[ "$output" == *"exists.img: not a qcow2 image (bad magic)"* ]]
    run nbdkit -U - "$QCOW2_PLUGIN" file=x.qcow2 create=true --run true
    [[ "$output" == *"create=true needs create-size=<SIZE>"* ]]
}
