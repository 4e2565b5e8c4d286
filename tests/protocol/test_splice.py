"""READ answers spliced from a file (unionfs.protocol.splice), with a pipe standing for /dev/fuse: what
arrives is one whole answer, header first, as long as the file has data; a failure sends nothing and
leaves the pipes clean for the next answer. The session splices a READ of 64 KiB and more where the
filesystem names the file (Operations.read_fd), and answers from memory (read_now) what is smaller,
what the pipes cannot carry and what splicing refuses. (The fake kernel of the other protocol tests is a
SOCK_SEQPACKET socket, which a splice would cut into several messages: a pipe stands in here.)"""

import errno
import os
import random

import pytest

from unionfs.protocol import abi
from unionfs.protocol.operations import Operations
from unionfs.protocol.session import Session
from unionfs.protocol.splice import DeviceGone, SplicedRead, Splicer

PAGE = 4096
WANT = 255 * PAGE


@pytest.fixture
def device():
    r, w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(r, False)
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


@pytest.fixture
def data_file(tmp_path):
    data = random.Random(5).randbytes(3 * WANT + 1234)
    path = tmp_path / "data"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd, data
    finally:
        os.close(fd)


def _answer(r) -> tuple:
    """(length, error, unique, data) of the one answer in the device pipe, which must hold nothing else."""
    raw = b""
    while True:
        try:
            chunk = os.read(r, 1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        raw += chunk
    length, error, unique = abi.OUT_HEADER.unpack_from(raw)
    assert length == len(raw), "one whole answer, nothing after it"
    return length, error, unique, raw[16:]


def _splicer(w) -> Splicer:
    s = Splicer(w, WANT)
    # The device pipe must take the biggest answer in one go (a pipe stands in for /dev/fuse here).
    import fcntl

    fcntl.fcntl(w, 1031, 1 << 20)
    return s


def test_an_answer_is_the_header_then_the_data(device, data_file):
    r, w = device
    fd, data = data_file
    s = _splicer(w)
    try:
        for unique, offset, size in ((7, 0, 64 * 1024), (8, PAGE, WANT), (9, 5 * PAGE, 100_000)):
            assert s.fits(offset, size)
            s.reply(unique, fd, offset, size, abi.OUT_HEADER.pack)
            length, error, got_unique, got = _answer(r)
            assert (error, got_unique, length) == (0, unique, 16 + size)
            assert got == data[offset : offset + size]
    finally:
        s.close()


def test_at_the_end_of_the_file_the_answer_is_short(device, data_file):
    r, w = device
    fd, data = data_file
    s = _splicer(w)
    try:
        offset = len(data) - 1000
        s.reply(3, fd, offset, 200_000, abi.OUT_HEADER.pack)
        length, _, _, got = _answer(r)
        assert got == data[offset:] and length == 16 + 1000
        s.reply(4, fd, len(data) + PAGE, 200_000, abi.OUT_HEADER.pack)  # past the end: no data at all
        assert _answer(r) == (16, 0, 4, b"")
    finally:
        s.close()


def test_what_spans_more_pages_than_the_pipe_holds_does_not_fit(device):
    _, w = device
    s = _splicer(w)
    try:
        assert s.fits(0, PAGE) and s.slots >= 255  # the pipes are made at the first fits
        assert s.fits(0, s.slots * PAGE)
        assert not s.fits(100, s.slots * PAGE)  # not page-aligned: one page more
        assert not s.fits(0, (s.slots + 1) * PAGE)
    finally:
        s.close()


def test_a_failed_read_sends_nothing_and_the_next_answer_is_whole(device, data_file, tmp_path):
    r, w = device
    fd, data = data_file
    s = _splicer(w)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as info:
            s.reply(5, dir_fd, 0, 100_000, abi.OUT_HEADER.pack)
        assert info.value.errno in (errno.EINVAL, errno.EISDIR, errno.EBADF)
        with pytest.raises(BlockingIOError):
            os.read(r, 1)
        s.reply(6, fd, 0, 100_000, abi.OUT_HEADER.pack)
        assert _answer(r)[2:] == (6, data[:100_000])
    finally:
        os.close(dir_fd)
        s.close()


def test_a_device_that_takes_nothing_more_is_device_gone(data_file):
    fd, _ = data_file
    r, w = os.pipe2(os.O_CLOEXEC)
    os.close(r)  # EPIPE: a stand-in for the device's refusal; ENOENT/ENODEV are DeviceGone
    s = Splicer(w, WANT)
    try:
        with pytest.raises(OSError) as info:
            s.reply(1, fd, 0, 100_000, abi.OUT_HEADER.pack)
        assert not isinstance(info.value, DeviceGone) and info.value.errno == errno.EPIPE
    finally:
        s.close()
        os.close(w)


class _Files(Operations):
    """READ of one file: spliced from *fd* when read_fd gives it, else read_now's bytes."""

    def __init__(self, fd, data, splice_fd=None):
        self.fd, self.data, self.splice_fd = fd, data, splice_fd
        self.from_memory = 0

    def read_now(self, fh, offset, size):
        self.from_memory += 1
        return self.data[offset : offset + size]

    def read_fd(self, fh):
        return self.splice_fd


def _read_request(unique, offset, size) -> memoryview:
    return memoryview(abi.request(abi.READ, unique, 2, abi.READ_IN.pack(1, offset, size, 0, 0, 0, 0), 0, 0, 1))


def _session_answer(session, r, unique, offset, size):
    view = _read_request(unique, offset, size)
    msg = session._read_now(view, len(view), unique, 2)
    session.reply(msg)
    return type(msg), _answer(r)


def test_the_session_splices_a_big_read_and_reads_a_small_one_from_memory(device, data_file):
    r, w = device
    fd, data = data_file
    ops = _Files(fd, data, splice_fd=fd)
    session = Session(ops, w, max_write=WANT)
    session.splice_reads()
    _splicer(w)  # the device pipe's size
    try:
        kind, (_, error, unique, got) = _session_answer(session, r, 11, PAGE, 200_000)
        assert (kind, error, unique, got) == (SplicedRead, 0, 11, data[PAGE : PAGE + 200_000])
        assert ops.from_memory == 0
        kind, (_, _, unique, got) = _session_answer(session, r, 12, 0, 4000)
        assert kind is bytes and (unique, got) == (12, data[:4000]) and ops.from_memory == 1
    finally:
        session.close()


def test_a_read_the_pipes_cannot_carry_or_splice_refuses_comes_from_memory(device, data_file, tmp_path):
    r, w = device
    fd, data = data_file
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    _splicer(w)
    try:
        for splice_fd, offset, size in ((dir_fd, 0, 100_000), (fd, 100, WANT)):  # refused; one page too many
            ops = _Files(fd, data, splice_fd=splice_fd)
            session = Session(ops, w, max_write=WANT)
            session.splice_reads()
            try:
                kind, (_, error, _, got) = _session_answer(session, r, 13, offset, size)
                assert kind is SplicedRead and error == 0 and got == data[offset : offset + size]
                assert ops.from_memory == 1
            finally:
                session.close()
    finally:
        os.close(dir_fd)
