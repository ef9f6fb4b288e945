#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdkit-qcow2-plugin against qemu-nbd serving the same qcow2 image, in
# one run: sequential read (nbdcopy to null:), random 4K reads and
# random 4K writes at queue depth 16 (bench/nbdload), into allocated
# clusters and into an empty image (allocating writes).  Prints one
# line per measurement and the plugin/qemu-nbd ratios; asserts nothing.
#
# Environment: SIZE (image size, default 512M), SECONDS_PER (default 5).
set -euo pipefail

: "${abs_top_builddir:=$(cd "$(dirname "$0")/.." && pwd)}"
SIZE="${SIZE:-512M}"
SECS="${SECONDS_PER:-5}"
plugin="$abs_top_builddir/plugins/qcow2/.libs/nbdkit-qcow2-plugin.so"
nbdload="$abs_top_builddir/bench/nbdload"
for c in nbdkit qemu-nbd qemu-img nbdcopy; do
    command -v "$c" >/dev/null || { echo "$c not installed" >&2; exit 77; }
done
[ -f "$plugin" ] && [ -x "$nbdload" ] || { echo "build first" >&2; exit 77; }

tmp="$(mktemp -d /tmp/qcow2-bench.XXXXXX)"
pids=()
cleanup () {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || :; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# A full image of random data, 64K clusters (qemu-img's default).
head -c "$(numfmt --from=iec "$SIZE")" /dev/urandom > "$tmp/src.raw"
qemu-img convert -f raw -O qcow2 "$tmp/src.raw" "$tmp/full.qcow2"
rm "$tmp/src.raw"
qemu-img create -q -f qcow2 "$tmp/empty.qcow2" "$SIZE"

# serve KIND IMAGE: start a server, set $uri (not in a subshell: the
# server exits with its parent).
serve () {
    local kind="$1" img="$2" sock="$tmp/$1.$RANDOM.sock" pidf="$tmp/$1.$RANDOM.pid" i
    case "$kind" in
    plugin)
        nbdkit --exit-with-parent -U "$sock" -P "$pidf" "$plugin" file="$img" 3>&- & ;;
    qemu-nbd)
        qemu-nbd -t -f qcow2 -k "$sock" --pid-file="$pidf" "$img" 3>&- & ;;
    esac
    for i in $(seq 100); do [ -s "$pidf" ] && [ -S "$sock" ] && break; sleep 0.1; done
    pids+=("$(cat "$pidf")")
    uri="nbd+unix:///?socket=$sock"
}

stop_last () { kill "${pids[-1]}"; unset 'pids[-1]'; sleep 0.3; }

field () { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }

declare -A R
for kind in plugin qemu-nbd; do
    cp --sparse=always "$tmp/full.qcow2" "$tmp/$kind.qcow2"
    serve "$kind" "$tmp/$kind.qcow2"
    t0=$(date +%s.%N)
    nbdcopy "$uri" null:
    t1=$(date +%s.%N)
    R[$kind.seq]=$(awk -v a="$t0" -v b="$t1" -v s="$(numfmt --from=iec "$SIZE")" \
                   'BEGIN { printf "%.1f", s / (b - a) / 1048576 }')
    R[$kind.rread]=$("$nbdload" --op read --pattern rand --bs 4K --qd 16 \
                     --seconds "$SECS" "$uri" | field iops)
    R[$kind.rwrite]=$("$nbdload" --op write --pattern rand --bs 4K --qd 16 \
                      --seconds "$SECS" "$uri" | field iops)
    stop_last
    cp "$tmp/empty.qcow2" "$tmp/$kind-e.qcow2"
    serve "$kind" "$tmp/$kind-e.qcow2"
    R[$kind.awrite]=$("$nbdload" --op write --pattern rand --bs 4K --qd 16 \
                      --seconds "$SECS" "$uri" | field iops)
    stop_last
done

printf '%-34s %12s %12s %8s\n' measurement plugin qemu-nbd ratio
for m in seq:"sequential read, nbdcopy (MiB/s)" \
         rread:"random 4K read, QD16 (IOPS)" \
         rwrite:"random 4K write, QD16 (IOPS)" \
         awrite:"random 4K alloc write, QD16 (IOPS)"; do
    k="${m%%:*}" label="${m#*:}"
    printf '%-34s %12s %12s %8s\n' "$label" "${R[plugin.$k]}" "${R[qemu-nbd.$k]}" \
        "$(awk -v a="${R[plugin.$k]}" -v b="${R[qemu-nbd.$k]}" 'BEGIN { printf "%.2f", a / b }')"
done
