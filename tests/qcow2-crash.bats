# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# A crash (kill -9 of the server) in the middle of writes, zeroes and
# trims leaves an image that `qemu-img check -r all` repairs, and data
# flushed before the crash is intact.  Where the kill lands does not
# matter: every assertion holds for any point.

load qcow2-helpers

setup () {
    qcow2_requires
    [ -x "$abs_top_builddir/tests/pitwriter" ] || skip "pitwriter not built"
    cd "$BATS_TEST_TMPDIR"
}

teardown () { stop_all_nbdkit; }

crash_one () {
    local opts="$1"
    qemu-img create -q -f qcow2 -o "$opts" t.qcow2 16M
    head -c 8M /dev/urandom > a.raw
    # Flushed data in the first half (nbdcopy flushes before exiting).
    nbdkit -U - "$QCOW2_PLUGIN" file=t.qcow2 --run 'nbdcopy a.raw "$uri"'
    # Writes confined to the second half, killed part way: once they
    # have begun to allocate clusters (the image grows), and long
    # before the writer could run out of requests.
    truncate -s 8M model.raw
    local size0
    size0="$(stat -c %s t.qcow2)"
    start_nbdkit srv --filter=offset "$QCOW2_PLUGIN" file=t.qcow2 \
        offset=8M range=8M
    pitwriter --quiet --seed 3 --ops 100000000 --max-len 64K --model model.raw \
        "$srv_uri" >/dev/null 2>&1 &
    local writer=$!
    wait_for "writes allocating clusters in t.qcow2" \
        '[ "$(stat -c %s t.qcow2)" -gt "$size0" ]'
    kill -9 "$srv_pid"
    wait "$writer" || :
    run qemu-img check -r all t.qcow2
    echo "$output"
    [[ "$output" != *"Data may be corrupted"* ]]
    check_clean t.qcow2
    qemu-img convert -O raw t.qcow2 after.raw
    cmp -n 8388608 a.raw after.raw
}

@test "qcow2: kill -9 during writes, compat 1.1, 4K clusters" {
    crash_one cluster_size=4K,compat=1.1
}

@test "qcow2: kill -9 during writes, compat 0.10, 512 byte clusters" {
    crash_one cluster_size=512,compat=0.10
}
