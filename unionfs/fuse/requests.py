"""The request layer: one async method per FUSE operation over the union engine, plain values in and out.

It knows no FUSE binding. A backend (native_backend.py over unionfs.protocol, or pyfuse3_backend.py)
decodes a request into plain values, awaits the method and encodes what it returns: an `Entry` record, a
file handle (`Opened`), bytes, a `Statfs`, or nothing. Every decision that is not the binding's is made
here: the nodes the kernel holds, their ids, the uid/gid mapping as shown and timeouts (nodetable.py),
the copy-up locks and threads, file and directory handles, listing snapshots.

Every method ends in the one error boundary (`_failure`): an OSError leaves with its errno, any other
exception leaves as OSError(EIO) with an ERROR log line and its traceback, so the mount never dies.
Backends turn OSError into their error reply and nothing else.
The requests that never wait have a plain method too, behind the same boundary (`lookup_now`,
`getattr_now`, `getxattr_now`, `listxattr_now`; `open_now` for read-only opens, `read_now`,
`release_now`; `opendir_now`, `readdir_now`, `releasedir_now`): a backend calls those with no coroutine
per request, and `getxattr_now` answers "no such xattr" (ENODATA) with None, no exception.
The engine says what a change must copy up first (`UnionEngine.copy_up_for_*`, a CopyUpJob or None); this
layer only runs that job under a per-node lock, a large file's byte copy in a worker thread: other
requests go on meanwhile, and two opens of one file never copy it twice.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat

from ..engine import Caller, UnionEngine
from ..engine.idmap import IdMap
from ..engine.records import record
from ..logger import DEBUG, get_logger
from .directories import DirectoryRequests
from .nodetable import Entry, KernelNodes
from .passthrough import PassthroughRequests
from .privileges import PrivilegeRequests

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the daemon's start)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NamedTuple

log = get_logger("unionfs")

# Copies smaller than this are done inline: a thread round trip costs more than the copy.
THREAD_COPY_MIN = 1 << 20
RENAME_EXCHANGE = 2
_SUIDGID = stat.S_ISUID | stat.S_ISGID


# The records are engine.records.record()s, not typing.NamedTuple or collections.namedtuple: their
# imports cost the daemon ~4 ms and ~1.5 ms between its mount and its first answer. The class bodies
# below are what mypy reads.
if TYPE_CHECKING:

    class Opened(NamedTuple):
        fh: int
        keep_cache: bool
        direct_io: bool
        backing_id: int = 0

    class SetAttr(NamedTuple):
        size: int | None = None
        mode: int | None = None
        uid: int | None = None
        gid: int | None = None
        atime_ns: int | None = None
        mtime_ns: int | None = None

    class Statfs(NamedTuple):
        bsize: int
        frsize: int
        blocks: int
        bfree: int
        bavail: int
        files: int
        ffree: int
        favail: int
        namemax: int

    class Context(NamedTuple):
        uid: int
        gid: int
        pid: int = 0
        umask: int = 0

else:
    Opened = record(
        "Opened",
        "fh keep_cache direct_io backing_id",
        """An open file: its handle number and the open flags of the reply. *backing_id*: not 0 when the
kernel is to read and write the backing file itself (a backing id of `backing_open`).""",
        __name__,
        defaults=(0,),
    )
    SetAttr = record(
        "SetAttr",
        "size mode uid gid atime_ns mtime_ns",
        """What a setattr changes; None leaves a field alone. uid/gid as the caller sees them (before the
mount's mapping); times in ns since the epoch ("now" already resolved by the backend).""",
        __name__,
        defaults=(None, None, None, None, None, None),
    )
    Statfs = record("Statfs", "bsize frsize blocks bfree bavail files ffree favail namemax", "", __name__)
    Context = record(
        "Context",
        "uid gid pid umask",
        """Who sent a request. Any object with these attributes will do (pyfuse3's RequestContext is passed
as it is); only uid and gid are read, for the owner of new entries.""",
        __name__,
        defaults=(0, 0),
    )


_new = tuple.__new__  # a record straight from a tuple: no Python-level __new__ per reply
_EIO = os.strerror(errno.EIO)
_ENODATA = os.strerror(errno.ENODATA)


def _failure(exc: Exception, op: str, args: tuple) -> OSError:
    """THE error boundary: what a failed request raises. OSError keeps its errno (EIO if it has none);
    anything else is a bug somewhere: EIO, and an ERROR line with the traceback."""
    if isinstance(exc, OSError):
        if log.isEnabledFor(DEBUG):
            log.debug("%s%r: %s", op, args, exc)
        if exc.errno:
            return exc
        return OSError(errno.EIO, _EIO)
    log.error("ERROR in %s%r", op, args, exc_info=exc)
    return OSError(errno.EIO, _EIO)


def _noop():
    pass


class LoopThreads:
    """Where a big copy-up's byte copy runs (UnionRequests.threads): in trio's worker threads, four at
    once at most. A backend may put another in place while it has no loop (native_backend's
    ThreadsBeforeLoop): reserve() (may refuse, before anything changed), lock() (the lock other
    requests of that node wait on) and `await run(fn)`."""

    def __init__(self, requests: UnionRequests):
        self._requests = requests
        self._limiter = None  # trio.CapacityLimiter(4), made at the first copy

    def reserve(self) -> None:
        self._requests.before_wait()

    def lock(self):
        import trio  # here, not with the module: the native backend serves without trio until it waits

        return trio.Lock()

    async def run(self, fn, meanwhile=None):
        """fn() in a worker thread; *meanwhile* (a blocking call, or None) in another at the same time."""
        import trio

        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(4)
        if meanwhile is None:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, meanwhile)
            return await trio.to_thread.run_sync(fn, limiter=self._limiter)


# The largest file a read-only open puts into the kernel's page cache (UnionRequests._fill): most small
# files (93% of the benchmarks' 20,889), and little read for nothing where nobody reads after the open
# (the kernel's first read of a file asks for up to 128 KiB, its read-ahead).
FILL_MAX = 64 * 1024

# Read-only opens earn credits that lookups of regular files spend on starting to read them (`_prefetch`).
READ_CREDIT_MAX = 8
_S_IFMT, _S_IFREG = 0o170000, 0o100000


def _ignore(_):
    pass


class UnionRequests(DirectoryRequests, PassthroughRequests, PrivilegeRequests):
    """FUSE requests as async methods over one `UnionEngine`.

    Set by the backend before serving:
    - `before_wait`: called right before a request waits (a copy-up's byte copy in a thread, or another
      request's copy-up), so the backend can keep reading requests meanwhile; before its event loop
      runs, the native backend's raises LoopNeeded there (nothing is changed yet at that point).
    - `threads`: where big copies run (LoopThreads, trio's worker threads; before its loop the native
      backend runs them in threads of its own and serves other requests meanwhile).
    - `bare_entries`: whether the backend can send a readdirplus entry without attributes (node id 0).
    - `backing_open`, `backing_close`: where the kernel passes reads and writes through to backing
      files (FUSE_PASSTHROUGH), backing_open(fd) registers the open file and returns its backing id
      (OSError when refused) and backing_close(id) lets go of one; None: every read and write comes here.
    - `store_data`: store_data(node_id, offset, data) puts data into the kernel's page cache of a node
      (FUSE_NOTIFY_STORE); None: never. Where set, a read-only open of a small file that keeps the
      cache (not passed through) fills it (`_fill`), so that the read which mostly follows an open
      finds it there instead of asking.
    - `attributes_changed`: attributes_changed(node_id) drops the attributes the kernel caches of a
      node (its data stays), where the daemon changed them behind a request that does not refresh them
      (a failed rename that touched its parents; a set-user-ID bit dropped on a write); default: nothing.
    - `drop_data`: drop_data(node_id) drops the kernel's cached pages (and attributes) of a node
      (FUSE_NOTIFY_INVAL_INODE); None: never. Where set, a big copy-up for an open passed through has
      them dropped while the bytes are copied, not by the open after it (`_dropper`).
    - `applies_umask`: whether create, mkdir and mknod come with the caller's umask not yet applied
      (FUSE_DONT_MASK agreed): then the engine applies it, or the parent's default ACL instead, as the
      kernel overlay does. False (pyfuse3, and before the native backend's INIT): the FUSE module
      applied the umask already, so a default ACL can only narrow further.
    - `nodes.separate_ids`: whether node ids may differ from st_ino (default True; pyfuse3: False).
    """

    # What the backend asks the kernel for at INIT (FUSE capabilities):
    # The write-back cache is off: with it the kernel flushes its own mtime/ctime with a setattr at
    # close, which cannot be told from a user's utimes and would copy a lower file up (or fail on an
    # unlinked one). Measured it gained little: 4 KiB writes cost a getxattr(security.capability)
    # request each either way (before HANDLE_KILLPRIV_V2), and 1 MiB writes ran at the same speed. The
    # kernel also refuses passthrough with it.
    writeback_cache = False
    posix_acl = True  # the engine keeps system.posix_acl_* xattrs; the kernel enforces them
    dot_lookup = True  # lookup of "." and ".." answers (export by file handle)
    _failure = staticmethod(_failure)  # for the methods of DirectoryRequests

    def __init__(self, union: UnionEngine, timeout: float = 300.0, uid_map: IdMap = None, gid_map: IdMap = None):
        self.union = union
        union.writes_need_reads = self.writeback_cache
        self.timeout = timeout
        self.uid_map = uid_map or IdMap()
        self.gid_map = gid_map or IdMap()
        self.before_wait = _noop
        self.bare_entries = True
        self.kill_privs = False
        self.attributes_changed: Callable[[int], None] = _ignore
        self.backing_open: Callable[[int], int] | None = None
        self.backing_close: Callable[[int], None] = _ignore
        self.store_data: Callable[[int, int, bytes], bool] | None = None
        self.drop_data: Callable[[int], bool] | None = None
        self.applies_umask = False
        self._has_upper = union.stack.upper is not None
        self._backing = {}  # passthrough.py
        self._passed = {}
        self.nodes = KernelNodes(union, self.uid_map, self.gid_map, timeout)
        self._node = self.nodes.node
        self._entry = self.nodes.entry
        self._files = {}
        self._dirs = {}
        self._snapshots = {}  # directories.py: listings of handle 0
        self._snapshot_number = 0
        self._fh = itertools.count(1)
        self._copy_locks = {}
        self._read_credit = 0
        self.threads = self.loop_threads = LoopThreads(self)

    # ----------------------------------------------------------- helpers

    def _caller(self, ctx) -> Caller:
        """The owner new entries get on disk (after uidmapping/gidmapping)."""
        return Caller(self.uid_map.stored(ctx.uid), self.gid_map.stored(ctx.gid))

    def _umask(self, ctx) -> int:
        """The caller's umask where the backend left it to the daemon (`applies_umask`), else 0."""
        return ctx.umask if self.applies_umask else 0

    async def _copy_up(self, decide, *args, meanwhile=None) -> None:
        """Run the copy-up the engine says a change needs: decide(*args) (a `UnionEngine.copy_up_for_*`)
        returns None, the job in flight for the node (another request's: wait for it, then ask again),
        or a new job. One copy of a node runs at a time, under its lock; big ones in a worker thread,
        and then *meanwhile* (if given) is called while the bytes are copied (`LoopThreads.run`)."""
        locks = self._copy_locks
        while True:
            job = decide(*args)
            if job is None:
                return
            key = job.node
            running = locks.get(key)
            if running is None:
                break
            if running.locked():
                self.before_wait()
            async with running:
                pass
        union = self.union
        if job.data_size < THREAD_COPY_MIN:
            # Copied here and now, with no await until it is committed: no other request can find it
            # in flight, so it takes no lock (and needs no trio: the native backend answers requests
            # before it loads the loop).
            union.copy_up_run(job)
            return
        job.claim()
        try:
            self.threads.reserve()  # may refuse (LoopNeeded before the native loop runs): let the job go
        except BaseException:
            union.copy_up_abort(job)
            raise
        threads = self.threads
        lock = locks[key] = threads.lock()
        try:
            async with lock:
                try:
                    await threads.run(job.copy_data, meanwhile)
                    union.copy_up_commit(job)
                except BaseException:
                    union.copy_up_abort(job)
                    raise
        finally:
            if locks.get(key) is lock:
                del locks[key]

    async def _settled(self, node):
        """Wait for a copy-up of this node in flight (before removing or renaming it)."""
        lock = self._copy_locks.get(node)
        if lock is not None:
            if lock.locked():
                self.before_wait()
            async with lock:
                pass

    async def _settled_child(self, parent, name):
        try:
            child = self.union.child(parent, name)
        except OSError:
            return None
        await self._settled(child)
        return child

    # ----------------------------------------------------------- lookup and attributes

    def lookup_now(self, parent_id: int, name: bytes) -> Entry:
        """The entry of parent/name, counting one kernel reference; a negative entry (node_id 0) if absent."""
        try:
            try:
                parent = self._node(parent_id)
                node, st = self.union.lookup(parent, name)
            except FileNotFoundError:
                return self.nodes.negative
            if self._read_credit > 0 and st.st_mode & _S_IFMT == _S_IFREG and st.st_size and not node.handles:
                self._prefetch(node)
            return self._entry(node, st, parent, name)
        except Exception as exc:
            raise _failure(exc, "lookup", (parent_id, name)) from None

    async def lookup(self, parent_id: int, name: bytes) -> Entry:
        return self.lookup_now(parent_id, name)

    async def forget(self, items) -> None:
        """Drop kernel references: *items* is an iterable of (node_id, count). Never raises."""
        for node_id, count in items:
            try:
                self.nodes.forget(node_id, count)
            except Exception:
                log.exception("ERROR in forget(%d, %d)", node_id, count)

    def getattr_now(self, node_id: int, fh=None) -> Entry:
        """*fh*: the open file of an fstat, or None; the node's attributes either way."""
        try:
            node = self._node(node_id)
            return self.nodes.attributes(node_id, node, self.union.getattr(node))
        except Exception as exc:
            raise _failure(exc, "getattr", (node_id,)) from None

    async def getattr(self, node_id: int) -> Entry:
        return self.getattr_now(node_id)

    async def setattr(self, node_id: int, changes: SetAttr, fh: int | None = None, kill_for=None) -> Entry:
        """Change what *changes* names (on the open file *fh* where given); the attributes after.
        *kill_for*: the caller (a Context) when the kernel asks to clear set-user-ID and set-group-ID
        too (a truncate by a caller without CAP_FSETID, or a chown; HANDLE_KILLPRIV_V2)."""
        try:
            node = self._node(node_id)
            size, mode, uid, gid, atime_ns, mtime_ns = changes
            # Nothing to change is a chown(-1, -1) (the write-back cache, which would flush ctime so, is
            # off): the engine copies up and passes it on, as the kernel's overlay.
            await self._copy_up(self.union.copy_up_for_setattr, node, size)
            st = self.union.setattr(
                node,
                size=size,
                mode=mode,
                uid=None if uid is None else self.uid_map.stored(uid),
                gid=None if gid is None else self.gid_map.stored(gid),
                atime_ns=atime_ns,
                mtime_ns=mtime_ns,
                handle=self._files.get(fh) if fh is not None else None,
            )
            if kill_for is not None:
                st = self._kill_suidgid(node, st, kill_for, self._files.get(fh) if fh is not None else None)
            return self.nodes.attributes(node_id, node, st)
        except Exception as exc:
            raise _failure(exc, "setattr", (node_id, changes, fh)) from None

    async def readlink(self, node_id: int) -> bytes:
        try:
            return self.union.readlink(self._node(node_id))
        except Exception as exc:
            raise _failure(exc, "readlink", (node_id,)) from None

    async def statfs(self) -> Statfs:
        try:
            vfs = self.union.statfs()
            return Statfs(
                vfs.f_bsize,
                vfs.f_frsize,
                vfs.f_blocks,
                vfs.f_bfree,
                vfs.f_bavail,
                vfs.f_files,
                vfs.f_ffree,
                vfs.f_favail,
                vfs.f_namemax,
            )
        except Exception as exc:
            raise _failure(exc, "statfs", ()) from None

    # ----------------------------------------------------------- directories

    async def mkdir(self, parent_id: int, name: bytes, mode: int, ctx) -> Entry:
        try:
            node, st = self.union.mkdir(self._node(parent_id), name, mode, self._caller(ctx), self._umask(ctx))
            return self._entry(node, st)
        except Exception as exc:
            raise _failure(exc, "mkdir", (parent_id, name, mode)) from None

    async def rmdir(self, parent_id: int, name: bytes) -> None:
        try:
            parent = self._node(parent_id)
            await self._settled_child(parent, name)
            self.union.rmdir(parent, name)
        except Exception as exc:
            raise _failure(exc, "rmdir", (parent_id, name)) from None

    # ----------------------------------------------------------- names

    async def mknod(self, parent_id: int, name: bytes, mode: int, rdev: int, ctx) -> Entry:
        try:
            node, st = self.union.mknod(self._node(parent_id), name, mode, rdev, self._caller(ctx), self._umask(ctx))
            return self._entry(node, st)
        except Exception as exc:
            raise _failure(exc, "mknod", (parent_id, name, mode)) from None

    async def symlink(self, parent_id: int, name: bytes, target: bytes, ctx) -> Entry:
        try:
            node, st = self.union.symlink(self._node(parent_id), name, target, self._caller(ctx))
            return self._entry(node, st)
        except Exception as exc:
            raise _failure(exc, "symlink", (parent_id, name, target)) from None

    async def link(self, node_id: int, new_parent_id: int, new_name: bytes) -> Entry:
        try:
            node = self._node(node_id)
            await self._settled(node)
            await self._copy_up(self.union.copy_up_for_link, node, new_name)
            linked, st = self.union.link(node, self._node(new_parent_id), new_name)
            return self._entry(linked, st, node_id=node_id)  # the same inode, under one more name
        except Exception as exc:
            raise _failure(exc, "link", (node_id, new_parent_id, new_name)) from None

    async def unlink(self, parent_id: int, name: bytes) -> None:
        try:
            parent = self._node(parent_id)
            await self._settled_child(parent, name)
            self.union.unlink(parent, name)
            self.nodes.removed(parent, name)
        except Exception as exc:
            raise _failure(exc, "unlink", (parent_id, name)) from None

    async def rename(self, parent_id: int, name: bytes, new_parent_id: int, new_name: bytes, flags: int = 0) -> None:
        """flags: renameat2's RENAME_NOREPLACE or RENAME_EXCHANGE (any other: EINVAL)."""
        try:
            union = self.union
            parent = self._node(parent_id)
            new_parent = self._node(new_parent_id)
            await self._settled_child(parent, name)
            await self._settled_child(new_parent, new_name)
            await self._copy_up(union.copy_up_for_rename, parent, name, new_parent, new_name, flags)
            try:
                union.rename(parent, name, new_parent, new_name, flags)
            except Exception:
                # A rename that fails may have touched its parents in the upper first, as the kernel's
                # does (renames.py, _failing_upper_rename: ext4 changes the times of a parent while it
                # prepares a RENAME_WHITEOUT), and the kernel refreshes a parent's attributes only after
                # a rename that succeeded.
                self._attributes_changed(parent_id, new_parent_id)
                raise
            self.nodes.moved(parent, name, new_parent, new_name, exchange=bool(flags & RENAME_EXCHANGE))
        except Exception as exc:
            raise _failure(exc, "rename", (parent_id, name, new_parent_id, new_name)) from None

    def _attributes_changed(self, *node_ids: int) -> None:
        """Tell the kernel the attributes it caches of *node_ids* are stale (the backend's hook)."""
        for node_id in dict.fromkeys(node_ids):
            try:
                self.attributes_changed(node_id)
            except OSError as exc:
                log.debug("invalidating the attributes of %d: %s", node_id, exc)

    # ----------------------------------------------------------- files

    def _opened(self, handle, mode=None) -> Opened:
        """*mode*: the file's st_mode as shown, where the caller has it (a create)."""
        fh = next(self._fh)
        self._files[fh] = handle
        if self.backing_open is None:
            return _new(Opened, (fh, True, False, 0))
        backing = self._pass_through(fh, handle, mode)
        # An upper file may have been written past the kernel's page cache (passed through): an open
        # that is not passed through starts with no cached pages. (One passed through may not keep them:
        # the kernel refuses KEEP_CACHE with a backing file.)
        keep = not backing and (handle.layer != 0 or not self._has_upper)
        return _new(Opened, (fh, keep, False, backing))

    async def open(self, node_id: int, flags: int, kill_for=None) -> Opened:
        """flags: open(2) flags as the kernel passes them. *kill_for*: the caller (a Context) of an
        O_TRUNC open without CAP_FSETID: set-user-ID and set-group-ID go (HANDLE_KILLPRIV_V2)."""
        try:
            node = self._node(node_id)
            await self._copy_up(self.union.copy_up_for_open, node, flags, meanwhile=self._dropper(node_id, node))
            handle = self.union.open(node, flags)
            if kill_for is not None and flags & os.O_TRUNC:
                try:
                    self._kill_suidgid(node, self.union.getattr(node), kill_for, handle)
                except BaseException:
                    self.union.release(handle)
                    raise
            return self._opened(handle)
        except Exception as exc:
            raise _failure(exc, "open", (node_id, flags)) from None

    async def create(self, parent_id: int, name: bytes, mode: int, flags: int, ctx) -> tuple[Opened, Entry]:
        """(Opened, Entry) of the new file parent/name, open with *flags*."""
        try:
            node, handle, st = self.union.create(
                self._node(parent_id), name, mode, flags, self._caller(ctx), self._umask(ctx)
            )
            return self._opened(handle, st.st_mode), self._entry(node, st)
        except Exception as exc:
            raise _failure(exc, "create", (parent_id, name, mode, flags)) from None

    def _dropper(self, node_id: int, node):
        """What drops the kernel's cached pages of a node while its data is copied up for an open, or
        None. Passed through, the open after a copy-up cannot keep them (the kernel refuses KEEP_CACHE
        with a backing file) and drops them itself, in the opener's time: 15 ms for a 256 MiB file read
        before. Dropped during the copy, they cost the opener nothing. Only with no open file of the
        node: a READ in flight holds its pages locked until this daemon answers it."""
        drop = self.drop_data
        if drop is None or self.backing_open is None or node.handles:
            return None

        def dropper():
            try:
                drop(node_id)
            except OSError as exc:
                log.debug("dropping the cached pages of node %d: %s", node_id, exc)

        return dropper

    def open_now(self, node_id: int, flags: int):
        """A read-only open, which never copies up (nothing to wait for); None for any other: open()
        answers it."""
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            return None
        try:
            handle = self.union.open(self._node(node_id), flags)
            opened = self._opened(handle)
            if self._read_credit < READ_CREDIT_MAX:
                self._read_credit += 1
            if opened.keep_cache and not flags & os.O_DIRECT:
                self._fill(node_id, handle)
            return opened
        except Exception as exc:
            raise _failure(exc, "open", (node_id, flags)) from None

    def _prefetch(self, node) -> None:
        """Start reading a file just looked up, while its lookup is answered and its open comes: the
        open (its fill) or the read after it then finds the data on its way. Spends a credit: read-only
        opens earn them, so lookups that no open follows (a tree walk, `ls -l`) read nothing."""
        self._read_credit -= 1
        try:
            self.union.prefetch(node, FILL_MAX)
        except OSError as exc:
            log.debug("prefetch: %s", exc)

    def _fill(self, node_id: int, handle) -> None:
        """Put a small file's data into the kernel's page cache before its open is answered (an open
        that keeps the cache: not passed through): the read that mostly follows finds it there, so a
        cold read of many small files is three requests a file, not four, and two waits of the reader,
        not three. Once per node id (the kernel's cache lives no longer), and only when this open is the
        node's only one: a read waiting for this daemon keeps the pages it would fill locked, and reads
        come only through open files (the kernel releases a file after its last read is answered)."""
        store = self.store_data
        if store is None or len(handle.node.handles) != 1 or not self.nodes.first_fill(node_id):
            return  # (a file too big is not looked at again either)
        fd = self.union.read_fd(handle)  # (a lower file's open waits for its first need: this)
        size = os.fstat(fd).st_size
        if not 0 < size <= FILL_MAX:
            return
        try:
            store(node_id, 0, os.pread(fd, size, 0))
        except OSError as exc:  # the kernel refused it: the read asks, as without the fill
            log.debug("filling the cache of node %d: %s", node_id, exc)

    def read_now(self, fh: int, offset: int, size: int) -> bytes:
        try:
            return self.union.read(self._files[fh], offset, size)
        except Exception as exc:
            raise _failure(exc, "read", (fh, offset, size)) from None

    def read_fd(self, fh: int) -> int:
        """The backing fd a READ of open file *fh* is answered from (the session splices big ones)."""
        try:
            return self.union.read_fd(self._files[fh])
        except Exception as exc:
            raise _failure(exc, "read", (fh,)) from None

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        return self.read_now(fh, offset, size)

    async def write(self, fh: int, offset: int, data: bytes, kill_for=None) -> int:
        """The number of bytes written. *kill_for*: the writer (a Context), who has no CAP_FSETID, so
        set-user-ID and set-group-ID go (HANDLE_KILLPRIV_V2: the kernel says so on every such write)."""
        try:
            handle = self._files[fh]
            # (the kernel flags every write of such a caller: most files have neither bit)
            if kill_for is not None and self._mode_of(handle) & _SUIDGID:
                self._kill_suidgid(handle.node, self.union.getattr(handle.node), kill_for, handle)
            return self.union.write(handle, offset, data)
        except Exception as exc:
            raise _failure(exc, "write", (fh, offset, len(data))) from None

    async def lseek(self, fh: int, offset: int, whence: int) -> int:
        """SEEK_DATA / SEEK_HOLE: the offset found in the backing file."""
        try:
            return self.union.lseek(self._files[fh], offset, whence)
        except Exception as exc:
            raise _failure(exc, "lseek", (fh, offset, whence)) from None

    async def fallocate(self, fh: int, offset: int, length: int, mode: int) -> None:
        try:
            self.union.fallocate(self._files[fh], offset, length, mode)
        except Exception as exc:
            raise _failure(exc, "fallocate", (fh, offset, length, mode)) from None

    async def copy_file_range(self, fh_in: int, off_in: int, fh_out: int, off_out: int, length: int, flags: int) -> int:
        """The number of bytes copied (flags: none are defined; others give EINVAL, as copy_file_range(2))."""
        try:
            if flags:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return self.union.copy_file_range(self._files[fh_in], off_in, self._files[fh_out], off_out, length)
        except Exception as exc:
            raise _failure(exc, "copy_file_range", (fh_in, off_in, fh_out, off_out, length)) from None

    # No flush: writes reach the backing file at once, so close(2) has nothing to report. A backend
    # answers ENOSYS and the kernel stops sending FLUSH: one request less per close.

    async def fsync(self, fh: int, datasync: bool) -> None:
        try:
            self.union.fsync(self._files[fh], datasync)
        except Exception as exc:
            raise _failure(exc, "fsync", (fh, datasync)) from None

    def release_now(self, fh: int) -> None:
        try:
            if self._passed:
                self._passed_released(fh)
            self.union.release(self._files.pop(fh))
        except Exception as exc:
            raise _failure(exc, "release", (fh,)) from None

    async def release(self, fh: int) -> None:
        self.release_now(fh)

    # ----------------------------------------------------------- xattrs

    def getxattr_now(self, node_id: int, name: bytes):
        """The value of xattr *name*, or None when the node has none (ENODATA, answered without an
        exception: nearly every file of a container engine's diff is asked for security.capability)."""
        try:
            return self.union.find_xattr(self._node(node_id), name)
        except Exception as exc:
            raise _failure(exc, "getxattr", (node_id, name)) from None

    async def getxattr(self, node_id: int, name: bytes) -> bytes:
        value = self.getxattr_now(node_id, name)
        if value is None:
            raise OSError(errno.ENODATA, _ENODATA)
        return value

    def listxattr_now(self, node_id: int) -> list[bytes]:
        """The names (bytes) of the node's xattrs."""
        try:
            return self.union.listxattr(self._node(node_id))
        except Exception as exc:
            raise _failure(exc, "listxattr", (node_id,)) from None

    async def listxattr(self, node_id: int) -> list[bytes]:
        return self.listxattr_now(node_id)

    async def setxattr(self, node_id: int, name: bytes, value: bytes, flags: int = 0, kill_sgid: bool = False) -> None:
        """flags: XATTR_CREATE / XATTR_REPLACE, or 0. *kill_sgid*: setting this access ACL clears
        set-group-ID, the caller being neither in the file's group nor privileged (SETXATTR_EXT's
        SETXATTR_ACL_KILL_SGID: what the VFS does on a chmod; the daemon's own setxattr would not)."""
        try:
            node = self._node(node_id)
            await self._copy_up(self.union.copy_up_for_xattr, node, name)
            self.union.setxattr(node, name, value, flags)
            if kill_sgid and name == b"system.posix_acl_access":  # a default ACL changes no mode
                mode = self.union.getattr(node).st_mode
                if mode & stat.S_ISGID:
                    self.union.setattr(node, mode=stat.S_IMODE(mode) & ~stat.S_ISGID)
        except Exception as exc:
            raise _failure(exc, "setxattr", (node_id, name)) from None

    async def removexattr(self, node_id: int, name: bytes) -> None:
        try:
            node = self._node(node_id)
            await self._copy_up(self.union.copy_up_for_xattr, node, name, True)
            self.union.removexattr(node, name)
        except Exception as exc:
            raise _failure(exc, "removexattr", (node_id, name)) from None
