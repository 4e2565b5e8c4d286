"""Real-mount tests: every test here mounts pyunionfs (a subprocess) or kernel overlayfs.

Tests parametrized with the `impl` fixture run twice: once on pyunionfs and once on kernel overlayfs,
which serves as a self-check of the test (if the kernel fails it, the test is wrong, not the daemon).
"""

from __future__ import annotations

import contextlib
import os
import stat

import pytest

from tests.helpers.processes import kill_daemons_under
from tests.util import (
    FUSE_SKIP_REASON,
    diff_snapshots,
    kernel_overlay_skip_reason,
    mount_kernel_overlay,
    mount_pyunionfs,
    mounts_under,
    unmount,
)

IMPLS = ("pyunionfs", "kernel")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/mount/" not in str(item.fspath).replace("\\", "/"):
            continue
        impl = item.callspec.params.get("impl") if hasattr(item, "callspec") else None
        if impl == "kernel":
            item.add_marker(pytest.mark.kernel)
            reason = kernel_overlay_skip_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
        else:
            item.add_marker(pytest.mark.mount)
            if FUSE_SKIP_REASON:
                item.add_marker(pytest.mark.skip(reason=FUSE_SKIP_REASON))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(120))


@pytest.fixture(params=IMPLS)
def impl(request):
    """'pyunionfs' or 'kernel'."""
    return request.param


@pytest.fixture
def no_stray_daemons(tmp_path):
    """After the test: no FUSE mount under tmp_path, and no pyunionfs daemon whose mount point is under
    tmp_path (those left are killed). Other daemons on the machine are never touched."""
    yield
    left = mounts_under(tmp_path, ("fuse",))
    for m in left:
        unmount(m.mountpoint)
    stray = kill_daemons_under(tmp_path)
    assert not left, f"FUSE mounts left behind: {[m.mountpoint for m in left]}"
    assert not stray, f"pyunionfs daemons still running after unmount (killed): {sorted(stray)}"


@contextlib.contextmanager
def union_mount(impl: str, L, options=(), *, check_lowers: bool = True, **kw):
    """Mount layers `L` with `impl`; on a clean exit assert that no lower changed (byte for byte,
    metadata and xattrs included)."""
    before = L.lower_snapshots() if check_lowers else None
    if impl == "kernel":
        cm = mount_kernel_overlay(L.mnt, L.lowers, L.upper, L.work, options)
    else:
        cm = mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, options, **kw)
    with cm as m:
        yield m
    if L.work is not None:
        check_workdir_clean(impl, L.work)
    if check_lowers:
        after = L.lower_snapshots()
        if after != before:
            diffs = []
            for i, (b, a) in enumerate(zip(before, after)):
                diffs += [f"lower{i}/{d}" for d in diff_snapshots(b, a)]
            raise AssertionError(f"{impl}: lower layers changed:\n" + "\n".join(diffs))


def check_workdir_clean(impl: str, work) -> None:
    """After unmount the workdir holds only `work` (and the kernel's `index`), and `work/` holds no
    staging leftovers: nothing but whiteouts (the kernel keeps one shared 0/0 whiteout there)."""
    extra = sorted(set(os.listdir(work)) - {"work", "index"})
    assert not extra, f"{impl}: unexpected entries in workdir: {extra}"
    staging = os.path.join(work, "work")
    if os.path.isdir(staging):
        left = []
        for name in os.listdir(staging):
            st = os.lstat(os.path.join(staging, name))
            if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
                left.append(name)
        assert not left, f"{impl}: staging leftovers in {staging}: {left}"
