"""The native backend's operations: the session's decoded requests handed to the request layer.

`NativeOperations` is a `protocol.Operations` whose methods only translate: the session's decoded
values go to `UnionRequests`, and what it returns goes back as it is (a request-layer `Entry` has the
attribute names the session packs by). Decisions stay in the request layer; the wire stays in the
session. Apart from native_backend.py (the mount and its serving), because nothing here is needed until
the mount is live: the mount program's parent returns before this is imported.
"""

import errno
import os

from ..logger import get_logger
from ..protocol import abi
from ..protocol.operations import FileInfo, Operations
from .requests import SetAttr, UnionRequests

log = get_logger("unionfs")


# What the union asks the kernel for at INIT; the session agrees only what the kernel offers.
# ATOMIC_O_TRUNC: open(O_TRUNC) reaches the union, which then copies no data up.
# POSIX_ACL: the kernel enforces the system.posix_acl_* xattrs the layers keep (with default_permissions).
# EXPORT_SUPPORT: lookups of "." and ".." are answered.
# HANDLE_KILLPRIV_V2: the union clears set-user-ID/set-group-ID itself on write, truncate and chown as the
# kernel flags them (WRITE_KILL_SUIDGID, FATTR_KILL_SUIDGID, OPEN_KILL_SUIDGID), so the kernel stops
# asking for security.capability (a GETXATTR request) before every write(2).
# SETXATTR_EXT: setxattr carries SETXATTR_ACL_KILL_SGID, so an access ACL set by a caller outside the
# file's group clears set-group-ID, as on the kernel (without it the kernel drops that flag).
# CACHE_SYMLINKS: the kernel keeps a symlink's target in its page cache: a node's target never changes
# (copy-up keeps it; a new symlink is a new node), so a second readlink is no request.
# (PARALLEL_DIROPS, in the defaults: lookups and readdirs in one directory may run at once.)
# Not READDIRPLUS_AUTO: with it the kernel asks for READDIRPLUS only for a directory's first page and
# then plain READDIR, so a walk that stats every name (podman diff, find -ls, ls -l) sends a LOOKUP for
# each name past that page: about 185 of a podman diff's 900 requests a mount. Every READDIRPLUS entry
# costs the daemon less than a LOOKUP round trip.
INIT_FLAGS = (
    abi.DEFAULT_INIT_FLAGS
    | abi.POSIX_ACL
    | abi.EXPORT_SUPPORT
    | abi.HANDLE_KILLPRIV_V2
    | abi.SETXATTR_EXT
    | abi.CACHE_SYMLINKS
    | abi.DONT_MASK  # the umask comes with each create: a default ACL replaces it (requests.applies_umask)
) & ~abi.READDIRPLUS_AUTO
# PASSTHROUGH (-o passthrough=on, root only: registering a backing file needs CAP_SYS_ADMIN): the kernel
# reads and writes files of the upper layer itself (UnionRequests._pass_through says which opens).
PASSTHROUGH_FLAGS = abi.PASSTHROUGH


def _statvfs(s) -> os.statvfs_result:
    return os.statvfs_result((s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.favail, 0, s.namemax))


def _file_info(opened) -> FileInfo:
    return FileInfo(opened.fh, keep_cache=opened.keep_cache, direct_io=opened.direct_io, backing_id=opened.backing_id)


class NativeOperations(Operations):
    """The union served by a `protocol.session.Session`."""

    def __init__(self, requests: UnionRequests, session=None):
        self.requests = requests
        self.session = session
        self.opendir_unasked = False  # zero-message opendir (init)
        requests.bare_entries = True  # a readdirplus entry with node id 0 is the session's add_bare
        # The session answers these in place (see Operations.lookup_now): the request layer's own
        # methods take the session's values as they are, so no method of this class stands between.
        self.lookup_now = requests.lookup_now
        self.getattr_now = requests.getattr_now
        self.getxattr_now = requests.getxattr_now
        self.listxattr_now = requests.listxattr_now
        self.read_now = requests.read_now
        self.read_fd = requests.read_fd
        self.release_now = requests.release_now
        self.releasedir_now = requests.releasedir_now

    def open_now(self, node, flags):
        opened = self.requests.open_now(node, flags)
        return None if opened is None else _file_info(opened)

    def opendir_now(self, node):
        if self.opendir_unasked:
            # Zero-message opendir: answered ENOSYS once, the kernel opens directories itself from then
            # on, with no OPENDIR or RELEASEDIR, handle 0 and the flags below (fuse_file_open's default).
            raise OSError(errno.ENOSYS, "directories are opened by the kernel")
        # The kernel may keep a directory's listing (FOPEN_CACHE_DIR) and keep it across opens
        # (KEEP_CACHE): it drops it itself when the directory changes through the mount (its mtime or
        # its inode's version moves). A layer changed behind the mount is undefined, as on the kernel.
        return FileInfo(self.requests.opendir_now(node), cache_dir=True, keep_cache=True)

    def readdir_now(self, node, fh, offset, out):
        # DirBuffer.reply takes the request layer's callback arguments as they are (entry None: bare)
        self.requests.readdir_now(fh, offset, out.reply, plus=out.plus, node_id=node)

    async def init(self, conn) -> None:
        session = self.session
        if session is None:
            return
        if conn.flags & abi.HANDLE_KILLPRIV_V2:
            self.requests.kill_privs = True

        def invalidate(node_id, notify=session.notify_inval_inode):
            notify(node_id, -1)  # attributes only: a writer's pages may be locked while it waits for us

        self.requests.attributes_changed = invalidate
        self.requests.store_data = session.notify_store
        # A warm walk then costs no request a directory (it cost OPENDIR and RELEASEDIR, its listing
        # coming from the kernel's cache): directories.py lists for handle 0. Not with allow_root,
        # whose filter works on requests: an open the daemon never hears of would escape it.
        self.opendir_unasked = bool(conn.kernel_flags & abi.NO_OPENDIR_SUPPORT) and not session.others_denied
        self.requests.drop_data = session.notify_inval_inode  # (node id): every page, and the attributes
        self.requests.applies_umask = bool(conn.flags & abi.DONT_MASK)
        if conn.flags & abi.PASSTHROUGH:
            self.requests.backing_open = session.backing_open
            self.requests.backing_close = session.backing_close
        elif session.want & abi.PASSTHROUGH:
            log.debug("passthrough: the kernel does not offer it; reads and writes go through the daemon")

    async def destroy(self) -> None:
        pass

    async def lookup(self, parent, name, ctx):
        return await self.requests.lookup(parent, name)

    async def forget(self, forgets) -> None:
        await self.requests.forget(forgets)

    async def getattr(self, node, fh, ctx):
        return await self.requests.getattr(node)

    async def setattr(self, node, changes, fh, ctx):
        return await self.requests.setattr(
            node,
            SetAttr(changes.size, changes.mode, changes.uid, changes.gid, changes.atime_ns, changes.mtime_ns),
            fh,
            ctx if ctx.kill_suidgid else None,
        )

    async def readlink(self, node, ctx):
        return await self.requests.readlink(node)

    async def symlink(self, parent, name, target, ctx):
        return await self.requests.symlink(parent, name, target, ctx)

    async def mknod(self, parent, name, mode, rdev, ctx):
        return await self.requests.mknod(parent, name, mode, rdev, ctx)

    async def mkdir(self, parent, name, mode, ctx):
        return await self.requests.mkdir(parent, name, mode, ctx)

    async def unlink(self, parent, name, ctx):
        await self.requests.unlink(parent, name)

    async def rmdir(self, parent, name, ctx):
        await self.requests.rmdir(parent, name)

    async def rename(self, parent, name, new_parent, new_name, flags, ctx):
        await self.requests.rename(parent, name, new_parent, new_name, flags)

    async def link(self, node, new_parent, new_name, ctx):
        return await self.requests.link(node, new_parent, new_name)

    async def open(self, node, flags, ctx):
        return _file_info(await self.requests.open(node, flags, ctx if ctx.kill_suidgid else None))

    async def read(self, node, fh, offset, size, ctx):
        return await self.requests.read(fh, offset, size)

    async def write(self, node, fh, offset, data, ctx):
        return await self.requests.write(fh, offset, data, ctx if ctx.kill_suidgid else None)

    async def statfs(self, node, ctx):
        return _statvfs(await self.requests.statfs())

    async def release(self, node, fh, ctx):
        await self.requests.release(fh)

    async def fsync(self, node, fh, datasync, ctx):
        await self.requests.fsync(fh, datasync)

    async def lseek(self, node, fh, offset, whence, ctx):
        return await self.requests.lseek(fh, offset, whence)

    async def fallocate(self, node, fh, offset, length, mode, ctx):
        await self.requests.fallocate(fh, offset, length, mode)

    async def copy_file_range(self, node_in, fh_in, off_in, node_out, fh_out, off_out, length, flags, ctx):
        return await self.requests.copy_file_range(fh_in, off_in, fh_out, off_out, length, flags)

    async def setxattr(self, node, name, value, flags, ctx):
        await self.requests.setxattr(node, name, value, flags, ctx.kill_suidgid)

    async def getxattr(self, node, name, ctx):
        return await self.requests.getxattr(node, name)

    async def listxattr(self, node, ctx):
        return await self.requests.listxattr(node)

    async def removexattr(self, node, name, ctx):
        await self.requests.removexattr(node, name)

    async def opendir(self, node, flags, ctx):
        return self.opendir_now(node)

    async def readdir(self, node, fh, offset, out, ctx):
        self.readdir_now(node, fh, offset, out)

    async def releasedir(self, node, fh, ctx):
        await self.requests.releasedir(fh)

    async def fsyncdir(self, node, fh, datasync, ctx):
        await self.requests.fsyncdir(fh, datasync)

    async def create(self, parent, name, mode, flags, ctx):
        opened, entry = await self.requests.create(parent, name, mode, flags, ctx)
        return entry, _file_info(opened)
