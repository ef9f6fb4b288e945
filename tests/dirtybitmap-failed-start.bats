#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# A server whose start fails after cbw has begun an incremental backup
# must leave the dirty bitmap sidecar as it was.  nbdkit 1.32 runs no
# .cleanup or .unload when a filter's .after_fork fails, so nothing
# saves the file then: beginning a backup must not mark it in use
# (only taking bits away does, or a write).

load helpers

setup () {
    cbw="$(filter_path cbw)"
    fleece="$(filter_path fleece)"
    dirtybitmap="$(filter_path dirtybitmap)"
    d="$BATS_TEST_TMPDIR"
}

teardown () {
    touch "$d/release"
    stop_all_nbdkit
}

@test "dirtybitmap: a start that fails after the backup began keeps the sidecar" {
    head -c 4M /dev/urandom >"$d/disk.img"
    cp "$d/disk.img" "$d/full.img"
    nbdkit -U - --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-file="$d/bitmaps" dirtybitmap-add=b0 \
        --run 'head -c 64K /dev/zero | nbdcopy - "$uri"'
    cp "$d/bitmaps" "$d/bitmaps.before"
    # The sidecar is saved, not in use.
    [ $(( $(od -An -tu4 -j12 -N4 "$d/bitmaps") & 1 )) = 0 ]

    # The plugin opens until cbw has made its target (so cbw's start,
    # which begins the backup of b0, succeeds), then refuses: fleece,
    # outermost, starts last and fails.  The job's reads wait for
    # $d/release, so the job cannot end before the server exits.
    local sock
    sock="$(new_socket)"
    run timeout 120 nbdkit -f -U "$sock" \
        --filter="$fleece" --filter="$cbw" --filter="$dirtybitmap" \
        eval get_size="echo 4194304" \
        open="if [ -e '$d/t.qcow2.incomplete' ]; then echo 'open refused' >&2; exit 1; fi" \
        pread="for i in \$(seq 1200); do [ -e '$d/release' ] && break; sleep 0.1; done
               dd if='$d/disk.img' skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
        cbw-sync=incremental cbw-bitmap=b0 cbw-target="$d/t.qcow2" \
        cbw-target-backing=full.img dirtybitmap-file="$d/bitmaps"
    rm -f "$sock"
    touch "$d/release"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"fleece: cannot open the source"* ]]
    cmp "$d/bitmaps" "$d/bitmaps.before"

    # b0 is still good for an incremental backup.
    rm -f "$d/t.qcow2.incomplete"
    run -0 nbdkit -U - --filter="$cbw" --filter="$dirtybitmap" \
        file "$d/disk.img" cbw-sync=incremental cbw-bitmap=b0 \
        cbw-target="$d/t.qcow2" cbw-target-backing=full.img \
        dirtybitmap-file="$d/bitmaps" --run true
    [ -f "$d/t.qcow2" ]
}
