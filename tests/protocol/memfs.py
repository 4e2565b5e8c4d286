"""A small in-memory filesystem on unionfs.protocol's Operations, for the protocol tests only.

Node ids are the inode numbers; every answer that hands out a node counts a lookup, and `forget`
takes them back (a node without names and lookups is dropped). Enough of POSIX for the tests: files,
directories, symlinks, device nodes and fifos, hard links, rename with NOREPLACE/EXCHANGE, xattrs.
"""

import errno
import os
import stat
import time

from unionfs.protocol import abi
from unionfs.protocol.operations import Entry, FileInfo, Operations

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
TIMEOUT = 1.0


class Inode:
    __slots__ = (
        "ino",
        "mode",
        "uid",
        "gid",
        "rdev",
        "data",
        "children",
        "target",
        "xattrs",
        "nlink",
        "times",
        "lookups",
        "parent",
    )

    def __init__(self, ino, mode, uid=0, gid=0, rdev=0):
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.data = bytearray()
        self.children = {} if stat.S_ISDIR(mode) else None
        self.target = b""
        self.xattrs = {}
        self.nlink = 2 if stat.S_ISDIR(mode) else 1
        now = time.time_ns()
        self.times = [now, now, now]  # atime mtime ctime
        self.lookups = 0
        self.parent = None


class MemFS(Operations):
    def __init__(self):
        self.nodes = {}
        self.next_ino = abi.ROOT_ID
        root = self._new(stat.S_IFDIR | 0o755, 0, 0)
        root.parent = root.ino
        self.open_files = {}
        self.next_fh = 1
        self.conn = None
        self.forgotten = 0

    def _new(self, mode, uid, gid, rdev=0) -> Inode:
        node = Inode(self.next_ino, mode, uid, gid, rdev)
        self.nodes[node.ino] = node
        self.next_ino += 1
        return node

    def _node(self, ino) -> Inode:
        try:
            return self.nodes[ino]
        except KeyError:
            raise OSError(errno.ESTALE, "no such node") from None

    def _dir(self, ino) -> Inode:
        node = self._node(ino)
        if node.children is None:
            raise OSError(errno.ENOTDIR, "not a directory")
        return node

    def _entry(self, node: Inode, count=True) -> Entry:
        if count:
            node.lookups += 1
        size = len(node.data) if stat.S_ISREG(node.mode) else len(node.target)
        return Entry(
            node.ino,
            mode=node.mode,
            nlink=node.nlink,
            uid=node.uid,
            gid=node.gid,
            rdev=node.rdev,
            size=size,
            blocks=(size + 511) // 512,
            atime_ns=node.times[0],
            mtime_ns=node.times[1],
            ctime_ns=node.times[2],
            entry_timeout=TIMEOUT,
            attr_timeout=TIMEOUT,
        )

    def _touch(self, node, *which):
        now = time.time_ns()
        for i in which:
            node.times[i] = now

    def _maybe_drop(self, node):
        if node.nlink == 0 and node.lookups <= 0 and node.ino not in {f[0] for f in self.open_files.values()}:
            self.nodes.pop(node.ino, None)

    # --------------------------------------------------------------- operations

    async def init(self, conn):
        self.conn = conn

    async def lookup(self, parent, name, ctx):
        d = self._dir(parent)
        if name == b".":
            return self._entry(d)
        if name == b"..":
            return self._entry(self.nodes[d.parent])
        ino = d.children.get(name)
        if ino is None:
            raise FileNotFoundError(errno.ENOENT, "no such name")
        return self._entry(self.nodes[ino])

    async def forget(self, forgets):
        for ino, n in forgets:
            node = self.nodes.get(ino)
            self.forgotten += n
            if node is not None:
                node.lookups -= n
                self._maybe_drop(node)

    async def getattr(self, node, fh, ctx):
        return self._entry(self._node(node), count=False)

    async def setattr(self, node, changes, fh, ctx):
        n = self._node(node)
        if changes.size is not None:
            if stat.S_ISDIR(n.mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory")
            del n.data[changes.size :]
            n.data.extend(bytes(changes.size - len(n.data)))
            self._touch(n, 1)
        if changes.mode is not None:
            n.mode = stat.S_IFMT(n.mode) | stat.S_IMODE(changes.mode)
        if changes.uid is not None:
            n.uid = changes.uid
        if changes.gid is not None:
            n.gid = changes.gid
        if changes.atime_ns is not None:
            n.times[0] = changes.atime_ns
        if changes.mtime_ns is not None:
            n.times[1] = changes.mtime_ns
        self._touch(n, 2)
        return self._entry(n, count=False)

    async def readlink(self, node, ctx):
        n = self._node(node)
        if not stat.S_ISLNK(n.mode):
            raise OSError(errno.EINVAL, "not a symlink")
        return n.target

    def _link_new(self, parent, name, node):
        d = self._dir(parent)
        if name in d.children:
            raise FileExistsError(errno.EEXIST, "exists")
        d.children[name] = node.ino
        if stat.S_ISDIR(node.mode):
            node.parent = d.ino
            d.nlink += 1
        self._touch(d, 1, 2)

    def _make(self, parent, name, mode, ctx, rdev=0):
        self._dir(parent)
        node = self._new(mode, ctx.uid, ctx.gid, rdev)
        try:
            self._link_new(parent, name, node)
        except OSError:
            del self.nodes[node.ino]
            raise
        return node

    async def symlink(self, parent, name, target, ctx):
        node = self._make(parent, name, stat.S_IFLNK | 0o777, ctx)
        node.target = target
        return self._entry(node)

    async def mknod(self, parent, name, mode, rdev, ctx):
        return self._entry(self._make(parent, name, mode & ~ctx.umask, ctx, rdev))

    async def mkdir(self, parent, name, mode, ctx):
        return self._entry(self._make(parent, name, stat.S_IFDIR | (mode & 0o7777 & ~ctx.umask), ctx))

    def _unlink_name(self, d, name):
        node = self.nodes[d.children.pop(name)]
        node.nlink -= 1
        if stat.S_ISDIR(node.mode):
            node.nlink = 0
            d.nlink -= 1
        self._touch(d, 1, 2)
        self._touch(node, 2)
        self._maybe_drop(node)

    async def unlink(self, parent, name, ctx):
        d = self._dir(parent)
        ino = d.children.get(name)
        if ino is None:
            raise FileNotFoundError(errno.ENOENT, "no such name")
        if stat.S_ISDIR(self.nodes[ino].mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        self._unlink_name(d, name)

    async def rmdir(self, parent, name, ctx):
        d = self._dir(parent)
        ino = d.children.get(name)
        if ino is None:
            raise FileNotFoundError(errno.ENOENT, "no such name")
        node = self.nodes[ino]
        if node.children is None:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        if node.children:
            raise OSError(errno.ENOTEMPTY, "not empty")
        self._unlink_name(d, name)

    async def rename(self, parent, name, new_parent, new_name, flags, ctx):
        d, nd = self._dir(parent), self._dir(new_parent)
        if name not in d.children:
            raise FileNotFoundError(errno.ENOENT, "no such name")
        if flags & RENAME_EXCHANGE:
            if new_name not in nd.children:
                raise FileNotFoundError(errno.ENOENT, "no such name")
            d.children[name], nd.children[new_name] = nd.children[new_name], d.children[name]
            return
        if new_name in nd.children:
            if flags & RENAME_NOREPLACE:
                raise FileExistsError(errno.EEXIST, "exists")
            target = self.nodes[nd.children[new_name]]
            if target.children:
                raise OSError(errno.ENOTEMPTY, "not empty")
            self._unlink_name(nd, new_name)
        ino = d.children.pop(name)
        nd.children[new_name] = ino
        node = self.nodes[ino]
        if stat.S_ISDIR(node.mode) and d is not nd:
            d.nlink -= 1
            nd.nlink += 1
            node.parent = nd.ino
        self._touch(d, 1, 2)
        self._touch(nd, 1, 2)

    async def link(self, node, new_parent, new_name, ctx):
        n = self._node(node)
        self._link_new(new_parent, new_name, n)
        n.nlink += 1
        self._touch(n, 2)
        return self._entry(n)

    def _fh(self, ino, flags):
        fh = self.next_fh
        self.next_fh += 1
        self.open_files[fh] = (ino, flags)
        return fh

    async def open(self, node, flags, ctx):
        n = self._node(node)
        if flags & os.O_TRUNC:
            del n.data[:]
        return FileInfo(self._fh(node, flags))

    async def create(self, parent, name, mode, flags, ctx):
        node = self._make(parent, name, stat.S_IFREG | (mode & 0o7777 & ~ctx.umask), ctx)
        return self._entry(node), self._fh(node.ino, flags)

    async def read(self, node, fh, offset, size, ctx):
        return bytes(self._node(self.open_files[fh][0]).data[offset : offset + size])

    async def write(self, node, fh, offset, data, ctx):
        n = self._node(self.open_files[fh][0])
        if offset > len(n.data):
            n.data.extend(bytes(offset - len(n.data)))
        n.data[offset : offset + len(data)] = data
        self._touch(n, 1, 2)
        return len(data)

    async def release(self, node, fh, ctx):
        ino, _ = self.open_files.pop(fh)
        n = self.nodes.get(ino)
        if n is not None:
            self._maybe_drop(n)

    async def fsync(self, node, fh, datasync, ctx):
        pass

    async def statfs(self, node, ctx):
        return os.statvfs_result((4096, 4096, 1000, 900, 800, 100, len(self.nodes), 90, 0, 255))

    async def setxattr(self, node, name, value, flags, ctx):
        if name == b"user.rename-behind":  # "old\0new" in the root, then tell the kernel
            old, new = value.split(b"\0")
            root = self.nodes[abi.ROOT_ID]
            root.children[new] = root.children.pop(old)
            ctx.session.notify_inval_entry(abi.ROOT_ID, old)
            return
        if name == b"user.write-behind":  # "name\0data": replace a root file's data, then tell the kernel
            target, data = value.split(b"\0", 1)
            ino = self.nodes[abi.ROOT_ID].children[target]
            self.nodes[ino].data[:] = data
            ctx.session.notify_inval_inode(ino, 0, 0)
            return
        n = self._node(node)
        if flags == 1 and name in n.xattrs:
            raise FileExistsError(errno.EEXIST, "exists")
        if flags == 2 and name not in n.xattrs:
            raise OSError(errno.ENODATA, "no such attribute")
        n.xattrs[name] = value

    async def getxattr(self, node, name, ctx):
        if name == b"user.slow":  # waits half a second (the session starts a spare reader meanwhile)
            import trio

            await trio.sleep(0.5)
            return b"slow"
        try:
            return self._node(node).xattrs[name]
        except KeyError:
            raise OSError(errno.ENODATA, "no such attribute") from None

    async def listxattr(self, node, ctx):
        return list(self._node(node).xattrs)

    async def removexattr(self, node, name, ctx):
        try:
            del self._node(node).xattrs[name]
        except KeyError:
            raise OSError(errno.ENODATA, "no such attribute") from None

    async def opendir(self, node, flags, ctx):
        self._dir(node)
        return self._fh(node, flags)

    async def readdir(self, node, fh, offset, out, ctx):
        d = self._dir(node)
        names = [(b".", d), (b"..", self.nodes[d.parent])] + [(k, self.nodes[v]) for k, v in sorted(d.children.items())]
        for i in range(offset, len(names)):
            name, child = names[i]
            if i < 2:
                if not out.add_bare(name, child.ino, child.mode, i + 1):
                    return
                continue
            if not out.add(name, self._entry(child, count=False), i + 1):
                return
            if out.plus:
                child.lookups += 1

    async def releasedir(self, node, fh, ctx):
        self.open_files.pop(fh, None)

    async def fsyncdir(self, node, fh, datasync, ctx):
        pass
