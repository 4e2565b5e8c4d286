#!/usr/bin/env bash
# Seed 002: build image layers by running commands on a union, then run a "container" on them.
#   LAYER1: a small root filesystem from the Debian package busybox-static (apt-get download + dpkg-deb -x,
#           busybox --install -s for the applet links).
#   LAYER2: a chroot on LAYER1 + an empty upper runs an "install" command; the upper is LAYER2.
#   CONTAINER: LAYER2:LAYER1 with its own upper; a command in it (chroot, and under unshare where that
#           works) reads what LAYER2 added. pyunionfs-layer diff/export show LAYER2 as an image layer.
# Usage: examples/build_layers.sh   (as root; needs network for apt-get download, or BUSYBOX_DEB=/path.deb)
# Exit status 77 (with the reason on stderr) when busybox-static can't be had.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
find_tool() {
    if [[ -x $HERE/../.venv/bin/$1 ]]; then echo "$HERE/../.venv/bin/$1"; else command -v "$1" || true; fi
}
PYUNIONFS="${PYUNIONFS:-$(find_tool pyunionfs)}"
PYUNIONFS_LAYER="${PYUNIONFS_LAYER:-$(find_tool pyunionfs-layer)}"
for tool in "$PYUNIONFS" "$PYUNIONFS_LAYER"; do
    if [[ -z $tool || ! -x $tool ]]; then
        echo "build_layers: pyunionfs / pyunionfs-layer not found (run scripts/setup.sh or set PYUNIONFS, PYUNIONFS_LAYER)" >&2
        exit 1
    fi
done
if ((EUID != 0)); then
    echo "build_layers: run as root (chroot, mknod)" >&2
    exit 1
fi

TOP="$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/unionfs-build.XXXXXX")")"
MOUNTS=()
cleanup() {
    local rc=$?
    cd /
    local m
    for m in "${MOUNTS[@]}"; do
        if mountpoint -q "$m" 2>/dev/null; then
            fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || rc=1
        fi
    done
    rm -rf "$TOP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
run() { printf '\n$ %s\n' "$*"; "$@"; }
cd "$TOP"

# ---- LAYER1: busybox-static as a root filesystem ----------------------------------------------------
LAYER1="$TOP/layer1"; LAYER2="$TOP/layer2"; CONTAINER="$TOP/container"
mkdir -p "$LAYER1/diff" debs
if [[ -n ${BUSYBOX_DEB:-} ]]; then
    cp "$BUSYBOX_DEB" debs/
else
    printf '\n$ apt-get download busybox-static\n'
    if ! (cd debs && apt-get download busybox-static >download.log 2>&1); then
        echo "build_layers: SKIP: cannot download busybox-static with apt-get: $(grep -E '^(E|W):' debs/download.log | head -1)" >&2
        exit 77
    fi
fi
DEB="$(ls debs/*.deb 2>/dev/null | head -1)"
if [[ -z $DEB ]]; then
    echo "build_layers: SKIP: no busybox-static .deb was downloaded" >&2
    exit 77
fi
run dpkg-deb -x "$DEB" "$LAYER1/diff"
(cd "$LAYER1/diff" && rm -rf usr/share && mkdir -p sbin usr/bin usr/sbin etc proc sys dev tmp root \
    && chmod 1777 tmp && chmod 700 root \
    && echo "root:x:0:0:root:/root:/bin/sh" > etc/passwd && echo "root:x:0:" > etc/group)
run chroot "$LAYER1/diff" /bin/busybox --install -s
echo "LAYER1: $(find "$LAYER1/diff" | wc -l) entries, $(du -sh "$LAYER1/diff" | cut -f1)"
run ls -l "$LAYER1/diff" "$LAYER1/diff/bin/sh"

# chroot, under `unshare -r` (a user namespace, as in the seed) where that works
UNSHARE_R=()
if unshare -r true 2>/dev/null; then UNSHARE_R=(unshare -r); fi

# ---- LAYER2: run an "install" on a union of LAYER1 ------------------------------------------------------
mkdir -p "$LAYER2"/{diff,work,merged}
MOUNTS+=("$LAYER2/merged")
run "$PYUNIONFS" -o "lowerdir=$LAYER1/diff,upperdir=$LAYER2/diff,workdir=$LAYER2/work" "$LAYER2/merged"
INSTALL='mkdir -p /usr/local/bin /etc/hello &&
printf "#!/bin/sh\necho \"hello from LAYER2, run by \$(id -u) on \$(uname -s)\"\n" > /usr/local/bin/hello &&
chmod 755 /usr/local/bin/hello &&
echo "hello 1.0 installed" > /etc/hello/version &&
echo "hello:x:1000:1000::/home/hello:/bin/sh" >> /etc/passwd &&
rm /bin/ping /bin/ping6'
printf '\n$ %s chroot %s /bin/sh -c %q\n' "${UNSHARE_R[*]}" "$LAYER2/merged" "$INSTALL"
"${UNSHARE_R[@]}" chroot "$LAYER2/merged" /bin/sh -c "$INSTALL"
run fusermount3 -u "$LAYER2/merged"
rm -rf "$LAYER2/work" "$LAYER2/merged"

echo; echo "# LAYER2 is what the command changed: new files, a copied-up /etc/passwd, two whiteouts"
run ls -lR "$LAYER2/diff"
printf '\n$ pyunionfs-layer diff layer2/diff layer1/diff\n'
"$PYUNIONFS_LAYER" diff "$LAYER2/diff" "$LAYER1/diff"
run "$PYUNIONFS_LAYER" export "$LAYER2/diff" "$TOP/layer2.tar.gz"
run tar -tvzf "$TOP/layer2.tar.gz"

# ---- the container: LAYER2:LAYER1 + its own upper --------------------------------------------------------
mkdir -p "$CONTAINER"/{diff,work,merged}
ROOTFS="$CONTAINER/merged"
MOUNTS+=("$ROOTFS")
run "$PYUNIONFS" -o "lowerdir=$LAYER2/diff:$LAYER1/diff,upperdir=$CONTAINER/diff,workdir=$CONTAINER/work" "$ROOTFS"
run chroot "$ROOTFS" /bin/sh -c 'hello; cat /etc/hello/version; grep hello /etc/passwd; ls /bin/ping 2>&1 || true'
CMD='mount -t proc proc /proc && hello && echo "processes in the container:" && ps && echo container-was-here > /tmp/mark'
if unshare -uipr --mount-proc --fork true 2>/dev/null; then
    printf '\n$ unshare -uipr --mount-proc --fork chroot %s /bin/sh -c %q\n' "$ROOTFS" "$CMD"
    unshare -uipr --mount-proc --fork chroot "$ROOTFS" /bin/sh -c "$CMD"
else
    echo; echo "# unshare -uipr does not work here; running the container command with chroot only"
    chroot "$ROOTFS" /bin/sh -c "hello && echo container-was-here > /tmp/mark"
fi
run fusermount3 -u "$ROOTFS"
echo; echo "# the container's write landed in its own upper; LAYER2 is untouched"
run ls -lR "$CONTAINER/diff"
printf '\n$ pyunionfs-layer diff container/diff layer2/diff layer1/diff\n'
"$PYUNIONFS_LAYER" diff "$CONTAINER/diff" "$LAYER2/diff" "$LAYER1/diff"
echo
echo "build layers: OK"
