# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# A data cluster never overlaps the image's metadata (QEMU's overlap
# check): when an L2 entry points guest data at the header, the L1
# table, an L2 table, the refcount table or a refcount block, or the
# refcounts call such a cluster free, the write fails with EIO and an
# error naming the table, the table's bytes stay as they were, and the
# image is marked corrupt.  A data cluster past the end of the file is
# an error, not zeros.
#
# The image (qemu-img, 64K clusters, 200k written at 0): header at 0,
# refcount table at 0x10000, refcount block at 0x20000, L1 table at
# 0x30000, L2 table at 0x40000, data at 0x50000 to 0x8ffff.

load qcow2-helpers

setup () {
    qcow2_requires
    cd "$BATS_TEST_TMPDIR"
    qemu-img create -q -f qcow2 t.qcow2 4M
    qemu-io -f qcow2 -c "write -P 1 0 200k" t.qcow2 >/dev/null
    # The layout the tests poke at.
    [ "$(od -An -tx1 -j40 -N8 t.qcow2 | tr -d ' ')" = 0000000000030000 ]
    [ "$(od -An -tx1 -j48 -N8 t.qcow2 | tr -d ' ')" = 0000000000010000 ]
    [ "$(od -An -tx1 -j$((0x40000)) -N8 t.qcow2 | tr -d ' ')" = 8000000000050000 ]
}

# poke FILE OFFSET NBYTES VALUE: store VALUE big-endian.
poke () {
    local f="$1" off="$2" n="$3" v="$4" i hex=""
    for ((i = n - 1; i >= 0; i--)); do
        hex+=$(printf '\\x%02x' $(( (v >> (i * 8)) & 255 )))
    done
    printf "$hex" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}

# cluster FILE HOSTOFF: a digest of the 64K cluster's bytes (for the
# header, all but the incompatible features, where the corrupt bit is
# set on purpose).
cluster () {
    if [ "$2" -eq 0 ]; then
        { head -c 72 "$1"; tail -c +81 "$1" | head -c $((65536 - 80)); } | md5sum
    else
        od -An -tx1 -v -j"$2" -N65536 "$1" | tr -d ' \n' | md5sum
    fi
}

# write_refused GUESTOFF TABLE HOSTOFF MESSAGE: a write at GUESTOFF
# fails with EIO and MESSAGE, and the cluster at HOSTOFF is unchanged.
write_refused () {
    local guest="$1" host="$2" msg="$3" before
    before=$(cluster t.qcow2 "$host")
    run nbdkit -U - "$QCOW2_PLUGIN" file=t.qcow2 --run "
        qemu-io -f raw \"\$uri\" -c 'write -P 0x99 $guest 64k'
        qemu-io -f raw \"\$uri\" -c 'write -P 0x98 3M 4k'
        qemu-io -f raw \"\$uri\" -c 'read -P 1 64k 64k'"
    echo "$output"
    [[ "$output" == *"write failed: Input/output error"* ]]
    [[ "$output" == *"$msg"* ]]
    # Marked corrupt: later writes are refused too, reads go on.
    [[ "$output" == *"t.qcow2: the image is now marked corrupt: no more writes"* ]]
    [[ "$output" == *"t.qcow2: the image was marked corrupt; not writing"* ]]
    [[ "$output" == *"read 65536/65536 bytes at offset 65536"* ]]
    [ "$(cluster t.qcow2 "$host")" = "$before" ]
    run -0 qemu-img info t.qcow2
    [[ "$output" == *"corrupt: true"* ]]
}

@test "qcow2 overlap: data cluster on the L1 table" {
    poke t.qcow2 $((0x40000)) 8 $(( (1 << 63) | 0x30000 ))
    write_refused 0 $((0x30000)) \
        "t.qcow2: write to guest offset 0 would overwrite the L1 table at host offset 0x30000"
}

@test "qcow2 overlap: data cluster on an L2 table" {
    # Entry 1 of the L2 table points at the L2 table itself.
    poke t.qcow2 $((0x40000 + 8)) 8 $(( (1 << 63) | 0x40000 ))
    write_refused 64k $((0x40000)) \
        "t.qcow2: write to guest offset 0x10000 would overwrite the L2 table at host offset 0x40000"
}

@test "qcow2 overlap: data cluster on a refcount block" {
    poke t.qcow2 $((0x40000)) 8 $(( (1 << 63) | 0x20000 ))
    write_refused 0 $((0x20000)) \
        "t.qcow2: write to guest offset 0 would overwrite the refcount block at host offset 0x20000"
}

@test "qcow2 overlap: data cluster on the refcount table" {
    poke t.qcow2 $((0x40000)) 8 $(( (1 << 63) | 0x10000 ))
    write_refused 0 $((0x10000)) \
        "t.qcow2: write to guest offset 0 would overwrite the refcount table at host offset 0x10000"
}

@test "qcow2 overlap: a partial write over metadata is refused too" {
    poke t.qcow2 $((0x40000)) 8 $(( (1 << 63) | 0x30000 ))
    local before
    before=$(cluster t.qcow2 $((0x30000)))
    run nbdkit -U - "$QCOW2_PLUGIN" file=t.qcow2 --run '
        qemu-io -f raw "$uri" -c "write -P 0x99 1000 10"'
    echo "$output"
    [[ "$output" == *"write failed: Input/output error"* ]]
    [[ "$output" == *"write to guest offset 0x3e8 would overwrite the L1 table at host offset 0x30000"* ]]
    [ "$(cluster t.qcow2 $((0x30000)))" = "$before" ]
}

@test "qcow2 overlap: refcounts that call the header free" {
    # Refcount of cluster 0 (16 bit entries at 0x20000) set to 0: the
    # allocator would give the header to a new guest cluster.
    poke t.qcow2 $((0x20000)) 2 0
    write_refused 1M 0 \
        "t.qcow2: the refcounts call the cluster at host offset 0 free, but it holds the header at host offset 0; not reusing it"
}

@test "qcow2 overlap: refcounts that call the L1 table free" {
    poke t.qcow2 $((0x20000 + 3 * 2)) 2 0
    poke t.qcow2 $((0x20000)) 2 1
    write_refused 1M $((0x30000)) \
        "t.qcow2: the refcounts call the cluster at host offset 0x30000 free, but it holds the L1 table at host offset 0x30000; not reusing it"
}

@test "qcow2 overlap: an L2 table overlapping the refcount block is refused at open" {
    poke t.qcow2 $((0x30000)) 8 $(( (1 << 63) | 0x20000 ))
    run nbdkit -U - "$QCOW2_PLUGIN" file=t.qcow2 --run true
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"t.qcow2: L2 table at host offset 0x20000 overlaps the refcount block at host offset 0x20000; the image is corrupt (open it read-only, or repair it with 'qemu-img check -r all')"* ]]
}

@test "qcow2 overlap: a data cluster past the end of the file is an error" {
    poke t.qcow2 $((0x40000 + 8)) 8 $(( (1 << 63) | 0x1000000 ))
    run nbdkit -U - "$QCOW2_PLUGIN" file=t.qcow2 readonly=true --run '
        qemu-io -r -f raw "$uri" -c "read 64k 64k"
        qemu-io -r -f raw "$uri" -c "read -P 1 0 64k"'
    echo "$output"
    [[ "$output" == *"read failed: Input/output error"* ]]
    [[ "$output" == *"t.qcow2: guest offset 0x10000: data cluster at host offset 0x1000000 is beyond the end of the file"* ]]
    [[ "$output" == *"read 65536/65536 bytes at offset 0"* ]]
    # Writing to it is no better.
    run nbdkit -U - "$QCOW2_PLUGIN" file=t.qcow2 --run '
        qemu-io -f raw "$uri" -c "write 70000 100"'
    echo "$output"
    [[ "$output" == *"write failed: Input/output error"* ]]
    [[ "$output" == *"t.qcow2: guest offset 0x11170: data cluster at host offset 0x1000000 is beyond the end of the file"* ]]
    [ "$(stat -c %s t.qcow2)" -lt $((0x1000000)) ]
}
