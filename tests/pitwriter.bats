#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Self-checks of pitwriter, the point-in-time oracle's writer: against
# plain file and memory exports (no filter of ours) the model must
# end up equal to the disk, and --verify must catch a model that is
# not.

load helpers

setup () {
    requires nbdkit cmp
    [ -x "$abs_top_builddir/tests/pitwriter" ] ||
        skip "pitwriter not built (make -C tests pitwriter)"
    cd "$BATS_TEST_TMPDIR"
}

# disk_and_model SEED [MIB]: a disk (64M by default) with random data
# in places, and its model.
disk_and_model () {
    make_disk d.img $(( ${2:-64} * 1024 * 1024 )) "$1"
    cp d.img model.img
}

@test "pitwriter: file plugin, seed 3: model equals disk" {
    disk_and_model 3
    run -0 nbdkit -U - file d.img \
        --run 'pitwriter --seed 3 --model model.img --verify "$uri"'
    echo "$output"
    [[ "$output" == *"ops=1000 "*"verified=yes"* ]]
    cmp d.img model.img
}

@test "pitwriter: file plugin, seeds 1..20" {
    local s
    for s in $(seq 1 20); do
        disk_and_model "$s" 16
        run -0 nbdkit -U - file d.img \
            --run "pitwriter --seed $s --quiet --model model.img --verify \"\$uri\""
        cmp d.img model.img
    done
}

@test "pitwriter: file plugin, aligned requests, 1 and 16 connections" {
    local c
    for c in 1 16; do
        disk_and_model "$c" 16
        run -0 nbdkit -U - file d.img \
            --run "pitwriter --seed $c --connections $c --align 4K \
                   --max-len 256K --model model.img --verify \"\$uri\""
        cmp d.img model.img
    done
}

@test "pitwriter: memory plugin, seeds 1..20" {
    local s
    for s in $(seq 1 20); do
        rm -f model.img
        dd if=/dev/zero of=model.img bs=1M count=16 status=none
        run -0 nbdkit -U - memory 16M \
            --run "pitwriter --seed $s --quiet --model model.img --verify \"\$uri\""
    done
}

@test "pitwriter: memory plugin, export copied out equals model" {
    requires nbdcopy
    dd if=/dev/zero of=model.img bs=1M count=64 status=none
    run -0 nbdkit -U - memory 64M \
        --run 'pitwriter --seed 7 --connections 8 --model model.img "$uri" &&
               nbdcopy "$uri" out.img'
    cmp out.img model.img
}

@test "pitwriter: a seed is reproducible" {
    local run seed
    for run in a:1 b:1 c:2; do
        seed=${run#*:} run=${run%:*}
        dd if=/dev/zero of="model-$run.img" bs=1M count=16 status=none
        run -0 nbdkit -U - memory 16M \
            --run "pitwriter --seed $seed --connections 1 --model model-$run.img \"\$uri\""
        echo "$output" >"summary-$run"
    done
    # Same seed: the same requests, so the same summary and (with one
    # connection, one order) the same contents.  Another seed differs.
    cmp summary-a summary-b
    cmp model-a.img model-b.img
    run ! cmp -s model-a.img model-c.img
    run ! cmp -s <(cut -d' ' -f2- summary-a) <(cut -d' ' -f2- summary-c)
}

@test "pitwriter: --kinds restricts the request kinds" {
    dd if=/dev/zero of=model.img bs=1M count=64 status=none
    run -0 nbdkit -U - memory 64M \
        --run 'pitwriter --seed 1 --ops 100 --kinds write,trim \
               --model model.img --verify "$uri"'
    echo "$output"
    [[ "$output" == *" zero=0 zero_bytes=0 "* ]]
    [[ "$output" == *"ops=100 "* ]]
}

@test "pitwriter: a server without zero support drops zero" {
    dd if=/dev/zero of=model.img bs=1M count=64 status=none
    run -0 --separate-stderr nbdkit -U - --filter=nozero memory 64M \
        zeromode=none \
        --run 'pitwriter --seed 1 --ops 200 --model model.img --verify "$uri"'
    echo "$output"; echo "$stderr"
    [[ "$stderr" == *"does not support zero"* ]]
    [[ "$output" == *" zero=0 "* ]]
}

@test "pitwriter: --verify catches a corrupted model" {
    disk_and_model 5
    run -0 nbdkit -U - file d.img \
        --run 'pitwriter --seed 5 --quiet --model model.img "$uri"'
    cmp d.img model.img

    # Flip every bit of the byte at 12345678 in the model only.
    local b
    b=$(od -An -tu1 -j 12345678 -N 1 model.img)
    printf "\\$(printf '%03o' $(( 255 - b )))" |
        dd of=model.img bs=1 seek=12345678 conv=notrunc status=none
    run ! cmp -s d.img model.img

    run -1 nbdkit -U - file d.img \
        --run 'pitwriter --ops 0 --verify --model model.img "$uri"'
    echo "$output"
    [[ "$output" == *"differ, first at offset 12345678 "* ]]
}

@test "pitwriter: a failed request is reported and exits 1" {
    dd if=/dev/zero of=model.img bs=1M count=64 status=none
    run -1 nbdkit -U - --filter=error memory 64M error-pwrite-rate=100% \
        --run 'pitwriter --seed 1 --kinds write --model model.img "$uri"'
    echo "$output"
    [[ "$output" == *"pitwriter: write at offset "*" length "*"Input/output error"* ]]
}

@test "pitwriter: a model of the wrong size is refused" {
    truncate -s 1M model.img
    run -1 nbdkit -U - memory 64M \
        --run 'pitwriter --model model.img "$uri"'
    [[ "$output" == *"the model is 1048576 bytes but the export is 67108864 bytes"* ]]
}

@test "pitwriter: usage errors exit 2 and name the option" {
    run -2 pitwriter --bogus --model m.img nbd://x
    [[ "$output" == *"--bogus"* ]]
    run -2 pitwriter --connections 0 --model m.img nbd://x
    [[ "$output" == *"--connections"* ]]
    run -2 pitwriter --max-len 1X --model m.img nbd://x
    [[ "$output" == *"--max-len"* ]]
    run -2 pitwriter --kinds write,read --model m.img nbd://x
    [[ "$output" == *"--kinds"* ]]
    run -2 pitwriter nbd://x
    [[ "$output" == *"--model is required"* ]]
    run -2 pitwriter --model m.img
    [[ "$output" == *"missing URI"* ]]
}
