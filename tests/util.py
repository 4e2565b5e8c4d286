"""Test helpers: skip reasons, real mounts (ours and the kernel's), layer builders, tree snapshots.

Everything here works on real directories and real mounts. Of the `unionfs` package only the mount
lifecycle (unionfs.embed.lifecycle: start, wait, unmount, reap; the mountinfo parser) is used, never
the union itself, so these helpers also serve the differential tests against kernel overlayfs.

Mounts are always started in a subprocess (pyfuse3 holds one FUSE session per process) and are always
unmounted in a `finally`. A watchdog kills a daemon that outlives its mount's time budget, which aborts
the FUSE connection so that a test blocked in a system call on a hung mount fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections import namedtuple
from pathlib import Path
from typing import Iterator, Optional, Sequence

from unionfs.embed import layerspec, lifecycle
from unionfs.embed.layerspec import DIR, WHITEOUT, Dir, Fifo, File, Hardlink, Symlink

__all__ = [
    "FUSE_SKIP_REASON",
    "kernel_overlay_skip_reason",
    "mount_pyunionfs",
    "mount_kernel_overlay",
    "mount_fuse_overlayfs",
    "Daemon",
    "KernelMount",
    "mounts_under",
    "is_mountpoint",
    "unmount",
    "tree_snapshot",
    "hash_tree",
    "Entry",
    "KERNEL_BOOKKEEPING_XATTRS",
    "make_layers",
    "copy_layers",
    "Layers",
    "DIR",
    "WHITEOUT",
    "File",
    "Dir",
    "Symlink",
    "Opaque",
    "Fifo",
    "Hardlink",
    "escape_layer_path",
]

FUSERMOUNT = shutil.which(lifecycle.FUSERMOUNT) or lifecycle.FUSERMOUNT


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
# Mount table
# --------------------------------------------------------------------------------------------------


MountEntry = namedtuple("MountEntry", "mountpoint fstype source options")


def mount_table() -> list:
    """/proc/self/mountinfo as MountEntry (str fields), parsed by unionfs.engine.layermounts; never
    stats a mount point, so a hung FUSE mount can't block."""
    return [
        MountEntry(os.fsdecode(e.mountpoint), os.fsdecode(e.fstype), os.fsdecode(e.source), os.fsdecode(e.options))
        for e in lifecycle.mount_table()
    ]


_abs = lifecycle.real_mountpoint  # realpath of the parent only: the mount point may be a hung FUSE mount


def is_mountpoint(path) -> bool:
    return bool(lifecycle.mounts_at(_abs(path)))


def mount_entry(path) -> Optional[MountEntry]:
    p = _abs(path)
    found = [m for m in mount_table() if m.mountpoint == p]
    return found[-1] if found else None


def mounts_under(root, fstypes: Sequence[str] = ("fuse", "overlay")) -> list:
    """Mounts at or below `root` whose type is (or starts with) one of `fstypes`."""
    r = os.path.realpath(os.fspath(root))
    return [
        m
        for m in mount_table()
        if (m.mountpoint == r or m.mountpoint.startswith(r.rstrip("/") + "/"))
        and any(m.fstype == t or m.fstype.startswith(t + ".") for t in fstypes)
    ]


def unmount(path, *, fuse: bool = True) -> None:
    """Unmount `path` if mounted: normal unmount first, then a lazy one."""
    p = _abs(path)
    m = mount_entry(p)
    if m is not None:
        lifecycle.unmount(p, fuse=fuse and m.fstype.startswith("fuse"))


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
# Tree snapshots
# --------------------------------------------------------------------------------------------------

Entry = namedtuple("Entry", "type mode uid gid size sha256 target rdev xattrs")
Entry.__doc__ = """One entry of a tree snapshot. type is one of 'f','d','l','c','b','p','s'; mode is the
permission bits (S_IMODE); size and sha256 only for regular files; target only for symlinks; rdev only for
devices (as (major, minor)); xattrs is a sorted tuple of (name, value bytes) pairs."""

# xattrs the kernel writes for its own bookkeeping (index=off, xino=off), which pyunionfs need not
# reproduce; pass as `ignore_xattrs` when comparing an upper written by the kernel with ours.
KERNEL_BOOKKEEPING_XATTRS = (
    "trusted.overlay.origin",
    "trusted.overlay.impure",
    "trusted.overlay.uuid",
    "trusted.overlay.nlink",
    "trusted.overlay.upper",
    "trusted.overlay.metacopy",
    "user.overlay.origin",
    "user.overlay.impure",
    "user.overlay.uuid",
    "user.overlay.nlink",
    "user.overlay.upper",
    "user.overlay.metacopy",
)

_TYPE_CHARS = (
    (stat.S_ISREG, "f"),
    (stat.S_ISDIR, "d"),
    (stat.S_ISLNK, "l"),
    (stat.S_ISCHR, "c"),
    (stat.S_ISBLK, "b"),
    (stat.S_ISFIFO, "p"),
    (stat.S_ISSOCK, "s"),
)


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


def _type_char(mode: int) -> str:
    for test, ch in _TYPE_CHARS:
        if test(mode):
            return ch
    return "?"


def _xattrs(path: str, ignore: Sequence[str]) -> tuple:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise
    out = []
    for name in sorted(names):
        if any(name == i or (i.endswith(".") and name.startswith(i)) for i in ignore):
            continue
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                continue
            raise
    return tuple(out)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_NOATIME if os.geteuid() == 0 else 0)
    fd = os.open(path, flags)
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def entry_of(path, *, with_xattrs: bool = True, ignore_xattrs: Sequence[str] = ()) -> Entry:
    path = os.fspath(path)
    st = os.lstat(path)
    t = _type_char(st.st_mode)
    return Entry(
        type=t,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if t == "f" else None,
        sha256=_sha256(path) if t == "f" else None,
        target=os.readlink(path) if t == "l" else None,
        rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if t in "cb" else None,
        xattrs=_xattrs(path, ignore_xattrs) if with_xattrs else (),
    )


def tree_snapshot(
    root, *, with_xattrs: bool = True, ignore_xattrs: Sequence[str] = (), ignore: Sequence[str] = ()
) -> dict:
    """Map each relative path under `root` ('.' for root itself) to an `Entry`; symlinks not followed.

    `ignore_xattrs`: xattr names to leave out (a name ending in '.' is a prefix).
    `ignore`: relative paths to leave out together with everything below them (e.g. 'work' in a workdir).
    """
    root = os.fspath(root)
    snap = {".": entry_of(root, with_xattrs=with_xattrs, ignore_xattrs=ignore_xattrs)}
    ignore = set(ignore)

    def walk(dirpath: str, rel: str):
        with os.scandir(dirpath) as it:
            names = sorted(e.name for e in it)
        for name in names:
            r = name if not rel else rel + "/" + name
            if r in ignore:
                continue
            p = os.path.join(dirpath, name)
            e = entry_of(p, with_xattrs=with_xattrs, ignore_xattrs=ignore_xattrs)
            snap[r] = e
            if e.type == "d":
                walk(p, r)

    walk(root, "")
    return snap


def hash_tree(root, **kw) -> str:
    """One sha256 over `tree_snapshot(root)`: equal hashes mean equal trees (content, metadata, xattrs)."""
    h = hashlib.sha256()
    for rel, e in sorted(tree_snapshot(root, **kw).items()):
        h.update(repr((rel, tuple(e))).encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def diff_snapshots(before: dict, after: dict) -> list:
    """Human-readable differences between two snapshots (for assertion messages)."""
    out = []
    for k in sorted(set(before) | set(after)):
        a, b = before.get(k), after.get(k)
        if a != b:
            out.append(f"{k}: {a} -> {b}")
    return out


# --------------------------------------------------------------------------------------------------
# Layer builder
# --------------------------------------------------------------------------------------------------


class Opaque(layerspec.Opaque):
    """An opaque directory; here `trusted.overlay.opaque` unless user=True (whoever runs the tests)."""

    def __init__(self, *, user: bool = False, **kw):
        super().__init__(user=user, **kw)


class Layers:
    """Layer directories for one union: `lowers` (topmost first), `upper`, `work`, `mnt`."""

    def __init__(self, root: Path, lowers: list, upper: Optional[Path], work: Optional[Path], mnt: Path):
        self.root = Path(root)
        self.lowers = [Path(l) for l in lowers]
        self.upper = Path(upper) if upper is not None else None
        self.work = Path(work) if work is not None else None
        self.mnt = Path(mnt)

    @property
    def lower(self) -> Path:
        return self.lowers[0]

    def dirs(self) -> list:
        """Every layer directory (lowers, upper, work) that exists."""
        return [d for d in [*self.lowers, self.upper, self.work] if d is not None]

    def lower_snapshots(self, **kw) -> list:
        return [tree_snapshot(l, **kw) for l in self.lowers]

    def lower_hashes(self) -> list:
        return [hash_tree(l) for l in self.lowers]

    def mount_args(self) -> tuple:
        return (self.mnt, self.lowers, self.upper, self.work)

    def __repr__(self):
        return f"Layers(lowers={self.lowers}, upper={self.upper}, work={self.work}, mnt={self.mnt})"


def make_layers(tmp_path, spec: dict, *, readonly: bool = False) -> Layers:
    """Build layer directories under `tmp_path` from `spec` (the layer-description language of
    unionfs.embed.layerspec: {"lower0": {...}, "lower1": {...}, "upper": {...}}, lower0 on top).
    A union is read-only (no upper, no work) if `readonly` or spec["upper"] is None.
    Returns `Layers` with `lowers`, `upper`, `work` and an empty `mnt` directory.
    """
    root = Path(tmp_path)
    lowers, upper, work = layerspec.build_layers(root, spec, readonly=readonly)
    mnt = root / "mnt"
    mnt.mkdir()
    return Layers(root, lowers, upper, work, mnt)


def copy_layers(layers: Layers, dest_tmp) -> Layers:
    """An exact duplicate of `layers` under `dest_tmp` (cp -a: whiteouts, xattrs, owners, hard links)."""
    dest = Path(dest_tmp)
    dest.mkdir(parents=True, exist_ok=True)

    def cp(src: Optional[Path]) -> Optional[Path]:
        if src is None:
            return None
        target = dest / src.name
        if target.exists():
            raise FileExistsError(target)
        subprocess.run(
            ["cp", "-a", "--", str(src), str(target)],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
        )
        return target

    lowers = [cp(l) for l in layers.lowers]
    upper = cp(layers.upper)
    work = cp(layers.work)
    mnt = dest / "mnt"
    mnt.mkdir()
    return Layers(dest, lowers, upper, work, mnt)
