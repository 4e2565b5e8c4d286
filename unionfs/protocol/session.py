"""The FUSE request loop on trio: read a request from the device, call the filesystem, write the reply.

One reader task reads the device (non-blocking; it waits for readability only when nothing is queued)
and runs each handler itself: the handler's coroutine is driven by hand, so one that finishes without
waiting costs no task and no switch. The first time a handler really waits (it yields to trio: a worker
thread, a lock, a sleep), the session starts a spare reader task, which serves the other requests
meanwhile; the waiting handler goes on in its own reader, as `await` would. Readers that find another
one already waiting for the device end by themselves, so the pool shrinks back to one. After
READY_STREAK requests in a row without a wait the reader yields once to trio, so other tasks (spares,
thread results) are not starved by a busy device.

The error edge: OSError answers its errno; any other exception, and a malformed request (short, bad
lengths, a name without its NUL), answers EIO and logs one line; an opcode without a handler answers
ENOSYS. Writing an answer to a request the kernel gave up on (ENOENT: interrupted) is ignored; ENODEV
(or end of file, for a socket standing in for the device in tests) ends the loop cleanly.
"""

import errno
import logging
import os
import time
import types

import trio

from . import abi
from .operations import Conn, Context, DirBuffer, FileInfo, SetAttr

__all__ = ["Session", "Malformed"]

log = logging.getLogger("unionfs.protocol")

READY_STREAK = 16
_HDR = abi.IN_HEADER.size  # 40
_PAGE = 4096
_DEFAULT_MAX_PAGES = 32  # the kernel's request size without MAX_PAGES
_NO_REPLY = (abi.FORGET, abi.BATCH_FORGET)

_pack_out = abi.OUT_HEADER.pack
_ENTRY_REPLY = abi.ENTRY_REPLY.pack
_ATTR_REPLY = abi.ATTR_REPLY.pack
_OPEN_REPLY = abi.OPEN_REPLY.pack
_split_timeout = abi.split_timeout
_attr_fields = abi.attr_fields


class Malformed(ValueError):
    """A request whose lengths do not add up."""


@types.coroutine
def _go_on(coro, trap):
    """Go on with a handler coroutine that has yielded *trap* to trio: pass traps up and what trio sends
    or throws down, as `await coro` would have from the start."""
    while True:
        try:
            sent = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                trap = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                trap = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def _error_reply(unique: int, err: int) -> bytes:
    return _pack_out(16, -err, unique)


def _ok(unique: int) -> bytes:
    return _pack_out(16, 0, unique)


def _args(struct, view, end, min_size=None):
    """Unpack *struct* right after the header; a shorter body (an older ABI's struct, at least
    *min_size* bytes) is read as if zero-padded."""
    have = end - _HDR
    if have >= struct.size:
        return struct.unpack_from(view, _HDR)
    if min_size is None or have < min_size:
        raise Malformed(f"body of {have} bytes, expected {struct.size}")
    return struct.unpack(bytes(view[_HDR:end]) + bytes(struct.size - have))


def _name(view, start, end) -> bytes:
    """The NUL-terminated name that fills view[start:end]."""
    if end <= start or view[end - 1] != 0:
        raise Malformed("name without its NUL")
    return bytes(view[start : end - 1])


def _two_names(view, start, end) -> tuple:
    raw = bytes(view[start:end])
    first, sep, rest = raw.partition(b"\0")
    if not sep or not rest.endswith(b"\0"):
        raise Malformed("names without their NULs")
    return first, rest[:-1].split(b"\0", 1)[0]


class Session:
    """Serve the filesystem *ops* (an operations.Operations) on the FUSE device fd *fd*.

    *flags*: the INIT flags (abi.*) the filesystem wants; only those the kernel offers are agreed.
    *max_write*: the largest write request (with MAX_PAGES; without it the kernel sends at most 128 KiB).
    *max_readahead*: None leaves the kernel's. *max_background*, *congestion_threshold*: 0 leaves the
    kernel's. The session does not close *fd*.
    """

    def __init__(
        self,
        ops,
        fd: int,
        *,
        flags: int = abi.DEFAULT_INIT_FLAGS,
        max_write: int = 1 << 20,
        max_readahead=None,
        max_background: int = 0,
        congestion_threshold: int = 0,
        time_gran: int = 1,
    ):
        self.ops = ops
        self.fd = fd
        self.want = flags
        self.max_write = max(_PAGE, max_write)
        self.max_readahead = max_readahead
        self.max_background = max_background
        self.congestion_threshold = congestion_threshold
        self.time_gran = time_gran
        self.conn = None  # a Conn once INIT is answered
        self.proto_minor = 0
        self.requests = 0  # answered or not: every request read
        self.readers = 0  # reader tasks alive
        self._bufsize = max(abi.MIN_READ_BUFFER, _HDR + abi.WRITE_IN.size + self.max_write + _PAGE)
        self._buffers = []
        self._nursery = None
        self._waiting = False
        self._ended = False
        self._destroyed = False
        self._debug = False
        self._handlers = {
            abi.INIT: self._init,
            abi.LOOKUP: self._lookup,
            abi.FORGET: self._forget,
            abi.BATCH_FORGET: self._batch_forget,
            abi.GETATTR: self._getattr,
            abi.SETATTR: self._setattr,
            abi.READLINK: self._readlink,
            abi.SYMLINK: self._symlink,
            abi.MKNOD: self._mknod,
            abi.MKDIR: self._mkdir,
            abi.UNLINK: self._unlink,
            abi.RMDIR: self._rmdir,
            abi.RENAME: self._rename,
            abi.RENAME2: self._rename2,
            abi.LINK: self._link,
            abi.OPEN: self._open,
            abi.READ: self._read,
            abi.WRITE: self._write_op,
            abi.STATFS: self._statfs,
            abi.RELEASE: self._release,
            abi.FSYNC: self._fsync,
            abi.SETXATTR: self._setxattr,
            abi.GETXATTR: self._getxattr,
            abi.LISTXATTR: self._listxattr,
            abi.REMOVEXATTR: self._removexattr,
            abi.FLUSH: self._flush,
            abi.OPENDIR: self._opendir,
            abi.READDIR: self._readdir,
            abi.READDIRPLUS: self._readdirplus,
            abi.RELEASEDIR: self._releasedir,
            abi.FSYNCDIR: self._fsyncdir,
            abi.ACCESS: self._access,
            abi.CREATE: self._create,
            abi.INTERRUPT: self._interrupt,
            abi.DESTROY: self._destroy,
            abi.FALLOCATE: self._fallocate,
            abi.LSEEK: self._lseek,
            abi.COPY_FILE_RANGE: self._copy_file_range,
            abi.TMPFILE: self._tmpfile,
        }

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Serve until the filesystem is unmounted (ENODEV), DESTROY, or stop()."""
        os.set_blocking(self.fd, False)
        self._debug = log.isEnabledFor(logging.DEBUG)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reader)
        finally:
            self._nursery = None
            self._ended = True
            if not self._destroyed:
                self._destroyed = True
                try:
                    await self.ops.destroy()
                except Exception:
                    log.exception("ERROR in destroy()")

    def stop(self) -> None:
        """End run() (its readers are cancelled); the mount stays until unmounted."""
        self._ended = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def spare_reader(self) -> None:
        """Start one more reader. The session does so by itself when a handler first waits."""
        if self._nursery is not None and not self._ended:
            self._nursery.start_soon(self._reader)

    async def _reader(self) -> None:
        buf = self._buffers.pop() if self._buffers else bytearray(self._bufsize)
        view = memoryview(buf)
        fd = self.fd
        readv = os.readv
        bufs = (buf,)
        streak = 0
        self.readers += 1
        try:
            while not self._ended:
                try:
                    n = readv(fd, bufs)
                except BlockingIOError:
                    if self._waiting:
                        return  # another reader waits for the next request: this one is spare
                    self._waiting = True
                    try:
                        await trio.lowlevel.wait_readable(fd)
                    finally:
                        self._waiting = False
                    streak = 0
                    continue
                except OSError as exc:
                    if exc.errno == errno.ENOENT:  # the request was interrupted before it was read
                        continue
                    if exc.errno == errno.ENODEV:  # unmounted, or the connection aborted
                        self._ended = True
                        return
                    raise
                if n == 0:  # end of file: a socket standing in for the device was closed
                    self._ended = True
                    return
                self.requests += 1
                await self._handle(view, n)
                streak += 1
                if streak >= READY_STREAK:
                    streak = 0
                    await trio.lowlevel.checkpoint()
        finally:
            self.readers -= 1
            self._buffers.append(buf)

    async def _handle(self, view, n: int) -> None:
        """Answer the request in view[:n]."""
        if n < _HDR:
            log.error("malformed request: %d bytes, shorter than the header", n)
            if n >= 16:
                self.reply(_error_reply(abi.OUT_HEADER.unpack_from(view, 0)[2], errno.EIO))
            return
        length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = abi.IN_HEADER.unpack_from(view, 0)
        end = n - extlen * 8  # extensions (security context, groups) follow the arguments
        if length != n or end < _HDR:
            log.error(
                "malformed %s request: length %d, read %d, extensions %d", abi.opcode_name(opcode), length, n, extlen
            )
            if opcode not in _NO_REPLY:
                self.reply(_error_reply(unique, errno.EIO))
            return
        handler = self._handlers.get(opcode)
        if handler is None:
            if self._debug:
                log.debug("%s (unique %d): ENOSYS", abi.opcode_name(opcode), unique)
            self.reply(_error_reply(unique, errno.ENOSYS))
            return
        ctx = Context(uid, gid, pid, unique, self)
        coro = handler(view, end, unique, nodeid, ctx)
        try:
            try:
                trap = coro.send(None)  # runs in this task, as `await` would
            except StopIteration as stop:
                msg = stop.value  # answered without waiting: the fast path
            else:
                # the handler waits: another reader serves the device meanwhile
                if not ctx.spared:
                    ctx.spared = True
                    self.spare_reader()
                msg = await _go_on(coro, trap)
        except OSError as exc:
            err = exc.errno
            if self._debug:
                log.debug("%s node %d: %s", abi.opcode_name(opcode), nodeid, exc)
            if not err or not 0 < err < 512:  # the kernel refuses an error outside -511..0
                err = errno.EIO
            msg = _error_reply(unique, err) if opcode not in _NO_REPLY else None
        except Malformed as exc:
            log.error("malformed %s request (unique %d): %s", abi.opcode_name(opcode), unique, exc)
            msg = _error_reply(unique, errno.EIO) if opcode not in _NO_REPLY else None
        except Exception:
            log.exception("ERROR in %s (node %d, unique %d)", abi.opcode_name(opcode), nodeid, unique)
            msg = _error_reply(unique, errno.EIO) if opcode not in _NO_REPLY else None
        if msg is not None:
            self.reply(msg)

    def reply(self, msg) -> None:
        """Write one whole message (bytes, or a list of buffers for writev) to the device."""
        try:
            if type(msg) is bytes:
                os.write(self.fd, msg)
            else:
                os.writev(self.fd, msg)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # the kernel no longer waits for it (interrupted)
                return
            if exc.errno == errno.ENODEV:
                self._ended = True
                return
            log.error("writing a reply failed: %s", exc)

    # ------------------------------------------------------------------ notifications

    def _notify(self, code: int, body: bytes) -> bool:
        try:
            os.write(self.fd, _pack_out(16 + len(body), code, 0) + body)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # the kernel does not have that node or name cached
                return False
            raise
        return True

    def notify_inval_entry(self, parent: int, name: bytes, expire_only: bool = False) -> bool:
        """Drop the kernel's cached name *name* in *parent* (False: it had none cached). Not from a handler
        answering a request on that very directory: the kernel holds its lock meanwhile."""
        flags = abi.EXPIRE_ONLY if expire_only else 0
        return self._notify(
            abi.NOTIFY_INVAL_ENTRY, abi.NOTIFY_INVAL_ENTRY_OUT.pack(parent, len(name), flags) + name + b"\0"
        )

    def notify_inval_inode(self, node: int, offset: int = 0, length: int = 0) -> bool:
        """Drop the kernel's cached attributes of *node*, and its cached data from *offset* for *length*
        bytes (0: to the end; a negative offset keeps the data)."""
        return self._notify(abi.NOTIFY_INVAL_INODE, abi.NOTIFY_INVAL_INODE_OUT.pack(node, offset, length))

    def notify_delete(self, parent: int, child: int, name: bytes) -> bool:
        """*name* in *parent* (node *child*) is gone: drop it, and detach the child's cached dentry."""
        return self._notify(abi.NOTIFY_DELETE, abi.NOTIFY_DELETE_OUT.pack(parent, child, len(name), 0) + name + b"\0")

    # ------------------------------------------------------------------ reply builders

    def _entry(self, unique: int, e) -> bytes:
        ev, evn = _split_timeout(e.entry_timeout)
        av, avn = _split_timeout(e.attr_timeout)
        msg = _ENTRY_REPLY(144, 0, unique, e.node, e.generation, ev, av, evn, avn, *_attr_fields(e))
        if self.proto_minor < 9:
            msg = _pack_out(16 + abi.COMPAT_ENTRY_OUT_SIZE, 0, unique) + msg[16 : 16 + abi.COMPAT_ENTRY_OUT_SIZE]
        return msg

    def _attr(self, unique: int, e) -> bytes:
        av, avn = _split_timeout(e.attr_timeout)
        msg = _ATTR_REPLY(120, 0, unique, av, avn, 0, *_attr_fields(e))
        if self.proto_minor < 9:
            msg = _pack_out(16 + abi.COMPAT_ATTR_OUT_SIZE, 0, unique) + msg[16 : 16 + abi.COMPAT_ATTR_OUT_SIZE]
        return msg

    def _entry_open(self, unique: int, e, info) -> bytes:
        body = self._entry(unique, e)[16:]
        return _pack_out(16 + len(body) + abi.OPEN_OUT.size, 0, unique) + body + self._open_out(info)

    @staticmethod
    def _open_out(info) -> bytes:
        if isinstance(info, FileInfo):
            return abi.OPEN_OUT.pack(info.fh, info.open_flags, 0)
        return abi.OPEN_OUT.pack(info, 0, 0)

    def _data(self, unique: int, data, limit=None):
        n = len(data)
        if limit is not None and n > limit:
            data = memoryview(data)[:limit]
            n = limit
        if n <= 4096:
            return _pack_out(16 + n, 0, unique) + bytes(data)
        return [_pack_out(16 + n, 0, unique), data]

    # ------------------------------------------------------------------ INIT

    async def _init(self, view, end, unique, nodeid, ctx):
        have = end - _HDR
        if have < abi.INIT_IN_MIN:
            raise Malformed(f"INIT body of {have} bytes")
        major, minor = abi.INIT_IN.unpack_from(bytes(view[_HDR:end]) + bytes(64), 0)[:2]
        if major < abi.KERNEL_VERSION:
            log.error("the kernel speaks FUSE %d.%d; 7.x is needed", major, minor)
            self._ended = True
            return _error_reply(unique, errno.EPROTO)
        if major > abi.KERNEL_VERSION:
            # the kernel falls back to our major and sends INIT again
            return _pack_out(16 + 8, 0, unique) + abi.INIT_OUT.pack(7, abi.KERNEL_MINOR_VERSION, *(0,) * 11)[:8]
        _, _, max_readahead, flags, flags2 = abi.INIT_IN.unpack_from(bytes(view[_HDR:end]) + bytes(64), 0)
        if minor < 6:
            max_readahead, flags = 0, 0
        offered = flags
        if flags & abi.INIT_EXT and have >= 20:
            offered |= flags2 << 32
        proto = min(minor, abi.KERNEL_MINOR_VERSION)
        agreed = self.want & offered
        for flag, since in abi.FLAG_MINOR.items():
            if since > proto:
                agreed &= ~flag
        if agreed >> 32:
            if offered & abi.INIT_EXT:
                agreed |= abi.INIT_EXT
            else:
                agreed &= 0xFFFFFFFF
        max_write = self.max_write
        max_pages = 0
        if agreed & abi.MAX_PAGES:
            max_pages = min(0xFFFF, (max_write + _PAGE - 1) // _PAGE)
        else:
            max_write = min(max_write, _DEFAULT_MAX_PAGES * _PAGE)
        readahead = max_readahead if self.max_readahead is None else min(self.max_readahead, max_readahead)
        conn = Conn(
            proto_major=7,
            proto_minor=proto,
            kernel_minor=minor,
            kernel_flags=offered,
            flags=agreed,
            max_readahead=readahead,
            max_write=max_write,
            max_pages=max_pages,
            max_background=self.max_background,
            congestion_threshold=self.congestion_threshold,
            time_gran=self.time_gran,
        )
        self.proto_minor = proto
        self.conn = conn
        try:
            await self.ops.init(conn)
        except BaseException:
            self._ended = True  # the kernel fails every request of a connection whose INIT failed
            raise
        log.debug("INIT: %r", conn)
        body = abi.INIT_OUT.pack(
            7,
            proto,
            readahead,
            agreed & 0xFFFFFFFF,
            self.max_background,
            self.congestion_threshold,
            max_write,
            self.time_gran,
            max_pages,
            0,
            agreed >> 32,
            0,
            0,
        )
        if proto < 5:
            body = body[: abi.COMPAT_INIT_OUT_SIZE]
        elif proto < 23:
            body = body[: abi.COMPAT_22_INIT_OUT_SIZE]
        return _pack_out(16 + len(body), 0, unique) + body

    # ------------------------------------------------------------------ names and attributes

    async def _lookup(self, view, end, unique, nodeid, ctx):
        e = await self.ops.lookup(nodeid, _name(view, _HDR, end), ctx)
        return self._entry(unique, e)

    async def _forget(self, view, end, unique, nodeid, ctx):
        (nlookup,) = _args(abi.FORGET_IN, view, end)
        await self.ops.forget([(nodeid, nlookup)])

    async def _batch_forget(self, view, end, unique, nodeid, ctx):
        count, _ = _args(abi.BATCH_FORGET_IN, view, end)
        start = _HDR + abi.BATCH_FORGET_IN.size
        if start + count * abi.FORGET_ONE.size > end:
            raise Malformed(f"BATCH_FORGET of {count} in {end - _HDR} bytes")
        items = list(abi.FORGET_ONE.iter_unpack(view[start : start + count * abi.FORGET_ONE.size]))
        await self.ops.forget(items)

    async def _getattr(self, view, end, unique, nodeid, ctx):
        fh = None
        if end - _HDR >= abi.GETATTR_IN.size:  # 7.9 on
            flags, _, handle = abi.GETATTR_IN.unpack_from(view, _HDR)
            if flags & abi.GETATTR_FH:
                fh = handle
        return self._attr(unique, await self.ops.getattr(nodeid, fh, ctx))

    async def _setattr(self, view, end, unique, nodeid, ctx):
        (valid, _, fh, size, lock_owner, atime, mtime, ctime, atimens, mtimens, ctimens, mode, _, uid, gid, _) = _args(
            abi.SETATTR_IN, view, end
        )
        changes = SetAttr(valid)
        if valid & abi.FATTR_MODE:
            changes.mode = mode
        if valid & abi.FATTR_UID:
            changes.uid = uid
        if valid & abi.FATTR_GID:
            changes.gid = gid
        if valid & abi.FATTR_SIZE:
            changes.size = size
        if valid & abi.FATTR_ATIME_NOW:
            changes.atime_ns = time.time_ns()
            changes.atime_now = True
        elif valid & abi.FATTR_ATIME:
            changes.atime_ns = atime * 1_000_000_000 + atimens
        if valid & abi.FATTR_MTIME_NOW:
            changes.mtime_ns = changes.atime_ns if changes.atime_now else time.time_ns()
            changes.mtime_now = True
        elif valid & abi.FATTR_MTIME:
            changes.mtime_ns = mtime * 1_000_000_000 + mtimens
        if valid & abi.FATTR_CTIME:
            changes.ctime_ns = ctime * 1_000_000_000 + ctimens
        if valid & abi.FATTR_LOCKOWNER:
            changes.lock_owner = lock_owner
        ctx.kill_suidgid = bool(valid & abi.FATTR_KILL_SUIDGID)
        e = await self.ops.setattr(nodeid, changes, fh if valid & abi.FATTR_FH else None, ctx)
        return self._attr(unique, e)

    async def _readlink(self, view, end, unique, nodeid, ctx):
        return self._data(unique, await self.ops.readlink(nodeid, ctx))

    async def _symlink(self, view, end, unique, nodeid, ctx):
        name, target = _two_names(view, _HDR, end)
        return self._entry(unique, await self.ops.symlink(nodeid, name, target, ctx))

    async def _mknod(self, view, end, unique, nodeid, ctx):
        if self.proto_minor >= 12:
            mode, rdev, umask, _ = _args(abi.MKNOD_IN, view, end)
            start = _HDR + abi.MKNOD_IN.size
        else:
            mode, rdev = _args(abi.COMPAT_MKNOD_IN, view, end)
            umask = 0
            start = _HDR + abi.COMPAT_MKNOD_IN.size
        ctx.umask = umask
        name = _name(view, start, end)
        return self._entry(unique, await self.ops.mknod(nodeid, name, mode, abi.decode_dev(rdev), ctx))

    async def _mkdir(self, view, end, unique, nodeid, ctx):
        mode, umask = _args(abi.MKDIR_IN, view, end)
        ctx.umask = umask if self.proto_minor >= 12 else 0
        name = _name(view, _HDR + abi.MKDIR_IN.size, end)
        return self._entry(unique, await self.ops.mkdir(nodeid, name, mode, ctx))

    async def _unlink(self, view, end, unique, nodeid, ctx):
        await self.ops.unlink(nodeid, _name(view, _HDR, end), ctx)
        return _ok(unique)

    async def _rmdir(self, view, end, unique, nodeid, ctx):
        await self.ops.rmdir(nodeid, _name(view, _HDR, end), ctx)
        return _ok(unique)

    async def _rename(self, view, end, unique, nodeid, ctx):
        (newdir,) = _args(abi.RENAME_IN, view, end)
        old, new = _two_names(view, _HDR + abi.RENAME_IN.size, end)
        await self.ops.rename(nodeid, old, newdir, new, 0, ctx)
        return _ok(unique)

    async def _rename2(self, view, end, unique, nodeid, ctx):
        newdir, flags, _ = _args(abi.RENAME2_IN, view, end)
        old, new = _two_names(view, _HDR + abi.RENAME2_IN.size, end)
        await self.ops.rename(nodeid, old, newdir, new, flags, ctx)
        return _ok(unique)

    async def _link(self, view, end, unique, nodeid, ctx):
        (oldnode,) = _args(abi.LINK_IN, view, end)
        name = _name(view, _HDR + abi.LINK_IN.size, end)
        return self._entry(unique, await self.ops.link(oldnode, nodeid, name, ctx))

    # ------------------------------------------------------------------ files

    async def _open(self, view, end, unique, nodeid, ctx):
        flags, open_flags = _args(abi.OPEN_IN, view, end)
        ctx.kill_suidgid = bool(open_flags & abi.OPEN_KILL_SUIDGID) and self.proto_minor >= 33
        info = await self.ops.open(nodeid, flags, ctx)
        return _pack_out(32, 0, unique) + self._open_out(info)

    async def _read(self, view, end, unique, nodeid, ctx):
        fh, offset, size, _, _, _, _ = _args(abi.READ_IN, view, end, abi.COMPAT_READ_IN_SIZE)
        return self._data(unique, await self.ops.read(nodeid, fh, offset, size, ctx), size)

    async def _write_op(self, view, end, unique, nodeid, ctx):
        size_in = abi.WRITE_IN.size if self.proto_minor >= 9 else abi.COMPAT_WRITE_IN_SIZE
        if end - _HDR < size_in:
            raise Malformed(f"WRITE body of {end - _HDR} bytes")
        fh, offset, size, write_flags, _, _, _ = _args(abi.WRITE_IN, view, _HDR + size_in, size_in)
        start = _HDR + size_in
        if start + size > end:
            raise Malformed(f"WRITE of {size} bytes with {end - start} present")
        ctx.kill_suidgid = bool(write_flags & abi.WRITE_KILL_SUIDGID)
        written = await self.ops.write(nodeid, fh, offset, view[start : start + size], ctx)
        return abi.WRITE_REPLY.pack(24, 0, unique, written, 0)

    async def _statfs(self, view, end, unique, nodeid, ctx):
        s = await self.ops.statfs(nodeid, ctx)
        msg = abi.STATFS_REPLY.pack(
            96,
            0,
            unique,
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize,
            s.f_namemax,
            s.f_frsize,
            0,
        )
        if self.proto_minor < 4:
            msg = _pack_out(16 + abi.COMPAT_STATFS_SIZE, 0, unique) + msg[16 : 16 + abi.COMPAT_STATFS_SIZE]
        return msg

    async def _release(self, view, end, unique, nodeid, ctx):
        fh = _args(abi.RELEASE_IN, view, end, 8)[0]
        await self.ops.release(nodeid, fh, ctx)
        return _ok(unique)

    async def _flush(self, view, end, unique, nodeid, ctx):
        fh = _args(abi.FLUSH_IN, view, end, 8)[0]
        await self.ops.flush(nodeid, fh, ctx)
        return _ok(unique)

    async def _fsync(self, view, end, unique, nodeid, ctx):
        fh, flags, _ = _args(abi.FSYNC_IN, view, end)
        await self.ops.fsync(nodeid, fh, bool(flags & abi.FSYNC_FDATASYNC), ctx)
        return _ok(unique)

    async def _create(self, view, end, unique, nodeid, ctx):
        if self.proto_minor >= 12:
            flags, mode, umask, open_flags = _args(abi.CREATE_IN, view, end)
            start = _HDR + abi.CREATE_IN.size
        else:  # fuse_open_in {flags, mode}
            flags, mode = _args(abi.OPEN_IN, view, end)
            umask = open_flags = 0
            start = _HDR + abi.OPEN_IN.size
        ctx.umask = umask
        ctx.kill_suidgid = bool(open_flags & abi.OPEN_KILL_SUIDGID) and self.proto_minor >= 33
        name = _name(view, start, end)
        e, info = await self.ops.create(nodeid, name, mode, flags, ctx)
        return self._entry_open(unique, e, info)

    async def _tmpfile(self, view, end, unique, nodeid, ctx):
        flags, mode, umask, open_flags = _args(abi.CREATE_IN, view, end)
        ctx.umask = umask
        ctx.kill_suidgid = bool(open_flags & abi.OPEN_KILL_SUIDGID)
        e, info = await self.ops.tmpfile(nodeid, mode, flags, ctx)
        return self._entry_open(unique, e, info)

    async def _fallocate(self, view, end, unique, nodeid, ctx):
        fh, offset, length, mode, _ = _args(abi.FALLOCATE_IN, view, end)
        await self.ops.fallocate(nodeid, fh, offset, length, mode, ctx)
        return _ok(unique)

    async def _lseek(self, view, end, unique, nodeid, ctx):
        fh, offset, whence, _ = _args(abi.LSEEK_IN, view, end)
        pos = await self.ops.lseek(nodeid, fh, offset, whence, ctx)
        return abi.LSEEK_REPLY.pack(24, 0, unique, pos)

    async def _copy_file_range(self, view, end, unique, nodeid, ctx):
        fh_in, off_in, node_out, fh_out, off_out, length, flags = _args(abi.COPY_FILE_RANGE_IN, view, end)
        n = await self.ops.copy_file_range(nodeid, fh_in, off_in, node_out, fh_out, off_out, length, flags, ctx)
        return abi.WRITE_REPLY.pack(24, 0, unique, n, 0)

    # ------------------------------------------------------------------ xattrs

    async def _setxattr(self, view, end, unique, nodeid, ctx):
        if self.conn is not None and self.conn.flags & abi.SETXATTR_EXT:
            size, flags, sx_flags, _ = _args(abi.SETXATTR_IN, view, end)
            start = _HDR + abi.SETXATTR_IN.size
            ctx.kill_suidgid = bool(sx_flags & abi.SETXATTR_ACL_KILL_SGID)
        else:
            size, flags = _args(abi.COMPAT_SETXATTR_IN, view, end)
            start = _HDR + abi.COMPAT_SETXATTR_IN.size
        nul = bytes(view[start:end]).find(b"\0")
        if nul < 0 or start + nul + 1 + size != end:
            raise Malformed(f"SETXATTR name and value of {end - start} bytes, value size {size}")
        name = bytes(view[start : start + nul])
        value = bytes(view[start + nul + 1 : end])
        await self.ops.setxattr(nodeid, name, value, flags, ctx)
        return _ok(unique)

    def _sized(self, unique, size, value):
        if size == 0:
            return abi.GETXATTR_REPLY.pack(24, 0, unique, len(value), 0)
        if len(value) > size:
            return _error_reply(unique, errno.ERANGE)
        return self._data(unique, value)

    async def _getxattr(self, view, end, unique, nodeid, ctx):
        size, _ = _args(abi.GETXATTR_IN, view, end)
        name = _name(view, _HDR + abi.GETXATTR_IN.size, end)
        return self._sized(unique, size, await self.ops.getxattr(nodeid, name, ctx))

    async def _listxattr(self, view, end, unique, nodeid, ctx):
        size, _ = _args(abi.GETXATTR_IN, view, end)
        names = await self.ops.listxattr(nodeid, ctx)
        return self._sized(unique, size, b"".join(n + b"\0" for n in names))

    async def _removexattr(self, view, end, unique, nodeid, ctx):
        await self.ops.removexattr(nodeid, _name(view, _HDR, end), ctx)
        return _ok(unique)

    # ------------------------------------------------------------------ directories

    async def _opendir(self, view, end, unique, nodeid, ctx):
        flags, _ = _args(abi.OPEN_IN, view, end)
        info = await self.ops.opendir(nodeid, flags, ctx)
        return _pack_out(32, 0, unique) + self._open_out(info)

    async def _readdir_any(self, view, end, unique, nodeid, ctx, plus):
        fh, offset, size, _, _, _, _ = _args(abi.READ_IN, view, end, abi.COMPAT_READ_IN_SIZE)
        out = DirBuffer(size, plus)
        try:
            await self.ops.readdir(nodeid, fh, offset, out, ctx)
        except Exception:
            if not len(out):
                raise
            # entries were taken (and counted as lookups): send them; the error comes back next call
            log.debug("readdir of node %d failed after %d entries", nodeid, len(out), exc_info=True)
        return self._data(unique, out.getvalue())

    async def _readdir(self, view, end, unique, nodeid, ctx):
        return await self._readdir_any(view, end, unique, nodeid, ctx, False)

    async def _readdirplus(self, view, end, unique, nodeid, ctx):
        return await self._readdir_any(view, end, unique, nodeid, ctx, True)

    async def _releasedir(self, view, end, unique, nodeid, ctx):
        fh = _args(abi.RELEASE_IN, view, end, 8)[0]
        await self.ops.releasedir(nodeid, fh, ctx)
        return _ok(unique)

    async def _fsyncdir(self, view, end, unique, nodeid, ctx):
        fh, flags, _ = _args(abi.FSYNC_IN, view, end)
        await self.ops.fsyncdir(nodeid, fh, bool(flags & abi.FSYNC_FDATASYNC), ctx)
        return _ok(unique)

    async def _access(self, view, end, unique, nodeid, ctx):
        mask, _ = _args(abi.ACCESS_IN, view, end)
        await self.ops.access(nodeid, mask, ctx)
        return _ok(unique)

    # ------------------------------------------------------------------ session

    async def _interrupt(self, view, end, unique, nodeid, ctx):
        # Handlers are not cancelled: ENOSYS tells the kernel so, and it stops sending INTERRUPT (the
        # interrupted request is answered when its handler finishes).
        return _error_reply(unique, errno.ENOSYS)

    async def _destroy(self, view, end, unique, nodeid, ctx):
        self._ended = True
        if not self._destroyed:
            self._destroyed = True
            await self.ops.destroy()
        return _ok(unique)
