"""What a filesystem served by a `Session` implements: the `Operations` base class and its plain values.

Every method is `async def`, takes decoded values (node ids and file handles as ints, names as bytes,
a `Context` last) and returns plain values (`Entry`, bytes, ints, `FileInfo`); the session decodes the
requests and encodes the replies. A method the filesystem does not override raises OSError(ENOSYS), and
the kernel stops asking for most of those (flush, fsync, access, lseek ...); as in libfuse, open and
opendir answer handle 0, statfs an empty filesystem, and forget, release and releasedir do nothing.
Raising OSError answers its errno; anything else answers EIO and logs the traceback.

Handlers run on the session's reader task, so a handler that finishes without waiting costs no task
switch. When one waits (a worker thread, a lock, a sleep: anything that yields to trio), the session
starts a spare reader by itself, and other requests are read and answered meanwhile.

No trio here, nothing heavy: the glue to a request layer imports this without the event loop.
"""

import errno
import os

from . import abi

__all__ = ["Context", "Entry", "FileInfo", "SetAttr", "DirBuffer", "Conn", "Operations", "LoopNeeded"]


class LoopNeeded(BaseException):
    """Raised by a handler answering before the event loop runs (`Session.serve_before_loop`) when it
    would have to wait (a copy in a worker thread): raised before it changed anything, so that the loop,
    once started, answers the same request from the start. A BaseException, like GeneratorExit: it is
    control flow, not a failure, and error boundaries that turn every Exception into EIO let it pass."""


def _nosys():
    return OSError(errno.ENOSYS, "not implemented")


class Context:
    """Who asked, from the request header; plus the request's unique id and the session."""

    __slots__ = ("uid", "gid", "pid", "umask", "unique", "kill_suidgid", "session", "spared")

    def __init__(self, uid, gid, pid, unique, session=None, umask=0, kill_suidgid=False):
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.unique = unique
        self.session = session
        # create/mkdir/mknod/tmpfile: the caller's umask (0 before ABI 7.12). The kernel applied it
        # already unless DONT_MASK is agreed; then the filesystem applies it (or a default ACL instead).
        self.umask = umask
        # open/create/write/setattr/setxattr with HANDLE_KILLPRIV_V2 agreed: the kernel asks the
        # filesystem to clear set-user-ID and set-group-ID as part of this request
        self.kill_suidgid = kill_suidgid
        self.spared = False

    def spare_reader(self) -> None:
        """Start a spare reader now rather than at this handler's first wait (the session does that by
        itself); once per request."""
        if self.session is not None and not self.spared:
            self.spared = True
            self.session.spare_reader()

    def __repr__(self):
        return f"Context(uid={self.uid}, gid={self.gid}, pid={self.pid}, unique={self.unique})"


class Entry:
    """A node and its attributes: a lookup's answer (fuse_entry_out) and a getattr's (fuse_attr_out).

    `node` is the id the kernel uses for it from now on (0 in a lookup answer: "no such name", cached
    for entry_timeout; 0 in a readdirplus entry: the name without attributes, no lookup taken). `ino` is
    what stat shows as st_ino. Times are ns since the epoch; timeouts are seconds (float).
    """

    __slots__ = (
        "node",
        "generation",
        "entry_timeout",
        "attr_timeout",
        "ino",
        "mode",
        "nlink",
        "uid",
        "gid",
        "rdev",
        "size",
        "blocks",
        "blksize",
        "atime_ns",
        "mtime_ns",
        "ctime_ns",
        "attr_flags",
    )

    def __init__(
        self,
        node=0,
        *,
        ino=None,
        mode=0,
        nlink=1,
        uid=0,
        gid=0,
        rdev=0,
        size=0,
        blocks=0,
        blksize=4096,
        atime_ns=0,
        mtime_ns=0,
        ctime_ns=0,
        generation=0,
        entry_timeout=0.0,
        attr_timeout=0.0,
        attr_flags=0,
    ):
        self.node = node
        self.generation = generation
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.ino = node if ino is None else ino
        self.mode = mode
        self.nlink = nlink
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.size = size
        self.blocks = blocks
        self.blksize = blksize
        self.atime_ns = atime_ns
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.attr_flags = attr_flags

    @classmethod
    def from_stat(cls, node, st, *, ino=None, timeout=0.0, entry_timeout=None, generation=0):
        """An Entry for *node* from an os.stat_result (st_ino is replaced by *ino*, default the node)."""
        e = cls.__new__(cls)
        e.node = node
        e.generation = generation
        e.attr_timeout = timeout
        e.entry_timeout = timeout if entry_timeout is None else entry_timeout
        e.ino = node if ino is None else ino
        e.mode = st.st_mode
        e.nlink = st.st_nlink
        e.uid = st.st_uid
        e.gid = st.st_gid
        e.rdev = st.st_rdev
        e.size = st.st_size
        e.blocks = st.st_blocks
        e.blksize = st.st_blksize
        e.atime_ns = st.st_atime_ns
        e.mtime_ns = st.st_mtime_ns
        e.ctime_ns = st.st_ctime_ns
        e.attr_flags = 0
        return e

    @classmethod
    def negative(cls, timeout: float) -> "Entry":
        """A lookup answer "no such name" that the kernel keeps for *timeout* seconds."""
        return cls(0, ino=0, entry_timeout=timeout)

    def __repr__(self):
        return f"Entry(node={self.node}, ino={self.ino}, mode={self.mode:o}, size={self.size})"


class FileInfo:
    """An open's answer: the file handle and how the kernel should cache (fuse_open_out).

    *backing_id*: a backing file registered with `Session.backing_open` (PASSTHROUGH agreed): the
    kernel then reads and writes that file itself (FOPEN_PASSTHROUGH), the filesystem sees no READ or
    WRITE of this open. Every open of one node must then name the same backing id, and none may go
    without it while such an open lives (the kernel fails the open with EIO otherwise).
    """

    __slots__ = ("fh", "open_flags", "backing_id")

    def __init__(
        self,
        fh: int,
        *,
        keep_cache=False,
        direct_io=False,
        nonseekable=False,
        cache_dir=False,
        stream=False,
        noflush=False,
        parallel_direct_writes=False,
        open_flags=0,
        backing_id=0,
    ):
        self.fh = fh
        self.backing_id = backing_id
        self.open_flags = (
            open_flags
            | (1 if direct_io else 0)
            | (2 if keep_cache else 0)
            | (4 if nonseekable else 0)
            | (8 if cache_dir else 0)
            | (16 if stream else 0)
            | (32 if noflush else 0)
            | (64 if parallel_direct_writes else 0)
            | (abi.FOPEN_PASSTHROUGH if backing_id else 0)
        )

    def __repr__(self):
        return f"FileInfo(fh={self.fh}, open_flags={self.open_flags:#x}, backing_id={self.backing_id})"


class SetAttr:
    """The changes a setattr asks for; None for each attribute it leaves alone.

    atime_ns/mtime_ns are resolved to the current time when the caller asked for "now" (utimes(NULL),
    UTIME_NOW); `atime_now`/`mtime_now` tell that it was so. `valid` is the raw FATTR_* mask.
    """

    __slots__ = (
        "valid",
        "mode",
        "uid",
        "gid",
        "size",
        "atime_ns",
        "mtime_ns",
        "ctime_ns",
        "atime_now",
        "mtime_now",
        "lock_owner",
    )

    def __init__(self, valid=0, *, mode=None, uid=None, gid=None, size=None, atime_ns=None, mtime_ns=None,
                 ctime_ns=None, atime_now=False, mtime_now=False, lock_owner=None):  # fmt: skip
        self.valid = valid
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.atime_ns = atime_ns
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.atime_now = atime_now
        self.mtime_now = mtime_now
        self.lock_owner = lock_owner

    def __repr__(self):
        parts = [f"{k}={getattr(self, k)!r}" for k in self.__slots__[1:] if getattr(self, k) not in (None, False)]
        return "SetAttr(" + ", ".join(parts) + ")"


_DIRENTPLUS = abi.DIRENTPLUS.pack
_ENTRY_OUT_SIZE = abi.ENTRY_OUT.size
_PADS = abi.DIRENT_PADS
_split_timeout = abi.split_timeout
_attr_fields = abi.attr_fields


class DirBuffer:
    """The reply buffer of one readdir/readdirplus: `add` entries until it returns False (full).

    `plus` says whether this is a READDIRPLUS: then every entry added with a node id other than 0 (and a
    name other than "." and "..") counts as one lookup of that node, which a later forget returns. An
    entry that did not fit (False) was not sent and counts nothing.
    """

    __slots__ = ("plus", "size", "_parts", "_used")

    def __init__(self, size: int, plus: bool):
        self.plus = plus
        self.size = size
        self._parts = []
        self._used = 0

    def add(self, name: bytes, entry: Entry, next_offset: int) -> bool:
        """Add *name* for *entry*; *next_offset* is what a later readdir passes to continue after it."""
        return self.reply(name, entry.ino, entry.mode, entry, next_offset)

    def add_bare(self, name: bytes, ino: int, mode: int, next_offset: int) -> bool:
        """Add *name* with its st_ino and file type only: in a readdirplus the kernel then leaves its
        cached inode (and ACLs) alone and takes no lookup."""
        return self.reply(name, ino, mode, None, next_offset)

    def reply(self, name: bytes, ino: int, mode: int, entry, next_offset: int) -> bool:
        """`add(name, entry, next_offset)`, or `add_bare(name, ino, mode, next_offset)` when *entry* is
        None (both come here), in one call with no other below it: a listing's entries each pass here."""
        n = len(name)
        pad = -(abi.DIRENT_SIZE + n) & 7
        if not self.plus:
            need = abi.DIRENT_SIZE + n + pad
            if self._used + need > self.size:
                return False
            if entry is not None:
                ino, mode = entry.ino, entry.mode
            self._parts.append(abi.DIRENT.pack(ino, next_offset, n, (mode & 0o170000) >> 12) + name + _PADS[pad])
            self._used += need
            return True
        need = _ENTRY_OUT_SIZE + abi.DIRENT_SIZE + n + pad
        if self._used + need > self.size:
            return False
        if entry is None:
            head = _DIRENTPLUS(0, 0, 0, 0, 0, 0, ino, 0, 0, 0, 0, 0, 0, 0, 0, mode, 0, 0, 0, 0, 0, 0,
                               ino, next_offset, n, (mode & 0o170000) >> 12)  # fmt: skip
        else:
            ev, evn = _split_timeout(entry.entry_timeout)
            av, avn = _split_timeout(entry.attr_timeout)
            head = _DIRENTPLUS(entry.node, entry.generation, ev, av, evn, avn, *_attr_fields(entry),
                               entry.ino, next_offset, n, (entry.mode & 0o170000) >> 12)  # fmt: skip
        self._parts.append(head + name + _PADS[pad])  # one part per entry: len() counts entries
        self._used += need
        return True

    def __len__(self):
        return len(self._parts)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Conn:
    """What INIT agreed: the protocol version both speak, the kernel's offer and the flags in force."""

    __slots__ = (
        "proto_major",
        "proto_minor",
        "kernel_minor",
        "kernel_flags",
        "flags",
        "max_readahead",
        "max_write",
        "max_pages",
        "max_background",
        "congestion_threshold",
        "time_gran",
    )

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k, 0))

    def __repr__(self):
        return (
            f"Conn(proto=7.{self.proto_minor}, kernel=7.{self.kernel_minor}, max_write={self.max_write}, "
            f"flags={abi.flag_names(self.flags)})"
        )


class Operations:
    """The filesystem interface a Session calls. Override what the filesystem supports.

    Node ids: 1 (abi.ROOT_ID) is the root; every other id is one the filesystem gave out in an Entry
    (lookup, mkdir, mknod, symlink, link, create, tmpfile, readdirplus), and each such answer counts as
    one lookup the kernel later returns with `forget`.
    """

    # Answers that never wait: a filesystem may also offer these as plain methods (not async, no
    # Context). The session then answers those requests in place, with no coroutine, and falls back to
    # the async method only where one is None. Errors as for the async ones.
    lookup_now = None  # (parent, name) -> Entry
    getattr_now = None  # (node, fh) -> Entry
    getxattr_now = None  # (node, name) -> bytes, or None: no such attribute (answered ENODATA)
    listxattr_now = None  # (node) -> an iterable of names
    open_now = None  # (node, flags) -> FileInfo, or None: not now (answered by open(), with its Context)
    read_now = None  # (fh, offset, size) -> bytes
    # (fh) -> the fd holding the open file's data (read at the READ's offset), or None: the session may
    # splice a big READ's answer from it (splice.py) instead of calling read_now; needs read_now too
    read_fd = None
    release_now = None  # (fh) -> None
    opendir_now = None  # (node) -> FileInfo
    # (node, fh, offset, out: DirBuffer) -> None; fh is 0 where the directory was opened without an
    # OPENDIR (the filesystem answered it ENOSYS and the kernel offered NO_OPENDIR_SUPPORT)
    readdir_now = None
    releasedir_now = None  # (fh) -> None

    async def init(self, conn: Conn) -> None:
        """INIT was agreed (called before the answer is sent): *conn* says what with."""

    def init_answered(self, conn: Conn) -> None:
        """The answer to INIT is with the kernel (what the kernel would undo while it takes the answer
        comes here: the mount's readahead)."""

    async def destroy(self) -> None:
        """The session ends (DESTROY, or the device went away)."""

    async def lookup(self, parent: int, name: bytes, ctx: Context) -> Entry:
        raise _nosys()

    async def forget(self, forgets: list) -> None:
        """[(node, nlookup), ...]: the kernel drops that many lookups of each node. No answer."""

    async def getattr(self, node: int, fh, ctx: Context) -> Entry:
        """*fh* is the file handle of an fstat (None otherwise)."""
        raise _nosys()

    async def setattr(self, node: int, changes: SetAttr, fh, ctx: Context) -> Entry:
        """*fh* is the handle of an ftruncate/fchmod... (None otherwise). Returns the new attributes."""
        raise _nosys()

    async def readlink(self, node: int, ctx: Context) -> bytes:
        raise _nosys()

    async def symlink(self, parent: int, name: bytes, target: bytes, ctx: Context) -> Entry:
        raise _nosys()

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Context) -> Entry:
        """*rdev* is this system's dev_t (os.makedev)."""
        raise _nosys()

    async def mkdir(self, parent: int, name: bytes, mode: int, ctx: Context) -> Entry:
        raise _nosys()

    async def unlink(self, parent: int, name: bytes, ctx: Context) -> None:
        raise _nosys()

    async def rmdir(self, parent: int, name: bytes, ctx: Context) -> None:
        raise _nosys()

    async def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int, ctx: Context):
        """*flags*: RENAME_NOREPLACE (1), RENAME_EXCHANGE (2), RENAME_WHITEOUT (4), or 0."""
        raise _nosys()

    async def link(self, node: int, new_parent: int, new_name: bytes, ctx: Context) -> Entry:
        raise _nosys()

    async def open(self, node: int, flags: int, ctx: Context):
        """*flags*: open(2)'s. Returns a FileInfo, or a plain int file handle (default: handle 0)."""
        return 0

    async def read(self, node: int, fh: int, offset: int, size: int, ctx: Context):
        """Returns at most *size* bytes (bytes, bytearray or memoryview); fewer means end of file."""
        raise _nosys()

    async def write(self, node: int, fh: int, offset: int, data: memoryview, ctx: Context) -> int:
        """*data* is a view of the session's read buffer, valid until this returns. Returns the count."""
        raise _nosys()

    async def statfs(self, node: int, ctx: Context):
        """Returns an object with f_bsize f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_namemax
        (an os.statvfs_result does). The default: an empty filesystem of 512-byte blocks."""
        return os.statvfs_result((512, 512, 0, 0, 0, 0, 0, 0, 0, 255))

    async def release(self, node: int, fh: int, ctx: Context) -> None:
        """The last close of an open file. The answer is not waited for by any caller."""

    async def flush(self, node: int, fh: int, ctx: Context) -> None:
        """Each close(2). ENOSYS (the default) stops the kernel sending FLUSH."""
        raise _nosys()

    async def fsync(self, node: int, fh: int, datasync: bool, ctx: Context) -> None:
        raise _nosys()

    async def setxattr(self, node: int, name: bytes, value: bytes, flags: int, ctx: Context) -> None:
        """*flags*: XATTR_CREATE (1) / XATTR_REPLACE (2)."""
        raise _nosys()

    async def getxattr(self, node: int, name: bytes, ctx: Context) -> bytes:
        """The whole value; the session answers size probes and ERANGE itself."""
        raise _nosys()

    async def listxattr(self, node: int, ctx: Context):
        """An iterable of names (bytes, without NULs)."""
        raise _nosys()

    async def removexattr(self, node: int, name: bytes, ctx: Context) -> None:
        raise _nosys()

    async def opendir(self, node: int, flags: int, ctx: Context):
        """Returns a FileInfo (cache_dir, keep_cache ...) or a plain int handle (default: handle 0)."""
        return 0

    async def readdir(self, node: int, fh: int, offset: int, out: DirBuffer, ctx: Context) -> None:
        """Add entries from *offset* (0, or a next_offset given earlier) to *out* until it is full."""
        raise _nosys()

    async def releasedir(self, node: int, fh: int, ctx: Context) -> None:
        pass

    async def fsyncdir(self, node: int, fh: int, datasync: bool, ctx: Context) -> None:
        raise _nosys()

    async def access(self, node: int, mask: int, ctx: Context) -> None:
        """ENOSYS (the default) stops the kernel asking; with default_permissions it never asks."""
        raise _nosys()

    async def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: Context):
        """Returns (Entry, FileInfo or int). ENOSYS makes the kernel use mknod + open."""
        raise _nosys()

    async def fallocate(self, node: int, fh: int, offset: int, length: int, mode: int, ctx: Context) -> None:
        raise _nosys()

    async def lseek(self, node: int, fh: int, offset: int, whence: int, ctx: Context) -> int:
        """SEEK_DATA / SEEK_HOLE (the kernel does SEEK_SET/CUR/END itself). ENOSYS: it stops asking."""
        raise _nosys()

    async def copy_file_range(
        self,
        node_in: int,
        fh_in: int,
        offset_in: int,
        node_out: int,
        fh_out: int,
        offset_out: int,
        length: int,
        flags: int,
        ctx: Context,
    ) -> int:
        raise _nosys()

    async def tmpfile(self, parent: int, mode: int, flags: int, ctx: Context):
        """O_TMPFILE: returns (Entry, FileInfo or int) of a nameless file."""
        raise _nosys()
