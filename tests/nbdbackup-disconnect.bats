#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup pull hangs up politely on every way out: on SIGTERM and on
# an I/O error it stops issuing requests, waits for those in flight and
# sends NBD_CMD_DISC on every connection.  nbdkit 1.32.4/1.32.5 abort
# ("raw_send_socket: Assertion `sock >= 0' failed") when a client hangs
# up with requests in flight, and the server may be the live disk's:
# each test checks that the server is still serving and that its log
# shows a clean disconnect for each connection, and no dropped one.

load helpers

setup () {
    requires nbdbackup nbdinfo
    d="$BATS_TEST_TMPDIR"
}

teardown () { stop_all_nbdkit; }

# wait_for_data FILE: until FILE exists with some data written to it
# (the copy is under way); bounded generously.
wait_for_data () {
    local i
    for i in $(seq 1200); do
        [ -e "$1" ] && [ "$(allocated_bytes "$1")" -gt 0 ] && return 0
        sleep 0.1
    done
    echo "no data written to $1" >&2
    return 1
}

# check_clean_disconnects NAME N: server NAME's log shows N clients
# that sent NBD_CMD_DISC, and none that hung up on it.
check_clean_disconnects () {
    local log="$BATS_TEST_TMPDIR/$1.log"
    grep -a 'NBD_CMD_DISC\|Broken pipe\|Connection reset\|Assertion' "$log" || :
    [ "$(grep -ac 'client sent NBD_CMD_DISC' "$log")" -eq "$2" ]
    ! grep -aq 'Broken pipe\|Connection reset\|Assertion' "$log"
}

@test "nbdbackup pull: SIGTERM mid-copy disconnects cleanly, server survives" {
    # Each read takes 10 ms, so the copy of 64G can only be stopped.
    start_nbdkit src --filter=delay pattern 64G delay-read=10ms
    nbdbackup pull -C 2 -R 16 --json "$src_uri" "$d/out.img" \
        >"$d/json" 2>"$d/err" &
    pid=$!
    wait_for_data "$d/out.img.incomplete"
    kill -TERM "$pid"
    status=0; wait "$pid" || status=$?
    cat "$d/err"
    [ "$status" -eq 143 ]
    grep -q '"result":"error"' "$d/json"
    grep -q 'interrupted by signal 15' "$d/err"
    [ ! -e "$d/out.img" ]
    # Both connections said goodbye; the server still serves.
    check_clean_disconnects src 2
    kill -0 "$src_pid"
    run -0 nbdinfo --size "$src_uri"
    [ "$output" = 68719476736 ]
}

@test "nbdbackup pull: a read error mid-copy disconnects cleanly from both ends" {
    # Reads fail once $d/fail exists; the target is an NBD export.
    start_nbdkit src --filter=error --filter=delay pattern 64G \
        delay-read=10ms error-pread=EIO error-pread-rate=1 \
        error-pread-file="$d/fail"
    start_nbdkit dst memory 64G
    nbdbackup pull -C 2 "$src_uri" "$d/out.img" 2>"$d/err" &
    pid=$!
    wait_for_data "$d/out.img.incomplete"
    touch "$d/fail"
    status=0; wait "$pid" || status=$?
    cat "$d/err"
    [ "$status" -eq 1 ]
    grep -q 'Input/output error' "$d/err"
    check_clean_disconnects src 2
    run -0 nbdinfo --size "$src_uri"

    # The same to an NBD target: its server gets NBD_CMD_DISC too.
    rm "$d/fail"
    nbdbackup pull -C 2 "$src_uri" "$dst_uri" 2>"$d/err2" &
    pid=$!
    # The memory plugin allocates as it is written.
    for _ in $(seq 1200); do
        grep -aq 'memory: pwrite' "$BATS_TEST_TMPDIR/dst.log" && break
        sleep 0.1
    done
    touch "$d/fail"
    status=0; wait "$pid" || status=$?
    cat "$d/err2"
    [ "$status" -eq 1 ]
    check_clean_disconnects src 5
    check_clean_disconnects dst 2
    run -0 nbdinfo --size "$dst_uri"
}

@test "nbdbackup pull: a second signal stops waiting for a hung server" {
    # Every read hangs for an hour: the requests in flight never end.
    start_nbdkit src --filter=delay pattern 64G delay-read=3600
    nbdbackup pull "$src_uri" "$d/out.img" 2>"$d/err" &
    pid=$!
    for _ in $(seq 1200); do
        grep -aq 'delay: pread count=' "$BATS_TEST_TMPDIR/src.log" && break
        sleep 0.1
    done
    kill -TERM "$pid"
    # Once it has seen the first one (signals sent together merge).
    for _ in $(seq 1200); do
        grep -q 'interrupted by signal' "$d/err" && break
        sleep 0.1
    done
    kill -TERM "$pid"
    status=0; wait "$pid" || status=$?
    cat "$d/err"
    [ "$status" -eq 143 ]
    grep -q 'interrupted by signal 15' "$d/err"
    grep -q 'warning: giving up on [0-9]* request(s) in flight after a second signal' "$d/err"
    [ ! -e "$d/out.img" ]
}
