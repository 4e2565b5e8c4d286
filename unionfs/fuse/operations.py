"""The pyfuse3 adapter: FUSE requests in, union engine calls out.

Handlers stay a few lines each. `_boundary` is the one error edge: OSError becomes its errno, any other
exception becomes EIO plus an ERROR log line with the traceback, so the mount never dies.
Copy-up of large files runs its byte copy in a worker thread under a per-node lock, so other requests go
on while it runs and two opens of one file never copy it twice.
"""

import errno
import functools
import itertools
import logging
import os
import stat

import pyfuse3
import trio

from ..engine import Caller, Union
from ..engine.idmap import IdMap
from . import bare_entries
from . import loop as fuse_loop

log = logging.getLogger("unionfs")

# Copies smaller than this are done inline: a thread round trip costs more than the copy.
THREAD_COPY_MIN = 1 << 20


def _boundary(handler):
    @functools.wraps(handler)
    async def wrapper(self, *args):
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s%r: %s", handler.__name__, args[:3], exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("ERROR in %s%r", handler.__name__, args[:3])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class _DirHandle:
    __slots__ = ("node", "names")

    def __init__(self, node):
        self.node = node
        self.names = None  # union.list_entries(), taken at the first readdir from offset 0 (and rewinddir)


class UnionOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    # Off: with the write-back cache the kernel flushes its own mtime/ctime with a setattr at close, which
    # cannot be told from a user's utimes and would copy a lower file up (or fail on an unlinked one).
    # Measured here it gained little: 4 KiB writes cost a getxattr(security.capability) request each
    # either way, and 1 MiB writes ran at the same speed.
    enable_writeback_cache = False
    enable_acl = True

    def __init__(self, union: Union, timeout: float = 300.0, uid_map: IdMap = None, gid_map: IdMap = None):
        super().__init__()
        self.union = union
        union.writes_need_reads = self.enable_writeback_cache
        self.timeout = timeout
        self.uid_map = uid_map or IdMap()
        self.gid_map = gid_map or IdMap()
        self._files = {}
        self._dirs = {}
        self._fh = itertools.count(1)
        self._copy_locks = {}
        self._copy_limiter = trio.CapacityLimiter(4)

    # ----------------------------------------------------------- helpers

    def _node(self, node_id):
        return self.union.nodes.get(node_id)

    def _entry(self, node, st) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.id
        attr.generation = 0
        # A lower file with several names is split by copy-up; a zero entry timeout makes the kernel ask
        # for the name each time, so the daemon knows which name is being changed.
        attr.entry_timeout = 0 if node.shared_lower else self.timeout
        attr.attr_timeout = self.timeout
        attr.st_mode = st.st_mode
        attr.st_nlink = self.union.reported_nlink(node, st)
        attr.st_uid = self.uid_map.shown(st.st_uid)
        attr.st_gid = self.gid_map.shown(st.st_gid)
        attr.st_rdev = st.st_rdev
        attr.st_size = st.st_size
        attr.st_blksize = st.st_blksize
        attr.st_blocks = st.st_blocks
        attr.st_atime_ns = st.st_atime_ns
        attr.st_mtime_ns = st.st_mtime_ns
        attr.st_ctime_ns = st.st_ctime_ns
        return attr

    async def _copy_up(self, node, with_data=True):
        """Copy a node up unless it is there already; big copies run in a worker thread."""
        union = self.union
        if union.is_upper(node):
            return
        if node.is_dir:
            union.ensure_upper_dir(node)
            return
        lock = self._copy_locks.setdefault(node.id, trio.Lock())
        try:
            if lock.locked():
                fuse_loop.spare_reader()
            async with lock:
                if union.is_upper(node):
                    return
                job = union.copy_up_begin(node, with_data)
                try:
                    if job.data_size >= THREAD_COPY_MIN:
                        fuse_loop.spare_reader()
                        await trio.to_thread.run_sync(job.copy_data, limiter=self._copy_limiter)
                    else:
                        job.copy_data()
                    union.copy_up_commit(job)
                finally:
                    union.copy_up_abort(job)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._copy_locks.pop(node.id, None)

    async def _settled(self, node):
        """Wait for a copy-up of this node in flight (before removing or renaming it)."""
        lock = self._copy_locks.get(node.id)
        if lock is not None:
            if lock.locked():
                fuse_loop.spare_reader()
            async with lock:
                pass

    async def _settled_child(self, parent, name):
        try:
            child = self.union.child(parent, name)
        except OSError:
            return None
        await self._settled(child)
        return child

    def _caller(self, ctx) -> Caller:
        """The owner new entries get on disk (after uidmapping/gidmapping)."""
        return Caller(self.uid_map.stored(ctx.uid), self.gid_map.stored(ctx.gid))

    # ----------------------------------------------------------- lookup and attributes

    @_boundary
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        try:
            node, st = self.union.lookup(parent, name)
        except FileNotFoundError:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self.timeout
            return negative
        return self._entry(node, st)

    async def forget(self, inode_list):
        for node_id, count in inode_list:
            try:
                self.union.forget(node_id, count)
            except Exception:
                log.exception("ERROR in forget(%d, %d)", node_id, count)

    @_boundary
    async def getattr(self, inode, ctx=None):
        node = self._node(inode)
        return self._entry(node, self.union.getattr(node))

    @_boundary
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if not (
            fields.update_size
            or fields.update_mode
            or fields.update_uid
            or fields.update_gid
            or fields.update_atime
            or fields.update_mtime
        ):
            # Only ctime (the write-back cache flushes it after unlink or rename): the backing file
            # keeps its own; nothing to copy up.
            return self._entry(node, self.union.getattr(node))
        size = attr.st_size if fields.update_size else None
        await self._settled(node)
        if self.union.upper is not None and node.names:
            await self._copy_up(node, with_data=size != 0)
        st = self.union.setattr(
            node,
            size=size,
            mode=attr.st_mode if fields.update_mode else None,
            uid=self.uid_map.stored(attr.st_uid) if fields.update_uid else None,
            gid=self.gid_map.stored(attr.st_gid) if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            handle=self._files.get(fh) if fh is not None else None,
        )
        return self._entry(node, st)

    @_boundary
    async def readlink(self, inode, ctx):
        return self.union.readlink(self._node(inode))

    @_boundary
    async def statfs(self, ctx):
        vfs = self.union.statfs()
        out = pyfuse3.StatvfsData()
        for field in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
            "f_namemax",
        ):
            setattr(out, field, getattr(vfs, field))
        return out

    # ----------------------------------------------------------- directories

    @_boundary
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        self.union.opendir(node)
        fh = next(self._fh)
        self._dirs[fh] = _DirHandle(node)
        return fh

    @_boundary
    async def readdir(self, fh, start_id, token):
        handle = self._dirs[fh]
        node = handle.node
        union = self.union
        if start_id == 0 or handle.names is None:
            handle.names = [(b".", stat.S_IFDIR, None), (b"..", stat.S_IFDIR, None)] + union.list_entries(node)
        entries = handle.names
        for index in range(start_id, len(entries)):
            name, ftype, scanned = entries[index]
            if index < 2:
                # The kernel takes no lookup reference for "." and ".." and reads no attributes of them
                # (fuse_direntplus_link skips them): d_ino and d_type are all that count.
                target = node if index == 0 else (node.parent or union.root)
                if not pyfuse3.readdir_reply(token, name, self._bare(target.id, stat.S_IFDIR), index + 1):
                    return
                continue
            child = node.children.get(name)
            # A file the kernel holds goes without attributes (bare_entries.py): a refresh would drop
            # its cached ACLs. Directories keep theirs: reading a directory makes the kernel drop its
            # atime, and without this refresh the walker's next stat of it would be a request. A
            # shared lower file is looked up by name each time (entry_timeout 0).
            if (
                child is not None
                and child.lookups > 0
                and bare_entries.available
                and not child.is_dir
                and not child.shared_lower
                and (scanned is None or union.is_scanned_node(child, scanned))
            ):
                if not pyfuse3.readdir_reply(token, name, self._bare(child.id, ftype), index + 1):
                    return
                continue
            if scanned is None:  # a listing kept from before: the entry's attributes are looked up
                try:
                    child, st = union.lookup(node, name)
                except OSError:
                    continue  # gone behind the mount since
            else:
                child, st = union.lookup_scanned(node, scanned)
            if not pyfuse3.readdir_reply(token, name, self._entry(child, st), index + 1):
                union.forget(child.id, 1)
                return

    @staticmethod
    def _bare(node_id, ftype) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node_id
        attrs.st_mode = ftype
        if bare_entries.available:
            bare_entries.strip(attrs)
        return attrs

    @_boundary
    async def releasedir(self, fh):
        handle = self._dirs.pop(fh)
        self.union.releasedir(handle.node)

    @_boundary
    async def fsyncdir(self, fh, datasync):
        pass

    @_boundary
    async def mkdir(self, parent_inode, name, mode, ctx):
        node, st = self.union.mkdir(self._node(parent_inode), name, mode, self._caller(ctx))
        return self._entry(node, st)

    @_boundary
    async def rmdir(self, parent_inode, name, ctx):
        parent = self._node(parent_inode)
        await self._settled_child(parent, name)
        self.union.rmdir(parent, name)

    # ----------------------------------------------------------- names

    @_boundary
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        node, st = self.union.mknod(self._node(parent_inode), name, mode, rdev, self._caller(ctx))
        return self._entry(node, st)

    @_boundary
    async def symlink(self, parent_inode, name, target, ctx):
        node, st = self.union.symlink(self._node(parent_inode), name, target, self._caller(ctx))
        return self._entry(node, st)

    @_boundary
    async def link(self, inode, new_parent_inode, new_name, ctx):
        node = self._node(inode)
        await self._settled(node)
        self.union.check_link(new_name)
        await self._copy_up(node)
        linked, st = self.union.link(node, self._node(new_parent_inode), new_name)
        return self._entry(linked, st)

    @_boundary
    async def unlink(self, parent_inode, name, ctx):
        parent = self._node(parent_inode)
        await self._settled_child(parent, name)
        self.union.unlink(parent, name)

    @_boundary
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        parent = self._node(parent_inode_old)
        new_parent = self._node(parent_inode_new)
        node = await self._settled_child(parent, name_old)
        await self._settled_child(new_parent, name_new)
        if node is not None and not node.is_dir and self.union.upper is not None:
            self.union.check_rename(parent, name_old, new_parent, name_new, flags)
            await self._copy_up(node)
        self.union.rename(parent, name_old, new_parent, name_new, flags)

    # ----------------------------------------------------------- files

    def _file_info(self, handle) -> pyfuse3.FileInfo:
        fh = next(self._fh)
        self._files[fh] = handle
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_boundary
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC) and self.union.upper is not None:
            await self._settled(node)
            await self._copy_up(node, with_data=not flags & os.O_TRUNC)
        return self._file_info(self.union.open(node, flags))

    @_boundary
    async def create(self, parent_inode, name, mode, flags, ctx):
        node, handle, st = self.union.create(self._node(parent_inode), name, mode, flags, self._caller(ctx))
        return self._file_info(handle), self._entry(node, st)

    @_boundary
    async def read(self, fh, off, size):
        return self.union.read(self._files[fh], off, size)

    @_boundary
    async def write(self, fh, off, buf):
        return self.union.write(self._files[fh], off, buf)

    # No flush handler: writes reach the backing file at once, so close(2) has nothing to report.
    # pyfuse3 answers ENOSYS and the kernel stops sending FLUSH: one request less per close.

    @_boundary
    async def fsync(self, fh, datasync):
        self.union.fsync(self._files[fh], datasync)

    @_boundary
    async def release(self, fh):
        self.union.release(self._files.pop(fh))

    # ----------------------------------------------------------- xattrs

    @_boundary
    async def getxattr(self, inode, name, ctx):
        return self.union.getxattr(self._node(inode), name)

    @_boundary
    async def listxattr(self, inode, ctx):
        return self.union.listxattr(self._node(inode))

    @_boundary
    async def setxattr(self, inode, name, value, ctx):
        node = self._node(inode)
        await self._settled(node)
        if self.union.upper is not None and not self.union.indexed(node):
            await self._copy_up(node)
        self.union.setxattr(node, name, value)

    @_boundary
    async def removexattr(self, inode, name, ctx):
        node = self._node(inode)
        await self._settled(node)
        self.union.getxattr(node, name)  # ENODATA before any copy-up, as the kernel
        if self.union.upper is not None and not self.union.indexed(node):
            await self._copy_up(node)
        self.union.removexattr(node, name)
