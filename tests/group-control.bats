# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# The group transaction's protocol on one server (issue 12):
# group-prepare, group-commit, group-abort, their refusals, the
# deadline and the client-gone aborts, and their events.

load helpers

setup () {
    requires socat nbdcopy
    truncate -s 1M "$BATS_TEST_TMPDIR/disk.img"
    ctl_sock="$(new_socket)"
    start_nbdkit S --filter="$(filter_path fleece)" \
        file "$BATS_TEST_TMPDIR/disk.img" \
        fleece-snapshot=on-command fleece-control="$ctl_sock"
}

teardown () {
    stop_all_nbdkit
    rm -f "$ctl_sock"
}

prepare_req () {
    echo '{"execute":"group-prepare","arguments":{"group":"'"$1"'","deadline-ms":'"${2:-600000}"',"actions":[{"type":"snapshot-start"}]}}'
}

one () { nbdbackup control "$ctl_sock" "$1"; }

@test "group: bad group-prepare arguments are refused with a message" {
    bad () {
        run -3 one "{\"execute\":\"group-prepare\",\"arguments\":$1}"
        [[ "$output" == *"\"desc\":\"$2\""* ]] || {
            echo "got: $output"; return 1; }
    }
    bad '{"deadline-ms":100,"actions":[]}' \
        "group-prepare: 'group' (the group transaction's id, a string) is missing"
    bad '{"group":"","deadline-ms":100,"actions":[]}' \
        "group-prepare: 'group' must be 1 to 128 bytes long"
    bad '{"group":"a\tb","deadline-ms":100,"actions":[]}' \
        "group-prepare: 'group' must not contain control characters (byte 0x09 at offset 1)"
    for d in 0 600001 '"5"' 1.5; do
        bad '{"group":"g","deadline-ms":'"$d"',"actions":[]}' \
            "group-prepare: 'deadline-ms' must be an integer from 1 to 600000 (milliseconds)"
    done
    bad '{"group":"g","deadline-ms":100}' \
        "group-prepare: 'actions' must be an array"
    bad '{"group":"g","deadline-ms":100,"actions":[{"type":"nonsense"}]}' \
        "group-prepare: 'nonsense' is not a transaction action"
    bad '{"group":"g","deadline-ms":100,"actions":[{"type":"snapshot-start","data":1}]}' \
        "group-prepare: action 0: 'data' must be an object"
    bad '{"group":"g","deadline-ms":100,"actions":[],"extra":1}' \
        "group-prepare: unknown argument 'extra'"
    run -3 one '{"execute":"group-commit","arguments":{}}'
    [[ "$output" == *"group-commit: 'group' (the group transaction's id, a string) is missing"* ]]
    run -3 one '{"execute":"group-commit","arguments":{"group":"nope"}}'
    [[ "$output" == *'"desc":"group-commit: no group transaction '"'nope'"' is prepared"'* ]]
    run -3 one '{"execute":"group-abort","arguments":{"group":"nope"}}'
    [[ "$output" == *'"desc":"group-abort: no group transaction '"'nope'"' is prepared"'* ]]
    # Nothing is held after any of them.
    run -0 one '{"execute":"query-status"}'
    [[ "$output" == *'"gate-closed":false,"group":null'* ]]
}

@test "group: an action that fails to prepare leaves the gate open" {
    run -0 nbdbackup snapshot start "$ctl_sock"
    run -3 one "$(prepare_req g1)"
    [[ "$output" == *'"desc":"a snapshot is already active: stop it first"'* ]]
    run -0 one '{"execute":"query-status"}'
    [[ "$output" == *'"gate-closed":false,"group":null'* ]]
    run -0 nbdcopy "$BATS_TEST_TMPDIR/disk.img" "$S_uri"
}

@test "group: prepare holds the gate until commit; refusals meanwhile" {
    ctl_connect C "$ctl_sock"
    run -0 ctl C "$(prepare_req g1)"
    [[ "$output" == '{"return":{"group":"g1","deadline-ms":600000,"prepare-us":'* ]]
    run -0 ctl_event C GROUP_PREPARED
    [[ "$output" == *'"data":{"group":"g1","deadline-ms":600000}'* ]]
    # Nothing applied yet; the gate is closed.
    run -0 one '{"execute":"query-status"}'
    [[ "$output" == *'"gate-closed":true,"group":{"group":"g1","state":"prepared","deadline-left-ms":'* ]]
    [[ "$output" == *'"active":false,"pending":true'* ]]
    run ! nbdinfo --size "nbd+unix:///snapshot?socket=$S_sock"
    [[ "$output" == *"server has no export named 'snapshot'"* ]]
    grep -F 'fleece: export snapshot: no snapshot is active' "$BATS_TEST_TMPDIR/S.log"
    # One group at a time; no other gate-closing command meanwhile.
    run -3 one "$(prepare_req g2)"
    [[ "$output" == *"\"desc\":\"group-prepare: group transaction 'g1' is already prepared: commit or abort it first\""* ]]
    run -3 one '{"execute":"snapshot-start"}'
    [[ "$output" == *"\"desc\":\"group transaction 'g1' is prepared and holds the write gate: commit or abort it first\""* ]]
    run -3 one '{"execute":"snapshot-stop"}'
    [[ "$output" == *"\"desc\":\"group transaction 'g1' is prepared and holds the write gate: commit or abort it first\""* ]]
    run -3 one '{"execute":"transaction","arguments":{"actions":[]}}'
    [[ "$output" == *"holds the write gate"* ]]
    run -3 one '{"execute":"group-commit","arguments":{"group":"g2"}}'
    [[ "$output" == *"\"desc\":\"group-commit: group transaction 'g2' is not prepared (group transaction 'g1' is)\""* ]]
    # A write waits at the gate.
    nbdcopy "$BATS_TEST_TMPDIR/disk.img" "$S_uri" 3>&- &
    copier=$!
    wait_for "a write held at the gate" \
        "one '{\"execute\":\"query-status\"}' | grep -q '\"writes-waiting\":1'"
    run -0 ctl C '{"execute":"group-commit","arguments":{"group":"g1"}}'
    [[ "$output" == '{"return":{"group":"g1","gate-closed-us":'* ]]
    run -0 ctl_event C GROUP_COMMITTED
    [[ "$output" == *'"data":{"group":"g1","gate-closed-us":'* ]]
    wait "$copier"
    run -0 one '{"execute":"query-status"}'
    [[ "$output" == *'"gate-closed":false,"group":{"group":"g1","state":"committed"'* ]]
    [[ "$output" == *'"active":true'* ]]
    run -0 ctl C '{"execute":"group-commit","arguments":{"group":"g1"}}'
    [[ "$output" == *"\"desc\":\"group-commit: group transaction 'g1' is already committed\""* ]]
    run -0 ctl C '{"execute":"group-abort","arguments":{"group":"g1"}}'
    [[ "$output" == *"\"desc\":\"group-abort: group transaction 'g1' is already committed\""* ]]
}

@test "group: group-abort applies nothing; a later commit is refused" {
    ctl_connect C "$ctl_sock"
    run -0 ctl C "$(prepare_req g1)"
    run -0 one '{"execute":"group-abort","arguments":{"group":"g1"}}'
    [[ "$output" == '{"return":{"group":"g1","gate-closed-us":'*',"reason":"abort"}}' ]]
    run -0 ctl_event C GROUP_ABORTED
    [[ "$output" == *'"data":{"group":"g1","gate-closed-us":'*',"reason":"abort"}'* ]]
    run -0 ctl C '{"execute":"group-commit","arguments":{"group":"g1"}}'
    [[ "$output" == *"\"desc\":\"group-commit: group transaction 'g1' was aborted (group-abort was asked): nothing was applied\""* ]]
    # Aborting again is fine: a coordinator aborts everywhere.
    run -0 ctl C '{"execute":"group-abort","arguments":{"group":"g1"}}'
    run -0 one '{"execute":"query-status"}'
    [[ "$output" == *'"gate-closed":false'* ]]
    [[ "$output" == *'"active":false'* ]]
}

@test "group: the server aborts by itself at the deadline" {
    ctl_connect C "$ctl_sock"
    run -0 ctl C "$(prepare_req g1 300)"
    # The client stays connected and says nothing: the deadline ends it.
    run -0 ctl_event C GROUP_ABORTED
    [[ "$output" == *'"reason":"deadline"'* ]]
    run -0 ctl C '{"execute":"group-commit","arguments":{"group":"g1"}}'
    [[ "$output" == *"\"desc\":\"group-commit: group transaction 'g1' was aborted (its deadline passed): nothing was applied\""* ]]
    run -0 one '{"execute":"query-status"}'
    [[ "$output" == *'"gate-closed":false,"group":{"group":"g1","state":"aborted","gate-closed-us":'*',"reason":"deadline"}'* ]]
    [[ "$output" == *'"active":false'* ]]
    run -0 nbdcopy "$BATS_TEST_TMPDIR/disk.img" "$S_uri"
}

@test "group: the preparing client going away aborts; another client may commit" {
    # Prepared on a one-shot connection: it closes, the group ends.
    run -0 one "$(prepare_req g1)"
    wait_for "the client-gone abort" \
        "one '{\"execute\":\"query-status\"}' | grep -q '\"reason\":\"client\"'"
    run -0 one '{"execute":"query-status"}'
    [[ "$output" == *'"gate-closed":false'* ]]
    [[ "$output" == *'"active":false'* ]]
    # Prepared on one connection, committed from another.
    ctl_connect C "$ctl_sock"
    run -0 ctl C "$(prepare_req g2)"
    run -0 one '{"execute":"group-commit","arguments":{"group":"g2"}}'
    run -0 one '{"execute":"query-status"}'
    [[ "$output" == *'"state":"committed"'* ]]
    [[ "$output" == *'"active":true'* ]]
}

@test "group: a server stopped with a group prepared exits" {
    ctl_connect C "$ctl_sock"
    run -0 ctl C "$(prepare_req g1)"
    stop_nbdkit S
}
