"""FUSE passthrough: the kernel reads and writes files of the upper layer itself.

The same steps run on a kernel overlay and on pyunionfs (native backend, passthrough on by default) over
copies of the same layers, and every result must agree: writes, reads, appends, truncation and a shared
mapping on files made through the mount, on upper files and on lower files copied up, and stat between
them (the daemon answers getattr from the backing file the kernel wrote). A read-only fd of a lower file
opened before its copy-up must read the copy (such a file is not passed through), and opening the file
again while that fd lives must work (the kernel refuses to mix passed-through and ordinary opens of one
file). Whether passthrough is in effect is seen from outside: the FUSE requests the kernel sends
(`fuse:fuse_request_send`), no READ or WRITE for a big write and read back.
"""

import mmap
import os
import random

import pytest

from tests.helpers.fuserequests import requests_counted
from tests.helpers.mounting import on_kernel_and_pyunionfs
from tests.util import FUSE_SKIP_REASON, mount_pyunionfs
from unionfs.options import default_backend
from unionfs.protocol import abi

pytestmark = [
    pytest.mark.mount,
    pytest.mark.kernel,
    pytest.mark.timeout(120),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
    pytest.mark.skipif(default_backend() != "native", reason="passthrough is the native backend's"),
    pytest.mark.skipif(os.geteuid() != 0, reason="passthrough needs root"),
]

MiB = 1 << 20
OLD = 1_500_000_000_000_000_000


def _layers(root):
    lower, upper, work = root / "lower", root / "upper", root / "work"
    for d in (lower, upper, work, root / "mnt"):
        d.mkdir(parents=True)
    (lower / "lo").write_bytes(b"lower data " * 1000)
    (lower / "lo2").write_bytes(b"second lower file\n")
    (upper / "up").write_bytes(b"upper data " * 1000)
    (upper / "big").write_bytes(random.Random(14).randbytes(4 * MiB))
    (lower / "lobig").write_bytes(random.Random(15).randbytes(4 * MiB))
    return lower, upper, work


def _digest(data: bytes) -> tuple:
    return (len(data), hash(data))


def _steps(mnt, upper):
    out = []
    # A file made through the mount: write, stat, read, truncate, append.
    p = mnt / "new"
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, b"a" * (3 * MiB) + b"tail")
    out.append(("sizes after write", os.fstat(fd).st_size, os.stat(p).st_size))
    out.append(("read back", _digest(os.pread(fd, 200, 3 * MiB - 100))))
    os.ftruncate(fd, MiB + 7)
    out.append(("after ftruncate", os.stat(p).st_size, _digest(os.pread(fd, 100, MiB - 50))))
    os.close(fd)
    os.truncate(p, MiB + 3)
    with open(p, "ab") as f:
        f.write(b"appended")
    out.append(("after append", os.stat(p).st_size, p.read_bytes()[-12:]))
    # An upper file: its mtime moves and its size grows with writes the daemon never sees.
    up = mnt / "up"
    os.utime(up, ns=(OLD, OLD))
    with open(up, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(b"more")
        f.flush()
        st = os.stat(up)
        out.append(("upper file after write", st.st_size, st.st_mtime_ns != OLD))
    # Two opens of one upper file at once: a reader sees the writer's data.
    with open(up, "r+b") as w, open(up, "rb") as r:
        w.write(b"WRITER")
        w.flush()
        out.append(("reader sees writer", r.read(6)))
    # A shared mapping: stores reach the upper file at once (the pages are the upper file's).
    fd = os.open(up, os.O_RDWR)
    m = mmap.mmap(fd, 4096)
    m[0:4] = b"MMAP"
    out.append(("mapped store seen by pread", os.pread(fd, 4, 0)))
    out.append(("mapped store in the upper file before msync", (upper / "up").read_bytes()[:4]))
    m.close()
    os.close(fd)
    # A big upper file read through a mapping and through read().
    with open(mnt / "big", "rb") as f:
        data = f.read()
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            out.append(("big read and mapped", _digest(data), _digest(m[:])))
    # A lower file: a read-only fd opened before the copy-up reads the copy; opening the file again
    # (for writing, then reading) while that fd lives works; after all are closed, a new open too.
    lo = mnt / "lo"
    ro = os.open(lo, os.O_RDONLY)
    out.append(("lower before", os.pread(ro, 11, 0)))
    rw = os.open(lo, os.O_RDWR)
    os.pwrite(rw, b"CHANGED", 0)
    out.append(("read-only fd sees the copy-up", os.pread(ro, 11, 0)))
    rw2 = os.open(lo, os.O_WRONLY | os.O_APPEND)
    os.write(rw2, b"+appended")
    os.close(rw2)
    ro2 = os.open(lo, os.O_RDONLY)
    out.append(("second reader", _digest(os.pread(ro2, 20000, 0))))
    os.close(ro2)
    os.close(rw)
    out.append(("first reader at the end", os.pread(ro, 9, os.fstat(ro).st_size - 9)))
    os.close(ro)
    fd = os.open(lo, os.O_RDWR)
    os.pwrite(fd, b"again", 0)
    out.append(("reopened", _digest(os.pread(fd, 20000, 0)), os.fstat(fd).st_size))
    os.close(fd)
    # A big lower file read (its pages cached), then appended to: the copy-up drops the cached pages
    # while it copies (the open passed through would drop them itself); reads and a mapping after it
    # see the copy and the appended bytes.
    lobig = mnt / "lobig"
    out.append(("big lower read", _digest(lobig.read_bytes())))
    with open(lobig, "ab") as f:
        f.write(b"appended to a big lower file")
    with open(lobig, "rb") as f:
        data = f.read()
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            out.append(("big lower after append", _digest(data), _digest(m[:]), data[-28:]))
    # O_TRUNC of a lower file: copied up without data, then written.
    with open(mnt / "lo2", "wb") as f:
        f.write(b"replaced")
    out.append(("truncated lower", (mnt / "lo2").read_bytes()))
    return out


def test_passthrough_as_on_the_kernel(tmp_path):
    runs = on_kernel_and_pyunionfs(tmp_path, _layers, _steps)
    uppers = {side: {p.name: p.read_bytes() for p in upper.iterdir()} for side, (_, upper) in runs.items()}
    assert runs["pyunionfs"][0] == runs["kernel"][0]
    assert uppers["pyunionfs"] == uppers["kernel"]


def test_big_write_and_read_back_pass_the_daemon_by(tmp_path):
    """32 MiB written and an upper file of 4 MiB read: no WRITE or READ request with passthrough; with
    -o passthrough=off (the counter's check) each MiB is one at least."""
    counts = {}
    for mode in ("on", "off"):
        lower, upper, work = _layers(tmp_path / mode)
        mnt = tmp_path / mode / "mnt"
        with mount_pyunionfs(mnt, [lower], upper, work, [f"passthrough={mode}"]):
            with requests_counted(tmp_path / mode, mnt, (abi.WRITE, abi.READ)) as counter:
                chunk = b"x" * MiB
                with open(mnt / "written", "wb") as f:
                    for _ in range(32):
                        f.write(chunk)
                    os.fsync(f.fileno())
                assert (mnt / "big").read_bytes() == (upper / "big").read_bytes()
                counts[mode] = counter.count()
        assert (upper / "written").stat().st_size == 32 * MiB
    assert counts["off"] >= 32 + 4, counts
    assert counts["on"] == 0, counts


def test_a_mount_without_an_upper_layer_passes_lower_files_through(tmp_path):
    """No upper layer: nothing is ever copied up, so lower files pass through too. A 4 MiB lower file
    read and mapped twice, and a small one: no READ with passthrough; with passthrough=off (the
    counter's check) READs come. Both read the layers' bytes."""
    counts = {}
    for mode in ("on", "off"):
        top, bottom, mnt = tmp_path / mode / "top", tmp_path / mode / "bottom", tmp_path / mode / "mnt"
        for d in (top, bottom, mnt):
            d.mkdir(parents=True)
        big = random.Random(16).randbytes(4 * MiB)
        (bottom / "big").write_bytes(big)
        (top / "small").write_bytes(b"small lower file\n")
        with mount_pyunionfs(mnt, [top, bottom], None, None, [f"passthrough={mode}"]):
            with requests_counted(tmp_path / mode, mnt, (abi.READ,)) as counter:
                for _ in range(2):
                    with open(mnt / "big", "rb") as f:
                        assert f.read() == big
                        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                            assert m[MiB : MiB + 64] == big[MiB : MiB + 64]
                assert (mnt / "small").read_bytes() == b"small lower file\n"
                counts[mode] = counter.count()
            with pytest.raises(OSError):  # still a read-only union
                open(mnt / "big", "r+b")
    assert counts["off"] >= 4, counts
    assert counts["on"] == 0, counts
