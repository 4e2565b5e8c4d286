#!/usr/bin/env bash
# Seed 004: several clients share one lower directory, each with its own upperdir, workdir and mount.
# A change made by one client lands in that client's upper only: the others, and the lower, never see it.
# The big base data is stored once.
# Usage: examples/shared_lower.sh   (as root; PYUNIONFS / PYUNIONFS_LAYER choose the binaries)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
find_tool() {   # find_tool NAME: $HERE/../.venv/bin/NAME, else NAME on PATH
    if [[ -x $HERE/../.venv/bin/$1 ]]; then echo "$HERE/../.venv/bin/$1"; else command -v "$1" || true; fi
}
PYUNIONFS="${PYUNIONFS:-$(find_tool pyunionfs)}"
PYUNIONFS_LAYER="${PYUNIONFS_LAYER:-$(find_tool pyunionfs-layer)}"
for tool in "$PYUNIONFS" "$PYUNIONFS_LAYER"; do
    if [[ -z $tool || ! -x $tool ]]; then
        echo "shared_lower: pyunionfs / pyunionfs-layer not found (run scripts/setup.sh or set PYUNIONFS, PYUNIONFS_LAYER)" >&2
        exit 1
    fi
done

TOP="$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/unionfs-shared.XXXXXX")")"
CLIENTS=(client_1 client_2 client_3)
cleanup() {
    local rc=$?
    cd /
    for c in "${CLIENTS[@]}"; do
        if mountpoint -q "$TOP/merged/$c" 2>/dev/null; then
            fusermount3 -u "$TOP/merged/$c" 2>/dev/null || fusermount3 -uz "$TOP/merged/$c" 2>/dev/null || rc=1
        fi
    done
    rm -rf "$TOP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$TOP"
run() { printf '\n$ %s\n' "$*"; "$@"; }

# The directory structure of the seed: one lowerdir, and per client an upperdir, a workdir and a mount.
mkdir -p lowerdir merged
for c in "${CLIENTS[@]}"; do mkdir -p "$c/upperdir" "$c/workdir" "merged/$c"; done
echo "File 1 (base data)" > lowerdir/file1
echo "File 2 (base data)" > lowerdir/file2
echo "File 3 (base data)" > lowerdir/file3
head -c 8M /dev/zero | tr '\0' 'x' > lowerdir/big-dataset     # the data worth storing only once
LOWER_SUM_BEFORE="$(cd lowerdir && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum)"

for c in "${CLIENTS[@]}"; do
    run "$PYUNIONFS" -o "lowerdir=$TOP/lowerdir,upperdir=$TOP/$c/upperdir,workdir=$TOP/$c/workdir" "$TOP/merged/$c"
done
run grep -c " $TOP/merged/" /proc/self/mounts

echo; echo "# every client starts from the same base data"
run ls merged/client_1 merged/client_2 merged/client_3

echo; echo "# client 1 removes file 2, changes file 1 and creates file 4"
run rm merged/client_1/file2
printf '\n$ echo "File 1 changed by client 1" > merged/client_1/file1\n'
echo "File 1 changed by client 1" > merged/client_1/file1
printf '\n$ echo "File 4 (client 1)" > merged/client_1/file4\n'
echo "File 4 (client 1)" > merged/client_1/file4
echo; echo "# client 3 appends to the big data set (copy-up into its own upper only)"
printf '\n$ echo tail >> merged/client_3/big-dataset\n'
echo tail >> merged/client_3/big-dataset

run ls merged/client_1
run cat merged/client_1/file1
echo; echo "# client 2 still sees the base data"
run ls merged/client_2
run cat merged/client_2/file1

echo; echo "# the changes are stored in client 1's upperdir (file2 is a whiteout: c 0,0)"
run ls -l client_1/upperdir client_2/upperdir
for c in "${CLIENTS[@]}"; do
    printf '\n$ pyunionfs-layer diff %s/upperdir lowerdir\n' "$c"
    "$PYUNIONFS_LAYER" diff "$c/upperdir" lowerdir
done

for c in "${CLIENTS[@]}"; do run fusermount3 -u "merged/$c"; done

echo; echo "# the lower is stored once, unchanged; each upper holds only its client's changes"
run du -sh lowerdir client_1/upperdir client_2/upperdir client_3/upperdir
LOWER_SUM_AFTER="$(cd lowerdir && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum)"
if [[ $LOWER_SUM_BEFORE != "$LOWER_SUM_AFTER" ]]; then
    echo "shared_lower: the lower changed!" >&2
    exit 1
fi
echo "lowerdir unchanged: $LOWER_SUM_AFTER"
echo
echo "shared lower: OK"
