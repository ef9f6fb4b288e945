#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# One command from a fresh Debian 12 machine to a working build:
#   bash setup.sh demo     install what is missing, build, run the demo
#   bash setup.sh check    install what is missing, build, run the tests
#   bash setup.sh build    install what is missing, build
#   bash setup.sh bench    install what is missing, build, run bench/
set -euo pipefail
cd "$(dirname "$0")"

what="${1:-build}"
case "$what" in
    demo|check|build|bench) ;;
    *) echo "usage: bash setup.sh demo|check|build|bench" >&2; exit 2 ;;
esac

# The Debian packages the project needs to build, test and benchmark.
# They are installed without their Recommends (which would bring in
# gstreamer, mesa and much more through qemu-system-common), so every
# package the build, the suite, the demo or bench/ uses directly is
# named here, including those that only came as a recommendation:
#   libc6-dev     (only recommended by gcc)
#   perl          pod2man, podchecker
#   nbdkit        the plugins and filters the suite uses (memory,
#                 pattern, data, eval, sh, file, null; error, delay,
#                 pause, noextents, offset, rate)
#   libnbd-bin    nbdcopy, nbdinfo (nbdsh is not used)
#   qemu-utils    qemu-img, qemu-io, qemu-nbd
#   qemu-system-common  qemu-storage-daemon (bench/)
#   bc            bench/
#   libssl-dev    libcrypto: SHA-256 digests of nbdbackup's repository
#   libclang-rt-14-dev  clang's sanitizer and fuzzer runtimes
packages=(
    autoconf automake libtool pkg-config make gcc libc6-dev perl
    nbdkit nbdkit-plugin-dev libnbd-dev libnbd-bin
    zlib1g-dev libzstd-dev libjson-c-dev libssl-dev
    bats qemu-utils qemu-system-common socat jq bc
    clang libclang-rt-14-dev
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
        grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q \
        --no-install-recommends "${missing[@]}"
fi

jobs="$(nproc 2>/dev/null || echo 2)"
if [ ! -x configure ] || [ configure.ac -nt configure ]; then
    autoreconf -fi
fi
if [ ! -f Makefile ] || [ configure -nt config.status ]; then
    ./configure --enable-gcc-warnings
fi
make -j"$jobs"

case "$what" in
    demo)  exec ./demo.sh ;;
    check)
        # One closing line with the totals of every test-suite.log.
        summary () {
            find . -name test-suite.log -exec grep -h -E '^# (PASS|FAIL|ERROR|SKIP|XFAIL|XPASS): ' {} + |
                awk '{ n[$2] += $3 }
                     END { printf "%d passed, %d failed, %d skipped\n",
                           n["PASS:"] + n["XFAIL:"],
                           n["FAIL:"] + n["ERROR:"] + n["XPASS:"], n["SKIP:"] }'
        }
        if ! make -j"$jobs" check; then
            summary
            # Show what failed, for CI logs.
            find . -name test-suite.log -exec sh -c \
                'grep -q "^# FAIL: *[1-9]\|^# ERROR: *[1-9]" "$1" && cat "$1"' _ {} \;
            exit 1
        fi
        summary ;;
    bench) make bench ;;
esac
