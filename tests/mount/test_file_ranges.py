"""fallocate, lseek(SEEK_DATA/SEEK_HOLE) and copy_file_range through the mount, against the kernel overlay.

The same steps run on a kernel overlay and on pyunionfs (native backend: pyfuse3 has no handlers for
them) over copies of the same layers; every result (value or errno) and the files left in the upper
must agree. The lower holds a sparse file, so holes are seen on a lower file read in place, on its
copy-up, and after a hole is punched.
"""

import ctypes
import errno
import os

import pytest

from tests.helpers.mounting import on_kernel_and_pyunionfs
from tests.util import FUSE_SKIP_REASON
from unionfs.options import default_backend

pytestmark = [
    pytest.mark.mount,
    pytest.mark.kernel,
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
    pytest.mark.skipif(default_backend() != "native", reason="the pyfuse3 backend has no handlers for these"),
]

MiB = 1 << 20
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def _fallocate(fd, mode, offset, length):
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _try(fn, *args):
    try:
        return fn(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, exc.errno)


def _layers(root):
    lower, upper, work = root / "lower", root / "upper", root / "work"
    for d in (lower, upper, work, root / "mnt"):
        d.mkdir(parents=True)
    with open(lower / "sparse", "wb") as f:  # data, a 3 MiB hole, data
        f.write(b"a" * MiB)
        f.seek(4 * MiB)
        f.write(b"b" * MiB)
    (lower / "plain").write_bytes(b"0123456789" * 1000)
    return lower, upper, work


def _steps(mnt):
    out = []
    seek = lambda fd, off, how: _try(os.lseek, fd, off, how)  # noqa: E731
    # A lower file read in place: its holes as the lower filesystem has them.
    fd = os.open(mnt / "sparse", os.O_RDONLY)
    out.append(
        ("lower data/hole", seek(fd, 0, os.SEEK_HOLE), seek(fd, 2 * MiB, os.SEEK_DATA), seek(fd, 6 * MiB, os.SEEK_DATA))
    )
    os.close(fd)
    # fallocate on a read-only open: EBADF; then on a write open (the file is copied up first).
    fd = os.open(mnt / "sparse", os.O_RDONLY)
    out.append(("fallocate read-only", _try(_fallocate, fd, 0, 0, MiB)))
    os.close(fd)
    fd = os.open(mnt / "sparse", os.O_RDWR)
    out.append(("after copy-up", seek(fd, 0, os.SEEK_HOLE), seek(fd, 2 * MiB, os.SEEK_DATA)))
    out.append(("punch", _try(_fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192)))
    out.append(("after punch", seek(fd, 0, os.SEEK_HOLE), seek(fd, 4096, os.SEEK_DATA), os.fstat(fd).st_size))
    out.append(("grow", _try(_fallocate, fd, 0, 7 * MiB, MiB), os.fstat(fd).st_size))
    out.append(("keep size", _try(_fallocate, fd, FALLOC_FL_KEEP_SIZE, 9 * MiB, MiB), os.fstat(fd).st_size))
    out.append(("punch without keep-size", _try(_fallocate, fd, FALLOC_FL_PUNCH_HOLE, 0, 4096)))
    os.close(fd)
    # copy_file_range from a lower file into a new one, and within one file.
    src = os.open(mnt / "plain", os.O_RDONLY)
    dst = os.open(mnt / "copy", os.O_WRONLY | os.O_CREAT, 0o644)
    out.append(("copy", _try(os.copy_file_range, src, dst, 5000, 100, 0)))
    out.append(("copy past the end", _try(os.copy_file_range, src, dst, 5000, 20000, 5000)))
    out.append(("copy into a read-only fd", _try(os.copy_file_range, dst, src, 10, 0, 0)))
    os.close(src)
    os.close(dst)
    out.append(("copied", (mnt / "copy").read_bytes() == (b"0123456789" * 1000)[100:5100]))
    out.append(("sparse now", (mnt / "sparse").read_bytes()[:16384].count(b"\0"), os.stat(mnt / "sparse").st_size))
    return out


def test_file_ranges_as_on_the_kernel(tmp_path):
    runs = on_kernel_and_pyunionfs(tmp_path, _layers, lambda mnt, upper: _steps(mnt))
    kernel_upper = runs["kernel"][1]
    assert runs["pyunionfs"][0] == runs["kernel"][0]
    upper = runs["pyunionfs"][1]
    assert sorted(p.name for p in upper.iterdir()) == sorted(p.name for p in kernel_upper.iterdir())
    different = [p.name for p in upper.iterdir() if p.read_bytes() != (kernel_upper / p.name).read_bytes()]
    assert not different, different
