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
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
SIZE="${SIZE:-512M}"
SECS="${SECONDS_PER:-5}"
plugin="$abs_top_builddir/plugins/qcow2/.libs/nbdkit-qcow2-plugin.so"
requires nbdkit qemu-nbd qemu-img nbdcopy
requires_built "$plugin" "$nbdload"
scratch qcow2-bench /tmp

# A full image of random data, 64K clusters (qemu-img's default).
head -c "$(numfmt --from=iec "$SIZE")" /dev/urandom > "$data/src.raw"
qemu-img convert -f raw -O qcow2 "$data/src.raw" "$data/full.qcow2"
rm "$data/src.raw"
qemu-img create -q -f qcow2 "$data/empty.qcow2" "$SIZE"

# serve_image KIND IMAGE: serve IMAGE with the plugin or qemu-nbd;
# sets $uri (server img).
serve_image () {
    case "$1" in
    plugin)
        serve img "$plugin" file="$2" ;;
    qemu-nbd)
        new_socket
        start_server img "$sock" "$pidf" \
            qemu-nbd -t -f qcow2 -k "$sock" --pid-file="$pidf" "$2" ;;
    esac
    uri="$img_uri"
}

declare -A R
for kind in plugin qemu-nbd; do
    cp --sparse=always "$data/full.qcow2" "$data/$kind.qcow2"
    serve_image "$kind" "$data/$kind.qcow2"
    t0=$(now)
    nbdcopy "$uri" null:
    t1=$(now)
    R[$kind.seq]=$(awk -v a="$t0" -v b="$t1" -v s="$(numfmt --from=iec "$SIZE")" \
                   'BEGIN { printf "%.1f", s / (b - a) / 1048576 }')
    R[$kind.rread]=$("$nbdload" --op read --pattern rand --bs 4K --qd 16 \
                     --seconds "$SECS" "$uri" | field iops)
    R[$kind.rwrite]=$("$nbdload" --op write --pattern rand --bs 4K --qd 16 \
                      --seconds "$SECS" "$uri" | field iops)
    stop img
    cp "$data/empty.qcow2" "$data/$kind-e.qcow2"
    serve_image "$kind" "$data/$kind-e.qcow2"
    R[$kind.awrite]=$("$nbdload" --op write --pattern rand --bs 4K --qd 16 \
                      --seconds "$SECS" "$uri" | field iops)
    stop img
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
