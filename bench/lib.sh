# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Helpers the benchmark scripts share.  A script sets $here to its own
# directory and sources this file:
#
#   here="$(cd "$(dirname "$0")" && pwd)"
#   . "$here/lib.sh"
#
# Servers (nbdkit, qemu-nbd, qemu-storage-daemon) listen on Unix
# sockets in $socks, write pidfiles, are recorded in $pids and are
# stopped by PID, never by name; whatever is still running when the
# script exits is killed then, and the scratch directories removed.

set -euo pipefail
export LC_ALL=C

: "${abs_top_builddir:=$(cd "$here/.." && pwd)}"
nbdload="$abs_top_builddir/bench/nbdload"
nbdbackup="$abs_top_builddir/tools/nbdbackup/nbdbackup"

# requires CMD...: exit 77 (skip) when a command is missing.
requires () {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null || { echo "$c not installed" >&2; exit 77; }
    done
}

# requires_built FILE...: exit 77 when part of the build is missing.
requires_built () {
    local f
    for f in "$@"; do
        [ -e "$f" ] || { echo "build first" >&2; exit 77; }
    done
}

# scratch NAME DIR: make $data (for disks, in DIR) and $socks (in /tmp,
# short: sun_path is 108 bytes), and clean up on exit.
pids=()
scratch () {
    scratch_parent="$2"
    data="$(mktemp -d "$2/$1.XXXXXX")"
    socks="$(mktemp -d /tmp/bench.XXXXXX)"
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}
bench_cleanup () {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || :; done
    rm -rf "$data" "$socks"
}

# warm_memory SIZE: touch SIZE of memory and free it again, just
# before a run.  In a VM whose balloon reports free pages to the host
# (virtio-balloon free page reporting, as here), memory freed a few
# seconds ago goes back to the host, and the next run that takes it
# pays a host page fault per page: a run that writes gigabytes of page
# cache then measures the VM, not the software (the first-touch
# writer of every side fell to a third, and the sides to parity).
# Pages just freed are taken back before they are reported.  In
# /dev/shm (tmpfs: the pages are freed when the file is removed);
# skipped if it is missing.
warm_memory () {
    local f
    [ -d /dev/shm ] && [ -w /dev/shm ] || return 0
    f="$(mktemp /dev/shm/bench-warm.XXXXXX)"
    dd if=/dev/zero of="$f" bs=1M count="$(($(numfmt --from=iec "$1") >> 20))" \
       status=none 2>/dev/null || :
    rm -f "$f"
}

# settle: just before a timed run, let the machine settle.  sync;
# then, on a file system mounted with -o discard, freeing a file of
# gigabytes sends discards that the disk works through for seconds
# after `sync` returns, and whichever run comes next waits behind them
# (seen: sparse pushes of 0.12 s or 0.8 s on the same side).  So wait,
# up to 30 s, until the kernel's I/O pressure (PSI) stops growing:
# less than 5 ms of stall in 0.5 s.  Then warm_memory (WARM, default
# 4G): the wait gives the VM's balloon time to hand freed memory back
# to the host, and the run that takes it again would pay for that.
io_stall () { sed -n 's/^some .*total=//p' /proc/pressure/io 2>/dev/null; }
settle () {
    local a b i
    sync
    a=$(io_stall)
    if [ -n "$a" ]; then
        for i in $(seq 60); do
            sleep 0.5
            b=$(io_stall)
            [ $((b - a)) -lt 5000 ] && break
            a=$b
        done
    fi
    warm_memory "${WARM:-4G}"
}

# start_server NAME SOCKET PIDFILE CMD...: run the server CMD in the
# background until it has written PIDFILE and made SOCKET, its output
# in $data/NAME.log; sets ${NAME}_pid, ${NAME}_sock and ${NAME}_uri.
# Not in a subshell: the servers exit with (or are killed by) this
# script.
start_server () {
    local name="$1" sock="$2" pidf="$3" i
    shift 3
    rm -f "$sock" "$pidf"
    "$@" >"$data/$name.log" 2>&1 3>&- &
    for i in $(seq 200); do
        [ -s "$pidf" ] && [ -S "$sock" ] && break
        kill -0 $! 2>/dev/null || { cat "$data/$name.log" >&2; exit 1; }
        sleep 0.05
    done
    if ! [ -s "$pidf" ] || ! [ -S "$sock" ]; then
        echo "$1 ($name) did not start" >&2; exit 1
    fi
    printf -v "${name}_pid" '%s' "$(cat "$pidf")"
    printf -v "${name}_sock" '%s' "$sock"
    printf -v "${name}_uri" '%s' "nbd+unix:///?socket=$sock"
    pids+=("$(cat "$pidf")")
}

# new_socket: set $sock and $pidf to fresh names in $socks.
nserved=0
new_socket () {
    sock="$socks/$nserved.sock" pidf="$socks/$nserved.pid"
    nserved=$((nserved + 1))
}

# serve NAME ARGS...: nbdkit ARGS on a fresh socket (see start_server).
serve () {
    local name="$1"
    shift
    new_socket
    start_server "$name" "$sock" "$pidf" \
        nbdkit --exit-with-parent -f -U "$sock" -P "$pidf" "$@"
}

# forget PID: it has exited; cleanup must not signal it (or a reuse).
forget () {
    local p keep=()
    for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    pids=("${keep[@]}")
}

# wait_gone PID: until PID has exited; 1 if it is still there after a
# minute.
wait_gone () {
    local i
    for i in $(seq 1200); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    return 1
}

# stop NAME: SIGTERM the server NAME by PID and wait until it has gone.
stop () {
    local pidvar="${1}_pid"
    local pid="${!pidvar}"
    kill "$pid" 2>/dev/null || :
    wait_gone "$pid" || { echo "$1 ($pid) did not exit" >&2; exit 1; }
    wait "$pid" 2>/dev/null || :
    forget "$pid"
}

# wait_job STATUS PID: until the cbw job in the status file STATUS is
# no longer starting or running, while its server PID lives.
wait_job () {
    local i
    for i in $(seq 6000); do
        [ -s "$1" ] && ! grep -q '"state":"\(running\|starting\)"' "$1" && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.05
    done
    echo "the job did not finish: $(cat "$1")" >&2; exit 1
}

# field NAME [FILE]: the value of "NAME" in a one-line JSON object
# (nbdload's output, a status file) in FILE or on stdin, unquoted.
field () { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" ${2+"$2"}; }

# ratio A B: A / B to two places (0 when B is 0).
ratio () { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
# best A B: the smaller of two times (A when B is empty).
best () { awk -v a="$1" -v b="$2" 'BEGIN { print (b == "" || a + 0 < b + 0) ? a : b }'; }
# now; since T0: wall-clock seconds, and seconds since T0.
now () { date +%s.%N; }
since () { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# mib BYTES: whole MiB.
mib () { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }

# results_open NAME VERSIONS: start bench/results/NAME-DATE.txt with
# a header (the commit; kernel, CPUs, load, VERSIONS, the disks'
# scratch directory and its file system).  Then out prints a line and
# appends it there, and results_close ends it.
results_open () {
    mkdir -p "$here/results"
    results="$here/results/$1-$(date +%Y%m%d-%H%M%S).txt"
    out '# %s %s, %s\n' "$1" "$(date -Is)" \
        "$(git -C "$here" describe --always --dirty 2>/dev/null || echo unknown)"
    out '# %s, %s CPUs, load %s, %s on %s (%s)\n' "$(uname -r)" "$(nproc)" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" "$2" \
        "$scratch_parent" "$(df -PT "$data" | awk 'NR == 2 { print $2 }')"
}
# shellcheck disable=SC2059
out () { printf "$@" | tee -a "$results"; }
results_close () {
    out '\n# load at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    out 'results: %s\n' "${results#"$here/"}"
}
