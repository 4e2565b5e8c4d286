#!/usr/bin/env bash
# The seed walkthrough (shared/seeds/000, 001, 003) on a pyunionfs mount:
#   lower: f1 f2 f3   upper: f3 f4
#   create merged/f5, remove merged/f2 (whiteout c 0,0 in upper), modify merged/f1 (copy-up).
# Usage: examples/seed_walkthrough.sh        (PYUNIONFS=/path/to/pyunionfs to choose the binary)
# Needs FUSE (/dev/fuse, fusermount3); as root the mount is shared (allow_other).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z ${PYUNIONFS:-} ]]; then
    if [[ -x $HERE/../.venv/bin/pyunionfs ]]; then
        PYUNIONFS="$HERE/../.venv/bin/pyunionfs"
    else
        PYUNIONFS="$(command -v pyunionfs || true)"
    fi
fi
if [[ -z $PYUNIONFS || ! -x $PYUNIONFS ]]; then
    echo "seed_walkthrough: pyunionfs not found (run scripts/setup.sh or set PYUNIONFS)" >&2
    exit 1
fi

DEMO="$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/unionfs-seed.XXXXXX")")"
mounted=0
cleanup() {
    local rc=$?
    cd /
    if ((mounted)); then
        fusermount3 -u "$DEMO/merged" 2>/dev/null || fusermount3 -uz "$DEMO/merged" 2>/dev/null || rc=1
    fi
    rm -rf "$DEMO"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$DEMO"
run() { printf '\n$ %s\n' "$*"; "$@"; }

run mkdir lower upper merged work
echo "Fichero 1 en la capa lower" > lower/f1
echo "Fichero 2 en la capa lower" > lower/f2
echo "Fichero 3 en la capa lower" > lower/f3
echo "Fichero 3 en la capa upper" > upper/f3
echo "Fichero 4 en la capa upper" > upper/f4

run "$PYUNIONFS" -o lowerdir=lower,upperdir=upper,workdir=work merged
mounted=1
run grep " $DEMO/merged " /proc/self/mounts

run ls -l merged
run cat merged/f3

printf '\n$ echo "Fichero 5 en merged" > merged/f5\n'
echo "Fichero 5 en merged" > merged/f5
run ls -l merged upper

run rm merged/f2
run ls -l merged upper

printf '\n$ echo "Modifico fichero 1" > merged/f1\n'
echo "Modifico fichero 1" > merged/f1
run ls -l merged upper lower
run cat lower/f1 merged/f1 upper/f1

run fusermount3 -u merged
mounted=0
echo
echo "seed walkthrough: OK"
