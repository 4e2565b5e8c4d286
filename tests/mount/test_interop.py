"""Layers written by one implementation, read by the other: pyunionfs and kernel overlayfs, in both
xattr namespaces (trusted.overlay.* as root; user.overlay.* with `userxattr`, the unprivileged format)."""
import os

import pytest

from tests.util import (DIR, FUSE_SKIP_REASON, kernel_overlay_skip_reason, mount_kernel_overlay,
                        mount_pyunionfs, tree_snapshot)

pytestmark = [pytest.mark.mount, pytest.mark.kernel, pytest.mark.timeout(120),
              pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or "")]

SPEC = {
    "lower1": {"f1": "lower1 f1\n", "d/a": "a\n", "d/b": "b\n", "gone/x": "x\n", "keep/k": "k\n"},
    "lower0": {"f2": "lower0 f2\n", "d/c": "c\n", "e": DIR},
}


def change(mnt):
    """The same changes, whoever serves the mount: copy-up, whiteouts, an opaque dir, new entries."""
    with open(os.path.join(mnt, "f1"), "a") as f:
        f.write("appended\n")
    os.unlink(os.path.join(mnt, "f2"))
    os.unlink(os.path.join(mnt, "d/a"))
    os.unlink(os.path.join(mnt, "gone/x"))
    os.rmdir(os.path.join(mnt, "gone"))
    os.mkdir(os.path.join(mnt, "gone"))          # over a whiteout: opaque
    with open(os.path.join(mnt, "gone/new"), "w") as f:
        f.write("new\n")
    os.mkdir(os.path.join(mnt, "e/sub"))
    os.symlink("../f1", os.path.join(mnt, "e/sub/link"))


def view(mnt):
    snap = tree_snapshot(mnt, ignore_xattrs=("trusted.overlay.", "user.overlay."))
    return {path: (e.type, e.mode, e.size, e.sha256, e.target) for path, e in snap.items()}


@pytest.fixture
def skip_without_kernel():
    reason = kernel_overlay_skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("userxattr", [False, True], ids=["trusted", "userxattr"])
@pytest.mark.parametrize("writer", ["pyunionfs", "kernel"])
def test_upper_written_by_one_reads_the_same_in_the_other(layers, skip_without_kernel, writer, userxattr):
    L = layers(SPEC)
    kernel_opts = ["userxattr"] if userxattr else []
    ours_opts = ["userxattr"] if userxattr else []
    writer_mount = (mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, options=ours_opts) if writer == "pyunionfs"
                    else mount_kernel_overlay(L.mnt, L.lowers, L.upper, L.work, options=kernel_opts))
    with writer_mount:
        change(L.mnt)
        seen_by_writer = view(L.mnt)
    marker = "user.overlay.opaque" if userxattr else "trusted.overlay.opaque"
    assert os.getxattr(L.upper / "gone", marker) == b"y"
    assert "gone/x" not in seen_by_writer and "d/a" not in seen_by_writer
    reader_work = L.root / "work2"
    reader_work.mkdir()
    reader_mount = (mount_kernel_overlay(L.mnt, L.lowers, L.upper, reader_work, options=kernel_opts + ["ro"])
                    if writer == "pyunionfs" else mount_pyunionfs(L.mnt, L.lowers, L.upper, reader_work,
                                                                  options=["ro"]))
    with reader_mount:
        assert view(L.mnt) == seen_by_writer


def move_directories(mnt):
    """Directory renames that need redirect_dir=on: a merged one in place, a lower one elsewhere,
    then its child out of it, and a file changed below a moved directory."""
    os.rename(os.path.join(mnt, "d"), os.path.join(mnt, "d2"))
    os.rename(os.path.join(mnt, "keep"), os.path.join(mnt, "e/keep2"))
    os.makedirs(os.path.join(mnt, "e/keep2/inner"))
    os.rename(os.path.join(mnt, "e"), os.path.join(mnt, "e3"))
    with open(os.path.join(mnt, "d2/b"), "a") as f:
        f.write("changed\n")
    os.rename(os.path.join(mnt, "d2"), os.path.join(mnt, "e3/keep2/inner/d4"))


@pytest.mark.parametrize("writer", ["pyunionfs", "kernel"])
def test_redirect_dir_uppers_read_the_same_in_the_other(layers, skip_without_kernel, writer):
    L = layers(SPEC)
    mount = mount_pyunionfs if writer == "pyunionfs" else mount_kernel_overlay
    with mount(L.mnt, L.lowers, L.upper, L.work, options=["redirect_dir=on"]):
        move_directories(L.mnt)
        seen_by_writer = view(L.mnt)
    assert "e3/keep2/inner/d4/c" in seen_by_writer and "keep/k" not in seen_by_writer
    assert os.getxattr(L.upper / "e3/keep2/inner/d4", "trusted.overlay.redirect") == b"/d"
    # Readers with the default redirect_dir=off follow the redirects (as the kernel does).
    for i, reader in enumerate((mount_kernel_overlay, mount_pyunionfs)):
        reader_work = L.root / f"work{i + 2}"
        reader_work.mkdir()
        with reader(L.mnt, L.lowers, L.upper, reader_work, options=["ro"]):
            assert view(L.mnt) == seen_by_writer, reader.__name__
