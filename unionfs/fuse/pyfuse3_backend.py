"""The pyfuse3 backend: pyfuse3's Operations calls translated to the request layer and back.

Each handler only converts (calling the request layer's plain `*_now` methods where it has them: no
coroutine in between): pyfuse3's arguments into plain values, the request layer's records into
pyfuse3's (one EntryAttributes straight from an Entry, no dict in between), and OSError into FUSEError.
Every decision is the request layer's (requests.py), which also holds the error boundary; a failure
of a translation here (a bug) is answered EIO with an ERROR line too: pyfuse3 would end the session on
any exception but FUSEError. `Pyfuse3Mount` mounts through libfuse and serves with pyfuse3's loop.
"""

import errno
import os

import pyfuse3
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, readdir_reply

from ..errors import MountError
from ..logger import get_logger
from . import bare_entries
from . import loop as fuse_loop
from .daemon import STOP_SIGNALS, mounted_device, still_shows
from .requests import SetAttr, UnionRequests

log = get_logger("unionfs")

_NO_CHANGES = SetAttr()


def _untranslatable(what, value) -> FUSEError:
    log.exception("ERROR translating %s %r for pyfuse3", what, value)
    return FUSEError(errno.EIO)


def _attrs(entry) -> EntryAttributes:
    """An Entry as pyfuse3's EntryAttributes (its st_ino is the node id and st_ino together)."""
    try:
        (
            node_id,
            generation,
            _st_ino,
            mode,
            nlink,
            uid,
            gid,
            rdev,
            size,
            blksize,
            blocks,
            atime_ns,
            mtime_ns,
            ctime_ns,
            entry_timeout,
            attr_timeout,
        ) = entry
        attr = EntryAttributes()
        attr.st_ino = node_id
        attr.generation = generation
        attr.entry_timeout = entry_timeout
        attr.attr_timeout = attr_timeout
        attr.st_mode = mode
        attr.st_nlink = nlink
        attr.st_uid = uid
        attr.st_gid = gid
        attr.st_rdev = rdev
        attr.st_size = size
        attr.st_blksize = blksize
        attr.st_blocks = blocks
        attr.st_atime_ns = atime_ns
        attr.st_mtime_ns = mtime_ns
        attr.st_ctime_ns = ctime_ns
        return attr
    except Exception:
        raise _untranslatable("entry", entry) from None


def _bare(ino, ftype) -> EntryAttributes:
    """A readdirplus entry without attributes: d_ino and d_type, node id 0 (bare_entries.py)."""
    attrs = EntryAttributes()
    attrs.st_ino = ino
    attrs.st_mode = ftype
    if bare_entries.available:
        bare_entries.strip(attrs)
    return attrs


def _file_info(opened) -> FileInfo:
    try:
        return FileInfo(fh=opened.fh, keep_cache=opened.keep_cache, direct_io=opened.direct_io)
    except Exception:
        raise _untranslatable("open reply", opened) from None


def _attributes_changed(node_id: int) -> None:
    pyfuse3.invalidate_inode(node_id, attr_only=True)  # (cached data kept: pages may be locked by a writer)


class Pyfuse3Operations(pyfuse3.Operations):
    def __init__(self, requests: UnionRequests):
        super().__init__()
        self.requests = requests
        # FUSE capabilities, read by pyfuse3 at INIT
        self.supports_dot_lookup = requests.dot_lookup
        self.enable_writeback_cache = requests.writeback_cache
        self.enable_acl = requests.posix_acl
        requests.bare_entries = bare_entries.available
        requests.nodes.separate_ids = False  # pyfuse3's node id is st_ino
        requests.before_wait = fuse_loop.spare_reader
        requests.attributes_changed = _attributes_changed

    # ----------------------------------------------------------- lookup and attributes

    async def lookup(self, parent_inode, name, ctx=None):
        try:
            entry = self.requests.lookup_now(parent_inode, name)
        except OSError as exc:
            raise FUSEError(exc.errno) from None
        if entry.node_id:
            return _attrs(entry)
        negative = EntryAttributes()  # node id 0: the name is absent, for entry_timeout
        negative.st_ino = 0
        negative.entry_timeout = entry.entry_timeout
        return negative

    async def forget(self, inode_list):
        await self.requests.forget(inode_list)

    async def getattr(self, inode, ctx=None):
        try:
            entry = self.requests.getattr_now(inode)
        except OSError as exc:
            raise FUSEError(exc.errno) from None
        return _attrs(entry)

    async def setattr(self, inode, attr, fields, fh, ctx):
        if (
            fields.update_size
            or fields.update_mode
            or fields.update_uid
            or fields.update_gid
            or fields.update_atime
            or fields.update_mtime
        ):
            changes = SetAttr(
                attr.st_size if fields.update_size else None,
                attr.st_mode if fields.update_mode else None,
                attr.st_uid if fields.update_uid else None,
                attr.st_gid if fields.update_gid else None,
                attr.st_atime_ns if fields.update_atime else None,
                attr.st_mtime_ns if fields.update_mtime else None,
            )
        else:
            changes = _NO_CHANGES
        try:
            entry = await self.requests.setattr(inode, changes, fh)
        except OSError as exc:
            raise FUSEError(exc.errno) from None
        return _attrs(entry)

    async def readlink(self, inode, ctx):
        try:
            return await self.requests.readlink(inode)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def statfs(self, ctx):
        try:
            vfs = await self.requests.statfs()
        except OSError as exc:
            raise FUSEError(exc.errno) from None
        out = pyfuse3.StatvfsData()
        try:
            out.f_bsize = vfs.bsize
            out.f_frsize = vfs.frsize
            out.f_blocks = vfs.blocks
            out.f_bfree = vfs.bfree
            out.f_bavail = vfs.bavail
            out.f_files = vfs.files
            out.f_ffree = vfs.ffree
            out.f_favail = vfs.favail
            out.f_namemax = vfs.namemax
        except Exception:
            raise _untranslatable("statfs", vfs) from None
        return out

    # ----------------------------------------------------------- directories

    async def opendir(self, inode, ctx):
        try:
            return await self.requests.opendir(inode)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def readdir(self, fh, start_id, token):
        def reply(name, ino, ftype, entry, next_offset):
            return readdir_reply(token, name, _bare(ino, ftype) if entry is None else _attrs(entry), next_offset)

        try:
            await self.requests.readdir(fh, start_id, reply)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def releasedir(self, fh):
        try:
            await self.requests.releasedir(fh)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def fsyncdir(self, fh, datasync):
        try:
            await self.requests.fsyncdir(fh, datasync)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def mkdir(self, parent_inode, name, mode, ctx):
        try:
            entry = await self.requests.mkdir(parent_inode, name, mode, ctx)
        except OSError as exc:
            raise FUSEError(exc.errno) from None
        return _attrs(entry)

    async def rmdir(self, parent_inode, name, ctx):
        try:
            await self.requests.rmdir(parent_inode, name)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    # ----------------------------------------------------------- names

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        try:
            entry = await self.requests.mknod(parent_inode, name, mode, rdev, ctx)
        except OSError as exc:
            raise FUSEError(exc.errno) from None
        return _attrs(entry)

    async def symlink(self, parent_inode, name, target, ctx):
        try:
            entry = await self.requests.symlink(parent_inode, name, target, ctx)
        except OSError as exc:
            raise FUSEError(exc.errno) from None
        return _attrs(entry)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        try:
            entry = await self.requests.link(inode, new_parent_inode, new_name)
        except OSError as exc:
            raise FUSEError(exc.errno) from None
        return _attrs(entry)

    async def unlink(self, parent_inode, name, ctx):
        try:
            await self.requests.unlink(parent_inode, name)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        try:
            await self.requests.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    # ----------------------------------------------------------- files

    async def open(self, inode, flags, ctx):
        try:
            opened = await self.requests.open(inode, flags)
        except OSError as exc:
            raise FUSEError(exc.errno) from None
        return _file_info(opened)

    async def create(self, parent_inode, name, mode, flags, ctx):
        try:
            opened, entry = await self.requests.create(parent_inode, name, mode, flags, ctx)
        except OSError as exc:
            raise FUSEError(exc.errno) from None
        return _file_info(opened), _attrs(entry)

    async def read(self, fh, off, size):
        try:
            return await self.requests.read(fh, off, size)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def write(self, fh, off, buf):
        try:
            return await self.requests.write(fh, off, buf)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    # No flush handler (see requests.py): pyfuse3 answers ENOSYS and the kernel stops sending FLUSH.

    async def fsync(self, fh, datasync):
        try:
            await self.requests.fsync(fh, datasync)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def release(self, fh):
        try:
            await self.requests.release(fh)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    # ----------------------------------------------------------- xattrs

    async def getxattr(self, inode, name, ctx):
        try:
            value = self.requests.getxattr_now(inode, name)
        except OSError as exc:
            raise FUSEError(exc.errno) from None
        if value is None:
            raise FUSEError(errno.ENODATA)
        return value

    async def listxattr(self, inode, ctx):
        try:
            return self.requests.listxattr_now(inode)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def setxattr(self, inode, name, value, ctx):
        try:
            await self.requests.setxattr(inode, name, value)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def removexattr(self, inode, name, ctx):
        try:
            await self.requests.removexattr(inode, name)
        except OSError as exc:
            raise FUSEError(exc.errno) from None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,")


class Pyfuse3Mount:
    """The union mounted through pyfuse3 (libfuse), served by pyfuse3's loop on trio.

    Made = mounted: on failure the layers are let go and MountError says why in one line.
    """

    def __init__(self, layers, opts, options: list):
        from .daemon import request_layer

        self.union = union = layers.engine()  # before the mount: pyfuse3.init takes the operations
        self.requests = requests = request_layer(union, opts)
        ops = Pyfuse3Operations(requests)
        fuse_loop.install()
        wanted = set(pyfuse3.default_options) | set(options)
        wanted |= {"fsname=" + _escape(opts.fsname), "subtype=pyunionfs"}
        try:
            pyfuse3.init(ops, opts.mountpoint, wanted)
        except Exception as exc:
            self.union.close()
            raise MountError(_mount_failure(opts.mountpoint, exc)) from None
        self.mountpoint = opts.mountpoint
        self.device = mounted_device(opts.mountpoint)  # what libfuse's unmount, by the path, may take

    def serve(self, signalled: list) -> int:
        """Serve until unmounted (or a signal); 0, or 1 when the loop failed. *signalled*: the stop
        signals that came before the loop listens (daemon.run notes them)."""
        import trio

        self._signalled = signalled
        try:
            trio.run(self._serve)
        except BaseException:
            log.exception("ERROR: the request loop failed")
            pyfuse3.close(unmount=still_shows(self.mountpoint, self.device))
            self.union.close()
            return 1
        # the loop ends by itself when the mount is gone: a warning only where it was to be unmounted here
        pyfuse3.close(unmount=still_shows(self.mountpoint, self.device, say=bool(self._signalled)))
        self.union.close()
        return 0

    async def _serve(self):
        import trio

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stop_on_signal)
            await fuse_loop.main(nursery)
            # Let go of the layers at once: `umount LOWER` right after `umount MNT` must not find them busy.
            self.union.close()
            nursery.cancel_scope.cancel()

    async def _stop_on_signal(self):
        import trio

        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            if not self._signalled:
                async for signum in signals:
                    self._signalled.append(signum)
                    break
            log.info("signal %d: unmounting", self._signalled[0])
            pyfuse3.terminate()


def _mount_failure(mountpoint: str, exc: Exception) -> str:
    """The one line for a failed pyfuse3.init: libfuse printed its reason on a line of its own."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        try:
            mode = "%o" % (os.stat("/dev/fuse").st_mode & 0o7777)
        except OSError:
            return "cannot mount %s: /dev/fuse is missing (is the fuse module loaded?)" % mountpoint
        return "cannot mount %s: /dev/fuse is not usable by this user (mode %s)" % (mountpoint, mode)
    return "cannot mount %s: %s" % (mountpoint, exc)
