# nbdkit-backup
# Copyright (C) 2026 the nbdkit-backup authors.  BSD-3-Clause.
#
# Helpers for the dirtybitmap suites (load after helpers).

dirtybitmap="$(filter_path dirtybitmap)"

# bitmaps CLIENT: query-bitmaps, one line per bitmap:
# name count granularity recording busy persistent inconsistent
# (Coprocess descriptors do not reach pipelines: reply first, then jq.)
bitmaps () {
    local r
    r="$(ctl "$1" '{"execute":"query-bitmaps"}')" || return 1
    jq -r '.return[] | "\(.name) \(.count) \(.granularity) \(.recording) \(.busy) \(.persistent) \(.inconsistent)"' <<<"$r"
}

# reasons CLIENT: "name: inconsistent-reason" for each inconsistent
# bitmap.
reasons () {
    local r
    r="$(ctl "$1" '{"execute":"query-bitmaps"}')" || return 1
    jq -r '.return[] | select(.inconsistent) | "\(.name): \(."inconsistent-reason")"' <<<"$r"
}

# ranges CLIENT NAME: the dirty ranges as "offset+length" words on
# one line (empty when clean), or the error's description.
ranges () {
    local r
    r="$(ctl "$1" '{"execute":"query-dirty-ranges","arguments":{"name":"'"$2"'"}}')" || return 1
    jq -r 'if .return then [.return.ranges[] | "\(.offset)+\(.length)"] | join(" ")
               else "error: " + .error.desc end' <<<"$r"
}

# qmp CLIENT COMMAND [ARGS-JSON]: run a command, print {} / the error
# description / the return value.
qmp () {
    local args r
    args="$(jq -c . <<<"${3:-{\}}")" || return 1
    r="$(ctl "$1" '{"execute":"'"$2"'","arguments":'"$args"'}')" || return 1
    jq -rc 'if has("error") then "error: " + .error.desc else .return end' <<<"$r"
}

# An NBD write, zero or trim through qemu-io: io URI CMD...
io () {
    local uri="$1"; shift
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f raw "$uri" "${args[@]}" >/dev/null
}

# map_ranges FILE.qcow2: the ranges the top layer of a qcow2 image
# holds (allocated or zero in it, not from its backing), merged, as
# "offset+length" words.
top_ranges () {
    qemu-img map --output=json "$1" |
        jq -r '[.[] | select(.depth == 0)] |
               reduce .[] as $x ([]; if length > 0 and (.[-1].o + .[-1].l) == $x.start
                                     then .[-1].l += $x.length
                                     else . + [{o: $x.start, l: $x.length}] end) |
               map("\(.o)+\(.l)") | join(" ")'
}

# untracked_write FILE: change the disk file while no server tracks it
# (as an offline tool would): its bitmaps then load inconsistent, with
# the reason untracked_reason FILE prints.
untracked_write () { touch -d '+1 min' "$1"; }
untracked_reason () {
    echo "the disk file $1 was modified while no server tracked it (its mtime is not the one the last server left)"
}
