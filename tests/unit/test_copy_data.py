"""copy_data, the bytes of a copy-up: holes stay holes, a file without holes is copied without looking for
them, a source that ends early leaves the copy at the size asked for, and a reflink the filesystems
refused is not asked for again between the same two filesystems."""

import errno
import fcntl
import os

import pytest

from unionfs.engine import copyup

MiB = 1 << 20


@pytest.fixture
def files(tmp_path):
    opened = []

    def make(data_at, size):
        """A source with *data_at* {offset: bytes} and *size*, and an empty target: (src_fd, dst_fd, dst path)."""
        src = tmp_path / f"src{len(opened)}"
        with open(src, "wb") as f:
            for offset, data in data_at.items():
                f.seek(offset)
                f.write(data)
            f.truncate(size)
        dst = tmp_path / f"dst{len(opened)}"
        fds = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600)
        opened.extend(fds)
        return fds[0], fds[1], dst

    yield make
    for fd in opened:
        os.close(fd)


def _no_reflink(monkeypatch, calls):
    def ioctl(fd, request, arg=0, *rest):
        if request == copyup._FICLONE:
            calls.append(fd)
            raise OSError(errno.EOPNOTSUPP, "no reflinks here")
        return fcntl.ioctl(fd, request, arg, *rest)

    monkeypatch.setattr(copyup.fcntl, "ioctl", ioctl)


def test_a_dense_file_is_copied_without_looking_for_holes(files, monkeypatch):
    data = os.urandom(3 * MiB + 17)
    src, dst, path = files({0: data}, len(data))
    _no_reflink(monkeypatch, [])

    def lseek(*args):
        raise AssertionError("a file without holes has none to look for")

    monkeypatch.setattr(copyup.os, "lseek", lseek)
    copyup.copy_data(src, dst, len(data), dense=True)
    assert path.read_bytes() == data


def test_holes_stay_holes(files, monkeypatch):
    size = 64 * MiB
    src, dst, path = files({MiB: b"x" * 4096, 40 * MiB: b"y" * 10}, size)
    _no_reflink(monkeypatch, [])
    copyup.copy_data(src, dst, size, dense=os.fstat(src).st_blocks * 512 >= size)
    st = os.stat(path)
    assert st.st_size == size and st.st_blocks * 512 < MiB
    with open(path, "rb") as f:
        f.seek(MiB)
        assert f.read(4096) == b"x" * 4096
        f.seek(40 * MiB)
        assert f.read(10) == b"y" * 10


def test_a_source_that_ends_early_leaves_the_copy_at_its_size(files, monkeypatch):
    src, dst, path = files({0: b"abc"}, 3)
    _no_reflink(monkeypatch, [])
    copyup.copy_data(src, dst, 10, dense=True)
    assert path.read_bytes() == b"abc" + bytes(7)


def test_a_refused_reflink_is_not_asked_again_between_the_same_filesystems(files, monkeypatch):
    calls = []
    _no_reflink(monkeypatch, calls)
    monkeypatch.setattr(copyup, "_NO_CLONE", set())
    for devs in ((1, 2), (1, 2), (1, 3), None, None):
        src, dst, path = files({0: b"data"}, 4)
        copyup.copy_data(src, dst, 4, dense=True, devs=devs)
        assert path.read_bytes() == b"data"
    assert len(calls) == 4  # (1, 2) once, (1, 3) once, and every time without devs
