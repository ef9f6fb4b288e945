# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# The plugin's extents describe the whole backing chain as qemu-nbd
# does, so QEMU's tools read the export as they read the image file:
# qemu-img compare, qemu-img map and nbdinfo --map agree over the
# plugin and on the file (or over qemu-nbd).  The chain is qcow2 over
# qcow2 over a sparse raw file shorter than the disk, with data, zero
# clusters (plain and allocated), discarded and compressed clusters in
# the layers.

load qcow2-helpers

setup () {
    qcow2_requires
    requires jq
    cd "$BATS_TEST_TMPDIR"
}

# make_chain CLUSTER: base.raw <- mid.qcow2 <- top.qcow2 (4M), the
# top with clusters of CLUSTER bytes.
make_chain () {
    local cs="$1" k=65536
    truncate -s 3M base.raw
    printf 'B%.0s' $(seq 4096) | dd of=base.raw bs=4096 seek=3 conv=notrunc status=none
    head -c 1M /dev/urandom | dd of=base.raw bs=64K seek=2 conv=notrunc status=none
    head -c 64K /dev/urandom | dd of=base.raw bs=64K seek=40 conv=notrunc status=none
    qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 4M
    qemu-io -f qcow2 -c "write -P 0x4d $((20 * k)) $((3 * k))" \
        -c "write -z $((4 * k)) $((2 * k))" \
        -c "write -P 1 $((30 * k)) $k" -c "write -z $((30 * k)) $k" \
        -c "write -c -P 0x43 $((50 * k)) $k" \
        -c "write -P 2 $((52 * k)) $k" -c "discard $((52 * k)) $k" \
        mid.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 \
        -o cluster_size="$cs" top.qcow2 4M
    qemu-io -f qcow2 -c "write -P 0x36 $((6 * k)) $k" \
        -c "write -c -P 0x37 $((8 * k)) $k" \
        -c "write -z $((10 * k)) $((2 * k))" \
        -c "write -P 9 $((21 * k)) $k" -c "write -z $((21 * k)) $k" \
        -c "write -P 10 $((12 * k)) $k" -c "discard $((12 * k)) $k" \
        -c "write -P 0x55 $((33 * k + 1000)) 3000" \
        -c "write -P 0x66 $((62 * k)) $k" \
        top.qcow2 >/dev/null
}

# A map as merged "start length data zero" lines, from qemu-img map's
# JSON (the depth and offset fields, which NBD cannot carry, dropped).
merge_map () {
    jq -r '.[] | "\(.start) \(.length) \(.data) \(.zero)"' |
        awk 'function out() { if (n) print s, l, d, z }
             { if (n && $1 == s + l && $3 == d && $4 == z) { l += $2; next }
               out(); s = $1; l = $2; d = $3; z = $4; n = 1 }
             END { out() }'
}

# nbdinfo --map, with neighbours of one type merged.
merge_nbdinfo () {
    awk 'function out() { if (n) print s, l, t }
         { if (n && $1 == s + l && $3 == t) { l += $2; next }
           out(); s = $1; l = $2; t = $3; n = 1 }
         END { out() }'
}

serve () {
    nbdkit -U - "$QCOW2_PLUGIN" file=top.qcow2 readonly=true --run "$1"
}

@test "qcow2 extents: qemu-img compare of the export and the image: identical" {
    for cs in 65536 4096 512; do
        rm -f base.raw mid.qcow2 top.qcow2
        make_chain "$cs"
        run -0 serve 'qemu-img compare -f raw "$uri" -F qcow2 top.qcow2'
        echo "$output"
        [[ "$output" == *"Images are identical."* ]]
        # And the other way round.
        run -0 serve 'qemu-img compare -f qcow2 -F raw top.qcow2 "$uri"'
        echo "$output"
        [[ "$output" == *"Images are identical."* ]]
    done
}

@test "qcow2 extents: qemu-img map over the export equals map of the image" {
    for cs in 65536 4096; do
        rm -f base.raw mid.qcow2 top.qcow2
        make_chain "$cs"
        qemu-img map --output=json top.qcow2 | merge_map > want.map
        serve 'qemu-img map --output=json -f raw "$uri"' | merge_map > got.map
        cat want.map
        diff -u want.map got.map
        # Every kind of cluster is in there.
        grep -q ' true false$' want.map
        grep -q ' false true$' want.map
    done
}

@test "qcow2 extents: nbdinfo --map over the export equals it over qemu-nbd" {
    requires qemu-nbd
    make_chain 65536
    nbdinfo --map -- [ qemu-nbd -f qcow2 top.qcow2 ] | merge_nbdinfo > want.map
    serve 'nbdinfo --map "$uri"' | merge_nbdinfo > got.map
    cat want.map
    diff -u want.map got.map
    # Zero clusters in the top, allocated or not, over backing data are
    # zeros; the raw file's holes and what lies past its end too.
    grep -q "^$((10 * 65536)) .* 3$" want.map
}

@test "qcow2 extents: preallocated images map as over qemu-nbd" {
    requires qemu-nbd
    # With metadata preallocation qemu-nbd reads the clusters that are
    # holes in the file as ZERO (not HOLE); falloc is plain data.
    for o in preallocation=metadata preallocation=metadata,cluster_size=4096 \
             preallocation=falloc; do
        rm -f p.qcow2
        qemu-img create -q -f qcow2 -o "$o" p.qcow2 4M
        fill_image p.qcow2 $((4 * 1024 * 1024))
        nbdinfo --map -- [ qemu-nbd -f qcow2 p.qcow2 ] | merge_nbdinfo > want.map
        nbdkit -U - "$QCOW2_PLUGIN" file=p.qcow2 readonly=true \
            --run 'nbdinfo --map "$uri"' | merge_nbdinfo > got.map
        echo "$o"; cat want.map
        diff -u want.map got.map
        qemu-img map --output=json p.qcow2 | merge_map > want.json
        nbdkit -U - "$QCOW2_PLUGIN" file=p.qcow2 readonly=true \
            --run 'qemu-img map --output=json -f raw "$uri"' |
            merge_map > got.json
        diff -u want.json got.json
        # Metadata preallocation has data that reads as zeros.
        [[ "$o" != *metadata* ]] || grep -q ' 2$' want.map
    done
}
