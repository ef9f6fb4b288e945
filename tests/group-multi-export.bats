# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# One server, several disks (issue 12, item 3): the file plugin's
# dir= mode serves one disk per export name.  The suite's filters keep
# one snapshot, job and bitmap set per server, so they refuse such a
# plugin at start with a message, rather than mixing the disks (or,
# as before, crashing: the plugin cannot be opened outside a client
# connection in that mode).

load helpers

setup () {
    mkdir "$BATS_TEST_TMPDIR/disks"
    truncate -s 1M "$BATS_TEST_TMPDIR/disks/a" "$BATS_TEST_TMPDIR/disks/b"
}

refused () {
    local filter="$1" keeps="$2"; shift 2
    run -1 nbdkit -U - --filter="$(filter_path "$filter")" \
        file dir="$BATS_TEST_TMPDIR/disks" "$@" --run 'nbdinfo --list "$uri"'
    echo "$output"
    [[ "$output" == *"nbdkit: error: $filter: the plugin was given dir=, so it serves one disk per export name; $filter keeps $keeps per server and would mix them: serve each disk from its own nbdkit (and snapshot them together with a group transaction, see nbdkit-backup-control(7))"* ]]
}

@test "multi-export: fleece refuses the file plugin's dir= mode" {
    refused fleece "one snapshot"
}

@test "multi-export: cbw refuses the file plugin's dir= mode" {
    refused cbw "one backup job" cbw-target="$BATS_TEST_TMPDIR/backup.img"
    [ ! -e "$BATS_TEST_TMPDIR/backup.img" ]
    [ ! -e "$BATS_TEST_TMPDIR/backup.img.incomplete" ]
}

@test "multi-export: dirtybitmap refuses the file plugin's dir= mode" {
    refused dirtybitmap "one set of bitmaps" \
        dirtybitmap-file="$BATS_TEST_TMPDIR/bitmaps"
    [ ! -e "$BATS_TEST_TMPDIR/bitmaps" ]
}

@test "multi-export: a plugin that builds one disk from dir= is served" {
    nbdkit floppy --dump-plugin >/dev/null 2>&1 || skip "no floppy plugin"
    run -0 nbdkit -U - --filter="$(filter_path fleece)" \
        floppy dir="$BATS_TEST_TMPDIR/disks" \
        --run 'nbdcopy "nbd+unix:///snapshot?socket=$unixsocket" - | wc -c'
    [ "$output" -gt 0 ]
}
