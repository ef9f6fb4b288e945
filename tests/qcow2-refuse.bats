# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Images the plugin cannot serve safely are refused at start with an
# error that names the problem, and never crash the server.

load qcow2-helpers

setup () {
    qcow2_requires
    cd "$BATS_TEST_TMPDIR"
    qemu-img create -q -f qcow2 t.qcow2 4M
    qemu-io -f qcow2 -c "write -P 1 0 200k" t.qcow2 >/dev/null
}

# poke FILE OFFSET NBYTES VALUE: store VALUE big-endian.
poke () {
    local f="$1" off="$2" n="$3" v="$4" i hex=""
    for ((i = n - 1; i >= 0; i--)); do
        hex+=$(printf '\\x%02x' $(( (v >> (i * 8)) & 255 )))
    done
    printf "$hex" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}

# refused IMG MESSAGE [ARGS...]: nbdkit fails to start, naming it.
refused () {
    local img="$1" msg="$2"; shift 2
    run nbdkit -U - "$QCOW2_PLUGIN" file="$img" "$@" --run true
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$msg"* ]]
    [[ "$output" != *"Segmentation"* && "$output" != *"Abort"* ]]
}

@test "qcow2: refuse a file that is not qcow2" {
    head -c 1M /dev/zero > raw.img
    refused raw.img "raw.img: not a qcow2 image (bad magic)"
    printf 'QFI\xfb' > short.img
    refused short.img "short.img: file is too short to be a qcow2 image"
}

@test "qcow2: refuse encryption" {
    # The header's crypt_method field (offset 32): 1 is AES, 2 is LUKS.
    # Made by hand rather than by qemu-img, whose LUKS set-up times a
    # key derivation against the thread's CPU clock.
    cp t.qcow2 aes.qcow2
    poke aes.qcow2 32 4 1
    refused aes.qcow2 "aes.qcow2: encrypted qcow2 images are not supported" readonly=true
    cp t.qcow2 luks.qcow2
    poke luks.qcow2 32 4 2
    refused luks.qcow2 "luks.qcow2: encrypted qcow2 images are not supported" readonly=true
    # A full disk encryption header extension (0x0537be77) in the
    # first extension slot, after the header_length bytes of header.
    cp t.qcow2 ext.qcow2
    local hlen
    hlen=$(od -An -tu1 -j100 -N4 ext.qcow2 | awk '{ print $1*16777216 + $2*65536 + $3*256 + $4 }')
    [ "$hlen" -ge 104 ]
    poke ext.qcow2 "$hlen" 4 $((0x0537be77))
    poke ext.qcow2 $((hlen + 4)) 4 16
    refused ext.qcow2 "ext.qcow2: encrypted qcow2 images are not supported" readonly=true
}

@test "qcow2: refuse external data files" {
    qemu-img create -q -f qcow2 -o data_file=data.raw ext.qcow2 1M
    refused ext.qcow2 "ext.qcow2: external data files are not supported" readonly=true
}

@test "qcow2: refuse extended L2 entries" {
    qemu-img create -q -f qcow2 -o extended_l2=on x.qcow2 1M
    refused x.qcow2 "x.qcow2: extended L2 entries (subclusters) are not supported" readonly=true
}

@test "qcow2: refuse unknown incompatible feature bits" {
    poke t.qcow2 72 8 $((1 << 10))
    refused t.qcow2 "t.qcow2: unknown incompatible feature bits 0x400" readonly=true
}

@test "qcow2: refuse writing to a dirty image, allow reading it" {
    poke t.qcow2 72 8 1
    refused t.qcow2 "t.qcow2: image is marked dirty"
    run -0 nbdkit -U - "$QCOW2_PLUGIN" file=t.qcow2 readonly=true --run 'nbdcopy "$uri" out.raw'
}

@test "qcow2: refuse writing to a corrupt image, allow reading it" {
    poke t.qcow2 72 8 2
    refused t.qcow2 "t.qcow2: image is marked corrupt; writing is unsafe"
    run -0 nbdkit -U - "$QCOW2_PLUGIN" file=t.qcow2 readonly=true --run 'nbdcopy "$uri" out.raw'
}

@test "qcow2: refuse a truncated image" {
    truncate -s 100000 t.qcow2
    refused t.qcow2 "t.qcow2: L1 table at 0x30000 (8 bytes) is beyond the end of the file (truncated image?)" readonly=true
}

@test "qcow2: refuse an unaligned L1 table" {
    poke t.qcow2 40 8 $((0x30000 + 512))
    refused t.qcow2 "t.qcow2: L1 table offset 0x30200 is not cluster aligned" readonly=true
}

@test "qcow2: refuse an L1 table overlapping the header" {
    poke t.qcow2 40 8 0
    refused t.qcow2 "t.qcow2: L1 table offset 0 overlaps the header" readonly=true
}

@test "qcow2: refuse a refcount table out of bounds" {
    poke t.qcow2 48 8 $((1 << 40))
    refused t.qcow2 "t.qcow2: refcount table at 0x10000000000 (65536 bytes) is beyond the end of the file" readonly=true
}

@test "qcow2: refuse a refcount table overlapping the L1 table" {
    poke t.qcow2 48 8 $((0x30000))
    refused t.qcow2 "t.qcow2: L1 table overlaps the refcount table" readonly=true
}

@test "qcow2: refuse an unaligned L2 table offset" {
    poke t.qcow2 $((0x30000)) 8 $(( (1 << 63) | 0x40200 ))
    refused t.qcow2 "t.qcow2: L2 table offset 0x40200 is not cluster aligned" readonly=true
}

@test "qcow2: refuse a bad cluster size and version" {
    poke t.qcow2 20 4 22
    refused t.qcow2 "t.qcow2: invalid cluster size (cluster_bits = 22)" readonly=true
    poke t.qcow2 20 4 16
    poke t.qcow2 4 4 4
    refused t.qcow2 "t.qcow2: unsupported qcow2 version 4" readonly=true
}

@test "qcow2: refuse writing to an image with internal snapshots" {
    qemu-img snapshot -c snap1 t.qcow2
    refused t.qcow2 "t.qcow2: image has internal snapshots; writing to it is not supported"
    run -0 nbdkit -U - "$QCOW2_PLUGIN" file=t.qcow2 readonly=true --run 'nbdcopy "$uri" out.raw'
    qemu-img convert -O raw t.qcow2 want.raw
    cmp want.raw out.raw
}

@test "qcow2: a corrupt L2 entry fails the read, not the server" {
    # The first L2 table is at 0x40000; entry 0 points at a data cluster.
    poke t.qcow2 $((0x40000)) 8 $(( (1 << 63) | 0x58000 ))
    run nbdkit -U - "$QCOW2_PLUGIN" file=t.qcow2 readonly=true \
        --run 'nbdcopy "$uri" out.raw; echo "nbdcopy=$?"; nbdinfo --size "$uri"'
    echo "$output"
    [[ "$output" == *"data cluster offset 0x58000 is not cluster aligned"* ]]
    [[ "$output" == *"nbdcopy=1"* ]]
    [[ "$output" == *"4194304"* ]]
}

@test "qcow2: bad parameters name the parameter" {
    refused t.qcow2 "backing-policy must be same-dir, any or refuse" backing-policy=maybe
    refused t.qcow2 "create-cluster-size must be a power of 2 from 512 to 2M" create-cluster-size=3000
    run nbdkit -U - "$QCOW2_PLUGIN" --run true
    [[ "$output" == *"you must supply the file=<IMAGE> parameter"* ]]
}
