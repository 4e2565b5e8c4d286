"""One FUSE mount's life as a child process: start the daemon, wait for its mount, unmount it, reap it.

Shared by `unionfs.embed.api.UnionMount`, the pytest plugin (through it), the tests' mount helpers and
the benchmark, for pyunionfs and for fuse-overlayfs alike. Nothing here stats a mount point: a hung FUSE
mount would block the caller. Mounts are found in /proc/self/mountinfo (parsed by
`unionfs.engine.layermounts`, the project's one parser), and a wait for a mount sleeps in poll(2) on
that file, which wakes on every change of the mount table (POLLPRI), and on the daemon's pidfd, which
wakes when the daemon exits; so a mount is seen the moment it appears and a daemon that fails is not
waited for.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from typing import Iterable, Optional, Sequence

__all__ = [
    "FUSERMOUNT",
    "real_mountpoint",
    "mount_table",
    "mounts_at",
    "start_daemon",
    "wait_for_mount",
    "unmount",
    "covered",
    "reap",
]

FUSERMOUNT = "fusermount3"
MOUNTINFO = "/proc/self/mountinfo"


def _layermounts():
    # Imported on first use: importing the engine's subpackage loads the whole engine (~20 ms), which the
    # pytest plugin, loaded by every pytest run where unionfs is installed, should not cost.
    from ..engine import layermounts

    return layermounts


def real_mountpoint(path) -> str:
    """*path* as the mount table writes it: absolute, its parent resolved; the mount point itself is
    not resolved (that would stat it)."""
    p = os.path.abspath(os.fsdecode(os.fspath(path)))
    return os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))


def mount_table() -> list:
    """This process's mounts, as `unionfs.engine.layermounts.MountInfo` entries (bytes fields)."""
    return _layermounts().read_mountinfo()


def mounts_at(path, table: Optional[list] = None) -> dict:
    """{mount id: fstype (str)} of the mounts whose mount point is *path* (already a real path)."""
    want = os.fsencode(path)
    entries = mount_table() if table is None else table
    return {e.mount_id: os.fsdecode(e.fstype) for e in entries if e.mountpoint == want}


def start_daemon(argv: Sequence[str], stdout, *, env: Optional[dict] = None) -> subprocess.Popen:
    """Run *argv* (a daemon in the foreground) in its own session, so that a Ctrl-C at the terminal
    reaches the caller, not the daemon; stdin is /dev/null, stdout and stderr both go to *stdout* (a
    file, a descriptor or subprocess.PIPE). Raises OSError when it cannot be started."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        close_fds=True,
    )


def _new_mount(path: str, before: Iterable[int], fstype_prefix: str) -> Optional[int]:
    new = [i for i, t in mounts_at(path).items() if i not in before and t.startswith(fstype_prefix)]
    return max(new) if new else None


def wait_for_mount(
    path, proc: subprocess.Popen, timeout: float, *, before: Iterable[int] = (), fstype_prefix: str = "fuse"
) -> Optional[int]:
    """Wait until a mount not in *before* (mount ids) whose type starts with *fstype_prefix* appears at
    *path* (a real path, see real_mountpoint); return its mount id. None when *proc* exited without
    mounting, or *timeout* seconds passed (the caller tells which by proc.poll()).

    Sleeps in poll(2) on /proc/self/mountinfo (POLLPRI: the mount table changed) and on the daemon's
    pidfd (readable once it exited); where there is no pidfd (Linux < 5.3) the daemon is looked at
    every 50 ms.
    """
    before = set(before)
    deadline = time.monotonic() + timeout
    # Opened before the first look: a change after it is then reported by the first poll().
    table_fd = os.open(MOUNTINFO, os.O_RDONLY | os.O_CLOEXEC)
    pidfd = -1
    try:
        poller = select.poll()
        poller.register(table_fd, select.POLLPRI | select.POLLERR)
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pass  # no pidfd: look at the daemon on every wake-up, at least every 50 ms
        else:
            poller.register(pidfd, select.POLLIN)
        while True:
            found = _new_mount(path, before, fstype_prefix)
            if found is not None:
                return found
            if proc.poll() is not None:
                # It may have mounted and exited at once: one last look.
                return _new_mount(path, before, fstype_prefix)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            wait = left if pidfd >= 0 else min(left, 0.05)
            poller.poll(max(1, int(wait * 1000 + 0.999)))
    finally:
        os.close(table_fd)
        if pidfd >= 0:
            os.close(pidfd)


def _gone(path: str, mount_id: Optional[int]) -> bool:
    here = mounts_at(path)
    return mount_id not in here if mount_id is not None else not here


def covered(path, mount_id: int, table: Optional[list] = None) -> bool:
    """Whether another mount sits on mount *mount_id* at *path* (a real path): an unmount by the path
    would take that one, the top one, instead."""
    want = os.fsencode(path)
    entries = mount_table() if table is None else table
    return any(e.parent_id == mount_id and e.mountpoint == want for e in entries)


def unmount(
    path,
    *,
    mount_id: Optional[int] = None,
    fuse: bool = True,
    lazy: bool = True,
    attempts: int = 1,
    retry_delay: float = 0.5,
    timeout: float = 30,
) -> bool:
    """Unmount *path* (a real path); True once it is gone (also when nothing was mounted there).

    With *mount_id*, only that mount counts: a mount below it is left alone, and while another is
    mounted over it nothing is run (a command on the path would take that one) and this returns False.
    A FUSE mount is unmounted with `fusermount3 -u`, a kernel mount with `umount`, *attempts* times
    *retry_delay* apart (a busy mount may become free). Then, if *lazy*, detached: `fusermount3 -uz`
    and, as root, `umount -l` (a FUSE mount); `umount -l` (a kernel mount).
    """
    path = os.fsdecode(path)
    plain = [FUSERMOUNT, "-u", path] if fuse else ["umount", path]
    cmds = [plain] * max(1, attempts)
    if lazy:
        if fuse:
            cmds.append([FUSERMOUNT, "-uz", path])
        if not fuse or os.geteuid() == 0:
            cmds.append(["umount", "-l", path])
    for n, cmd in enumerate(cmds):
        if _gone(path, mount_id):
            return True
        if mount_id is not None and covered(path, mount_id):
            return False
        if n and cmd is plain:
            time.sleep(retry_delay)
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            continue
    return _gone(path, mount_id)


def reap(proc: subprocess.Popen, timeout: float) -> Optional[str]:
    """Wait up to *timeout* seconds for the daemon (after its unmount it exits by itself); then SIGTERM,
    then SIGKILL. Returns None when it exited by itself, else what had to be done."""
    try:
        proc.wait(timeout=timeout)
        return None
    except subprocess.TimeoutExpired:
        pass
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
        return f"daemon still running {timeout:g} s after unmount; SIGTERM ended it"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return f"daemon still running {timeout:g} s after unmount and ignored SIGTERM; killed"
