"""A read-only open of a lower file opens the file in the daemon only when a call first needs it.

Reading a file the kernel has cached already (a file read before) sends the daemon an OPEN and a
RELEASE and nothing in between, so the daemon no longer opens and closes the lower file for it (an
eighth less of the daemon's time in a warm read of many small files: benchmarks/README.md). Seen from
outside: the descriptors the daemon holds while such a file is open. What an open file reads must not
change, so the same steps run on the kernel overlay: a file unlinked while open, copied up by another
open while open, and one name of a lower hard link while the other is copied up.
"""

import os

import pytest

from tests.helpers.mounting import on_kernel_and_pyunionfs
from tests.util import FUSE_SKIP_REASON, mount_pyunionfs
from unionfs.options import default_backend

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(120),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
]


def _layers(root):
    lower, upper, work = root / "lower", root / "upper", root / "work"
    for d in (lower, upper, work, root / "mnt"):
        d.mkdir(parents=True)
    for name in ("a", "b", "c"):
        (lower / name).write_bytes(name.encode() * 3000)
    (lower / "h1").write_bytes(b"linked " * 1000)
    os.link(lower / "h1", lower / "h2")
    return lower, upper, work


def _held(pid: int, path) -> int:
    """How many of the daemon's descriptors are open on *path*."""
    target = os.path.realpath(path)
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}") == target
        except FileNotFoundError:
            pass
    return n


@pytest.mark.skipif(default_backend() != "native", reason="the first open's fill is the native backend's")
def test_a_cached_file_open_again_is_not_opened_in_the_layer(tmp_path):
    lower, upper, work = _layers(tmp_path)
    mnt = tmp_path / "mnt"
    with mount_pyunionfs(mnt, [lower], upper, work) as daemon:
        pid = daemon.proc.pid
        assert (mnt / "a").read_bytes() == (lower / "a").read_bytes()  # the first open fills the cache
        fd = os.open(mnt / "a", os.O_RDONLY)
        try:
            assert _held(pid, lower / "a") == 0
            assert os.read(fd, 1 << 20) == (lower / "a").read_bytes()  # from the kernel's cache
            assert _held(pid, lower / "a") == 0
            # a call that needs the file opens it: fstat through the fd of a file unlinked meanwhile
            os.unlink(mnt / "a")
            assert os.fstat(fd).st_size == 3000
            assert _held(pid, lower / "a") == 1
        finally:
            os.close(fd)


def _steps(mnt, upper):
    out = []
    # unlinked while open, read only then
    fd = os.open(mnt / "b", os.O_RDONLY)
    os.unlink(mnt / "b")
    out.append(("unlinked", os.pread(fd, 10, 2995), os.fstat(fd).st_size))
    os.close(fd)
    # copied up by another open while open: this one reads the copy
    fd = os.open(mnt / "c", os.O_RDONLY)
    with open(mnt / "c", "r+b") as f:
        f.write(b"NEW")
    out.append(("copied up", os.pread(fd, 6, 0)))
    os.close(fd)
    # one name of a lower hard link open while the other name is copied up: it stays the lower file
    fd = os.open(mnt / "h2", os.O_RDONLY)
    with open(mnt / "h1", "r+b") as f:
        f.write(b"LINKED")
    out.append(("other link", os.pread(fd, 7, 0)))  # (h1 read back: pyfuse3's known difference, README)
    os.close(fd)
    return out


def test_open_files_read_as_on_the_kernel(tmp_path):
    runs = on_kernel_and_pyunionfs(tmp_path, _layers, _steps)
    assert runs["pyunionfs"][0] == runs["kernel"][0]
    assert runs["pyunionfs"][0][1] == ("copied up", b"NEWccc")
