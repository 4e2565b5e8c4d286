"""READ answers spliced from the backing file to the device: file -> pipe -> /dev/fuse.

Read into the daemon's memory and written from there, a 1 MiB READ costs two copies of the data and
a buffer of that size (~120 us here; benchmarks/README.md, "Readahead and spliced reads"). Spliced,
the pipe holds references to the backing file's cached pages and the kernel copies them once, into the
reader's pages. The answer must reach the device in one write, header first, so the data goes into one
pipe (its length is known only then: a read at the end of the file is short), the header into another,
then the data after the header, and that pipe to the device.

A pipe holds one page of the file a slot, and the header takes a slot of its own. A pipe grows to
/proc/sys/fs/pipe-max-size (1 MiB: 256 slots) without CAP_SYS_RESOURCE, so a READ spanning more pages
than the pipe has slots after the header is answered from memory (`fits`); the native backend agrees
on 255-page requests for that reason (fuse/native_backend.py).
"""

import errno
import fcntl
import os

_PAGE = 4096
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Python 3.10+ on Linux; spelled out for older builds)
_F_GETPIPE_SZ = 1032


# The smallest READ worth four syscalls instead of two and two copies (a 64 KiB copy is ~8 us here).
SPLICE_MIN = 64 * 1024


class SplicedRead:
    """A READ answer the session splices from *fd* (what the request layer returns for it)."""

    __slots__ = ("unique", "fh", "fd", "offset", "size")

    def __init__(self, unique: int, fh: int, fd: int, offset: int, size: int):
        self.unique, self.fh, self.fd, self.offset, self.size = unique, fh, fd, offset, size


# The device's errors that mean the connection is over: ENODEV (unmounted) and ECONNABORTED (aborted: the
# kernel says so instead of ENODEV where the connection was aborted; seen after a lazy unmount's last
# close). The session ends cleanly on either, wherever it reads or writes the device.
CONNECTION_GONE = (errno.ENODEV, errno.ECONNABORTED)


class DeviceGone(OSError):
    """The device took no answer: the request is gone (ENOENT) or the connection is (CONNECTION_GONE)."""


class Splicer:
    """Two pipes, made at the first use, that carry spliced READ answers of *want* bytes at most."""

    def __init__(self, device: int, want: int):
        self.device = device
        self.want = want
        self.slots = 0  # pages the pipe carries besides the header's; 0 before the first use
        self._pipes: tuple = ()  # (data_r, data_w, out_r, out_w) once made

    def fits(self, offset: int, size: int) -> bool:
        """Whether a READ of *size* bytes at *offset* goes through the pipes."""
        if not self._pipes:
            self._open()
        pages = (offset + size + _PAGE - 1) // _PAGE - offset // _PAGE
        return pages <= self.slots

    def _open(self) -> tuple:
        data, out = os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)
        self._pipes = data + out
        size = self.want + 2 * _PAGE  # the header's slot, and a page more for a read not page-aligned
        got = []
        for w in (data[1], out[1]):
            try:
                fcntl.fcntl(w, _F_SETPIPE_SZ, size)
            except OSError:  # above pipe-max-size without CAP_SYS_RESOURCE: the most we may have
                try:
                    fcntl.fcntl(w, _F_SETPIPE_SZ, _pipe_max())
                except OSError:
                    pass
            got.append(fcntl.fcntl(w, _F_GETPIPE_SZ))
        self.slots = min(got) // _PAGE - 1
        return self._pipes

    def reply(self, unique: int, fd: int, offset: int, size: int, pack_out) -> None:
        """Answer READ *unique* with up to *size* bytes of *fd* at *offset* (fewer only at the end of
        the file). *pack_out(length, error, unique)* packs the answer's header. OSError: nothing was
        sent (splicing from *fd* failed, or the device refused the answer: the caller answers from
        memory or with the error). DeviceGone: the kernel no longer waits for it."""
        data_r, data_w, out_r, out_w = self._pipes or self._open()
        n = 0
        try:
            while n < size:
                got = os.splice(fd, data_w, size - n, offset_src=offset + n)
                if not got:
                    break
                n += got
            os.write(out_w, pack_out(16 + n, 0, unique))
            moved = 0
            while moved < n:
                moved += os.splice(data_r, out_w, n - moved)
        except BaseException:
            self._reset()
            raise
        try:
            os.splice(out_r, self.device, 16 + n)
        except OSError as exc:
            self._reset()
            if exc.errno == errno.ENOENT or exc.errno in CONNECTION_GONE:
                raise DeviceGone(exc.errno, exc.strerror) from None
            raise

    def _reset(self) -> None:
        """New pipes: what a failed answer left in the old ones must not start the next."""
        self.close()
        self._open()

    def close(self) -> None:
        for fd in self._pipes:
            os.close(fd)
        self._pipes = ()


def _pipe_max() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20
