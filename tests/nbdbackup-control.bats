#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup's control subcommands against real servers: status,
# snapshot start/stop (a pull of the snapshot equals the disk at the
# start instant), the raw control passthrough, backup jobs of the cbw
# filter (push, wait, cancel, set-speed: the backup equals the disk
# at the backup-start instant), and the exit statuses 1, 2, 3 and 4.

load helpers

setup () {
    requires nbdbackup nbdcopy
    d="$BATS_TEST_TMPDIR"
    fleece="$(filter_path fleece)"
    cbw="$(filter_path cbw)"
    ctlsock="$(new_socket)"
}

teardown () {
    stop_all_nbdkit
    rm -f "$ctlsock"
}

start_fleece () {
    head -c 4M /dev/urandom > "$d/disk.img"
    start_nbdkit srv --filter="$fleece" file "$d/disk.img" \
        fleece-control="$ctlsock" fleece-store="$d" \
        fleece-snapshot=on-command "$@"
}

# The cbw tests need backup-start (a cbw filter that sits idle until
# told to back up): look in the built filter.
requires_backup_start () {
    grep -q backup-start "$cbw" ||
        skip "the cbw filter has no backup-start yet"
}

start_cbw () {
    requires_backup_start
    make_disk "$d/disk.img" 32M 21
    start_nbdkit srv --filter="$cbw" file "$d/disk.img" \
        cbw-control="$ctlsock" "$@"
}

@test "nbdbackup status: version, filters, snapshot, for people and as JSON" {
    requires jq qemu-io
    start_fleece
    run -0 nbdbackup status "$ctlsock"
    [ "${lines[0]}" = "nbdkit-backup 0.1.0, pid $srv_pid" ]
    [ "${lines[1]}" = "filters: fleece" ]
    [ "${lines[2]}" = "writes in flight: 0" ]
    [ "${lines[3]}" = "jobs: none" ]
    [ "${lines[4]}" = "snapshot snapshot: inactive" ]

    run -0 nbdbackup status --json "$ctlsock"
    [ "${#lines[@]}" -eq 1 ]
    [ "$(jq -r '.pid' <<<"$output")" = "$srv_pid" ]
    [ "$(jq -c '.filters' <<<"$output")" = '["fleece"]' ]
    [ "$(jq -r '.snapshots[0].active' <<<"$output")" = false ]

    run -0 nbdbackup snapshot start "$ctlsock"
    qemu-io -f raw "$srv_uri" -c "write -P 0x55 0 1M" >/dev/null
    run -0 nbdbackup status "$ctlsock"
    [[ "${lines[4]}" == "snapshot snapshot: active, store used "*" MiB" ]]
    run -0 nbdbackup status --json "$ctlsock"
    [ "$(jq -r '.snapshots[0].active' <<<"$output")" = true ]
    [ "$(jq -r '.snapshots[0].broken' <<<"$output")" = false ]
    [ "$(jq -r '.snapshots[0]."store-used"' <<<"$output")" -ge 1048576 ]
}

@test "nbdbackup snapshot: a pull of the snapshot is the disk at the start instant" {
    requires qemu-io
    start_fleece
    snap="nbd+unix:///snapshot?socket=$srv_sock"
    qemu-io -f raw "$srv_uri" -c "write -P 0x11 0 1M" >/dev/null
    cp "$d/disk.img" "$d/instant.img"
    run -0 nbdbackup snapshot start "$ctlsock"
    [ -z "$output" ]
    # Changes after the instant do not reach the snapshot.
    qemu-io -f raw "$srv_uri" -c "write -P 0x22 512k 3M" >/dev/null
    ! cmp -s "$d/disk.img" "$d/instant.img"
    run -0 nbdbackup pull "$snap" "$d/copy.img"
    cmp "$d/copy.img" "$d/instant.img"
    # A second snapshot while one is active is refused.
    run -3 nbdbackup snapshot start "$ctlsock"
    [[ "$output" == "nbdbackup: snapshot-start: a snapshot is already active: stop it first (GenericError)" ]]
    run -0 nbdbackup snapshot stop "$ctlsock"
    [ -z "$output" ]
    run ! nbdinfo "$snap"
    # Nothing to stop: the server's own words, exit status 3.
    run -3 nbdbackup snapshot stop "$ctlsock"
    [ "$output" = "nbdbackup: snapshot-stop: no snapshot is active (DeviceNotFound)" ]
}

@test "nbdbackup control: raw requests in, raw reply lines out" {
    start_fleece
    run -0 nbdbackup control "$ctlsock" \
        '{"execute":"query-snapshots","id":"a"}' \
        '{ "execute": "snapshot-start",
           "id": 7 }'
    [ "${#lines[@]}" -eq 2 ]
    [[ "${lines[0]}" == '{"return":[{"name":"fleece","export":"snapshot","active":false,'*'"id":"a"}' ]]
    [ "${lines[1]}" = '{"return":{},"id":7}' ]
    # An error reply is printed as it came, and makes the status 3;
    # the requests after it are still sent.
    run -3 nbdbackup control "$ctlsock" '{"execute":"no-such"}' \
        '{"execute":"snapshot-stop"}'
    [ "${#lines[@]}" -eq 2 ]
    [ "${lines[0]}" = '{"error":{"class":"CommandNotFound","desc":"the command no-such has not been found"}}' ]
    [ "${lines[1]}" = '{"return":{}}' ]
    # Requests from standard input, blank lines skipped.
    run -0 nbdbackup control "$ctlsock" <<'EOF'
{"execute":"qmp_capabilities","id":1}

{"execute":"query-status","id":2}
EOF
    [ "${#lines[@]}" -eq 2 ]
    [ "${lines[0]}" = '{"return":{},"id":1}' ]
    [[ "${lines[1]}" == '{"return":{"version":"0.1.0",'*'"id":2}' ]]
    # Not a JSON object: a usage error, and nothing is sent.
    run -2 nbdbackup control "$ctlsock" '{"execute":"snapshot-start"}' \
        '{"execute":'
    [[ "$output" == *"not a JSON object: {\"execute\":"* ]]
    run -0 nbdbackup status --json "$ctlsock"
    [[ "$output" == *'"active":false'* ]]
}

@test "nbdbackup control subcommands: sockets that are not there, or not ours" {
    start_fleece
    run -1 nbdbackup status "$d/no-such.sock"
    [ "$output" = "nbdbackup: control socket $d/no-such.sock: connect: No such file or directory" ]
    run -1 nbdbackup snapshot start "$d/disk.img"
    [ "$output" = "nbdbackup: control socket $d/disk.img: connect: Connection refused" ]
    # The NBD socket answers with NBD's greeting, at once refused.
    run -1 nbdbackup status "$srv_sock"
    [[ "$output" == "nbdbackup: control socket $srv_sock: not an nbdkit-backup control socket (it sent \"NBDMAGIC"* ]]
    long="/tmp/$(printf 'x%.0s' {1..120})"
    run -1 nbdbackup control "$long" '{"execute":"query-status"}'
    [[ "$output" == *"control socket $long: the path is too long"* ]]
    # The server goes away.
    stop_nbdkit srv
    run -1 nbdbackup status "$ctlsock"
    [[ "$output" == "nbdbackup: control socket $ctlsock: connect: "* ]]
}

@test "nbdbackup control subcommands: usage errors exit 2 and name the problem" {
    run -2 nbdbackup status
    [[ "$output" == "nbdbackup status: missing SOCKET"* ]]
    run -2 nbdbackup status --bogus /tmp/x
    [[ "$output" == *"unrecognized option '--bogus'"* ]]
    run -2 nbdbackup status /tmp/x extra
    [[ "$output" == *"unexpected argument 'extra' after SOCKET"* ]]
    run -2 nbdbackup snapshot pause /tmp/x
    [[ "$output" == "nbdbackup snapshot: expected 'start' or 'stop', got 'pause'"* ]]
    run -2 nbdbackup snapshot start
    [[ "$output" == "nbdbackup snapshot: missing SOCKET"* ]]
    run -2 nbdbackup push /tmp/x
    [[ "$output" == "nbdbackup push: missing --target"* ]]
    run -2 nbdbackup push /tmp/x --target=t --sync=sometimes
    [[ "$output" == *"--sync: expected full, top, none or incremental, got 'sometimes'"* ]]
    run -2 nbdbackup push /tmp/x --target=t --backing-format=vmdk
    [[ "$output" == *"--backing-format: expected raw or qcow2, got 'vmdk'"* ]]
    run -2 nbdbackup push /tmp/x --target=t --speed=fast
    [[ "$output" == *"--speed: expected bytes per second"* ]]
    run -2 nbdbackup push /tmp/x --target=t --sync=incremental
    [[ "$output" == *"--sync=incremental needs --bitmap"* ]]
    run -2 nbdbackup push /tmp/x --target=t --bitmap-mode=never
    [[ "$output" == *"--bitmap-mode needs --bitmap"* ]]
    run -2 nbdbackup push /tmp/x --target=t --json
    [[ "$output" == *"need --wait"* ]]
    run -2 nbdbackup set-speed /tmp/x job0
    [[ "$output" == "nbdbackup set-speed: missing RATE"* ]]
    run -2 nbdbackup set-speed /tmp/x job0 lots
    [[ "$output" == *"RATE: expected bytes per second"* ]]
    run -2 nbdbackup wait /tmp/x job0 extra
    [[ "$output" == *"unexpected argument 'extra' after JOB-ID"* ]]
    run -2 nbdbackup cancel
    [[ "$output" == "nbdbackup cancel: missing SOCKET"* ]]
    run -2 nbdbackup control
    [[ "$output" == "nbdbackup control: missing SOCKET"* ]]
    run -2 nbdbackup control /tmp/x '[1,2]'
    [[ "$output" == *"not a JSON object: [1,2]"* ]]
    # Every subcommand has --help, and the top-level help lists them.
    for sub in status snapshot push wait cancel set-speed control; do
        run -0 nbdbackup "$sub" --help
        [[ "$output" == "Usage: nbdbackup $sub "* ]]
    done
    run -0 nbdbackup --help
    for sub in status snapshot push wait cancel set-speed control; do
        [[ "$output" == *"  $sub "* ]]
    done
}

@test "nbdbackup wait: a job that cbw started with the server" {
    requires qemu-io jq
    make_disk "$d/disk.img" 32M 22
    cp "$d/disk.img" "$d/instant.img"
    # cbw backs up from the server's start; fleece brings the control
    # socket, which every filter of the suite shares.
    start_nbdkit srv --filter="$cbw" --filter="$fleece" file "$d/disk.img" \
        cbw-target="$d/backup.img" cbw-speed=1M \
        fleece-control="$ctlsock" fleece-store="$d"
    qemu-io -f raw "$srv_uri" -c "write -P 0x33 0 32M" >/dev/null
    run -0 nbdbackup status --json "$ctlsock"
    id="$(jq -r '.jobs[0].id' <<<"$output")"
    [ "$(jq -r '.jobs[0].target' <<<"$output")" = "$d/backup.img" ]
    run -0 nbdbackup status "$ctlsock"
    [[ "$output" == *"job $id: "*" of 32.0 MiB ("*"%)"*"  sync full, target $d/backup.img"* ]]
    # The bar goes to stderr, is drawn at least once and erased.
    run -0 --separate-stderr nbdbackup wait --progress "$ctlsock"
    [ "$output" = "job $id completed" ]
    [[ "$stderr" == *"% ["*"/32.0 MiB"* ]]
    [[ "$stderr" == *$'\r\e[K' ]]
    cmp "$d/backup.img" "$d/instant.img"
    run -0 nbdbackup wait --json "$ctlsock" "$id"
    [ "$(jq -r '.status' <<<"$output")" = completed ]
    [ "$(jq -r '."current-progress"' <<<"$output")" = 33554432 ]
    [ "$(jq -r '."total-progress"' <<<"$output")" = 33554432 ]
    run -3 nbdbackup wait "$ctlsock" no-such-job
    [ "$output" = "nbdbackup: the server has no job 'no-such-job'" ]
}

@test "nbdbackup wait: a job that cbw started and that fails exits 4" {
    requires jq
    make_disk "$d/disk.img" 32M 23
    start_nbdkit tgt --filter=error memory 32M error=ENOSPC \
        error-pwrite-rate=1 error-zero-rate=1
    start_nbdkit srv --filter="$cbw" --filter="$fleece" file "$d/disk.img" \
        cbw-target="$tgt_uri" fleece-control="$ctlsock" fleece-store="$d"
    run -4 --separate-stderr nbdbackup wait "$ctlsock"
    [ -z "$output" ]
    [[ "$stderr" == "nbdbackup: job "*" failed: "*"No space left on device"* ]]
    run -4 --separate-stderr nbdbackup wait --json "$ctlsock"
    [ "$(jq -r '.status' <<<"$output")" = failed ]
    [ "$(jq -r '.error' <<<"$output")" != null ]
    run -0 nbdbackup status "$ctlsock"
    [[ "$output" == *": failed, "*"  error: "*"No space left on device"* ]]
}

@test "nbdbackup push: the backup is the disk at the backup-start instant" {
    requires qemu-io jq
    start_cbw
    cp "$d/disk.img" "$d/instant.img"
    # Slowly, so that the writes below land while the job runs.
    run -0 nbdbackup push "$ctlsock" --target="$d/backup.img" \
        --job-id=b1 --speed=1M
    [ -z "$output" ]
    qemu-io -f raw "$srv_uri" -c "write -P 0x22 0 32M" >/dev/null
    ! cmp -s "$d/disk.img" "$d/instant.img"
    run -0 nbdbackup status --json "$ctlsock"
    [ "$(jq -r '.jobs[0].id' <<<"$output")" = b1 ]
    [ "$(jq -r '.jobs[0].target' <<<"$output")" = "$d/backup.img" ]
    # Lift the limit, and wait.
    run -0 nbdbackup set-speed "$ctlsock" b1 0
    run -0 nbdbackup wait --no-progress "$ctlsock" b1
    [ "$output" = "job b1 completed" ]
    cmp "$d/backup.img" "$d/instant.img"
    # Waiting for a job that has ended returns at once, with the
    # same outcome; without JOB-ID the only job is meant.
    run -0 nbdbackup wait --json "$ctlsock"
    [ "$(jq -r '.id' <<<"$output")" = b1 ]
    [ "$(jq -r '.status' <<<"$output")" = completed ]
    [ "$(jq -r '."current-progress"' <<<"$output")" = \
      "$(jq -r '."total-progress"' <<<"$output")" ]
    run -0 nbdbackup status "$ctlsock"
    [[ "$output" == *"job b1: completed, "*" (100%)"* ]]
}

@test "nbdbackup push --wait: a relative qcow2 target, the server names the job" {
    requires qemu-img jq
    start_cbw
    cp "$d/disk.img" "$d/instant.img"
    cd "$d"
    run -0 nbdbackup push --target=rel.qcow2 --format=qcow2 --wait \
        --json --no-progress "$ctlsock"
    [ "${#lines[@]}" -eq 1 ]
    [ "$(jq -r '.status' <<<"$output")" = completed ]
    [ "$(jq -r '.target' <<<"$output")" = "$d/rel.qcow2" ]
    [ "$(jq -r '.error' <<<"$output")" = null ]
    run -0 qemu-img compare -f raw -F qcow2 "$d/instant.img" "$d/rel.qcow2"
}

@test "nbdbackup status: the 17th client is refused, and says why" {
    start_fleece
    # 16 clients that stay connected (their input a FIFO this test
    # holds open), each with its greeting in a file.
    mkfifo "$d/in"
    exec {hold}<>"$d/in"
    pids=()
    for i in $(seq 16); do
        socat UNIX-CONNECT:"$ctlsock" - <"$d/in" >"$d/out.$i" 2>/dev/null &
        pids+=($!)
    done
    for t in $(seq 600); do
        n=$(grep -l '^{"nbdkit-backup":' "$d"/out.* 2>/dev/null | wc -l)
        [ "$n" -eq 16 ] && break
        sleep 0.1
    done
    [ "$n" -eq 16 ]
    run -1 nbdbackup status "$ctlsock"
    [ "$output" = "nbdbackup: control socket $ctlsock: the server refused the connection: too many clients: this server serves at most 16 at a time" ]
    kill "${pids[@]}"
    wait "${pids[@]}" 2>/dev/null || :
    exec {hold}>&-
}

@test "nbdbackup push --wait: night after night on one server" {
    requires jq qemu-io
    start_cbw
    # A refused start uses up no id.
    run -3 nbdbackup push --target="$d/no/such/dir/x.img" --wait "$ctlsock"
    # Three nights: each waits on the job its own backup-start made
    # (the server never gives an id twice), not on last night's.
    for night in 1 2 3; do
        cp "$d/disk.img" "$d/instant$night.img"
        run -0 nbdbackup push --target="$d/night$night.img" --wait \
            --json --no-progress "$ctlsock"
        [ "$(jq -r '.status' <<<"$output")" = completed ]
        [ "$(jq -r '.target' <<<"$output")" = "$d/night$night.img" ]
        cmp "$d/night$night.img" "$d/instant$night.img"
        qemu-io -f raw "$srv_uri" -c "write -P $night 0 1M" >/dev/null
    done
    run -0 nbdbackup status --json "$ctlsock"
    [ "$(jq -r '.jobs[0].id' <<<"$output")" = cbw-3 ]
}

@test "nbdbackup cancel: wait then exits 4 and says so" {
    requires jq
    start_cbw
    # At 1 byte/s the job cannot end before the cancel, however slow
    # the machine.
    run -0 nbdbackup push "$ctlsock" --target="$d/c.img" --job-id=c1 \
        --speed=1
    run -0 nbdbackup cancel "$ctlsock"
    [ -z "$output" ]
    run -4 nbdbackup wait "$ctlsock" c1
    [[ "$output" == "nbdbackup: job c1 was cancelled"* ]]
    run -4 --separate-stderr nbdbackup wait --json "$ctlsock" c1
    [ "$(jq -r '.status' <<<"$output")" = cancelled ]
    [ ! -e "$d/c.img" ]
}

@test "nbdbackup push --wait: a job that fails exits 4 with its error" {
    requires jq
    start_cbw
    start_nbdkit tgt --filter=error memory 32M error=ENOSPC \
        error-pwrite-rate=1 error-zero-rate=1
    run -4 nbdbackup push "$ctlsock" --target="$tgt_uri" --job-id=f1 \
        --wait --no-progress
    [[ "$output" == *"nbdbackup: job f1 failed: "* ]]
    run -4 --separate-stderr nbdbackup wait --json "$ctlsock" f1
    [ "$(jq -r '.status' <<<"$output")" = failed ]
    [ "$(jq -r '.error' <<<"$output")" != null ]
}

@test "nbdbackup job subcommands: refusals exit 3 with the server's message" {
    start_cbw
    # No job yet.
    run -3 nbdbackup wait "$ctlsock"
    [ "$output" = "nbdbackup: the server has no job" ]
    run -3 nbdbackup wait "$ctlsock" nope
    [ "$output" = "nbdbackup: the server has no job 'nope'" ]
    run -3 nbdbackup cancel "$ctlsock" nope
    [[ "$output" == "nbdbackup: job-cancel: "*"(DeviceNotFound)" ]]
    run -3 nbdbackup set-speed "$ctlsock" nope 1M
    [[ "$output" == "nbdbackup: job-set-speed: "*"(DeviceNotFound)" ]]
    # A target the server cannot create.
    run -3 nbdbackup push "$ctlsock" --target="$d/no/such/dir/b.img"
    [[ "$output" == "nbdbackup: backup-start: "*"(GenericError)" ]]
    # And on a server without the cbw filter, backup-start is unknown.
    flctl="$(new_socket)"
    start_nbdkit fl --filter="$fleece" memory 1M fleece-control="$flctl"
    run -3 nbdbackup push "$flctl" --target="$d/b.img"
    [[ "$output" == "nbdbackup: backup-start: "*"(CommandNotFound)" ]]
}
