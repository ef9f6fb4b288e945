# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# The backing file policy: a backing file named inside an image is
# followed only into the image's own directory (backing-policy=same-dir,
# the default) unless the user trusts the image (any) or forbids
# backing files (refuse); backing= overrides the name or switches it
# off; loops are refused.

load qcow2-helpers

setup () {
    qcow2_requires
    cd "$BATS_TEST_TMPDIR"
    mkdir -p img other img/sub
    qemu-img create -q -f qcow2 other/base.qcow2 1M
    qemu-io -f qcow2 -c "write -P 0x42 0 1M" other/base.qcow2 >/dev/null
    cp other/base.qcow2 img/sub/base.qcow2
    qemu-img create -q -f qcow2 img/alt.qcow2 1M
    qemu-io -f qcow2 -c "write -P 0x17 0 1M" img/alt.qcow2 >/dev/null
}

# serve IMG ARGS...: run nbdcopy over the plugin; $output holds errors.
serve () {
    local img="$1"; shift
    run nbdkit -U - "$QCOW2_PLUGIN" file="$img" readonly=true "$@" \
        --run 'nbdcopy "$uri" got.raw'
}

@test "qcow2: backing in a subdirectory is followed" {
    qemu-img create -q -f qcow2 -b sub/base.qcow2 -F qcow2 img/top.qcow2
    serve img/top.qcow2
    [ "$status" -eq 0 ]
    qemu-img convert -O raw img/top.qcow2 want.raw
    cmp want.raw got.raw
}

@test "qcow2: backing outside the image's directory is refused" {
    qemu-img create -q -f qcow2 -b "$PWD/other/base.qcow2" -F qcow2 img/top.qcow2
    serve img/top.qcow2
    [ "$status" -ne 0 ]
    [[ "$output" == *"is outside the image's directory; refused by the same-dir backing policy"* ]]
    qemu-img create -q -f qcow2 -b ../other/base.qcow2 -F qcow2 img/up.qcow2
    serve img/up.qcow2
    [ "$status" -ne 0 ]
    [[ "$output" == *"backing file '../other/base.qcow2' is outside the image's directory"* ]]
}

@test "qcow2: a symlink out of the directory is refused" {
    ln -s ../other/base.qcow2 img/link.qcow2
    qemu-img create -q -f qcow2 -b link.qcow2 -F qcow2 img/top.qcow2
    serve img/top.qcow2
    [ "$status" -ne 0 ]
    [[ "$output" == *"backing file 'link.qcow2' is outside the image's directory"* ]]
}

@test "qcow2: backing-policy=any follows the name" {
    qemu-img create -q -f qcow2 -b ../other/base.qcow2 -F qcow2 img/top.qcow2
    serve img/top.qcow2 backing-policy=any
    [ "$status" -eq 0 ]
    qemu-img convert -O raw img/top.qcow2 want.raw
    cmp want.raw got.raw
}

@test "qcow2: backing-policy=refuse refuses any backing file" {
    qemu-img create -q -f qcow2 -b sub/base.qcow2 -F qcow2 img/top.qcow2
    serve img/top.qcow2 backing-policy=refuse
    [ "$status" -ne 0 ]
    [[ "$output" == *"image names backing file 'sub/base.qcow2' and the backing policy is refuse"* ]]
}

@test "qcow2: backing= overrides the named backing file" {
    qemu-img create -q -f qcow2 -b ../other/base.qcow2 -F qcow2 img/top.qcow2
    qemu-io -f qcow2 -c "write -P 1 0 4k" img/top.qcow2 >/dev/null
    serve img/top.qcow2 backing=img/alt.qcow2 backing-format=qcow2
    [ "$status" -eq 0 ]
    qemu-img rebase -u -b alt.qcow2 -F qcow2 img/top.qcow2
    qemu-img convert -O raw img/top.qcow2 want.raw
    cmp want.raw got.raw
}

@test "qcow2: backing=none reads unallocated clusters as zeros" {
    qemu-img create -q -f qcow2 -b ../other/base.qcow2 -F qcow2 img/top.qcow2
    qemu-io -f qcow2 -c "write -P 1 64k 64k" img/top.qcow2 >/dev/null
    serve img/top.qcow2 backing=none
    [ "$status" -eq 0 ]
    qemu-img create -q -f qcow2 want.qcow2 1M
    qemu-io -f qcow2 -c "write -P 1 64k 64k" want.qcow2 >/dev/null
    qemu-img convert -O raw want.qcow2 want.raw
    cmp want.raw got.raw
    run -0 nbdkit -U - "$QCOW2_PLUGIN" file=img/top.qcow2 backing=none \
        readonly=true --run 'nbdinfo --map "$uri"'
    [[ "$output" == *"hole,zero"* ]]
}

@test "qcow2: a loop in the backing chain is refused" {
    qemu-img create -q -f qcow2 img/a.qcow2 1M
    qemu-img create -q -f qcow2 -u -b a.qcow2 -F qcow2 img/b.qcow2 1M
    qemu-img rebase -u -b b.qcow2 -F qcow2 img/a.qcow2
    serve img/a.qcow2
    [ "$status" -ne 0 ]
    [[ "$output" == *"a.qcow2: loop in the backing chain"* ]]
}

@test "qcow2: a missing backing file is an error" {
    qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 img/top.qcow2 1M
    serve img/top.qcow2
    [ "$status" -ne 0 ]
    [[ "$output" == *"backing file 'gone.qcow2': No such file or directory"* ]]
}

# A FIFO is refused at once: opening one for reading would wait for a
# writer forever.  timeout only bounds a regression (a hang fails the
# test after a minute instead of stalling the suite).
@test "qcow2: a FIFO as a backing file is refused, without hanging" {
    mkfifo img/fifo.raw
    qemu-img create -q -f qcow2 -u -b fifo.raw -F raw img/top.qcow2 1M
    run timeout 60 nbdkit -U - "$QCOW2_PLUGIN" file=img/top.qcow2 \
        readonly=true --run true
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"backing file $PWD/img/fifo.raw: is a FIFO, not a regular file or block device"* ]]

    # And as backing= on purpose.
    run timeout 60 nbdkit -U - "$QCOW2_PLUGIN" file=img/alt.qcow2 \
        backing=img/fifo.raw readonly=true --run true
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"backing file $PWD/img/fifo.raw: is a FIFO, not a regular file or block device"* ]]
}

@test "qcow2: a FIFO as file= is refused, without hanging" {
    mkfifo img/fifo.qcow2
    for ro in true false; do
        run timeout 60 nbdkit -U - "$QCOW2_PLUGIN" file=img/fifo.qcow2 \
            readonly=$ro --run true
        echo "$output"
        [ "$status" -eq 1 ]
        [[ "$output" == *"qcow2 image $PWD/img/fifo.qcow2: is a FIFO, not a regular file or block device"* ]]
    done
    # A directory is no image either.
    run nbdkit -U - "$QCOW2_PLUGIN" file=img/sub readonly=true --run true
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"qcow2 image $PWD/img/sub: is a directory, not a regular file or block device"* ]]
}
