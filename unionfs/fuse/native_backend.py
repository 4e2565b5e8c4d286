"""The native backend: the project's own FUSE session (unionfs.protocol) in front of the request layer.

`NativeMount` mounts without libfuse (mount(2) as root or in a user namespace, the setuid fusermount3
otherwise; unionfs.protocol.mount) and serves with the session, first without trio (see
`Session.serve_before_loop`), then on trio. What this backend adds over pyfuse3 comes from the protocol
being ours: setxattr flags reach the request layer (a failed XATTR_CREATE/XATTR_REPLACE copies up first,
as the kernel), a readdirplus entry without attributes needs no patching of a binding's objects, and
opens of upper files pass their reads and writes through to the kernel (FUSE_PASSTHROUGH: the request
layer says which opens may, the session registers their backing files). The operations the session
calls are native_operations.py's.

Only what the mount needs is imported before it is made: the request layer, the session and the
operations come in `serve`, in the daemon that the mount program's parent leaves behind (it returns as
soon as the mount is live), and trio later still.
"""

import _thread
import os
import sys

from ..errors import MountError
from ..logger import get_logger
from ..logger import load as load_logging
from ..protocol import mount as fuse_mount
from .daemon import STOP_SIGNALS, mounted_device, signal, still_shows  # signal: the C core (see daemon.py)

log = get_logger("unionfs")


_OVERLAYFS_MAGIC = 0x794C7630
KERNEL_READAHEAD_KIB = 128  # what the kernel gives a FUSE mount (VM_READAHEAD_PAGES)
# The largest READ and WRITE (255 pages): a spliced READ answer is its pages and the header's page, in a
# pipe that grows to 1 MiB (256 pages) without CAP_SYS_RESOURCE (protocol/splice.py).
MAX_REQUEST = 255 * 4096

# Seconds without a request after which the event loop is started anyway (see NativeMount.serve): a
# mount that lives on takes trio's import while nobody waits, not at its first big copy-up.
# PYUNIONFS_LOOP_IDLE overrides it (the tests set it, to tell the two ways the loop starts apart).
IDLE_LOOP_START = 1.0


def _idle_loop_start() -> float:
    try:
        return max(0.001, float(os.environ.get("PYUNIONFS_LOOP_IDLE", IDLE_LOOP_START)))
    except ValueError:
        return IDLE_LOOP_START


class NativeMount:
    """The union mounted with the project's own FUSE session.

    Made = mounted (requests wait in the kernel until `serve` answers INIT); on failure the layers are
    let go and MountError says why in one line.
    """

    def __init__(self, layers, opts, options: list):
        self.layers = layers  # daemon.Layers: the engine over them is made in serve(), after the mount
        self.union = None
        self.opts = opts
        self.requests = None  # the request layer, made by serve()
        self.mountpoint = opts.mountpoint
        # allow_root is allow_other in the kernel plus a filter in the daemon (as libfuse does it)
        self.allow_root = "allow_root" in options
        # Passthrough needs CAP_SYS_ADMIN (of the first user namespace). It passes upper files through,
        # or with no upper layer the lower files (passthrough.py); their filesystems set the depth.
        self.passthrough = opts.passthrough and os.geteuid() == 0
        self.stack_depth = 1
        if self.passthrough:
            backing = [opts.upper] if layers.stack.upper is not None else opts.lowers
            self.stack_depth = 1 + _stack_depth(*backing)
            from ..protocol.abi import MAX_STACK_DEPTH

            if self.stack_depth > MAX_STACK_DEPTH:
                self.passthrough = False
        if self.allow_root:
            options = [o for o in options if o != "allow_root"]
            options += [] if "allow_other" in options else ["allow_other"]
        try:
            self.fd = fuse_mount.mount(opts.mountpoint, fsname=opts.fsname, subtype="pyunionfs", options=options)
        except fuse_mount.MountError as exc:
            self.layers.close()
            raise MountError(f"cannot mount {opts.mountpoint}: {exc}") from None
        # This mount's device, taken now, while the mount has just been made and the path shows it:
        # later the path may show another filesystem (one mounted over it, or the one beneath after a
        # lazy unmount), whose readahead is not ours to raise (after INIT) and which is not ours to
        # unmount (on a signal). None where the path shows no anonymous device, as FUSE's are.
        self.device = mounted_device(self.mountpoint)

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
        # The session's modules are imported here, in the daemon: the mount program returns without them.
        from ..protocol import abi
        from ..protocol.session import Session
        from .daemon import request_layer
        from .native_operations import INIT_FLAGS, PASSTHROUGH_FLAGS, NativeOperations

        self._signalled = signalled
        code = 0
        session = None
        try:
            self.union = self.layers.engine()
            self.requests = requests = request_layer(self.union, self.opts)
            ops = NativeOperations(requests)
            flags = INIT_FLAGS | (PASSTHROUGH_FLAGS if self.passthrough else 0)
            session = ops.session = Session(
                ops,
                self.fd,
                flags=flags,
                max_write=MAX_REQUEST,
                max_stack_depth=self.stack_depth,
                spin=self.opts.spin / 1e6,
            )
            session.splice_reads()
            if self.allow_root:
                session.deny_others(os.geteuid())
            device = self.device
            if device is not None and self.opts.readahead != KERNEL_READAHEAD_KIB and os.geteuid() == 0:
                # after INIT's answer: the kernel takes the lower of the mount's and INIT's readahead
                ops.init_answered = lambda conn: _set_readahead(device, self.opts.readahead)
            first = _serve_until_the_loop_is_needed(session, requests, self._signalled)
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
            self.layers.close()
            if session is not None:
                session.close()
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
        """Unmount, where the mount point still shows this mount: an unmount by path takes whatever is
        mounted there on top, and a filesystem mounted over this one, or at the path after this one was
        unmounted, is not this daemon's. Then the mount is left to end with the daemon (ENOTCONN)."""
        if not still_shows(self.mountpoint, self.device):
            return
        try:
            fuse_mount.unmount(self.mountpoint)
        except fuse_mount.MountError as exc:
            log.warning("unmounting %s: %s", self.mountpoint, exc)


def _set_readahead(device: tuple, kib: int) -> bool:
    """Set the readahead of the FUSE mount whose device is *device* (its read_ahead_kb in sysfs, which
    root may write; the kernel gives a FUSE mount 128 KiB and lets INIT lower it, never raise it).
    False (and a debug line) where that fails: the mount gone already, sysfs read-only."""
    major, minor = device
    try:
        with open(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb", "w") as f:
            f.write(str(kib))
    except OSError as exc:
        log.debug("readahead of the mount (device %d:%d) left as it is: %s", major, minor, exc)
        return False
    return True


def _stack_depth(*paths) -> int:
    """How deep the filesystems holding *paths* are stacked: 1 if one is an overlay, else 0 (FUSE's own
    depth is not visible from here; a backing file deeper than assumed is refused by the kernel, ELOOP,
    and that file is then not passed through). A path that cannot be looked at counts as 0."""
    statfs_type = _statfs()
    for path in paths:
        try:
            if statfs_type(path) == _OVERLAYFS_MAGIC:
                return 1
        except OSError:
            continue
    return 0


def _statfs():
    """path -> the f_type of its filesystem (OSError where statfs fails). The C function and the buffer
    are made once: each costs more than a call (18 us a path when made for each), and a mount without
    an upper layer asks this for every lower."""
    from .. import libc

    statfs = libc.function("statfs", (libc.c_char_p, libc.c_char_p))
    buf = libc.buffer(120)  # struct statfs; f_type is its first word
    f_type = libc.c_long.from_buffer(buf)  # a long

    def statfs_type(path) -> int:
        if statfs(os.fsencode(path), buf) != 0:
            raise libc.error(path)
        return f_type.value

    return statfs_type


def _statfs_type(path) -> int:
    return _statfs()(path)


def _loop_needed() -> None:
    from ..protocol.operations import LoopNeeded

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
            from ..protocol.operations import LoopNeeded

            raise LoopNeeded

    def lock(self):
        return _HeldLock()

    async def run(self, fn, meanwhile=None):
        """fn() in a thread of its own; *meanwhile* (or None) here at the same time, before waiting."""
        from ..protocol.session import readable_before_loop

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
            if meanwhile is not None:
                meanwhile()
            await readable_before_loop(r)
        finally:
            self.running -= 1
            os.close(r)
        ok, value = done[0]
        if not ok:
            raise value
        return value


class _Until:
    """serve_before_loop's *until*: a stop signal came (*signalled*), or the loop's modules are imported."""

    def __init__(self, signalled: list):
        self.signalled = signalled
        self.imported: list = []

    def is_set(self) -> bool:
        return bool(self.signalled or self.imported)


def _serve_until_the_loop_is_needed(session, requests, signalled: list):
    """Answer requests without trio (see Session.serve_before_loop) until one needs the loop (it is
    returned, read but unanswered), the device was idle for IDLE_LOOP_START seconds (IDLE), or the mount
    goes away or a stop signal comes (*signalled*, a list the signal handler appends to, is then not
    empty): None."""

    from ..protocol.session import IDLE

    # The request layer calls before_wait right before it would wait for another request: there, that
    # means the loop. Its own big copies run in threads meanwhile (ThreadsBeforeLoop).
    requests.before_wait = _loop_needed
    requests.threads = ThreadsBeforeLoop()
    # A signal makes the wait for the device return (a wake-up pipe), so the wait needs no timeout.
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old = signal.set_wakeup_fd(w)
    try:
        until = _Until(signalled)
        first = session.serve_before_loop(until, wake_fd=r, idle=_idle_loop_start())
        if first is not IDLE:
            return first
        # Idle: the loop's modules are imported in a thread of their own while requests are still
        # answered here, so one that comes meanwhile waits for the interpreter lock (a switch interval,
        # made short for the while), not for the whole import (~100 ms).
        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            # the thread gets a wake-up fd of its own: it may write after this returns and closes w
            _thread.start_new_thread(_import_the_loop, (until.imported, os.dup(w)))
            first = session.serve_before_loop(until, wake_fd=r)
        finally:
            sys.setswitchinterval(interval)
        # A request that needs the loop before the import is over: `import trio` waits for the thread's.
        return IDLE if first is None and until.imported and not signalled and not session.ended else first
    finally:
        requests.before_wait = _noop
        requests.threads = requests.loop_threads
        signal.set_wakeup_fd(old)
        os.close(r)
        os.close(w)


def _import_the_loop(imported: list, wake_w: int) -> None:
    """Import what the loop needs (in a thread), then say so and wake the poll through *wake_w* (a dup
    of the wake-up pipe's end, which this closes)."""
    try:
        import logging  # noqa: F401  (load_logging, right before the loop)

        import trio  # noqa: F401
    finally:
        imported.append(True)
        try:
            os.write(wake_w, b"\0")
        except OSError:
            pass
        os.close(wake_w)


def _noop() -> None:
    pass
