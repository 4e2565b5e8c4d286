"""A read-only open of a small file fills the kernel's page cache (native backend, FUSE_NOTIFY_STORE).

The daemon puts a file of up to FILL_MAX bytes into the kernel's cache before it answers the open, once
per node id and only when no other open of the node exists, so the read that follows needs no READ
request. Seen from outside: the READ requests the kernel sends (`fuse:fuse_request_send`) while small
files are read whole, and what the readers get, compared with the kernel overlay for reads that mix
with copy-ups, in-place changes and maps of the same files.
"""

import mmap
import os

import pytest

from tests.helpers.fuserequests import requests_counted
from tests.helpers.mounting import on_kernel_and_pyunionfs
from tests.util import FUSE_SKIP_REASON, mount_pyunionfs
from unionfs.fuse.requests import FILL_MAX
from unionfs.options import default_backend
from unionfs.protocol import abi

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(120),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
    pytest.mark.skipif(default_backend() != "native", reason="the native backend's"),
]

SMALL = {"one": 1, "page": 4096, "partial": 5000, "limit": FILL_MAX}
BIG = {"over": FILL_MAX + 1, "big": 3 * FILL_MAX + 123}


def _content(name: str, size: int) -> bytes:
    return (name.encode() + b":" + bytes(range(256)) * (size // 256 + 1))[:size]


def _layers(root):
    lower, upper, work = root / "lower", root / "upper", root / "work"
    for d in (lower, upper, work, root / "mnt"):
        d.mkdir(parents=True)
    for name, size in {**SMALL, **BIG, "empty": 0}.items():
        (lower / name).write_bytes(_content(name, size))
    return lower, upper, work


def _read_whole(path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def test_small_files_are_read_without_read_requests(tmp_path):
    lower, upper, work = _layers(tmp_path)
    mnt = tmp_path / "mnt"
    with mount_pyunionfs(mnt, [lower], upper, work), requests_counted(tmp_path, mnt, (abi.READ,)) as counter:
        for name, size in SMALL.items():
            assert _read_whole(mnt / name) == _content(name, size), name
        assert _read_whole(mnt / "empty") == b""
        small_reads = counter.count()
        for name, size in BIG.items():
            assert _read_whole(mnt / name) == _content(name, size), name
        all_reads = counter.count()
    assert small_reads == 0
    assert all_reads >= len(BIG)  # bigger files are read as before


def _steps(mnt, upper):
    out = []
    # Read whole, then again through a second open while the first lives (not filled twice).
    with open(mnt / "page", "rb") as a:
        out.append(("first", a.read()))
        with open(mnt / "page", "rb") as b:
            out.append(("second while the first is open", b.read()))
    # The size and the last partial page of a filled file; a map of it.
    fd = os.open(mnt / "partial", os.O_RDONLY)
    out.append(("end", os.lseek(fd, 0, os.SEEK_END), os.pread(fd, 10, 4995)))
    with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
        out.append(("mapped", m[:]))
    os.close(fd)
    # A read-only fd opened (and filled) before a copy-up that changes bytes in place reads the change.
    ro = os.open(mnt / "limit", os.O_RDONLY)
    rw = os.open(mnt / "limit", os.O_RDWR)
    os.pwrite(rw, b"CHANGED", 100)
    os.close(rw)
    out.append(("read-only fd after the change", os.pread(ro, 20, 95)))
    os.close(ro)
    out.append(("reopened", _read_whole(mnt / "limit")[90:120]))
    # A file replaced under a read-only fd: the fd keeps the old file, a new open reads the new one.
    ro = os.open(mnt / "one", os.O_RDONLY)
    os.unlink(mnt / "one")
    (mnt / "one").write_bytes(b"new file")
    out.append(("old fd", os.pread(ro, 10, 0), "new open", _read_whole(mnt / "one")))
    os.close(ro)
    return out


def test_fill_reads_as_on_the_kernel(tmp_path):
    runs = on_kernel_and_pyunionfs(tmp_path, _layers, _steps)
    assert runs["pyunionfs"][0] == runs["kernel"][0]
