"""The kernel keeps symlink targets (CACHE_SYMLINKS): a second readlink reaches no daemon, and a
target is never stale after the name is replaced, the symlink copied up, or its inode number reused.

Requests are counted from outside (`fuse:fuse_request_send`); targets are compared with the kernel
overlay's over identical layers.
"""

import os

import pytest

from tests.helpers.fuserequests import requests_counted
from tests.helpers.mounting import on_kernel_and_pyunionfs
from tests.util import FUSE_SKIP_REASON, mount_pyunionfs
from unionfs.options import default_backend
from unionfs.protocol import abi

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(120),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
]


def _layers(root):
    lower, upper, work, mnt = root / "lower", root / "upper", root / "work", root / "mnt"
    for d in (lower, upper, work, mnt):
        d.mkdir(parents=True)
    os.symlink("lower/target", lower / "lo_link")
    os.symlink("upper/target", upper / "up_link")
    return lower, upper, work, mnt


def _layers3(root):
    return _layers(root)[:3]


def _steps(mnt):
    out = [os.readlink(mnt / "lo_link"), os.readlink(mnt / "up_link"), os.readlink(mnt / "lo_link")]
    os.chown(mnt / "lo_link", 1234, 1234, follow_symlinks=False)  # copies the symlink up
    out.append(os.readlink(mnt / "lo_link"))
    os.unlink(mnt / "up_link")
    os.symlink("replaced", mnt / "up_link")
    out.append(os.readlink(mnt / "up_link"))
    # names made and removed in turn: the upper filesystem may give a new symlink a freed inode number
    for i in range(20):
        os.symlink(f"target-{i}", mnt / f"s{i}")
        out.append(os.readlink(mnt / f"s{i}"))
        os.unlink(mnt / f"s{i}")
    return out


@pytest.mark.kernel
def test_symlink_targets_as_on_the_kernel(tmp_path):
    runs = on_kernel_and_pyunionfs(tmp_path, _layers3, lambda mnt, upper: _steps(mnt))
    results = {side: result for side, (result, _) in runs.items()}
    assert results["pyunionfs"] == results["kernel"]


@pytest.mark.skipif(default_backend() != "native", reason="the native backend's negotiation")
def test_second_readlink_is_no_request(tmp_path):
    lower, upper, work, mnt = _layers(tmp_path)
    with mount_pyunionfs(mnt, [lower], upper, work), requests_counted(tmp_path, mnt, (abi.READLINK,)) as counter:
        targets = [os.readlink(mnt / "lo_link") for _ in range(5)]
        count = counter.count()
    assert targets == ["lower/target"] * 5
    assert count == 1
