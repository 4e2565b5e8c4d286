#!/usr/bin/env bash
# Seed 003: Docker's overlay2 layout, built by hand and mounted with pyunionfs.
#   image layers (alpine-like base, hello.txt added, hello.txt updated) + the container's init layer
#   + the container's own upper. Printed the way `docker inspect` shows GraphDriver.Data; a write in the
#   running "container" lands in UpperDir, and `pyunionfs-layer diff` answers like `docker diff`.
# Usage: examples/docker_overlay2.sh   (as root; PYUNIONFS / PYUNIONFS_LAYER choose the binaries)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
find_tool() {
    if [[ -x $HERE/../.venv/bin/$1 ]]; then echo "$HERE/../.venv/bin/$1"; else command -v "$1" || true; fi
}
PYUNIONFS="${PYUNIONFS:-$(find_tool pyunionfs)}"
PYUNIONFS_LAYER="${PYUNIONFS_LAYER:-$(find_tool pyunionfs-layer)}"
for tool in "$PYUNIONFS" "$PYUNIONFS_LAYER"; do
    if [[ -z $tool || ! -x $tool ]]; then
        echo "docker_overlay2: pyunionfs / pyunionfs-layer not found (run scripts/setup.sh or set PYUNIONFS, PYUNIONFS_LAYER)" >&2
        exit 1
    fi
done

TOP="$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/unionfs-docker.XXXXXX")")"
O2="$TOP/var/lib/docker/overlay2"
MERGED=""
cleanup() {
    local rc=$?
    cd /
    if [[ -n $MERGED ]] && mountpoint -q "$MERGED" 2>/dev/null; then
        fusermount3 -u "$MERGED" 2>/dev/null || fusermount3 -uz "$MERGED" 2>/dev/null || rc=1
    fi
    rm -rf "$TOP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
run() { printf '\n$ %s\n' "$*"; "$@"; }

# new_layer ID [LOWER-IDS...]: a layer directory as overlay2 keeps it: diff/, link (a short name with
# a symlink l/SHORT -> ../ID/diff), lower (the short names of the layers below, topmost first).
new_layer() {
    local id=$1; shift
    mkdir -p "$O2/$id/diff" "$O2/l"
    local short
    short="$(printf '%s' "$id" | sha256sum | tr 'a-f' 'A-F' | head -c 26)"
    printf '%s' "$short" > "$O2/$id/link"
    ln -s "../$id/diff" "$O2/l/$short"
    if (($#)); then
        local lowers=() l
        for l in "$@"; do lowers+=("l/$(cat "$O2/$l/link")"); done
        (IFS=:; printf '%s' "${lowers[*]}" > "$O2/$id/lower")
    fi
    : > "$O2/$id/committed"
}
id_of() { printf '%s' "$1" | sha256sum | cut -c1-64; }

BASE=$(id_of base); HELLO=$(id_of hello); UPDATE=$(id_of update); CTR=$(id_of container)

# Image layer 1: a small alpine-like root filesystem
new_layer "$BASE"
(cd "$O2/$BASE/diff" && mkdir -p bin dev etc home lib media mnt opt proc root run sbin srv sys tmp usr var \
    && chmod 1777 tmp && chmod 700 root && chmod 555 proc sys \
    && echo "alpine-like base" > etc/os-release && echo "PATH=/usr/bin:/bin" > etc/environment \
    && echo root:x:0:0:root:/root:/bin/sh > etc/passwd)
# Image layer 2: `RUN touch /hello.txt`; image layer 3: `RUN echo ... > /hello.txt`
new_layer "$HELLO" "$BASE"
: > "$O2/$HELLO/diff/hello.txt"
new_layer "$UPDATE" "$HELLO" "$BASE"
echo "this is an update to the hello.txt" > "$O2/$UPDATE/diff/hello.txt"
# The container: its init layer (what docker writes for every container) and its own layer
new_layer "$CTR-init" "$UPDATE" "$HELLO" "$BASE"
(cd "$O2/$CTR-init/diff" && mkdir -p dev etc && : > dev/console && : > etc/hostname && : > etc/hosts \
    && : > etc/resolv.conf && : > .dockerenv)
new_layer "$CTR" "$CTR-init" "$UPDATE" "$HELLO" "$BASE"
mkdir -p "$O2/$CTR/work" "$O2/$CTR/merged"
rm -f "$O2/$CTR/committed" "$O2/$CTR-init/committed"

LOWERDIR="$O2/$CTR-init/diff:$O2/$UPDATE/diff:$O2/$HELLO/diff:$O2/$BASE/diff"
UPPERDIR="$O2/$CTR/diff"
WORKDIR="$O2/$CTR/work"
MERGED="$O2/$CTR/merged"

run ls -l "$O2"
run cat "$O2/$CTR/lower"
echo
echo '$ docker container inspect helloworld | jq -r '"'"'.[0] | {Data: .GraphDriver.Data}'"'"
cat <<JSON
{
  "Data": {
    "LowerDir": "$LOWERDIR",
    "MergedDir": "$MERGED",
    "UpperDir": "$UPPERDIR",
    "WorkDir": "$WORKDIR"
  }
}
JSON

# docker mounts from inside overlay2 with the short l/ names (shorter mount options); so do we
cd "$O2"
run "$PYUNIONFS" -o "lowerdir=$(cat "$CTR/lower"),upperdir=$CTR/diff,workdir=$CTR/work" "$MERGED"
cd "$TOP"
run ls -l "$MERGED"
run cat "$MERGED/hello.txt"

echo; echo "# in the running container: docker exec helloworld touch /hello-world.txt; rm /etc/environment; ..."
run touch "$MERGED/hello-world.txt"
run rm "$MERGED/etc/environment"
printf '\n$ echo "NEW FILE" > /root/newfile.txt\n'
echo "NEW FILE" > "$MERGED/root/newfile.txt"
run ls -l "$MERGED"

echo; echo "# the writes landed in UpperDir; the image layers are untouched"
run ls -lR "$UPPERDIR"
run ls -l "$O2/$UPDATE/diff" "$O2/$BASE/diff/etc"

echo; echo "# docker diff helloworld"
IFS=: read -r -a LOWERS <<< "$LOWERDIR"
printf '\n$ pyunionfs-layer diff UpperDir LowerDir...\n'
"$PYUNIONFS_LAYER" diff "$UPPERDIR" "${LOWERS[@]}"

run fusermount3 -u "$MERGED"
echo
echo "docker overlay2: OK"
