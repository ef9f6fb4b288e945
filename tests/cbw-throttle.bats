#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# The background job's speed limit (cbw-speed) and its parallel
# workers.  Behaviour only: the rate itself is measured in bench/;
# here a throttled job is only checked not to beat its limit by far,
# and copy-before-write is checked never to wait on it.

load helpers

setup () {
    cbw="$(filter_path cbw)"
    d="$BATS_TEST_TMPDIR"
}

teardown () { stop_all_nbdkit; }

@test "cbw-throttle: a throttled job is complete and not faster than its limit" {
    head -c 6M /dev/urandom > "$d/disk.img"
    run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/backup.img" cbw-status="$d/status.json" \
        cbw-speed=2M cbw-workers=1 --run true
    cat "$d/status.json"
    cmp "$d/backup.img" "$d/disk.img"
    grep -q '"state":"completed"' "$d/status.json"
    grep -q '"speed_limit":2097152' "$d/status.json"
    # 6M at 2M/s after a 1M burst takes 2.5 s; allow a wide margin.
    elapsed=$(sed 's/.*"elapsed_seconds":\([0-9.]*\).*/\1/' "$d/status.json")
    echo "elapsed $elapsed s"
    awk -v e="$elapsed" 'BEGIN { exit !(e >= 1.5) }'
}

@test "cbw-throttle: copy-before-write never waits on the speed limit" {
    requires qemu-io
    head -c 8M /dev/urandom > "$d/disk.img"
    cp "$d/disk.img" "$d/orig.img"
    # At 1 byte/s the job copies its first 1M chunk and then could not
    # copy another for twelve days, however slow the writer is to
    # start; the writer overwrites the whole disk, so copy-before-write
    # copies every other cluster (unthrottled) and the job then has
    # nothing left.  (The time-out only guards against a hang.)
    run -0 timeout 300 nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/backup.img" cbw-status="$d/status.json" \
        cbw-speed=1 cbw-workers=1 --run '
        qemu-io -f raw "$uri" -c "write -P 0x5c 0 8M" >/dev/null'
    cat "$d/status.json"
    grep -q '"state":"completed"' "$d/status.json"
    cmp "$d/backup.img" "$d/orig.img"
    before=$(sed 's/.*"bytes_before_writes":\([0-9]*\).*/\1/' "$d/status.json")
    [ "$before" -ge $((7 * 1048576)) ]
}

@test "cbw-throttle: cancel wakes a throttled job at once" {
    head -c 8M /dev/urandom > "$d/disk.img"
    # At 1 byte/s the job would take months after its first chunks;
    # once they are copied it is asleep in the throttle, and the
    # cancel at exit must wake it (the time-out is far below the
    # throttle's wait, and far above a busy machine's start-up).
    ctlsock="$(new_socket)"
    run -0 timeout 120 nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$d/backup.img" cbw-status="$d/status.json" \
        cbw-speed=1 cbw-on-exit=cancel cbw-control="$ctlsock" --run "
        '$wait_for_jobs_cmd' '$ctlsock' '\"current-progress\":[1-9]'"
    cat "$d/status.json"
    grep -q '"state":"cancelled"' "$d/status.json"
    [ ! -e "$d/backup.img" ]
    [ -e "$d/backup.img.incomplete" ]
}

@test "cbw-throttle: many workers into every target kind" {
    requires qemu-img
    make_disk "$d/disk.img" 32M 8
    start_nbdkit tgt memory 32M
    for t in "$d/b.img" "$d/b.qcow2 cbw-target-format=qcow2" "$tgt_uri"; do
        for w in 1 8 32; do
            rm -f "$d/b.img" "$d/b.qcow2"
            # shellcheck disable=SC2086
            run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" \
                cbw-target=$t cbw-workers=$w cbw-cluster-size=16K --run true
            case "$t" in
                nbd*) nbdcopy "$tgt_uri" "$d/out.img" ;;
                *qcow2*) qemu-img convert -O raw "$d/b.qcow2" "$d/out.img" ;;
                *) cp "$d/b.img" "$d/out.img" ;;
            esac
            cmp "$d/out.img" "$d/disk.img"
        done
    done
}
