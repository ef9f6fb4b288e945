# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Helpers for the repository suites (repo-*.bats; load after helpers
# and dirtybitmap-helpers).  The disk's server is the one a
# repository needs: dirtybitmap + fleece (on command) over a file,
# a control socket, persistent bitmaps, -t 1 (nbdkit 1.32 aborts when
# a client hangs up with requests in flight: see nbdbackup(1), BUGS).

fleece="$(filter_path fleece)"

repo_setup () {
    requires nbdbackup qemu-img qemu-io nbdcopy jq
    d="$BATS_TEST_TMPDIR"
    ctlsock="$(new_socket)"
    srvsock="$(new_socket)"
    repo="$d/repo"
}

repo_teardown () {
    stop_all_nbdkit
    rm -f "$ctlsock" "$srvsock" "${pausesock:-}"
}

# start_disk [EXTRA-ARGS...]: serve $d/disk.img as srv (see above),
# always on the socket $srvsock (the catalog names it), so a restart
# comes back where the repository expects it.  With pause=1 in the
# environment, nbdkit-pause-filter sits on top, controlled on
# $pausesock.
start_disk () {
    local pre=()
    if [ "${pause:-0}" = 1 ]; then
        pausesock="${pausesock:-$(new_socket)}"
        rm -f "$pausesock"
        pre=(--filter=pause)
        set -- "$@" pause-control="$pausesock"
    fi
    start_sock="$srvsock" start_nbdkit srv -t 1 "${pre[@]}" --filter="$dirtybitmap" \
        --filter="$fleece" file "$d/disk.img" \
        fleece-snapshot=on-command fleece-store="$d" \
        dirtybitmap-control="$ctlsock" dirtybitmap-file="$d/bitmaps" "$@"
    live="nbd+unix:///?socket=$srv_sock"
}

# init_repo [OPTIONS...]: nbdbackup init of $repo for the server.
init_repo () {
    run -0 nbdbackup init "$repo" --uri="$live" --control="$ctlsock" "$@"
}

# write_some SEED COUNT: COUNT writes of random data, zeroes and
# discards through the live export (qemu-io, one connection, done when
# it returns: the writer is quiet afterwards).
write_some () {
    local seed="$1" n="$2" size cmds=() i off len kind
    size="$(stat -c %s "$d/disk.img")"
    RANDOM="$seed"
    for ((i = 0; i < n; i++)); do
        off=$(( (RANDOM * 32768 + RANDOM) % (size - 300000) ))
        len=$(( RANDOM % 200000 + 1 ))
        kind=$(( RANDOM % 4 ))
        case "$kind" in
            0|1) cmds+=("write -P $(( RANDOM % 255 + 1 )) $off $len") ;;
            2)   cmds+=("write -z $off $len") ;;
            3)   cmds+=("discard $off $len") ;;
        esac
    done
    io "$live" "${cmds[@]}"
}

# snap_disk NAME: the oracle, a copy of the disk while the writer is
# quiet (every write acknowledged is in the file: the file plugin
# writes with pwrite).
snap_disk () { cp --sparse=always "$d/disk.img" "$d/$1"; }

# last_id: the id of the newest backup.
last_id () { nbdbackup list --json "$repo" | jq -r '.backups[-1].id'; }

# entry ID FIELD: a member of backup ID in the catalog.
entry () {
    jq -r --arg id "$1" '.backups[] | select(.id == $id) | .["'"$2"'"]' \
        "$repo/catalog.json"
}

# check_backup ID ORACLE: the chain of ID converted by qemu-img alone,
# and restored by nbdbackup restore, equals ORACLE; every file of the
# chain passes qemu-img check; the digest list is the SHA-256 of each
# chunk of ORACLE and its digest the catalog's.
check_backup () {
    local id="$1" oracle="$2" f chunk
    run -0 qemu-img info --backing-chain "$repo/$id.qcow2"
    echo "$output"
    for f in $(qemu-img info --backing-chain --output=json "$repo/$id.qcow2" |
               jq -r '.[].filename'); do
        run -0 qemu-img check "$f"
    done
    rm -f "$d/converted.raw"
    run -0 qemu-img convert -O raw "$repo/$id.qcow2" "$d/converted.raw"
    cmp "$d/converted.raw" "$oracle"
    run -0 qemu-img compare -f qcow2 -F raw "$repo/$id.qcow2" "$oracle"
    # And through nbdbackup's own restore, which checks every digest.
    rm -f "$d/restored.raw"
    run -0 nbdbackup restore --id="$id" "$repo" "$d/restored.raw"
    cmp "$d/restored.raw" "$oracle"
    chunk="$(jq -r '."chunk-size"' "$repo/catalog.json")"
    diff <(split -b "$chunk" --filter=sha256sum "$oracle" | awk '{print $1}') \
         <(tail -c +33 "$repo/$id.digests" | od -An -v -tx1 | tr -d ' \n' |
           fold -w 64; echo)
    [ "$(sha256sum <"$repo/$id.digests" | awk '{print $1}')" = \
      "$(entry "$id" digest)" ]
}

# our_bitmaps: the server's bitmaps of the repository, as "name
# recording inconsistent" lines, sorted.
our_bitmaps () {
    local prefix
    prefix="$(jq -r '."bitmap-prefix"' "$repo/catalog.json")"
    nbdbackup bitmap list --json "$ctlsock" |
        jq -r --arg p "$prefix" '.[] | select(.name | startswith($p)) |
                                 "\(.name) \(.recording) \(.inconsistent)"' |
        sort
}

# tracked: the catalog's tracked bitmaps as "inc-name diff-name".
tracked () { jq -r '"\(.tracking.inc) \(.tracking.diff)"' "$repo/catalog.json"; }

# check_tracking: the server has exactly the two bitmaps the catalog
# tracks, both recording and consistent.
check_tracking () {
    local inc diff
    read -r inc diff < <(tracked)
    run -0 our_bitmaps
    [ "$output" = "$(printf '%s true false\n%s true false\n' "$inc" "$diff" | sort)" ]
}
