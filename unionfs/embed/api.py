"""Embedding pyunionfs in Python programs: mount a union for the length of a ``with`` block.

    from unionfs.embed.api import mount, UnionMount, MountError

    with mount(["lower1", "lower2"], "upper", "work", mountpoint="mnt") as m:
        print(open(m.mountpoint / "f1").read())
    # unmounted here, whatever happened in the block

    m = UnionMount(["lower"], "upper", "work", mountpoint="mnt")   # long-lived use
    m.start()
    ...
    m.stop()

The daemon runs as a subprocess (``sys.executable -m unionfs -f -o ... MOUNTPOINT``, in its own session
so that a Ctrl-C at the terminal reaches the caller, not the daemon). Its stdout and stderr go to a
temporary log file (``UnionMount.log_text()``). ``start()`` returns once the mount is live: it watches
``/proc/self/mountinfo`` for a new FUSE mount on the mount point (never stats the mount point, so a
hung mount cannot block it). ``stop()`` always unmounts: ``fusermount3 -u``, then ``fusermount3 -uz``
(lazy, for a busy mount), then, as root, ``umount -l``; then it waits for the daemon, sends SIGTERM and
finally SIGKILL. ``stop()`` also runs when the ``with`` body raises, when the daemon has died (its mount is
then a dead "transport endpoint is not connected" mount, which is unmounted too), and at interpreter
exit for mounts still live. Starting, waiting, unmounting and reaping are `unionfs.embed.lifecycle`'s.

Errors: ``MountError`` is a subclass of ``RuntimeError`` (not ``OSError``: no errno describes a refused
mount, and ``except OSError`` around file operations in the body must not swallow it). Its ``message``
is the daemon's own one-line reason (``"workdir /w is not empty (holds x)"``), also ``str(exc)``;
``returncode`` is the daemon's exit status (1: layers or mount point refused, 2: malformed command
line, ``None``: it did not mount within ``timeout`` seconds and was killed); ``log`` is everything the
daemon wrote. ``DaemonDied`` (a ``MountError``) is raised when a ``with`` block ends normally but the
daemon had exited (or was killed) before the block ended: what the block wrote may be lost.

`unionfs.mount` is this function (the daemon itself lives in `unionfs.fuse.daemon`).

Started as root the daemon mounts with ``allow_other,default_permissions``; started by an ordinary user
it mounts through the setuid ``fusermount3``, which needs a usable ``/dev/fuse``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from ..errors import MountError
from . import lifecycle
from .lifecycle import FUSERMOUNT, mounts_at

__all__ = ["mount", "UnionMount", "MountError", "DaemonDied", "fuse_unavailable_reason"]

PathLike = Union[str, bytes, os.PathLike]


class DaemonDied(MountError):
    """The daemon exited while the union was supposed to be mounted."""


def fuse_unavailable_reason() -> Optional[str]:
    """Why a FUSE mount cannot be made by this process, or None when it (probably) can.

    Checks that the backend the daemon will use can run (the pyfuse3 backend: pyfuse3 imports), that
    /dev/fuse exists, fusermount3 is on PATH, and that /dev/fuse opens (root) or fusermount3 is setuid
    root (ordinary users; fusermount3 opens /dev/fuse itself).
    """
    from ..options import default_backend

    if default_backend() == "pyfuse3":
        try:
            import pyfuse3  # noqa: F401
        except Exception as exc:  # ImportError, or a broken libfuse3
            return f"FUSE unavailable: cannot import pyfuse3 ({exc})"
    if not os.path.exists("/dev/fuse"):
        return "FUSE unavailable: /dev/fuse does not exist"
    fm = shutil.which(FUSERMOUNT)
    if fm is None:
        return "FUSE unavailable: fusermount3 not found on PATH (install the fuse3 package)"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        if os.geteuid() == 0:
            return f"FUSE unavailable: cannot open /dev/fuse: {exc.strerror}"
        if not os.stat(fm).st_mode & 0o4000:
            return f"FUSE unavailable: /dev/fuse: {exc.strerror}, and fusermount3 is not setuid root"
        # fusermount3 opens /dev/fuse as root; whether that works shows only when mounting.
        return None
    os.close(fd)
    return None


# ------------------------------------------------------------------------------------------------
# option strings
# ------------------------------------------------------------------------------------------------


def _escape_layer(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def _escape_opt(path: str) -> str:
    return path.replace("\\", "\\\\").replace(",", "\\,")


def _abspath(p: PathLike) -> str:
    return os.path.abspath(os.fsdecode(os.fspath(p)))


# ------------------------------------------------------------------------------------------------
# UnionMount
# ------------------------------------------------------------------------------------------------

_live: weakref.WeakSet[UnionMount] = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit():
    for m in list(_live):
        try:
            m.stop()
        except Exception:
            pass


class UnionMount:
    """A pyunionfs mount owned by this process: ``start()``, ``stop()``, ``alive``; a context manager.

    Arguments:
      lowers      one directory or a sequence of them, topmost first.
      upper, work the upper layer and its work directory (both or neither; neither: read-only union).
      mountpoint  an existing empty directory; None makes a temporary one (removed again by stop()).
      options     extra ``-o`` options, e.g. ``("userxattr", "timeout=0")``; strings or one
                  comma-separated string.
      timeout     seconds start() waits for the mount to appear before it gives up (MountError).
      stop_timeout seconds stop() waits for the daemon to exit after unmounting before SIGTERM/SIGKILL.
      debug       run the daemon with ``-d`` (debug log, see log_text()).
      env         environment for the daemon (default: this process's, with this package importable).

    Attributes: ``mountpoint`` (a Path), ``lowers``, ``upper``, ``work`` (absolute paths as str),
    ``pid`` (the daemon's, while started), ``returncode`` (after stop, or once the daemon exited).
    """

    def __init__(
        self,
        lowers: Union[PathLike, Iterable[PathLike]],
        upper: Optional[PathLike] = None,
        work: Optional[PathLike] = None,
        mountpoint: Optional[PathLike] = None,
        *,
        options: Union[str, Sequence[str]] = (),
        timeout: float = 30,
        stop_timeout: float = 10,
        debug: bool = False,
        env: Optional[dict] = None,
    ):
        if isinstance(lowers, (str, bytes, os.PathLike)):
            lowers = [lowers]
        self.lowers = [_abspath(p) for p in lowers]
        self.upper = _abspath(upper) if upper is not None else None
        self.work = _abspath(work) if work is not None else None
        self._given_mountpoint = mountpoint
        self.mountpoint: Optional[Path] = Path(_abspath(mountpoint)) if mountpoint is not None else None
        self.options = [options] if isinstance(options, str) else list(options)
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.debug = debug
        self.env = env
        self._proc: Optional[subprocess.Popen] = None
        self._log_path: Optional[str] = None
        self._mount_id: Optional[int] = None
        self._real_mnt: Optional[str] = None
        self._temp_mnt: Optional[str] = None
        self._before: set = set()
        self._lock = threading.Lock()
        self.returncode: Optional[int] = None

    # -------------------------------------------------------------------------- info

    def argv(self) -> list:
        """The daemon's command line."""
        opts = ["lowerdir=" + ":".join(_escape_layer(p) for p in self.lowers)]
        if self.upper is not None:
            opts.append("upperdir=" + _escape_opt(self.upper))
        if self.work is not None:
            opts.append("workdir=" + _escape_opt(self.work))
        opts.extend(o for o in self.options if o)
        return [
            sys.executable,
            "-m",
            "unionfs",
            "-d" if self.debug else "-f",
            "-o",
            ",".join(opts),
            str(self.mountpoint),
        ]

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def started(self) -> bool:
        """start() succeeded and stop() has not been called."""
        return self._mount_id is not None

    @property
    def alive(self) -> bool:
        """The daemon is running and our mount is still in the mount table."""
        if self._proc is None or self._mount_id is None:
            return False
        if self._proc.poll() is not None:
            return False
        try:
            return self._mount_id in mounts_at(self._real_mnt)
        except OSError:
            return False

    def log_text(self) -> str:
        """Everything the daemon wrote to stdout/stderr so far (its log, in the foreground format)."""
        if not self._log_path:
            return ""
        try:
            with open(self._log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def __repr__(self):
        state = "alive" if self.alive else ("started" if self.started else "stopped")
        return f"<UnionMount {self.mountpoint} pid={self.pid} {state}>"

    # -------------------------------------------------------------------------- start

    def _daemon_env(self) -> dict:
        env = dict(os.environ if self.env is None else self.env)
        # Make this very copy of the package importable by `python -m unionfs`.
        pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if pkg_parent not in parts:
            env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + parts)
        return env

    def _failure_message(self, text: str, fallback: str) -> str:
        lines = [l.strip() for l in text.splitlines() if l.strip()]
        for line in reversed(lines):
            if line.startswith("pyunionfs: "):
                return line[len("pyunionfs: ") :]
        for line in reversed(lines):
            if "ERROR" in line or "Error" in line:
                return line
        return fallback

    def start(self) -> UnionMount:
        """Start the daemon; return once the mount is live. Raises MountError (nothing left mounted)."""
        with self._lock:
            if self._proc is not None:
                raise RuntimeError("this UnionMount was already started; make a new one")
            if self.mountpoint is None:
                self._temp_mnt = tempfile.mkdtemp(prefix="unionfs-mnt.")
                self.mountpoint = Path(self._temp_mnt)
            self._real_mnt = lifecycle.real_mountpoint(self.mountpoint)
            before = self._before = set(mounts_at(self._real_mnt))
            fd, self._log_path = tempfile.mkstemp(prefix="pyunionfs-", suffix=".log")
            argv = self.argv()
            try:
                with os.fdopen(fd, "wb") as logf:
                    self._proc = lifecycle.start_daemon(argv, logf, env=self._daemon_env())
            except OSError as exc:
                self._cleanup_files()
                raise MountError(f"cannot start the daemon: {exc}", argv=argv) from None
            _live.add(self)
            found = lifecycle.wait_for_mount(self._real_mnt, self._proc, self.timeout, before=before)
            if found is not None:
                self._mount_id = found
                return self
            rc = self._proc.poll()
            text = self.log_text()
            self._teardown()
            if rc is not None:
                msg = self._failure_message(text, f"the daemon exited with status {rc} before mounting")
                raise MountError(msg, returncode=rc, log=text, argv=argv)
            raise MountError(
                f"not mounted after {self.timeout:g} s; daemon killed", returncode=None, log=text, argv=argv
            )

    # -------------------------------------------------------------------------- stop

    def _unmount(self) -> bool:
        """Unmount our mount if it is still there. True when it is gone."""
        if self._mount_id is None:
            return True
        return lifecycle.unmount(self._real_mnt, mount_id=self._mount_id)

    def _reap(self, wait: bool = True) -> None:
        """End the daemon: after its unmount it leaves by itself (*wait*: give it stop_timeout seconds),
        else SIGTERM."""
        proc = self._proc
        if proc is None:
            return
        lifecycle.reap(proc, self.stop_timeout if wait else 0)
        self.returncode = proc.returncode

    def _cleanup_files(self) -> None:
        if self._log_path:
            try:
                os.unlink(self._log_path)
            except OSError:
                pass
            self._log_path = None
        if self._temp_mnt:
            try:
                os.rmdir(self._temp_mnt)
            except OSError:
                pass
            else:
                self._temp_mnt = None

    def _teardown(self) -> None:
        # start() failed: make sure nothing is left running or mounted.
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        new = [i for i, t in mounts_at(self._real_mnt).items() if t.startswith("fuse") and i not in self._before]
        if new and self._proc is not None:
            # Only a mount our daemon made can be there now (the table was checked before starting).
            self._mount_id = max(new)
            self._unmount()
        self._mount_id = None
        self._reap()
        _live.discard(self)
        self._cleanup_files()

    def stop(self) -> Optional[int]:
        """Unmount (also a dead or busy mount), end the daemon; return its exit status. Idempotent.

        Raises MountError only if the mount could not be removed at all, or is left because another
        filesystem is mounted over it (an unmount by the path would take that one).
        """
        with self._lock:
            if self._proc is None:
                return None
            if self._mount_id is None and self.returncode is not None:
                return self.returncode
            gone = self._unmount()
            covered = not gone and self._mount_id is not None and lifecycle.covered(self._real_mnt, self._mount_id)
            self._reap(wait=not covered)  # covered, it was not unmounted: it would not leave by itself
            still = self._mount_id if not gone else None
            self._mount_id = None
            _live.discard(self)
            self._cleanup_files()
            if covered:
                raise MountError(
                    f"{self._real_mnt} is not unmounted: another filesystem is mounted over it (an unmount "
                    "by the path would take that one); the union under it is dead until unmounted",
                    returncode=self.returncode,
                    argv=self.argv(),
                )
            if still is not None:
                raise MountError(
                    f"{self._real_mnt} is still mounted after fusermount3 -u/-uz",
                    returncode=self.returncode,
                    argv=self.argv(),
                )
            return self.returncode

    # -------------------------------------------------------------------------- context manager

    def __enter__(self) -> UnionMount:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        died = self._mount_id is not None and self._proc.poll() is not None
        text = self.log_text() if died or exc is not None else ""
        rc = self.stop()
        if exc is not None:
            if died and hasattr(exc, "add_note"):
                exc.add_note(f"pyunionfs daemon (pid {self.pid}) had died with status {rc}; its log:\n{text}")
            return False
        if died:
            raise DaemonDied(
                f"the pyunionfs daemon exited with status {rc} while {self.mountpoint} was in use",
                returncode=rc,
                log=text,
                argv=self.argv(),
            )
        return False


def mount(lowers, upper=None, work=None, mountpoint=None, options=(), timeout: float = 30, **kw) -> UnionMount:
    """Mount a union for a ``with`` block: ``with mount(lowers, upper, work, mountpoint=MNT) as m:``.

    Returns a started UnionMount (see there for the arguments); ``m.mountpoint`` is the merged view.
    It is live when this returns, and it is unmounted when the block ends, also when the block raises
    or the daemon died (then ``DaemonDied`` is raised if the block itself did not raise). A refused
    mount raises ``MountError`` whose ``message`` is the daemon's one line, e.g.
    ``"lowerdir /nope does not exist"``. Usable without ``with`` too: call ``m.stop()``.
    """
    m = UnionMount(lowers, upper, work, mountpoint, options=options, timeout=timeout, **kw)
    m.start()
    return m
