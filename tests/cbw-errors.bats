#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Failing targets under each policy.  The target is a second nbdkit
# on a Unix socket: behind the error filter (EIO, or ENOSPC for a
# target that has filled up) or paused by the pause filter (a target
# too slow for cbw-copy-timeout).
#
#  - break-snapshot: every write succeeds, the disk equals pitwriter's
#    model, and the job reports failure with a message.
#  - fail-write: the writes whose copy-before-write fails get EIO and
#    change nothing; the snapshot stays exact for every cluster that
#    was copied; nothing acknowledged is lost.
#
# No test races the clock.  Where a fault must come in the middle of
# a job, or a copy must be slow, the target runs nbdkit-pause-filter:
# paused, it holds the job's (or a copy's) write for as long as the
# test wants, and the test acts on events (a held request in the
# target's log, the job's counters on the control socket).

load helpers

setup () {
    cbw="$(filter_path cbw)"
    d="$BATS_TEST_TMPDIR"
    requires qemu-io nbdcopy
}

teardown () { stop_all_nbdkit; }

# cluster FILE N: checksum of 64K cluster N.
cluster () { dd if="$1" bs=65536 skip="$2" count=1 status=none | md5sum; }

# start_paused_target ARGS...: start the target server "tgt" with
# ARGS below nbdkit-pause-filter, and pause it: nothing reaches the
# target until the --run script runs $resume_target.  Sets $psock.
start_paused_target () {
    psock="$(new_socket)"
    start_nbdkit tgt "$@" --filter=pause pause-control="$psock"
    pause_ctl "$psock" p
    resume_target="'$pause_ctl_cmd' '$psock' r"
}

# held_write: a --run command that waits until a write of the job is
# held by the paused target (nbdkit -v logs each request as it
# reaches each layer).
held_write () {
    printf '%q %q %q' "$wait_for_cmd" "a job write held by the paused target" \
        "grep -Eq 'debug: pause: (pwrite|zero)' '$d/tgt.log'"
}

# break_snapshot_oracle ARGS...: pitwriter through cbw sync=full into
# $tgt_uri with ARGS; every write must succeed and the job fail.
# $before and $after are commands for the --run script around
# pitwriter (default none).
break_snapshot_oracle () {
    make_disk "$d/disk.img" 16M 3
    head -c 8M /dev/urandom | dd of="$d/disk.img" bs=1M seek=4 conv=notrunc status=none
    cp --sparse=always "$d/disk.img" "$d/model.img"
    run -0 nbdkit -U - --filter="$cbw" --filter=delay file "$d/disk.img" \
        delay-read=5ms cbw-target="$tgt_uri" cbw-status="$d/status.json" \
        cbw-on-error=break-snapshot "$@" \
        --run "set -x; ok=0
               ${before:-:} || ok=1
               pitwriter --seed 11 --connections 4 --ops 200 --max-len 1M \
                 --model '$d/model.img' \"\$uri\" || ok=2
               ${after:-:} || ok=3
               exit \$ok"
    echo "$output"
    cat "$d/status.json"
    cmp "$d/disk.img" "$d/model.img"
    grep -q '"state":"failed"' "$d/status.json"
}

@test "cbw-errors: EIO target, break-snapshot: writes win, job fails" {
    start_nbdkit tgt --filter=error memory 16M \
        error-pwrite=EIO error-pwrite-rate=100%
    break_snapshot_oracle
    grep -q '"error":"writing the target at offset [0-9]* failed: Input/output error"' "$d/status.json"
}

@test "cbw-errors: full target (ENOSPC), break-snapshot: writes win, job fails" {
    # Writes fail with ENOSPC once the trigger file exists: the target
    # fills up after the backup has begun.  The job cannot finish
    # first: the paused target holds its first write (already past the
    # error filter, so it will land) until the trigger is on.
    start_paused_target --filter=error memory 16M \
        error-pwrite=ENOSPC error-pwrite-rate=100% error-pwrite-file="$d/full"
    before="$(held_write) && touch '$d/full' || ok=1; $resume_target"
    break_snapshot_oracle
    grep -q '"error":"writing the target at offset [0-9]* failed: No space left on device"' "$d/status.json"
    # The held write landed before the target filled up.
    grep -q 'debug: memory: \(pwrite\|zero\)' "$d/tgt.log"
    grep -q 'injecting ENOSPC error into pwrite' "$d/tgt.log"
}

@test "cbw-errors: slow target, break-snapshot: a timed-out copy breaks the snapshot" {
    # The paused target holds every copy (and the job) until pitwriter
    # is done: the first copy-before-write must time out.
    start_paused_target memory 16M
    after="$resume_target"
    break_snapshot_oracle cbw-copy-timeout=0.2
    grep -q '"error":"copy-before-write took longer than 0.2 s"' "$d/status.json"
    grep -q '"copy_timeouts":[1-9]' "$d/status.json"
    grep -q '"writes_failed":0' "$d/status.json"
}

@test "cbw-errors: EIO target, fail-write: failing writes get EIO, the snapshot stays exact" {
    start_nbdkit tgt --filter=error memory 4M \
        error-pwrite=EIO error-pwrite-rate=100% error-pwrite-file="$d/broken"
    head -c 4M /dev/urandom > "$d/disk.img"
    cp "$d/disk.img" "$d/orig.img"
    run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" cbw-sync=none \
        cbw-target="$tgt_uri" cbw-on-error=fail-write \
        cbw-status="$d/status.json" --run "
        set -x
        # Target healthy: cluster 1 is copied, the write lands.
        qemu-io -f raw \"\$uri\" -c 'write -P 0x11 65536 512' || exit 10
        touch '$d/broken'
        # Target failing: a write to cluster 2 fails and changes nothing.
        ! qemu-io -f raw \"\$uri\" -c 'write -P 0x22 131072 512' 2>&1 |
            grep -v 'Input/output error' >/dev/null
        qemu-io -f raw \"\$uri\" -c 'write -P 0x22 131072 512' 2>&1 |
            grep -q 'Input/output error' || exit 11
        # Cluster 1 is on the target already: no copy, the write lands.
        qemu-io -f raw \"\$uri\" -c 'write -P 0x33 66000 512' || exit 12
        rm '$d/broken'
        # Target healthy again: cluster 2 is copied at last.
        qemu-io -f raw \"\$uri\" -c 'write -P 0x44 131072 512' || exit 13
        nbdcopy \"$tgt_uri\" '$d/target.img'
    "
    echo "$output"
    cat "$d/status.json"
    # The snapshot is exact for both clusters.
    [ "$(cluster "$d/target.img" 1)" = "$(cluster "$d/orig.img" 1)" ]
    [ "$(cluster "$d/target.img" 2)" = "$(cluster "$d/orig.img" 2)" ]
    # Every acknowledged write is on the disk; the failed ones are not.
    qemu-io -f raw -r "$d/disk.img" -c 'read -P 0x11 65536 464' \
        -c 'read -P 0x33 66000 512' -c 'read -P 0x44 131072 512' \
        | grep -q 'read 512/512'
    cmp <(head -c 65536 "$d/disk.img") <(head -c 65536 "$d/orig.img")
    cmp <(tail -c +196609 "$d/disk.img") <(tail -c +196609 "$d/orig.img")
    grep -q '"state":"completed"' "$d/status.json"
    grep -q '"writes_failed":[1-9]' "$d/status.json"
}

@test "cbw-errors: full target (ENOSPC), fail-write: writes get EIO, the disk keeps its data" {
    start_nbdkit tgt --filter=error memory 4M \
        error-pwrite=ENOSPC error-pwrite-rate=100%
    head -c 4M /dev/urandom > "$d/disk.img"
    cp "$d/disk.img" "$d/orig.img"
    run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" cbw-sync=none \
        cbw-target="$tgt_uri" cbw-on-error=fail-write \
        cbw-status="$d/status.json" --run "
        for off in 0 100000 1000000 3000000; do
            qemu-io -f raw \"\$uri\" -c \"write -P 0x55 \$off 70000\" 2>&1 |
                grep -q 'Input/output error' || exit 10
        done"
    echo "$output"
    cmp "$d/disk.img" "$d/orig.img"
    grep -q '"writes_failed":4' "$d/status.json"
}

@test "cbw-errors: slow target, fail-write: timed-out writes get EIO, late copies still count" {
    start_paused_target memory 4M
    head -c 4M /dev/urandom > "$d/disk.img"
    cp "$d/disk.img" "$d/orig.img"
    ctlsock="$(new_socket)"
    run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" cbw-sync=none \
        cbw-target="$tgt_uri" cbw-on-error=fail-write cbw-copy-timeout=0.2 \
        cbw-status="$d/status.json" cbw-control="$ctlsock" --run "
        set -x
        # The paused target holds the copy: the write times out and fails.
        qemu-io -f raw \"\$uri\" -c 'write -P 0x66 200000 4096' 2>&1 |
            grep -q 'Input/output error' || { $resume_target; exit 10; }
        # Once the target is resumed, the helper's late copy completes
        # the cluster: later writes to it need no copy and succeed.
        $resume_target || exit 11
        # (The job counts it once the cluster is COPIED.)
        '$wait_for_jobs_cmd' '$ctlsock' '\"bytes-written\":65536,' || exit 12
        qemu-io -f raw \"\$uri\" -c 'write -P 0x77 200000 4096' || exit 13
        nbdcopy \"$tgt_uri\" '$d/target.img'
    "
    echo "$output"
    cat "$d/status.json"
    [ "$(cluster "$d/target.img" 3)" = "$(cluster "$d/orig.img" 3)" ]
    qemu-io -f raw -r "$d/disk.img" -c 'read -P 0x77 200000 4096' | grep -q 'read 4096/4096'
    grep -q '"state":"completed"' "$d/status.json"
    grep -q '"copy_timeouts":1' "$d/status.json"
    grep -q '"writes_failed":1' "$d/status.json"
}

@test "cbw-errors: source failing under the job keeps a qcow2 target incomplete" {
    make_disk "$d/disk.img" 8M 4
    run nbdkit -U - --filter="$cbw" --filter=error file "$d/disk.img" \
        error-pread=EIO error-pread-rate=100% error-pread-file="$d/bad" \
        cbw-target="$d/b.qcow2" cbw-target-format=qcow2 \
        cbw-status="$d/status.json" cbw-speed=1M --run "
        touch '$d/bad'
        qemu-io -f raw \"\$uri\" -c 'write -P 0x42 0 4M' >/dev/null"
    echo "$output"
    [ ! -e "$d/b.qcow2" ]
    [ -e "$d/b.qcow2.incomplete" ]
    grep -q '"state":"failed"' "$d/status.json"
    grep -q '"error":"reading the source at offset [0-9]* failed' "$d/status.json"
}
