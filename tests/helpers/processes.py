"""Finding the pyunionfs daemons a test started, and only those: other sessions' daemons run on the
same machine and are never looked at twice, let alone signalled.

A process is a test's daemon when it runs pyunionfs (`python -m unionfs ...` or the `pyunionfs` script)
and its mount point argument lies under the test's directory. A daemon that went to the background
has left its working directory for `/`; where its mount point argument was relative, the layer
directories it holds open tell instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Optional

__all__ = ["daemon_args", "mountpoint_arg", "daemons_under", "pid_alive", "wait_pids_gone", "kill_daemons_under"]


def daemon_args(argv: list) -> Optional[list]:
    """The arguments after the program if *argv* (bytes) runs pyunionfs, else None."""
    if len(argv) >= 3 and argv[1] == b"-m" and argv[2] == b"unionfs":
        return argv[3:]
    for i in (0, 1):  # the console script, run directly or by its interpreter
        if i < len(argv) and os.path.basename(argv[i]) == b"pyunionfs":
            return argv[i + 1 :]
    return None


def mountpoint_arg(args: list) -> Optional[bytes]:
    """The last positional argument of a pyunionfs command line (`-o VALUE` pairs and flags skipped)."""
    positional, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == b"-o":
            skip = True
        elif not a.startswith(b"-"):
            positional.append(a)
    return positional[-1] if positional else None


def _inside(path: bytes, root: bytes) -> bool:
    return path == root or path.startswith(root.rstrip(b"/") + b"/")


def _holds_open_under(pid: str, root: bytes) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if _inside(os.fsencode(os.readlink(f"/proc/{pid}/fd/{fd}")), root):
                return True
        except OSError:
            continue
    return False


def daemons_under(root) -> set:
    """PIDs of the pyunionfs daemons whose mount point argument is under *root*."""
    root_b = os.fsencode(os.path.realpath(root))
    pids = set()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")[:-1]
        except OSError:
            continue
        args = daemon_args(argv)
        mnt = mountpoint_arg(args) if args is not None else None
        if mnt is None:
            continue
        if not mnt.startswith(b"/"):
            try:
                cwd = os.fsencode(os.readlink(f"/proc/{d}/cwd"))
            except OSError:
                continue
            if not _inside(os.path.join(cwd, mnt), root_b) and not _holds_open_under(d, root_b):
                continue
        elif not _inside(os.path.normpath(mnt), root_b):
            continue
        pids.add(int(d))
    return pids


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_pids_gone(pids, timeout: float = 15.0) -> set:
    """Wait until none of *pids* is alive; returns those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {p for p in pids if pid_alive(p)}
        if not alive:
            return set()
        time.sleep(0.05)
    return {p for p in pids if pid_alive(p)}


def kill_daemons_under(root, timeout: float = 10.0) -> set:
    """Give the daemons under *root* *timeout* seconds to exit (a background daemon exits shortly after
    its unmount), then SIGKILL those left; returns the PIDs that had to be killed."""
    stray = wait_pids_gone(daemons_under(root), timeout)
    for p in stray:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    return stray
