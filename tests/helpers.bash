# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Shared helpers for the bats suites.  Servers listen on short Unix
# socket names in /tmp, write a pidfile, exit with their parent, and
# are stopped by PID only.

bats_require_minimum_version 1.5.0

: "${abs_top_builddir:=$(cd "$BATS_TEST_DIRNAME/.." && pwd)}"
: "${abs_top_srcdir:=$(cd "$BATS_TEST_DIRNAME/.." && pwd)}"
export PATH="$abs_top_builddir/tests:$abs_top_builddir/tools/nbdbackup:$PATH"

filter_path () { echo "$abs_top_builddir/filters/$1/.libs/nbdkit-$1-filter.so"; }
plugin_path () { echo "$abs_top_builddir/plugins/$1/.libs/nbdkit-$1-plugin.so"; }

# nbdbackup restore, verify and mount serve backups with the qcow2
# plugin of the build tree, not an installed one.
export NBDBACKUP_QCOW2_PLUGIN="$(plugin_path qcow2)"

# requires CMD...: skip the test when a command is missing.
requires () {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || skip "$c not installed"
    done
}

# A fresh short socket path in /tmp (sun_path is 108 bytes).
new_socket () {
    mktemp -u /tmp/nbdkit-test-sock.XXXXXX
}

# start_nbdkit NAME ARGS...: start nbdkit in the background on the
# socket in $NAME_sock, log in $BATS_TEST_TMPDIR/NAME.log, wait for
# its pidfile.  Sets ${NAME}_sock, ${NAME}_pid and ${NAME}_uri.  The
# socket is a new one, or $start_sock if set (a server restarted where
# its clients know it; a file left there by a killed one is removed).
start_nbdkit () {
    local name="$1"; shift
    local sock pidfile log end
    sock="${start_sock:-$(new_socket)}"
    [ -z "${start_sock:-}" ] || rm -f "$sock"
    pidfile="$BATS_TEST_TMPDIR/$name.pid"
    log="$BATS_TEST_TMPDIR/$name.log"
    rm -f "$pidfile"
    nbdkit --exit-with-parent -f -v -U "$sock" -P "$pidfile" "$@" \
        >"$log" 2>&1 3>&- &
    # Generous: a server on a machine busy with other work may be slow
    # to start; the bound only guards against a hang.
    end=$((SECONDS + 120))
    until [ -s "$pidfile" ]; do
        if ! kill -0 $! 2>/dev/null; then
            echo "nbdkit exited at start:" >&2; cat "$log" >&2; return 1
        fi
        if [ "$SECONDS" -ge "$end" ]; then
            echo "nbdkit did not write its pidfile within 120 s" >&2
            cat "$log" >&2; return 1
        fi
        sleep 0.1
    done
    printf -v "${name}_sock" '%s' "$sock"
    printf -v "${name}_pid" '%s' "$(cat "$pidfile")"
    printf -v "${name}_uri" '%s' "nbd+unix:///?socket=$sock"
    echo "$(cat "$pidfile") $sock" >>"$BATS_TEST_TMPDIR/servers"
}

# stop_nbdkit NAME: SIGTERM the server we started and wait for it to
# exit (its cleanup may finish a backup first).
stop_nbdkit () {
    local name="$1" pidvar="${1}_pid" sockvar="${1}_sock"
    local pid="${!pidvar}"
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || :
    wait_for "nbdkit (pid $pid) exiting after SIGTERM" \
        "! kill -0 $pid 2>/dev/null" 300
    rm -f "${!sockvar}"
    printf -v "$pidvar" '%s' ""
}

# Stop every server this test started (call from teardown).  Servers
# paused with pause_ctl are resumed first: nbdkit does not exit while
# the pause filter holds a request.
stop_all_nbdkit () {
    local pid sock
    if [ -f "$BATS_TEST_TMPDIR/paused" ]; then
        while read -r sock; do
            "$pause_ctl_cmd" "$sock" r 2>/dev/null || :
            rm -f "$sock"
        done <"$BATS_TEST_TMPDIR/paused"
        rm -f "$BATS_TEST_TMPDIR/paused"
    fi
    [ -f "$BATS_TEST_TMPDIR/servers" ] || return 0
    while read -r pid sock; do
        kill "$pid" 2>/dev/null || :
        rm -f "$sock"
    done <"$BATS_TEST_TMPDIR/servers"
    rm -f "$BATS_TEST_TMPDIR/servers"
}

# Print the log of server NAME (for failure messages).
server_log () { cat "$BATS_TEST_TMPDIR/$1.log"; }

# Allocated bytes of a file.
allocated_bytes () { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }

# data_bytes FILE: bytes of FILE that are data (SEEK_DATA/SEEK_HOLE,
# as qemu-img map sees them), not counting the filesystem's own
# metadata blocks: allocated_bytes includes an extent tree block
# whenever the filesystem splits the file's extents, which depends on
# what else the machine is writing.
data_bytes () {
    qemu-img map -U -f raw --output=json "$1" |
        jq '[.[] | select(.data) | .length] | add // 0'
}

# make_disk FILE SIZE SEED: a sparse test disk of SIZE bytes with
# random data in scattered 192 KiB runs at unaligned offsets, holes
# elsewhere, and an all-zero but allocated run.
make_disk () {
    local f="$1" size seed="${3:-1}"
    size="$(numfmt --from=iec "$2")"
    rm -f "$f"
    truncate -s "$size" "$f"
    awk -v size="$size" -v seed="$seed" 'BEGIN {
        srand(seed); n = int(size / (1024*1024)); if (n < 4) n = 4;
        for (i = 0; i < n; i++) {
            off = int(rand() * (size - 196608));
            printf "%d\n", off;
        }
    }' | while read -r off; do
        head -c 196608 /dev/urandom |
            dd of="$f" bs=4096 seek="$off" oflag=seek_bytes conv=notrunc status=none
    done
    dd if=/dev/zero of="$f" bs=65536 seek=3 count=2 conv=notrunc status=none
}

# wait_for_job STATUS-FILE: see tests/wait-for-job.
wait_for_job () { "$abs_top_srcdir/tests/wait-for-job" "$@"; }

# wait_for WHAT CONDITION [SECONDS]: evaluate the shell CONDITION (in
# this shell, so it sees the test's variables) every 0.1 s until it
# succeeds, for at most SECONDS (default 120); on time-out say what
# was awaited and fail.  Tests wait for events, never for a fixed
# time: the bound only guards against a hang.  (In a --run script,
# use the tests/wait-for script instead.)
wait_for () {
    local what="$1" cond="$2" limit="${3:-120}" end
    end=$((SECONDS + ${3:-120}))
    until eval "$cond"; do
        if [ "$SECONDS" -ge "$end" ]; then
            echo "wait_for: no $what after $limit s (waiting for: $cond)" >&2
            return 1
        fi
        sleep 0.1
    done
}

# Absolute paths of the event helpers, for --run scripts.
wait_for_cmd="$abs_top_srcdir/tests/wait-for"
wait_for_jobs_cmd="$abs_top_srcdir/tests/wait-for-jobs"
pause_ctl_cmd="$abs_top_srcdir/tests/pause-ctl"

# pause_ctl SOCKET p|r: pause or resume a server that runs
# nbdkit-pause-filter (see tests/pause-ctl).  stop_all_nbdkit resumes
# every server paused here, whatever the test did.
pause_ctl () {
    [ "$2" != p ] || echo "$1" >>"$BATS_TEST_TMPDIR/paused"
    "$pause_ctl_cmd" "$@"
}

# Control socket clients, as bash coprocesses over socat.
#
# ctl_connect NAME SOCKET: connect as client NAME; the greeting line
# goes to ${NAME}_greeting.
ctl_connect () {
    local name="$1" sock="$2" line
    eval "coproc $name { exec socat - UNIX-CONNECT:\"$sock\" 2>/dev/null; }"
    local -n fds="$name"
    IFS= read -r -t 60 -u "${fds[0]}" line || return 1
    printf -v "${name}_greeting" '%s' "$line"
}

# ctl NAME REQUEST: send a request line, print the reply line.  Events
# that arrive first are appended to $BATS_TEST_TMPDIR/events.NAME.
ctl () {
    local name="$1" req="$2" line
    local -n fds="$name"
    printf '%s\n' "$req" >&"${fds[1]}"
    while IFS= read -r -t 60 -u "${fds[0]}" line; do
        if [[ "$line" == '{"event":'* ]]; then
            echo "$line" >> "$BATS_TEST_TMPDIR/events.$name"
            continue
        fi
        printf '%s\n' "$line"
        return 0
    done
    echo "ctl: no reply to $req" >&2
    return 1
}

# ctl_event NAME EVENT: wait for an event of that name on client NAME
# and print its line.  An event that arrived earlier (while ctl waited
# for a reply) counts, but each event is returned once: two waits for
# BLOCK_JOB_COMPLETED get two events, never the first one twice.
# $BATS_TEST_TMPDIR/events.NAME keeps every event seen (tests grep
# it); events.NAME.used lists the lines ctl_event has returned.
ctl_event () {
    local name="$1" ev="$2" line n
    local -n fds="$name"
    local log="$BATS_TEST_TMPDIR/events.$name"
    local used="$BATS_TEST_TMPDIR/events.$name.used"
    touch "$log" "$used"
    n="$(awk -v ev="\"event\":\"$ev\"" '
            FILENAME == ARGV[1] { u[$1] = 1; next }
            index($0, ev) && !(FNR in u) { print FNR; exit }' "$used" "$log")"
    if [ -n "$n" ]; then
        echo "$n" >> "$used"
        sed -n "${n}p" "$log"
        return 0
    fi
    while IFS= read -r -t 120 -u "${fds[0]}" line; do
        echo "$line" >> "$log"
        if [[ "$line" == "{\"event\":\"$ev\""* ]]; then
            wc -l < "$log" >> "$used"
            printf '%s\n' "$line"
            return 0
        fi
    done
    return 1
}

# ctl_close NAME: close client NAME.
ctl_close () {
    local -n fds="$1"
    local pidvar="${1}_PID"
    exec {fds[1]}>&- 2>/dev/null || :
    wait "${!pidvar}" 2>/dev/null || :
}
