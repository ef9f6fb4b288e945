# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# One instant across two servers (issue 12): seqwriter writes N to
# disk A, waits for the acknowledgement, then N to disk B, then N+1 to
# A...  A pair of snapshots taken at one instant has B = A or A - 1.
# Server B runs the pause filter above fleece, so a test can hold the
# writer between A and B (its write to B waits in the pause filter,
# outside the write gate) and hit that window for sure.

load helpers

setup () {
    requires nbdcopy socat
    truncate -s 1M "$BATS_TEST_TMPDIR/a.img" "$BATS_TEST_TMPDIR/b.img"
    ctl_a="$(new_socket)"
    ctl_b="$(new_socket)"
    pause_b="$(new_socket)"
    start_nbdkit A --filter="$(filter_path fleece)" \
        file "$BATS_TEST_TMPDIR/a.img" \
        fleece-snapshot=on-command fleece-control="$ctl_a"
    start_nbdkit B --filter=pause --filter="$(filter_path fleece)" \
        file "$BATS_TEST_TMPDIR/b.img" pause-control="$pause_b" \
        fleece-snapshot=on-command fleece-control="$ctl_b"
    status_file="$BATS_TEST_TMPDIR/writer.status"
    stopfile="$BATS_TEST_TMPDIR/writer.stop"
    writer_pid=
}

teardown () {
    if [ -n "$writer_pid" ]; then
        "$pause_ctl_cmd" "$pause_b" r 2>/dev/null || :
        touch "$stopfile"
        wait "$writer_pid" || :
    fi
    stop_all_nbdkit
    rm -f "$ctl_a" "$ctl_b" "$pause_b"
}

start_writer () {
    rm -f "$status_file" "$stopfile"
    seqwriter --status "$status_file" --stop "$stopfile" "$A_uri" "$B_uri" \
        3>&- &
    writer_pid=$!
    wait_for "the writer's first pair" "[ -s '$status_file' ]"
}

stop_writer () {
    touch "$stopfile"
    wait "$writer_pid"
    writer_pid=
}

# The last pair the writer completed.
written () { cat "$status_file" 2>/dev/null || echo 0; }

# The number on the disk behind URI (0 for a blank disk).
number_at () {
    local f="$BATS_TEST_TMPDIR/read.$RANDOM" n
    nbdcopy "$1" "$f" || return 1
    n="$(head -c 20 "$f" | tr -d '\0')"
    rm -f "$f"
    echo $((10#${n:-0}))
}

snap_uri () { echo "nbd+unix:///snapshot?socket=$1"; }

# check_pair: the snapshots of A and B were taken at one instant.
check_pair () {
    local a b
    a="$(number_at "$(snap_uri "$A_sock")")"
    b="$(number_at "$(snap_uri "$B_sock")")"
    echo "snapshot A=$a B=$b"
    [ "$b" -eq "$a" ] || [ "$b" -eq $((a - 1)) ]
}

stop_snapshots () {
    nbdbackup snapshot stop "$ctl_a"
    nbdbackup snapshot stop "$ctl_b"
}

# Hold the writer between A and B: B paused, A one ahead.
hold_writer_between () {
    pause_ctl "$pause_b" p
    wait_for "the writer's write to A with B held" \
        "[ \"\$(number_at '$A_uri')\" -gt \"\$(written)\" ]"
}

@test "group: snapshots of two servers at one instant while a writer runs" {
    start_writer
    for i in 1 2 3 4 5; do
        before="$(written)"
        run -0 nbdbackup snapshot start --group --deadline=60000 \
            "$ctl_a" "$ctl_b"
        check_pair
        stop_snapshots
        wait_for "the writer to go on" "[ \$(written) -gt $before ]"
    done
    # In the window between A and B, for sure: while every gate is
    # closed, B is resumed and the writer's write to B waits at B's
    # gate, so B's snapshot misses it and A's has N.
    hold_writer_between
    cat >"$BATS_TEST_TMPDIR/hook" <<EOF
"$pause_ctl_cmd" "$pause_b" r || exit 1
exec "$wait_for_cmd" "the write to B held at its gate" \\
    "nbdbackup control '$ctl_b' '{\"execute\":\"query-status\"}' |
     grep -q '\"writes-waiting\":1'"
EOF
    run -0 nbdbackup snapshot start --group --deadline=60000 --json \
        --before-commit="bash '$BATS_TEST_TMPDIR/hook'" \
        "$ctl_a" "$ctl_b"
    [[ "$output" == *'"committed":true'* ]]
    run -0 check_pair
    a="${output#snapshot A=}"; a="${a%% *}"; b="${output##*B=}"
    [ "$b" -eq $((a - 1)) ]
    stop_snapshots
    stop_writer
}

@test "group: two single snapshots can break the pair (the check catches it)" {
    start_writer
    hold_writer_between
    run -0 nbdbackup snapshot start "$ctl_a"
    a_then="$(written)"
    pause_ctl "$pause_b" r
    wait_for "the writer to go on" "[ \$(written) -ge $((a_then + 2)) ]"
    run -0 nbdbackup snapshot start "$ctl_b"
    run -1 check_pair
    echo "$output"
    a="${output#snapshot A=}"; a="${a%% *}"; b="${output##*B=}"
    [ "$b" -gt "$a" ]
    stop_snapshots
    stop_writer
}

@test "group: a coordinator killed between prepare and commit frees the writer" {
    start_writer
    run -137 nbdbackup snapshot start --group --deadline=600000 \
        --before-commit='kill -KILL $PPID' "$ctl_a" "$ctl_b"
    # The servers aborted when its connections closed, long before
    # the deadline: the writer goes on.
    at="$(written)"
    wait_for "the writer to go on" "[ \$(written) -ge $((at + 2)) ]"
    for ctl in "$ctl_a" "$ctl_b"; do
        run -0 nbdbackup control "$ctl" '{"execute":"query-status"}'
        [[ "$output" == *'"state":"aborted","gate-closed-us":'*'"reason":"client"'* ]]
        [[ "$output" == *'"gate-closed":false'* ]]
        [[ "$output" == *'"active":false'* ]]
    done
    # Nothing was applied, and the next group snapshot works.
    run -0 nbdbackup snapshot start --group --deadline=60000 \
        "$ctl_a" "$ctl_b"
    check_pair
    stop_snapshots
    stop_writer
}

@test "group: a hung coordinator: the servers abort at the deadline" {
    start_writer
    ctl_connect W "$ctl_a"
    nbdbackup snapshot start --group --deadline=1000 \
        --before-commit='kill -STOP $PPID' "$ctl_a" "$ctl_b" \
        2>"$BATS_TEST_TMPDIR/coord.err" 3>&- &
    coord=$!
    run -0 ctl_event W GROUP_ABORTED
    [[ "$output" == *'"reason":"deadline"'* ]]
    at="$(written)"
    wait_for "the writer to go on" "[ \$(written) -ge $((at + 2)) ]"
    # The coordinator, woken, sees the abort and fails cleanly.
    kill -CONT "$coord"
    rc=0
    wait "$coord" || rc=$?
    [ "$rc" -eq 1 ]
    cat "$BATS_TEST_TMPDIR/coord.err"
    grep -F "before the commit" "$BATS_TEST_TMPDIR/coord.err" |
        grep -F "(deadline)"
    grep -F "nothing was applied" "$BATS_TEST_TMPDIR/coord.err"
    run -0 nbdbackup control "$ctl_b" '{"execute":"query-status"}'
    [[ "$output" == *'"reason":"deadline"'* ]]
    [[ "$output" == *'"active":false'* ]]
    run -0 nbdbackup snapshot start --group --deadline=60000 \
        "$ctl_a" "$ctl_b"
    check_pair
    stop_snapshots
    stop_writer
}

@test "group: a server killed between prepare and commit: the others abort" {
    run -1 nbdbackup snapshot start --group --deadline=600000 --json \
        --before-commit="kill -KILL $B_pid;
            '$wait_for_cmd' 'server B gone' '! kill -0 $B_pid 2>/dev/null'" \
        "$ctl_a" "$ctl_b"
    echo "$output"
    [[ "$output" == *"control socket $ctl_b: the server closed the connection"* ]]
    [[ "$output" == *"nothing was applied (aborted on the 2 of 2 servers that had prepared)"* ]]
    [[ "$output" == *'"committed":false'* ]]
    run -0 nbdbackup control "$ctl_a" '{"execute":"query-status"}'
    [[ "$output" == *'"state":"aborted"'*'"reason":"abort"'* ]]
    [[ "$output" == *'"gate-closed":false'* ]]
    [[ "$output" == *'"active":false'* ]]
    # A's gate is open: a write goes through.
    run -0 nbdcopy "$BATS_TEST_TMPDIR/b.img" "$A_uri"
}
