#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Fuzz the qcow2 header and table parser from the seed corpus of small
# images (common/utils/run-fuzzer.sh does the building and running).
set -euo pipefail
: "${srcdir:=.}"
exec "$srcdir/../utils/run-fuzzer.sh" fuzz-qcow2 "$srcdir/fuzz-corpus" 65536
