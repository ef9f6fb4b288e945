#!/usr/bin/env bash
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Check every POD page with podchecker: any error or warning fails.
set -euo pipefail
[ "${PODCHECKER:-no}" != no ] || { echo "podchecker not found"; exit 77; }
status=0
for p in $POD_PAGES; do
    out=$("$PODCHECKER" -warnings "$srcdir/$p" 2>&1) || status=1
    echo "$out"
    if grep -q -E 'WARNING|ERROR' <<<"$out"; then status=1; fi
done
exit $status
