"""Mount and serve: open the layers, mount through the chosen backend, go to the background, serve.

Mount first, then daemonize, then run the loop: when `pyunionfs` returns, the mount is live.
SIGINT, SIGTERM and SIGHUP end the loop; the mount is always closed on the way out.

Start-up time counts (a container engine execs the mount program for every container), so the work
before the mount is only what the mount needs: the layers opened and checked (engine.stack.Stack, every
check a mount must pass) and the backend's mount. The native backend makes the engine over them (the
rest of its ~20 modules) only in the daemon left behind once the mount is live (`Layers.engine`): a
container engine gets its mount ~9 ms sooner (benchmarks/README.md). pyfuse3 needs it before its mount.
logging itself is imported only when there is something to log at WARNING or above, when the native
backend starts its event loop, or at exit (unionfs.logger); logging.handlers only for syslog.

This module knows no FUSE binding: `Layers` opens the layers (their checks are what a mount must
pass) and makes the engine over them when asked, `request_layer` puts the request layer over the
engine, `mount_options` says what the mount is to be, and the backend (`native_backend.NativeMount`,
`pyfuse3_backend.Pyfuse3Mount`, imported only when chosen) mounts and serves.
"""

from __future__ import annotations

import gc
import os
import sys

from ..engine.stack import LayerInUse, Stack
from ..errors import MountError
from ..logger import DEBUG, INFO, WARNING, configure_later, get_logger
from ..logger import load as load_logging

# The signal module's C core: `signal` itself wraps it in enums, and importing enum (with functools) is
# ~2 ms of a mount program's ~20 ms start. Only plain numbers and calls are used (native_backend too).
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import signal

    from ..engine import UnionEngine
    from .requests import UnionRequests
else:
    try:
        import _signal as signal
    except ImportError:  # an interpreter without CPython's module split
        import signal


log = get_logger("unionfs")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# RLIMIT_NOFILE where it is 7 (Linux but alpha, mips and sparc): elsewhere `resource` says it.
_RLIMIT_NOFILE = 7 if os.uname().machine in ("x86_64", "aarch64", "riscv64", "ppc64le", "s390x", "i686") else None
FD_HUNGRY_LOWERS = 100  # lowers from which the descriptor limit is raised before the layers are opened
# The collector's youngest generation is collected after this many new objects (CPython: 700). The
# daemon's objects are mostly long-lived nodes (a cold walk makes a few per entry) or freed by their
# reference counts (a request's buffers and tuples): at 700 the collections, and the full ones they set
# off, walked the growing node table over and over, 13% of the daemon's CPU in a cold `find` of 21,500
# entries (at 20,000: `find` cold 691-730 ms against 717-842). Cyclic garbage (an exception with its
# frames) waits a little longer: at most this many objects.
GC_YOUNG_THRESHOLD = 20_000


def mount_options(opts) -> list:
    """The mount's options, unescaped, one a string (fsname and subtype are the backend's to pass)."""
    out = ["default_permissions"]  # the kernel checks permissions against the attributes we report
    if os.geteuid() == 0:
        out.append("allow_other")  # as fuse-overlayfs: a root mount serves every user
    if opts.upper is None or opts.readonly:
        out.append("ro")
    out.extend(o for o in opts.fuse_options if o not in out)
    return out


def _dropped_reply(record) -> bool:
    """A logging filter of pyfuse3's logger. pyfuse3 logs ERROR when a reply finds its request gone
    (ENOENT): the kernel stopped waiting for it, as it does for a release or an interrupted call while
    the mount goes away. Nothing failed: debug."""
    import logging  # loaded already: a filter runs on a record

    if (
        record.levelno >= logging.ERROR
        and "fuse_reply_" in str(record.msg)
        and "No such file or directory" in record.getMessage()
    ):
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("pyfuse3").isEnabledFor(logging.DEBUG)
    return True


def _setup_logging(opts, to_stderr: bool):
    """Note where the daemon logs; logging is loaded when there is something to log (unionfs.logger)."""

    def setup():
        import logging

        if to_stderr:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        elif opts.logfile:
            handler = logging.FileHandler(opts.logfile)
            handler.setFormatter(logging.Formatter("%(asctime)s pyunionfs[%(process)d] %(levelname)s: %(message)s"))
        elif os.path.exists("/dev/log"):
            from logging.handlers import SysLogHandler  # not at the top: only a background daemon needs it

            handler = SysLogHandler(address="/dev/log")
            handler.setFormatter(logging.Formatter("pyunionfs[%(process)d]: %(levelname)s %(message)s"))
        else:
            handler = logging.NullHandler()
        logging.getLogger().handlers[:] = [handler]
        pyfuse3_log = logging.getLogger("pyfuse3")
        if _dropped_reply not in pyfuse3_log.filters:
            pyfuse3_log.addFilter(_dropped_reply)

    # the bindings' own loggers say only what is wrong, unless debugging
    quiet = DEBUG if opts.debug else WARNING
    # A background daemon logging to syslog says only what is wrong, as fuse-overlayfs and the kernel
    # are silent about a mount: a container engine mounts for every container (and writing the
    # "mounted" line would load logging and the syslog handler, ~10 ms of CPU, at each exit).
    chatty = to_stderr or opts.logfile
    level = DEBUG if opts.debug else INFO if chatty else WARNING
    configure_later(setup, {"": level, "pyfuse3": quiet, "unionfs.protocol": quiet})


def _raise_fd_limit():
    """The soft limit of descriptors raised to the hard one. Through libc where the mount loaded it
    already (as root): the `resource` module is a shared object of its own, ~0.5 ms to load, in the
    daemon's time before its first answer. Else with `resource` (not before the mount: nothing there
    needs many descriptors)."""
    libc = sys.modules.get("unionfs.libc")
    if libc is not None and _RLIMIT_NOFILE is not None:
        lim = libc.buffer(16)  # struct rlimit64: cur, max
        prlimit = libc.function("prlimit64", (libc.c_int, libc.c_int, libc.c_char_p, libc.c_char_p))
        if prlimit is not None and prlimit(0, _RLIMIT_NOFILE, None, lim) == 0:
            cur, most = int.from_bytes(lim.raw[:8], sys.byteorder), lim.raw[8:]
            if cur < int.from_bytes(most, sys.byteorder):
                lim.raw = most + most
                prlimit(0, _RLIMIT_NOFILE, lim, None)
            return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _daemonize():
    pid = os.fork()
    if pid:
        os._exit(0)
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


class Layers:
    """The union's layers, opened and checked before the mount (MountError when they are refused), and
    the engine over them, made when first asked for (`engine()`).

    The checks are the Stack's; the options whose own checks or writes must come before the mount too
    (index=on: the index's manifest; xattr_permissions: the upper root's record) make the engine at once.
    `close()` lets go of the layers, with or without an engine made."""

    def __init__(self, opts):
        lowers, upper, work = opts.lowers, opts.upper, opts.work
        if opts.readonly and upper is not None:
            # `ro` with an upper: the upper is shown as the topmost layer and nothing is written.
            lowers, upper, work = [upper] + lowers, None, None
        self.opts = opts
        self._engine = None
        try:
            self.stack = Stack(
                lowers,
                upper,
                work,
                userxattr=opts.userxattr,
                whiteout_files=opts.whiteout_files,
                redirect_dir=opts.redirect_dir,
                ignore_chown_errors=opts.uid_map.squash is not None or opts.gid_map.squash is not None,
                volatile=opts.volatile,
            )
            if opts.index or opts.xattr_permissions:
                self.engine()
        except LayerInUse as exc:
            raise MountError(exc.strerror) from None
        except OSError as exc:
            raise MountError("cannot open the layers: %s" % exc) from None

    def engine(self) -> UnionEngine:
        """The engine over the layers (made at the first call; a failure closes the layers and raises
        MountError, before the mount or in the daemon after it)."""
        if self._engine is None:
            from ..engine import UnionEngine

            try:
                self._engine = UnionEngine.over(
                    self.stack, xattr_permissions=self.opts.xattr_permissions, index=self.opts.index
                )
            except OSError as exc:  # (the engine closed the stack)
                raise MountError("cannot open the layers: %s" % exc) from None
        return self._engine

    def close(self) -> None:
        """Let go of the layers (idempotent)."""
        self.stack.close()


def mounted_device(mountpoint: str):
    """(major, minor) of the FUSE mount just made at *mountpoint*, or None (and a debug line) where the
    path shows no anonymous device: FUSE's are (major 0), a disk's never is. Taken while the mount has
    just been made and the path shows it: later the path may show another filesystem (one mounted over
    it, or the one beneath after a lazy unmount), which is not the daemon's to unmount or tune."""
    from ..protocol.mount import mount_device

    try:
        major, minor = mount_device(mountpoint)
    except OSError as exc:
        log.debug("the device of %s: %s", mountpoint, exc)
        return None
    if major != 0:
        log.debug("the device of %s: the path shows %d:%d, not a FUSE mount", mountpoint, major, minor)
        return None
    return major, minor


def still_shows(mountpoint: str, device, say: bool = True) -> bool:
    """Whether *mountpoint* still shows the mount of *device* (mounted_device's; None: not known, so
    yes): an unmount by the path takes the top mount there, which is not ours where this says no (and,
    if *say*, a warning says so; not where the mount is known to be gone already)."""
    if device is None:
        return True
    from ..protocol.mount import mount_device

    try:
        shown = mount_device(mountpoint)  # no request: the daemon asking is not answering now
    except OSError as exc:
        if say:
            log.warning("not unmounting %s: %s", mountpoint, exc)
        return False
    if shown != device and say:
        log.warning(
            "not unmounting %s: it shows another filesystem (device %d:%d) than this mount (%d:%d)",
            mountpoint,
            *shown,
            *device,
        )
    return shown == device


def request_layer(union: UnionEngine, opts) -> UnionRequests:
    """The request layer over *union* with the options' timeouts and id mappings."""
    from .requests import UnionRequests  # not before the mount: the native backend needs it only to serve

    return UnionRequests(union, timeout=opts.timeout, uid_map=opts.uid_map, gid_map=opts.gid_map)


def run(opts, gc_after_mount: bool = False) -> int:
    """Mount and serve until unmounted. *gc_after_mount*: freeze what exists and turn the garbage
    collector on once the mount is made (cli.main turns it off for the start-up, see there)."""
    os.umask(0)  # modes of new entries are the engine's to narrow (the caller's umask or a default ACL)
    _setup_logging(opts, to_stderr=True)
    # Until the backend's loop listens for them, SIGINT/SIGTERM/SIGHUP are only noted: their defaults
    # would end the daemon and leave the mount behind. The backend unmounts for a noted one at once.
    signalled: list = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, frame: signalled.append(signum))
    # The mount needs a descriptor a layer and a few more; the daemon later holds many (kept directory
    # fds, open files). The soft limit is raised after the mount (`resource` is not needed before it),
    # or before the layers are opened where there are enough of them to run short (a 256 soft limit).
    many_layers = len(opts.lowers) >= FD_HUNGRY_LOWERS
    if many_layers:
        _raise_fd_limit()
    layers = Layers(opts)
    if opts.backend == "native":
        from .native_backend import NativeMount as Mount
    else:
        try:
            from .pyfuse3_backend import Pyfuse3Mount as Mount
        except ImportError as exc:
            layers.close()
            raise MountError(
                f"the pyfuse3 backend needs pyfuse3 ({exc}); install it (pip install 'unionfs[pyfuse3]') "
                "or use -o backend=native"
            ) from None
        load_logging()  # pyfuse3 loaded logging: its own records go to the daemon's handlers from now on
    mounted = Mount(layers, opts, mount_options(opts))  # MountError: the layers are let go
    if not opts.foreground:
        _daemonize()
        _setup_logging(opts, to_stderr=False)
    if not many_layers:
        _raise_fd_limit()
    if gc_after_mount:
        # What the start-up made is the daemon's for good (modules, classes, the engine): frozen, the
        # first collections do not walk it all (turned on without the freeze, the first collection,
        # right before the first request, walked the start-up's objects: +13 ms to exec->first stat).
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        gc.enable()
    log.info("mounted %s (%s backend)", opts.mountpoint, opts.backend)
    code = mounted.serve(signalled)  # until unmounted; the layers are let go at once when the loop ends
    log.info("unmounted %s", opts.mountpoint)
    return code
