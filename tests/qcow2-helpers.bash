# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Helpers for the qcow2-*.bats suites: images made by qemu-img and
# qemu-io, and comparisons with QEMU as the referee.

load helpers

QCOW2_PLUGIN="$(plugin_path qcow2)"

qcow2_requires () {
    requires nbdkit nbdcopy nbdinfo qemu-img qemu-io
    [ -f "$QCOW2_PLUGIN" ] || skip "qcow2 plugin not built"
}

# fill_image IMG SIZE: data, zeroes and discards at assorted offsets
# (some unaligned to any cluster size), written by qemu-io.
fill_image () {
    local img="$1" size="$2"
    qemu-io -f qcow2 \
        -c "write -P 0x11 0 100k" \
        -c "write -P 0x22 300k 5k" \
        -c "write -P 0x23 333333 77777" \
        -c "write -z 600k 128k" \
        -c "write -P 0x44 1M 1k" \
        -c "write -P 0x33 $((size - 70000)) 70000" \
        -c "discard 20k 40k" \
        -c "write -z -u 2M 256k" \
        "$img" >/dev/null
}

# read_matches IMG [PLUGIN-ARGS...]: the plugin's export, copied with
# nbdcopy, equals `qemu-img convert -O raw` of the image.
read_matches () {
    local img="$1"; shift
    local want="$BATS_TEST_TMPDIR/want.raw" got="$BATS_TEST_TMPDIR/got.raw"
    rm -f "$want" "$got"
    qemu-img convert -O raw "$img" "$want"
    nbdkit -U - "$QCOW2_PLUGIN" file="$img" readonly=true "$@" \
        --run "nbdcopy \"\$uri\" $got"
    cmp "$want" "$got"
}

# Sample the map every STEP bytes: "offset data zero" per line, from
# qemu-img map of the image file (the whole chain, as qemu-nbd and so
# the plugin's base:allocation describe it).
qemu_map_samples () {
    local img="$1" size="$2" step="$3"
    qemu-img map --output=json "$img" | awk -v size="$size" -v step="$step" '
        function num(k,   m) { match($0, "\"" k "\": [0-9]+"); return substr($0, RSTART + length(k) + 4, RLENGTH - length(k) - 4) + 0 }
        function flag(k) { return index($0, "\"" k "\": true") > 0 }
        /"start"/ {
            s = num("start"); l = num("length");
            a = flag("data") ? 1 : 0; z = flag("zero") ? 1 : 0;
            for (o = s - s % step; o < s + l; o += step) if (o >= s) { A[o] = a; Z[o] = z }
        }
        END { for (o = 0; o < size; o += step) print o, A[o], Z[o] }'
}

# The same from nbdinfo --map over the plugin (data = not HOLE).
nbd_map_samples () {
    local uri="$1" size="$2" step="$3"
    nbdinfo --map "$uri" | awk -v size="$size" -v step="$step" '
        { s = $1; l = $2; t = $3;
          a = (t % 2 == 1) ? 0 : 1; z = (int(t / 2) % 2 == 1) ? 1 : 0;
          for (o = s - s % step; o < s + l; o += step) if (o >= s) { A[o] = a; Z[o] = z } }
        END { for (o = 0; o < size; o += step) print o, A[o], Z[o] }'
}

# map_matches IMG SIZE STEP [PLUGIN-ARGS...]
map_matches () {
    local img="$1" size="$2" step="$3"; shift 3
    qemu_map_samples "$img" "$size" "$step" > "$BATS_TEST_TMPDIR/qmap"
    nbdkit -U - "$QCOW2_PLUGIN" file="$img" readonly=true "$@" \
        --run "$(declare -f nbd_map_samples); nbd_map_samples \"\$uri\" $size $step" \
        > "$BATS_TEST_TMPDIR/nmap"
    diff -u "$BATS_TEST_TMPDIR/qmap" "$BATS_TEST_TMPDIR/nmap"
}

# check_clean IMG: qemu-img check finds no errors and no leaks.
check_clean () {
    run qemu-img check "$1"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"No errors were found on the image."* ]]
    [[ "$output" != *"leaked"* ]]
}
