#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# The copy-before-write buffer (cbw-buffer-size): a first write waits
# for the old data to be read into memory, not for the target; the
# buffer drains in the background, the job ends only once it is
# empty, and a full buffer makes writers wait for the target.  The
# target is a second nbdkit behind nbdkit-pause-filter, so "the target
# is slow" is a state the test sets, never a race against the clock.

load helpers

setup () {
    cbw="$(filter_path cbw)"
    d="$BATS_TEST_TMPDIR"
    requires qemu-io
    head -c 4M /dev/urandom > "$d/disk.img"
    cp "$d/disk.img" "$d/orig.img"
    head -c 4M /dev/zero > "$d/tgt.img"
    psock="$(new_socket)"
    start_nbdkit tgt file "$d/tgt.img" --filter=pause pause-control="$psock"
    pause_ctl "$psock" p
}

teardown () { stop_all_nbdkit; }

# cluster FILE N: checksum of 64K cluster N.
cluster () { dd if="$1" bs=65536 skip="$2" count=1 status=none | md5sum; }

# held N: a --run command that waits until N writes are held by the
# paused target (nbdkit -v logs each request reaching the filter).
held () {
    printf '%q %q %q' "$wait_for_cmd" "$1 writes held by the paused target" \
        "[ \$(grep -c 'debug: pause: pwrite' '$d/tgt.log') -ge $1 ]"
}

@test "cbw-buffer: first writes do not wait for a paused target" {
    # The client's writes must finish while the target holds every
    # request; without the buffer they would wait for it (timeout
    # only turns that hang into a failure).
    run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$tgt_uri" cbw-sync=none cbw-status="$d/status.json" \
        --run "timeout 120 qemu-io -f raw \"\$uri\" \
                 -c 'write -P 0x42 0 4096' -c 'write -P 0x43 1M 4096' \
                 -c 'write -P 0x44 $((3 << 20 | 777)) 70000' &&
               $(held 1) &&
               '$pause_ctl_cmd' '$psock' r"
    echo "$output"
    grep -q '"state":"completed"' "$d/status.json"
    grep -q '"bytes_before_writes":262144,' "$d/status.json"
    stop_nbdkit tgt
    for c in 0 16 48 49; do
        [ "$(cluster "$d/tgt.img" $c)" = "$(cluster "$d/orig.img" $c)" ]
    done
    run -0 qemu-io -f raw -c "read -P 0x43 1M 4096" "$d/disk.img"
}

@test "cbw-buffer: a full buffer makes writers wait for the target" {
    # Room for one cluster: the first write's copy fills the buffer
    # (its drain is held by the target), so the second write copies
    # to the target itself and is held there too.
    run -0 nbdkit -U - --filter="$cbw" file "$d/disk.img" \
        cbw-target="$tgt_uri" cbw-sync=none cbw-buffer-size=64K \
        cbw-status="$d/status.json" \
        --run "timeout 120 qemu-io -f raw \"\$uri\" -c 'write -P 0x42 0 4096' &&
               { qemu-io -f raw \"\$uri\" -c 'write -P 0x43 2M 4096' & w=\$!; } &&
               $(held 2) &&
               kill -0 \$w &&
               '$pause_ctl_cmd' '$psock' r && wait \$w"
    echo "$output"
    grep -q '"state":"completed"' "$d/status.json"
    stop_nbdkit tgt
    [ "$(cluster "$d/tgt.img" 0)" = "$(cluster "$d/orig.img" 0)" ]
    [ "$(cluster "$d/tgt.img" 32)" = "$(cluster "$d/orig.img" 32)" ]
}

@test "cbw-buffer: a write inside a cluster copies only its blocks, the drainer the rest" {
    # Four first writes keep the four drainers busy with a paused
    # target; cluster 8's slot then waits in the queue while three
    # writes land in it: block 0 (read), block 5 (read) and block 0
    # again (nothing read).  After the target resumes, cluster 8 on
    # the target is as it was at the instant, although the drainer
    # read its other blocks only after those writes.
    w="write -P 0x61"
    run -0 nbdkit -v -U - --filter="$cbw" file "$d/disk.img" -D cbw.engine=1 \
        cbw-target="$tgt_uri" cbw-sync=none cbw-status="$d/status.json" \
        --run "timeout 120 qemu-io -f raw \"\$uri\" \
                 -c '$w 0 4096' -c '$w 64K 4096' -c '$w 128K 4096' \
                 -c '$w 192K 4096' &&
               $(held 4) &&
               timeout 120 qemu-io -f raw \"\$uri\" \
                 -c 'write -P 0x62 512K 4096' -c 'write -P 0x63 $((512 * 1024 + 5 * 1024)) 1024' \
                 -c 'write -P 0x64 $((512 * 1024 + 100)) 200' &&
               '$pause_ctl_cmd' '$psock' r"
    echo "$output"
    grep -q '"state":"completed"' "$d/status.json"
    # 64K clusters, 1K blocks: 4K reads four blocks, 1K one, the
    # third write none.
    [ "$(grep -c 'copy cluster 8 blocks' <<<"$output")" -eq 2 ]
    grep -q 'copy cluster 8 blocks 0xf (before write, partial)' <<<"$output"
    grep -q 'copy cluster 8 blocks 0x20 (before write, partial)' <<<"$output"
    stop_nbdkit tgt
    for c in 0 1 2 3 8; do
        [ "$(cluster "$d/tgt.img" $c)" = "$(cluster "$d/orig.img" $c)" ]
    done
    run -0 qemu-io -f raw -c "read -P 0x64 $((512 * 1024 + 100)) 200" \
        -c "read -P 0x63 $((512 * 1024 + 5 * 1024)) 1024" \
        -c "read -P 0x62 $((512 * 1024 + 1024)) 3072" "$d/disk.img"
}
