"""The native backend: the project's own FUSE session (unionfs.protocol) in front of the request layer.

`NativeOperations` is a `protocol.Operations` whose methods only translate: the session's decoded
values go to `UnionRequests`, and what it returns goes back as it is (a request-layer `Entry` has the
attribute names the session packs by). Decisions stay in the request layer; the wire stays in the
session. What this backend adds over pyfuse3 comes from the protocol being ours: setxattr flags reach
the request layer (a failed XATTR_CREATE/XATTR_REPLACE copies up first, as the kernel), a
readdirplus entry without attributes needs no patching of a binding's objects, and opens of upper files
pass their reads and writes through to the kernel (FUSE_PASSTHROUGH: the request layer says which opens
may, the session registers their backing files).

`NativeMount` mounts without libfuse (mount(2) as root or in a user namespace, the setuid fusermount3
otherwise; unionfs.protocol.mount) and serves with the session on trio. Nothing here imports trio
before the mount is made.
"""

import _thread
import os
import signal
import sys

from ..errors import MountError
from ..logger import get_logger
from ..logger import load as load_logging
from ..protocol import abi
from ..protocol import mount as fuse_mount
from ..protocol.operations import FileInfo, LoopNeeded, Operations
from ..protocol.session import IDLE, Session, readable_before_loop
from .daemon import STOP_SIGNALS
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
) & ~abi.READDIRPLUS_AUTO
# PASSTHROUGH (-o passthrough=on, root only: registering a backing file needs CAP_SYS_ADMIN): the kernel
# reads and writes files of the upper layer itself (UnionRequests._pass_through says which opens).
PASSTHROUGH_FLAGS = abi.PASSTHROUGH

_OVERLAYFS_MAGIC = 0x794C7630

# Seconds without a request after which the event loop is started anyway (see NativeMount.serve): a
# mount that lives on takes trio's import while nobody waits, not at its first big copy-up.
# PYUNIONFS_LOOP_IDLE overrides it (the tests set it, to tell the two ways the loop starts apart).
IDLE_LOOP_START = 1.0


def _idle_loop_start() -> float:
    try:
        return max(0.001, float(os.environ.get("PYUNIONFS_LOOP_IDLE", IDLE_LOOP_START)))
    except ValueError:
        return IDLE_LOOP_START


def _statvfs(s) -> os.statvfs_result:
    return os.statvfs_result((s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.favail, 0, s.namemax))


def _file_info(opened) -> FileInfo:
    return FileInfo(opened.fh, keep_cache=opened.keep_cache, direct_io=opened.direct_io, backing_id=opened.backing_id)


class NativeOperations(Operations):
    """The union served by a `protocol.session.Session`."""

    def __init__(self, requests: UnionRequests, session=None):
        self.requests = requests
        self.session = session
        requests.bare_entries = True  # a readdirplus entry with node id 0 is the session's add_bare
        # The session answers these in place (see Operations.lookup_now): the request layer's own
        # methods take the session's values as they are, so no method of this class stands between.
        self.lookup_now = requests.lookup_now
        self.getattr_now = requests.getattr_now
        self.getxattr_now = requests.getxattr_now
        self.listxattr_now = requests.listxattr_now

    async def init(self, conn) -> None:
        session = self.session
        if session is None:
            return
        if conn.flags & abi.HANDLE_KILLPRIV_V2:
            self.requests.kill_privs = True

            def invalidate(node_id, notify=session.notify_inval_inode):
                notify(node_id, -1)  # attributes only: the kernel holds the written pages locked

            self.requests.attributes_changed = invalidate
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
        # The kernel may keep a directory's listing (FOPEN_CACHE_DIR) and keep it across opens
        # (KEEP_CACHE): it drops it itself when the directory changes through the mount (its mtime or
        # its inode's version moves). A layer changed behind the mount is undefined, as on the kernel.
        fh = await self.requests.opendir(node)
        return FileInfo(fh, cache_dir=True, keep_cache=True)

    async def readdir(self, node, fh, offset, out, ctx):
        # DirBuffer.reply takes the request layer's callback arguments as they are (entry None: bare)
        await self.requests.readdir(fh, offset, out.reply, plus=out.plus)

    async def releasedir(self, node, fh, ctx):
        await self.requests.releasedir(fh)

    async def fsyncdir(self, node, fh, datasync, ctx):
        await self.requests.fsyncdir(fh, datasync)

    async def create(self, parent, name, mode, flags, ctx):
        opened, entry = await self.requests.create(parent, name, mode, flags, ctx)
        return entry, _file_info(opened)


class NativeMount:
    """The union mounted with the project's own FUSE session.

    Made = mounted (requests wait in the kernel until `serve` answers INIT); on failure the layers are
    let go and MountError says why in one line.
    """

    def __init__(self, requests: UnionRequests, opts, options: list):
        self.requests = requests
        self.union = requests.union
        self.mountpoint = opts.mountpoint
        # allow_root is allow_other in the kernel plus a filter in the daemon (as libfuse does it)
        self.allow_root = "allow_root" in options
        # Passthrough needs CAP_SYS_ADMIN (of the first user namespace) and an upper to pass through to.
        self.passthrough = opts.passthrough and os.geteuid() == 0 and requests.union.stack.upper is not None
        self.stack_depth = 1
        if self.passthrough:
            self.stack_depth = 1 + _stack_depth(opts.upper)
            if self.stack_depth > abi.MAX_STACK_DEPTH:
                self.passthrough = False
        if self.allow_root:
            options = [o for o in options if o != "allow_root"]
            options += [] if "allow_other" in options else ["allow_other"]
        try:
            self.fd = fuse_mount.mount(opts.mountpoint, fsname=opts.fsname, subtype="pyunionfs", options=options)
        except fuse_mount.MountError as exc:
            self.union.close()
            raise MountError(f"cannot mount {opts.mountpoint}: {exc}") from None

    def serve(self, signalled: list) -> int:
        """Serve until unmounted (or a signal, which unmounts); 0, or 1 when the loop failed.
        *signalled*: the stop signals that came before the loop listens (daemon.run notes them).

        trio is imported only when the loop is needed (see protocol.session.Session.serve_before_loop):
        until a request would have to wait for another (a copy-up in flight; big copies themselves run in
        threads of their own meanwhile, ThreadsBeforeLoop) or the device has been idle for
        IDLE_LOOP_START seconds, every request is answered on this thread, in order. A
        container engine's first requests come right after the mount program returns, and importing trio
        is most of a start (70-100 ms of CPU here): `podman run --rm`, `podman diff` and image mounts
        are over before they would get an answer from a loop still importing.
        """
        ops = NativeOperations(self.requests)
        flags = INIT_FLAGS | (PASSTHROUGH_FLAGS if self.passthrough else 0)
        session = ops.session = Session(ops, self.fd, flags=flags, max_stack_depth=self.stack_depth)
        if self.allow_root:
            session.deny_others(os.geteuid())
        self._signalled = signalled
        code = 0
        try:
            first = _serve_until_the_loop_is_needed(session, self.requests, self._signalled)
            if self._signalled:
                log.info("signal %d: unmounting", self._signalled[0])
                self._unmount()
            elif not session.ended:
                if first:
                    log.debug("event loop started for %s", abi.opcode_name(abi.IN_HEADER.unpack_from(first)[1]))
                else:
                    log.debug("event loop started: the device was idle")
                load_logging()  # the lines kept until now are written before the loop's import
                import trio

                trio.run(self._serve, session, first or None)
        except BaseException:
            log.exception("ERROR: the request loop failed")
            self._unmount()
            code = 1
        finally:
            self.union.close()
            os.close(self.fd)
        return code

    async def _serve(self, session, first):
        import trio

        async with trio.open_nursery() as nursery:
            await nursery.start(self._stop_on_signal, session)
            await session.run(first)
            # Let go of the layers at once: `umount LOWER` right after `umount MNT` must not find them busy.
            self.union.close()
            nursery.cancel_scope.cancel()

    async def _stop_on_signal(self, session, task_status):
        import trio

        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            task_status.started()
            if not self._signalled:
                async for signum in signals:
                    self._signalled.append(signum)
                    break
            log.info("signal %d: unmounting", self._signalled[0])
            self._unmount()
            session.stop()

    def _unmount(self) -> None:
        try:
            fuse_mount.unmount(self.mountpoint)
        except fuse_mount.MountError as exc:
            log.warning("unmounting %s: %s", self.mountpoint, exc)


def _stack_depth(path) -> int:
    """How deep the filesystem holding *path* is stacked: 1 on an overlay, else 0 (FUSE's own depth is
    not visible from here; a backing file deeper than assumed is refused by the kernel, ELOOP, and that
    file is then not passed through)."""
    try:
        import ctypes

        return 1 if _statfs_type(path, ctypes) == _OVERLAYFS_MAGIC else 0
    except OSError:
        return 0


def _statfs_type(path, ctypes) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(120)  # struct statfs; f_type is its first word
    if libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int.from_bytes(buf.raw[:8], "little")


def _loop_needed() -> None:
    raise LoopNeeded


class _HeldLock:
    """The lock of a copy-up running before the loop. Only its own handler takes it: any other request
    that finds it held needs the loop (before_wait raises LoopNeeded), and the session finishes every
    parked handler before the loop runs."""

    __slots__ = ("held",)

    def __init__(self):
        self.held = False

    def locked(self) -> bool:
        return self.held

    async def __aenter__(self):
        self.held = True

    async def __aexit__(self, *exc):
        self.held = False


class ThreadsBeforeLoop:
    """Big copy-ups before the loop (UnionRequests.threads): each copy in a thread of its own
    (`_thread`: nothing to import), its handler parked on a pipe that the thread writes when done, while
    the session answers other requests (protocol.session.readable_before_loop). A fresh mount's first
    big copy-up therefore waits neither for trio's import (~100 ms of CPU) nor makes others wait for the
    copy. More than MAX at once need the loop."""

    MAX = 4  # as the loop's worker threads

    def __init__(self):
        self.running = 0

    def reserve(self) -> None:
        if self.running >= self.MAX:
            raise LoopNeeded

    def lock(self):
        return _HeldLock()

    async def run(self, fn):
        r, w = os.pipe2(os.O_CLOEXEC)
        done = []

        def work():  # owns w: the parked handler may be gone before the copy ends
            try:
                done.append((True, fn()))
            except BaseException as exc:
                done.append((False, exc))
            try:
                os.write(w, b"!")
            except OSError:
                pass
            os.close(w)

        self.running += 1
        try:
            _thread.start_new_thread(work, ())
            await readable_before_loop(r)
        finally:
            self.running -= 1
            os.close(r)
        ok, value = done[0]
        if not ok:
            raise value
        return value


def _serve_until_the_loop_is_needed(session, requests: UnionRequests, signalled: list):
    """Answer requests without trio (see Session.serve_before_loop) until one needs the loop (it is
    returned, read but unanswered), the device was idle for IDLE_LOOP_START seconds (IDLE), or the mount
    goes away or a stop signal comes (*signalled*, a list the signal handler appends to, is then not
    empty): None."""

    class Until:
        @staticmethod
        def is_set():
            return bool(signalled)

    # The request layer calls before_wait right before it would wait for another request: there, that
    # means the loop. Its own big copies run in threads meanwhile (ThreadsBeforeLoop).
    requests.before_wait = _loop_needed
    requests.threads = ThreadsBeforeLoop()
    # A signal makes the wait for the device return (a wake-up pipe), so the wait needs no timeout.
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old = signal.set_wakeup_fd(w)
    try:
        first = session.serve_before_loop(Until, wake_fd=r, idle=_idle_loop_start())
        if first is not IDLE:
            return first
        # Idle: the loop's modules are imported in a thread of their own while requests are still
        # answered here, so one that comes meanwhile waits for the interpreter lock (a switch interval,
        # made short for the while), not for the whole import (~100 ms).
        imported: list = []

        class Imported:
            @staticmethod
            def is_set():
                return bool(signalled or imported)

        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            _thread.start_new_thread(_import_the_loop, (imported, w))
            first = session.serve_before_loop(Imported, wake_fd=r)
        finally:
            sys.setswitchinterval(interval)
        # A request that needs the loop before the import is over: `import trio` waits for the thread's.
        return IDLE if first is None and imported and not signalled and not session.ended else first
    finally:
        requests.before_wait = _noop
        requests.threads = requests.loop_threads
        signal.set_wakeup_fd(old)
        os.close(r)
        os.close(w)


def _import_the_loop(imported: list, wake_w: int) -> None:
    """Import what the loop needs (in a thread), then say so and wake the poll (the wake-up pipe)."""
    try:
        import logging  # noqa: F401  (load_logging, right before the loop)

        import trio  # noqa: F401
    finally:
        imported.append(True)
        try:
            os.write(wake_w, b"\0")
        except OSError:
            pass


def _noop() -> None:
    pass
