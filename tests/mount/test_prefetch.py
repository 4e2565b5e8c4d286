"""Lookups start reading the files they find while opens follow them (native backend).

A read-only open earns a credit; the lookup of a regular file spends one on posix_fadvise(WILLNEED) of
its first 64 KiB, so the disk works while the lookup is answered and the open comes. Seen from outside:
whether a lower file's pages are in the page cache (mincore of a map of the lower file itself) after a
stat through the mount, with the file's pages dropped first (POSIX_FADV_DONTNEED on that file only).
"""

import ctypes
import mmap
import os
import random
import time

import pytest

from tests.util import FUSE_SKIP_REASON, mount_pyunionfs
from unionfs.fuse.requests import FILL_MAX
from unionfs.options import default_backend

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(60),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
    pytest.mark.skipif(default_backend() != "native", reason="the native backend's"),
]

SIZE = 2 * FILL_MAX  # read ahead: the first FILL_MAX bytes
PAGE = mmap.PAGESIZE


def _resident(path) -> int:
    """How many of the file's pages are in the page cache (mincore of a shared map: nothing faulted)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, SIZE, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = ctypes.create_string_buffer(SIZE // PAGE)
            assert libc.mincore(addr, SIZE, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec.raw)
        finally:
            libc.munmap(addr, SIZE)
    finally:
        os.close(fd)


def _evict(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _wait_resident(path, pages, timeout=5.0) -> int:
    end = time.monotonic() + timeout
    while (n := _resident(path)) < pages and time.monotonic() < end:
        time.sleep(0.01)
    return n


def test_a_lookup_reads_ahead_only_after_opens(tmp_path):
    lower, upper, work, mnt = (tmp_path / d for d in ("lower", "upper", "work", "mnt"))
    for d in (lower, upper, work, mnt):
        d.mkdir()
    rng = random.Random(24)
    for name in ("opened", "next", "walked"):
        (lower / name).write_bytes(rng.randbytes(SIZE))
    for name in ("next", "walked"):
        _evict(lower / name)
        if _resident(lower / name):
            pytest.skip("this filesystem keeps the pages of a file after POSIX_FADV_DONTNEED")
    with mount_pyunionfs(mnt, [lower], upper, work):
        os.stat(mnt / "walked")  # no open yet: the lookup reads nothing
        time.sleep(0.2)
        assert _resident(lower / "walked") == 0
        assert (mnt / "opened").read_bytes() == (lower / "opened").read_bytes()  # earns a credit
        os.stat(mnt / "next")  # its lookup spends it
        assert _wait_resident(lower / "next", FILL_MAX // PAGE) >= FILL_MAX // PAGE
        assert _resident(lower / "walked") == 0
