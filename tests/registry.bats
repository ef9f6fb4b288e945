#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Two of the suite's filters in one server share one registry: each
# sees the other's registration and the same registry address.

load helpers

@test "registry: two filters in one process share libnbdkit-backup" {
    run -0 nbdkit -v -U - --filter="$(filter_path cbw)" \
        --filter="$abs_top_builddir/tests/.libs/nbdkit-probe-filter.so" \
        memory 1M cbw-sync=none \
        cbw-target="$BATS_TEST_TMPDIR/t.img" --run 'true'
    cbw=$(grep -o 'cbw: registry 0x[0-9a-f]* holds: .*' <<<"$output")
    probe=$(grep -o 'probe: registry 0x[0-9a-f]* holds: .*' <<<"$output")
    echo "cbw: $cbw"; echo "probe: $probe"
    [ "${cbw#cbw: }" = "${probe#probe: }" ]
    # Both filters are in the one registry (nbdkit loads the innermost
    # filter first, so the order is probe, cbw).
    [[ "$cbw" == *"holds: probe cbw" ]]
}
