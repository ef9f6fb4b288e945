#!/usr/bin/env bats
# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# nbdbackup init and list: the repository directory, its catalog,
# its lock, and every bad option, path and catalog refused with a
# message.

load helpers
load dirtybitmap-helpers
load repo-helpers

setup () { repo_setup; }
teardown () { repo_teardown; }

@test "repo init: makes a 0700 directory with a catalog; list shows it" {
    truncate -s 16M "$d/disk.img"
    start_disk
    init_repo --chunk-size=128K
    [[ "$output" == "initialized repository $repo for $live (16777216 bytes), chunk size 128.0 KiB" ]]
    [ "$(stat -c %a "$repo")" = 700 ]
    [ "$(stat -c %a "$repo/catalog.json")" = 600 ]
    run -0 jq -r '[.format, .version, ."chunk-size", .uri, .control,
                   ."snapshot-export", ."next-bitmap", .tracking.inc,
                   .pending, (.backups | length)] | join(" ")' \
        "$repo/catalog.json"
    [ "$output" = "nbdkit-backup-repository 1 131072 $live $ctlsock snapshot 1  0 0" ] ||
    [ "$output" = "nbdkit-backup-repository 1 131072 $live $ctlsock snapshot 1   0" ]
    run -0 jq -r '."bitmap-prefix" == "nbdbackup-" + .uuid[0:8] + "-"' \
        "$repo/catalog.json"
    [ "$output" = true ]
    run -0 nbdbackup list "$repo"
    [ "${lines[0]}" = "ID                 LEVEL PARENT                   SIZE     COPIED  REASON" ]
    [ "${#lines[@]}" = 1 ]
    run -0 nbdbackup list --json "$repo"
    [ "$(jq -r .repository <<<"$output")" = "$repo" ]
    # An empty directory is taken too; a relative control path is
    # kept absolute.
    mkdir "$d/empty"
    cd "$(dirname "$ctlsock")"
    run -0 nbdbackup init "$d/empty" --uri="$live" \
        --control="$(basename "$ctlsock")"
    [ "$(jq -r .control "$d/empty/catalog.json")" = "$ctlsock" ]
}

@test "repo init: refuses bad options and arguments" {
    local u="nbd+unix:///?socket=/nonexistent" c=/nonexistent.ctl
    run -2 nbdbackup init --uri="$u" --control="$c"
    [[ "$output" == "nbdbackup init: missing REPO"* ]]
    run -2 nbdbackup init "$repo" --control="$c"
    [[ "$output" == "nbdbackup init: --uri=NBD-URI is required (the live disk)"* ]]
    run -2 nbdbackup init "$repo" --uri="$u"
    [[ "$output" == "nbdbackup init: --control=SOCKET is required (the server's control socket)"* ]]
    run -2 nbdbackup init "$repo" --uri=/dev/sda --control="$c"
    [[ "$output" == "nbdbackup init: --uri: '/dev/sda' is not an NBD URI (nbd://..., nbd+unix://...)"* ]]
    run -2 nbdbackup init "$repo" --uri="$u" --control=
    [[ "$output" == "nbdbackup init: --control: empty socket path"* ]]
    for s in 2K 3M 32M x -1; do
        run -2 nbdbackup init "$repo" --uri="$u" --control="$c" --chunk-size=$s
        [[ "$output" == "nbdbackup init: --chunk-size: expected a power of 2 from 4K to 16M, got '$s'"* ]]
    done
    run -2 nbdbackup init "$repo" --uri="$u" --control="$c" --snapshot-export=
    [[ "$output" == "nbdbackup init: --snapshot-export: empty export name"* ]]
    run -2 nbdbackup init "$repo" extra --uri="$u" --control="$c"
    [[ "$output" == "nbdbackup init: unexpected argument 'extra' after REPO"* ]]
    run -2 nbdbackup init "$repo" --uri="$u" --control="$c" --bogus
    [[ "$output" == *"unrecognized option '--bogus'"* ]]
    run -2 nbdbackup list
    [[ "$output" == "nbdbackup list: missing REPO"* ]]
    run -2 nbdbackup list "$repo" extra
    [[ "$output" == "nbdbackup list: unexpected argument 'extra' after REPO"* ]]
    # No server: nothing is made.
    run -1 nbdbackup init "$repo" --uri="$u" --control="$c"
    [[ "$output" == *"$c"* ]]
    [ ! -e "$repo" ]
}

@test "repo init: refuses a server without the filters, and bad paths" {
    truncate -s 16M "$d/disk.img"
    start_nbdkit plain -t 1 --filter="$dirtybitmap" file "$d/disk.img" \
        dirtybitmap-control="$ctlsock"
    run -3 nbdbackup init "$repo" --uri="$plain_uri" --control="$ctlsock"
    [ "$output" = "nbdbackup init: control socket $ctlsock: the server does not load the fleece filter: a repository needs a server with --filter=dirtybitmap --filter=fleece (see nbdbackup(1))" ]
    [ ! -e "$repo" ]
    stop_nbdkit plain
    start_disk
    # A symlink, a file, a FIFO, a non-empty directory, a repository.
    mkdir "$d/real"
    ln -s "$d/real" "$d/link"
    run -1 nbdbackup init "$d/link" --uri="$live" --control="$ctlsock"
    [ "$output" = "nbdbackup init: repository $d/link: is a symbolic link: give the real directory" ]
    : >"$d/file"
    run -1 nbdbackup init "$d/file" --uri="$live" --control="$ctlsock"
    [ "$output" = "nbdbackup init: repository $d/file: is a regular file, not a directory" ]
    mkfifo "$d/fifo"
    run -1 nbdbackup init "$d/fifo" --uri="$live" --control="$ctlsock"
    [ "$output" = "nbdbackup init: repository $d/fifo: is a FIFO, not a directory" ]
    : >"$d/real/x"
    run -1 nbdbackup init "$d/real" --uri="$live" --control="$ctlsock"
    [ "$output" = "nbdbackup init: repository $d/real: the directory is not empty: give a new or empty directory" ]
    init_repo
    run -1 nbdbackup init "$repo" --uri="$live" --control="$ctlsock"
    [ "$output" = "nbdbackup init: repository $repo: is already a repository" ]
    # list refuses what is not a repository.
    run -1 nbdbackup list "$d/link"
    [ "$output" = "nbdbackup list: repository $d/link: is a symbolic link: give the real directory" ]
    run -1 nbdbackup list "$d/real"
    [ "$output" = "nbdbackup list: repository $d/real: not an nbdbackup repository (it has no catalog.json; make one with nbdbackup init)" ]
    run -1 nbdbackup list "$d/nonexistent"
    [ "$output" = "nbdbackup list: repository $d/nonexistent: No such file or directory" ]
}

# corrupt JQ-FILTER MESSAGE: list refuses the catalog changed by
# JQ-FILTER with "REPO/catalog.json: MESSAGE".
corrupt () {
    jq "$1" "$d/good.json" >"$repo/catalog.json"
    run -1 nbdbackup list "$repo"
    [ "$output" = "nbdbackup list: $repo/catalog.json: $2" ]
}

@test "repo list: a catalog is checked in full" {
    truncate -s 16M "$d/disk.img"
    start_disk
    init_repo
    local e='{"id":"20261203-074512","level":"full","parent":null,
              "reason":"r","instant":"2026-12-03T07:45:12.000Z",
              "size":16777216,"bitmap":null,"file":"20261203-074512.qcow2",
              "digests":"20261203-074512.digests",
              "digest":"'"$(printf '%064d' 0)"'",
              "bytes-copied":0,"bytes-zero":0,"bytes-skipped":0,
              "seconds":1.5}'
    jq ".backups = [$e]" "$repo/catalog.json" >"$d/good.json"
    cp "$d/good.json" "$repo/catalog.json"
    run -0 nbdbackup list "$repo"
    [[ "${lines[1]}" == "20261203-074512    full  -                    16.0 MiB        0 B  r" ]]
    corrupt '.version = 2' 'version 2 is newer than this nbdbackup reads (1): use a newer nbdbackup'
    corrupt '.format = "x"' "\"format\" is 'x': not an nbdbackup repository"
    corrupt 'del(.uuid)' '"uuid" is missing'
    corrupt '."chunk-size" = 1000' '"chunk-size" is out of range (4096 to 16777216)'
    corrupt '."chunk-size" = 12288' '"chunk-size" must be a power of 2'
    corrupt '.control = "rel.sock"' '"control" must be an absolute path'
    corrupt '.tracking.inc = "other"' "\"inc\": bitmap 'other' is not this repository's (its names start with '$(jq -r '."bitmap-prefix"' "$d/good.json")')"
    corrupt '.backups[0].file = "../x.qcow2"' "backups[0]: \"file\" is '../x.qcow2', expected '20261203-074512.qcow2' (a file name in the repository, never a path)"
    corrupt '.backups[0].digests = "/etc/passwd"' "backups[0]: \"digests\" is '/etc/passwd', expected '20261203-074512.digests' (a file name in the repository, never a path)"
    corrupt '.backups[0].id = "2026-12-03"' "backups[0]: \"id\" is '2026-12-03', not a backup id (YYYYMMDD-HHMMSS[.N])"
    corrupt '.backups[0].level = "inc"' "backups[0]: parent 'null' is not an earlier backup"
    corrupt '.backups[0].parent = "20261203-074512"' 'backups[0]: a full backup has no "parent" and no "bitmap"'
    corrupt '.backups[0].size = "1"' 'backups[0]: "size" must be an integer'
    corrupt '.backups[0].digest = "abc"' 'backups[0]: "digest" must be 64 lower-case hex digits'
    corrupt '.backups += [.backups[0]]' "backups[1]: id '20261203-074512' appears twice"
    corrupt '.pending = {"op":"backup"}' 'pending: "id" is missing'
    printf '{"format":' >"$repo/catalog.json"
    run -1 nbdbackup list "$repo"
    [[ "$output" == "nbdbackup list: $repo/catalog.json: not valid JSON ("* ]]
    rm "$repo/catalog.json"
    ln -s "$d/good.json" "$repo/catalog.json"
    run -1 nbdbackup list "$repo"
    [[ "$output" == "nbdbackup list: catalog $repo/catalog.json: "* ]]
}
