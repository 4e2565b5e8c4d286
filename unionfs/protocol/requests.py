"""The requests, one handler each: decode the arguments, call the filesystem, encode the reply.

`Requests` is the half of `session.Session` that knows the wire: it reads the fields a Session keeps
(ops, proto_minor, conn, want, max_write ... ) and holds no I/O of its own, so nothing here imports
trio. A handler returns the whole reply message (bytes, a list of buffers for writev, or for a big
READ a splice.SplicedRead that the session splices from the file) or None (no reply: FORGET); it
raises Malformed for lengths that do not add up, OSError for the filesystem's errors. The requests a
filesystem answers without waiting (its `*_now` methods) have a plain handler too, which the session
calls in place: no coroutine, no Context.
"""

import errno
import time

from ..logger import get_logger
from . import abi
from .operations import Conn, DirBuffer, FileInfo, Operations, SetAttr
from .splice import SPLICE_MIN, SplicedRead

log = get_logger("unionfs.protocol")

_HDR = abi.IN_HEADER.size  # 40
_PAGE = 4096
_DEFAULT_MAX_PAGES = 32  # the kernel's request size without MAX_PAGES

_pack_out = abi.OUT_HEADER.pack
_ENTRY_REPLY = abi.ENTRY_REPLY.pack
_ATTR_REPLY = abi.ATTR_REPLY.pack
_split_timeout = abi.split_timeout
_unpack_u32 = abi.GETXATTR_IN.unpack_from  # (size, padding)
_XATTR_NAME = _HDR + abi.GETXATTR_IN.size  # where a GETXATTR's name starts
_ENODATA = -errno.ENODATA
_attr_fields = abi.attr_fields


class Malformed(ValueError):
    """A request whose lengths do not add up."""


def error_reply(unique: int, err: int) -> bytes:
    return _pack_out(16, -err, unique)


def ok(unique: int) -> bytes:
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


def _getattr_fh(view, end):
    """The file handle of an fstat's GETATTR, or None."""
    if end - _HDR >= abi.GETATTR_IN.size:  # 7.9 on
        flags, _, handle = abi.GETATTR_IN.unpack_from(view, _HDR)
        if flags & abi.GETATTR_FH:
            return handle
    return None


class Requests:
    """The opcode handlers of a Session (a mixin: see the module docstring)."""

    ops: Operations  # the Session's
    read_fd = None  # the Session's: ops.read_fd where big READs are spliced (see splice.py), or None

    def reply(self, msg) -> None:
        raise NotImplementedError  # the Session's: writes one answer to the device

    def _handler_table(self) -> dict:
        """opcode -> bound handler(view, end, unique, nodeid, ctx) returning the reply (or None)."""
        return {
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

    def _immediate_table(self) -> dict:
        """opcode -> bound handler(view, end, unique, nodeid) returning the reply, for the requests the
        filesystem answers without waiting (its *_now methods, see Operations): called in place."""
        ops = self.ops
        table = {}
        for opcode, method, handler in (
            (abi.LOOKUP, ops.lookup_now, self._lookup_now),
            (abi.GETATTR, ops.getattr_now, self._getattr_now),
            (abi.GETXATTR, ops.getxattr_now, self._getxattr_now),
            (abi.LISTXATTR, ops.listxattr_now, self._listxattr_now),
            (abi.OPEN, ops.open_now, self._open_now),
            (abi.READ, ops.read_now, self._read_now),
            (abi.RELEASE, ops.release_now, self._release_now),
            (abi.OPENDIR, ops.opendir_now, self._opendir_now),
            (abi.READDIR, ops.readdir_now, self._readdir_now),
            (abi.READDIRPLUS, ops.readdir_now, self._readdirplus_now),
            (abi.RELEASEDIR, ops.releasedir_now, self._releasedir_now),
        ):
            if method is not None:
                table[opcode] = handler
        return table

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
            return abi.OPEN_OUT.pack(info.fh, info.open_flags, info.backing_id)
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
            return error_reply(unique, errno.EPROTO)
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
        if not self.max_stack_depth or agreed & abi.WRITEBACK_CACHE:
            # the kernel enables passthrough only with a stack depth and without the write-back cache
            agreed &= ~abi.PASSTHROUGH
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
            self.max_stack_depth if agreed & abi.PASSTHROUGH else 0,
            0,
        )
        if proto < 5:
            body = body[: abi.COMPAT_INIT_OUT_SIZE]
        elif proto < 23:
            body = body[: abi.COMPAT_22_INIT_OUT_SIZE]
        self.reply(_pack_out(16 + len(body), 0, unique) + body)
        self.ops.init_answered(conn)
        return None  # answered

    # ------------------------------------------------------------------ names and attributes

    async def _lookup(self, view, end, unique, nodeid, ctx):
        e = await self.ops.lookup(nodeid, _name(view, _HDR, end), ctx)
        return self._entry(unique, e)

    def _lookup_now(self, view, end, unique, nodeid):
        return self._entry(unique, self.ops.lookup_now(nodeid, _name(view, _HDR, end)))

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
        return self._attr(unique, await self.ops.getattr(nodeid, _getattr_fh(view, end), ctx))

    def _getattr_now(self, view, end, unique, nodeid):
        return self._attr(unique, self.ops.getattr_now(nodeid, _getattr_fh(view, end)))

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
        return ok(unique)

    async def _rmdir(self, view, end, unique, nodeid, ctx):
        await self.ops.rmdir(nodeid, _name(view, _HDR, end), ctx)
        return ok(unique)

    async def _rename(self, view, end, unique, nodeid, ctx):
        (newdir,) = _args(abi.RENAME_IN, view, end)
        old, new = _two_names(view, _HDR + abi.RENAME_IN.size, end)
        await self.ops.rename(nodeid, old, newdir, new, 0, ctx)
        return ok(unique)

    async def _rename2(self, view, end, unique, nodeid, ctx):
        newdir, flags, _ = _args(abi.RENAME2_IN, view, end)
        old, new = _two_names(view, _HDR + abi.RENAME2_IN.size, end)
        await self.ops.rename(nodeid, old, newdir, new, flags, ctx)
        return ok(unique)

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

    def _open_now(self, view, end, unique, nodeid):
        flags, open_flags = _args(abi.OPEN_IN, view, end)
        if open_flags & abi.OPEN_KILL_SUIDGID and self.proto_minor >= 33:
            return None  # open() takes the caller's Context
        info = self.ops.open_now(nodeid, flags)
        if info is None:
            return None
        return _pack_out(32, 0, unique) + self._open_out(info)

    def _read_now(self, view, end, unique, nodeid):
        fh, offset, size, _, _, _, _ = _args(abi.READ_IN, view, end, abi.COMPAT_READ_IN_SIZE)
        if size >= SPLICE_MIN and self.read_fd is not None:
            fd = self.read_fd(fh)
            if fd is not None:
                return SplicedRead(unique, fh, fd, offset, size)  # the session splices it
        return self._data(unique, self.ops.read_now(fh, offset, size), size)

    def _release_now(self, view, end, unique, nodeid):
        self.ops.release_now(_args(abi.RELEASE_IN, view, end, 8)[0])
        return ok(unique)

    async def _read(self, view, end, unique, nodeid, ctx):
        fh, offset, size, _, _, _, _ = _args(abi.READ_IN, view, end, abi.COMPAT_READ_IN_SIZE)
        if size >= SPLICE_MIN and self.read_fd is not None:
            fd = self.read_fd(fh)
            if fd is not None:
                return SplicedRead(unique, fh, fd, offset, size)
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
        return ok(unique)

    async def _flush(self, view, end, unique, nodeid, ctx):
        fh = _args(abi.FLUSH_IN, view, end, 8)[0]
        await self.ops.flush(nodeid, fh, ctx)
        return ok(unique)

    async def _fsync(self, view, end, unique, nodeid, ctx):
        fh, flags, _ = _args(abi.FSYNC_IN, view, end)
        await self.ops.fsync(nodeid, fh, bool(flags & abi.FSYNC_FDATASYNC), ctx)
        return ok(unique)

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
        return ok(unique)

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
        return ok(unique)

    def _sized(self, unique, size, value):
        if size == 0:
            return abi.GETXATTR_REPLY.pack(24, 0, unique, len(value), 0)
        if len(value) > size:
            return error_reply(unique, errno.ERANGE)
        return self._data(unique, value)

    async def _getxattr(self, view, end, unique, nodeid, ctx):
        size, _ = _args(abi.GETXATTR_IN, view, end)
        name = _name(view, _HDR + abi.GETXATTR_IN.size, end)
        return self._sized(unique, size, await self.ops.getxattr(nodeid, name, ctx))

    def _getxattr_now(self, view, end, unique, nodeid):
        # (read here, not by _args and _name: every file of a tree walk comes this way)
        if end <= _XATTR_NAME or view[end - 1] != 0:
            raise Malformed(f"GETXATTR body of {end - _HDR} bytes without its size and name")
        value = self.ops.getxattr_now(nodeid, bytes(view[_XATTR_NAME : end - 1]))
        if value is None:
            return _pack_out(16, _ENODATA, unique)
        return self._sized(unique, _unpack_u32(view, _HDR)[0], value)

    async def _listxattr(self, view, end, unique, nodeid, ctx):
        size, _ = _args(abi.GETXATTR_IN, view, end)
        return self._names(unique, size, await self.ops.listxattr(nodeid, ctx))

    def _listxattr_now(self, view, end, unique, nodeid):
        if end < _XATTR_NAME:
            raise Malformed(f"LISTXATTR body of {end - _HDR} bytes")
        return self._names(unique, _unpack_u32(view, _HDR)[0], self.ops.listxattr_now(nodeid))

    def _names(self, unique, size, names):
        if not names:  # most files have no xattr: the reply is a header (and a zero size for a probe)
            return abi.GETXATTR_REPLY.pack(24, 0, unique, 0, 0) if size == 0 else _pack_out(16, 0, unique)
        return self._sized(unique, size, b"".join(n + b"\0" for n in names))

    async def _removexattr(self, view, end, unique, nodeid, ctx):
        await self.ops.removexattr(nodeid, _name(view, _HDR, end), ctx)
        return ok(unique)

    # ------------------------------------------------------------------ directories

    async def _opendir(self, view, end, unique, nodeid, ctx):
        flags, _ = _args(abi.OPEN_IN, view, end)
        info = await self.ops.opendir(nodeid, flags, ctx)
        return _pack_out(32, 0, unique) + self._open_out(info)

    def _opendir_now(self, view, end, unique, nodeid):
        _args(abi.OPEN_IN, view, end)
        return _pack_out(32, 0, unique) + self._open_out(self.ops.opendir_now(nodeid))

    def _readdir_now_any(self, view, end, unique, nodeid, plus):
        fh, offset, size, _, _, _, _ = _args(abi.READ_IN, view, end, abi.COMPAT_READ_IN_SIZE)
        out = DirBuffer(size, plus)
        try:
            self.ops.readdir_now(nodeid, fh, offset, out)
        except Exception:
            if not len(out):
                raise
            log.debug("readdir of node %d failed after %d entries", nodeid, len(out), exc_info=True)
        return self._data(unique, out.getvalue())

    def _readdir_now(self, view, end, unique, nodeid):
        return self._readdir_now_any(view, end, unique, nodeid, False)

    def _readdirplus_now(self, view, end, unique, nodeid):
        return self._readdir_now_any(view, end, unique, nodeid, True)

    def _releasedir_now(self, view, end, unique, nodeid):
        self.ops.releasedir_now(_args(abi.RELEASE_IN, view, end, 8)[0])
        return ok(unique)

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
        return ok(unique)

    async def _fsyncdir(self, view, end, unique, nodeid, ctx):
        fh, flags, _ = _args(abi.FSYNC_IN, view, end)
        await self.ops.fsyncdir(nodeid, fh, bool(flags & abi.FSYNC_FDATASYNC), ctx)
        return ok(unique)

    async def _access(self, view, end, unique, nodeid, ctx):
        mask, _ = _args(abi.ACCESS_IN, view, end)
        await self.ops.access(nodeid, mask, ctx)
        return ok(unique)

    # ------------------------------------------------------------------ session

    async def _interrupt(self, view, end, unique, nodeid, ctx):
        # Handlers are not cancelled: ENOSYS tells the kernel so, and it stops sending INTERRUPT (the
        # interrupted request is answered when its handler finishes).
        return error_reply(unique, errno.ENOSYS)

    async def _destroy(self, view, end, unique, nodeid, ctx):
        self._ended = True
        if not self._destroyed:
            self._destroyed = True
            await self.ops.destroy()
        return ok(unique)
