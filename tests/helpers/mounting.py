"""Mounts for a test's duration: pyunionfs (a subprocess), kernel overlayfs, fuse-overlayfs; and why
each may be unavailable here (skip reasons).

Mounts are always started in a subprocess (pyfuse3 holds one FUSE session per process) and are always
unmounted in a `finally`. A watchdog kills a daemon that outlives its mount's time budget, which aborts
the FUSE connection so that a test blocked in a system call on a hung mount fails instead of hanging.
Starting, waiting for the mount, unmounting and reaping are unionfs.embed.lifecycle's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytest

from tests.helpers.mounttable import is_mountpoint, unmount
from unionfs.embed import lifecycle

_abs = lifecycle.real_mountpoint  # realpath of the parent only: the mount point may be a hung FUSE mount

# --------------------------------------------------------------------------------------------------
# Skip reasons
# --------------------------------------------------------------------------------------------------


def _fuse_skip_reason() -> Optional[str]:
    if not os.path.exists("/dev/fuse"):
        return "FUSE unavailable: /dev/fuse does not exist"
    if shutil.which("fusermount3") is None:
        return "FUSE unavailable: fusermount3 not found on PATH (install the fuse3 package)"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        if os.geteuid() != 0:
            # fusermount3 is setuid root and opens /dev/fuse itself; what matters then is that it
            # is setuid and that /dev/fuse is usable by root.
            fm = os.stat(shutil.which("fusermount3"))
            if not fm.st_mode & stat.S_ISUID:
                return f"FUSE unavailable: not root, fusermount3 is not setuid and /dev/fuse: {exc.strerror}"
            return None
        return f"FUSE unavailable: cannot open /dev/fuse: {exc.strerror}"
    else:
        os.close(fd)
    return None


FUSE_SKIP_REASON: Optional[str] = _fuse_skip_reason()

_kernel_reason_cache: list = []


def kernel_overlay_skip_reason() -> Optional[str]:
    """Why kernel overlayfs can't be mounted here (tried once with a throwaway mount), or None."""
    if _kernel_reason_cache:
        return _kernel_reason_cache[0]
    reason: Optional[str] = None
    if os.geteuid() != 0:
        reason = "kernel overlayfs needs root"
    elif shutil.which("mount") is None:
        reason = "mount(8) not found"
    else:
        with tempfile.TemporaryDirectory(prefix="unionfs-kprobe.") as tmp:
            for d in ("l", "u", "w", "m"):
                os.mkdir(os.path.join(tmp, d))
            m = os.path.join(tmp, "m")
            res = subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={tmp}/l,upperdir={tmp}/u,workdir={tmp}/w", m],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if res.returncode != 0:
                reason = f"kernel overlayfs mount failed: {(res.stderr or res.stdout).strip()}"
            else:
                if subprocess.run(["umount", m], capture_output=True, timeout=30).returncode != 0:
                    subprocess.run(["umount", "-l", m], capture_output=True, timeout=30)
    _kernel_reason_cache.append(reason)
    return reason


# --------------------------------------------------------------------------------------------------
# -o option strings
# --------------------------------------------------------------------------------------------------


def escape_layer_path(path) -> str:
    """A layer path as written inside -o lowerdir=/upperdir=/workdir= (`\\:` and `\\,` escaped)."""
    return os.fspath(path).replace(":", "\\:").replace(",", "\\,")


def overlay_options(lowers, upper=None, work=None, options: Sequence[str] = ()) -> str:
    if isinstance(lowers, (str, os.PathLike)):
        lowers = [lowers]
    opts = ["lowerdir=" + ":".join(escape_layer_path(l) for l in lowers)]
    if upper is not None:
        opts.append("upperdir=" + escape_layer_path(upper))
    if work is not None:
        opts.append("workdir=" + escape_layer_path(work))
    opts.extend(options)
    return ",".join(opts)


# --------------------------------------------------------------------------------------------------
# pyunionfs as a subprocess
# --------------------------------------------------------------------------------------------------


class Daemon:
    """A running `python -m unionfs -f` process and its mount point."""

    def __init__(self, proc: subprocess.Popen, mnt: str, log_path: str, argv: list):
        self.proc = proc
        self.mnt = mnt
        self.log_path = log_path
        self.argv = argv
        self.watchdog_fired = False

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    @property
    def mounted(self) -> bool:
        return is_mountpoint(self.mnt)

    def __repr__(self):
        return f"<Daemon pid={self.proc.pid} mnt={self.mnt!r}>"


def _daemon_log_problems(text: str) -> list:
    return [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line or line.startswith("ERROR ")]


def _wait_mounted(mnt: str, proc: subprocess.Popen, timeout: float, before) -> bool:
    return lifecycle.wait_for_mount(mnt, proc, timeout, before=before) is not None


_stop_process = lifecycle.reap


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):
        exc.add_note(note)


@contextlib.contextmanager
def mount_pyunionfs(
    mnt,
    lowers,
    upper=None,
    work=None,
    options: Sequence[str] = (),
    timeout: float = 20,
    *,
    expect_errors: bool = False,
    check_exit: bool = True,
    watchdog: float = 150,
    extra_args: Sequence[str] = (),
    env: Optional[dict] = None,
) -> Iterator[Daemon]:
    """Mount pyunionfs (`python -m unionfs -f -o ... MNT`) for the duration of the block.

    Yields a `Daemon`. On exit: unmounts (fusermount3 -u, then -uz), waits for the daemon (SIGTERM,
    then SIGKILL after `timeout`), and raises AssertionError if the daemon log shows a traceback or
    an ` ERROR ` line (unless `expect_errors`), or if the daemon did not exit with status 0 (unless
    `check_exit=False`). `watchdog` seconds after mounting, a still-mounted daemon is killed so that
    a hung mount can't hang the test run.
    """
    mnt = _abs(mnt)
    argv = [
        sys.executable,
        "-m",
        "unionfs",
        "-f",
        *extra_args,
        "-o",
        overlay_options(lowers, upper, work, options),
        mnt,
    ]
    fd, log_path = tempfile.mkstemp(prefix="pyunionfs-", suffix=".log")
    proc = None
    daemon = None
    timer = None
    try:
        before = lifecycle.mounts_at(mnt)
        with os.fdopen(fd, "wb") as logf:
            proc = lifecycle.start_daemon(argv, logf, env=env)
        daemon = Daemon(proc, mnt, log_path, argv)
        if not _wait_mounted(mnt, proc, timeout, before):
            rc = proc.poll()
            state = f"exited with status {rc}" if rc is not None else f"not mounted after {timeout}s"
            raise RuntimeError(
                f"pyunionfs failed to mount ({state}): {' '.join(argv)}\n--- daemon log ---\n{daemon.log_text()}"
            )

        def fire():
            if proc.poll() is None:
                daemon.watchdog_fired = True
                with contextlib.suppress(OSError):
                    proc.kill()

        timer = threading.Timer(watchdog, fire)
        timer.daemon = True
        timer.start()
    except BaseException:
        if proc is not None:
            unmount(mnt)
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.unlink(log_path)
        raise

    failing = False
    try:
        yield daemon
    except BaseException as exc:
        failing = True
        _add_note(exc, f"--- pyunionfs daemon log ({daemon.proc.pid}) ---\n{daemon.log_text()}")
        raise
    finally:
        timer.cancel()
        problems = []
        unmount(mnt)
        if is_mountpoint(mnt):
            problems.append(f"{mnt} is still mounted after fusermount3 -u / -uz")
        complaint = _stop_process(proc, timeout)
        if complaint:
            problems.append(complaint)
        if daemon.watchdog_fired:
            problems.append(f"watchdog killed the daemon after {watchdog}s (hung mount?)")
        elif check_exit and not complaint and proc.returncode != 0:
            problems.append(f"daemon exited with status {proc.returncode} (expected 0)")
        text = daemon.log_text()
        if not expect_errors:
            bad = _daemon_log_problems(text)
            if bad:
                problems.append("daemon log has errors: " + "; ".join(bad[:5]))
        with contextlib.suppress(OSError):
            os.unlink(log_path)
        if problems and not failing:
            raise AssertionError("\n".join(problems) + f"\n--- daemon log ---\n{text}")


# --------------------------------------------------------------------------------------------------
# Kernel overlayfs
# --------------------------------------------------------------------------------------------------


class KernelMount:
    def __init__(self, mnt: str, argv: list):
        self.mnt = mnt
        self.argv = argv

    def log_text(self) -> str:
        return ""


@contextlib.contextmanager
def mount_kernel_overlay(mnt, lowers, upper=None, work=None, options: Sequence[str] = ()) -> Iterator[KernelMount]:
    """Mount kernel overlayfs for the block; read-only when `upper` is None.

    The kernel refuses a read-only overlay with a single lower ("at least 2 lowerdir are needed while
    upperdir nonexistent"), so an empty bottom lower is added in that case; it changes nothing visible.
    """
    mnt = _abs(mnt)
    if isinstance(lowers, (str, os.PathLike)):
        lowers = [lowers]
    lowers = [os.path.abspath(os.fspath(l)) for l in lowers]
    upper = os.path.abspath(os.fspath(upper)) if upper is not None else None
    work = os.path.abspath(os.fspath(work)) if work is not None else None
    extra_empty = None
    if upper is None and len(lowers) == 1:
        extra_empty = tempfile.mkdtemp(prefix="unionfs-empty-lower.")
        lowers = lowers + [extra_empty]
    argv = ["mount", "-t", "overlay", "overlay", "-o", overlay_options(lowers, upper, work, options), mnt]
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            raise RuntimeError(f"kernel overlay mount failed: {' '.join(argv)}\n{res.stderr}{res.stdout}")
        try:
            yield KernelMount(mnt, argv)
        finally:
            unmount(mnt, fuse=False)
            if is_mountpoint(mnt):
                raise AssertionError(f"kernel overlay still mounted at {mnt}")
    finally:
        if extra_empty:
            shutil.rmtree(extra_empty, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# fuse-overlayfs
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def mount_fuse_overlayfs(
    mnt, lowers, upper=None, work=None, options: Sequence[str] = (), timeout: float = 20
) -> Iterator[str]:
    """Mount the peer, fuse-overlayfs (`fuse-overlayfs -f -o ...`), for the block; unmounts in finally.
    Raises RuntimeError when it is not installed or does not mount."""
    exe = shutil.which("fuse-overlayfs")
    if exe is None:
        raise RuntimeError("fuse-overlayfs is not installed")
    mnt = _abs(mnt)
    before = lifecycle.mounts_at(mnt)
    proc = lifecycle.start_daemon(
        [exe, "-f", "-o", overlay_options(lowers, upper, work, options), mnt], subprocess.PIPE
    )
    try:
        if not _wait_mounted(mnt, proc, timeout, before):
            raise RuntimeError(f"fuse-overlayfs did not mount {mnt}: {proc.stdout.read1(4096)!r}")
        yield mnt
    finally:
        try:
            if is_mountpoint(mnt):
                unmount(mnt, fuse=True)
        finally:
            _stop_process(proc, timeout)
            proc.stdout.close()


def on_kernel_and_pyunionfs(
    root: Path, layers, steps, options: Sequence[str] = (), *, kernel_options: Sequence[str] = (), mountpoint=None
) -> dict:
    """Make the layers twice (`layers(dir)` -> (lower, upper, work), under root/kernel and
    root/pyunionfs), mount each copy (a kernel overlay with *kernel_options*; pyunionfs with *options*)
    at dir/mnt, or both in turn at *mountpoint* (for clients that write the mount's path into what they
    leave), and run `steps(mnt, upper)` on it: {"kernel": (result, upper), "pyunionfs": (result,
    upper)}. Skips the test where the kernel cannot mount an overlay; the kernel's work dir is removed
    afterwards (it holds a root-only work/work)."""
    reason = kernel_overlay_skip_reason()
    if reason:
        pytest.skip(reason)
    out = {}
    for side in ("kernel", "pyunionfs"):
        lower, upper, work = layers(root / side)
        mnt = Path(mountpoint) if mountpoint is not None else root / side / "mnt"
        mnt.mkdir(exist_ok=True)
        if side == "kernel":
            cm = mount_kernel_overlay(mnt, [lower], upper, work, kernel_options)
        else:
            cm = mount_pyunionfs(mnt, [lower], upper, work, options)
        with cm:
            out[side] = (steps(mnt, upper), upper)
    shutil.rmtree(root / "kernel" / "work", ignore_errors=True)
    return out
