"""Mounting and unmounting a FUSE filesystem without libfuse; the result is the open /dev/fuse fd.

As root (also root of a user namespace that owns its mount namespace): open /dev/fuse and mount(2) with
`fd=N,rootmode=...,user_id=U,group_id=G`. As an ordinary user: the setuid `fusermount3` mounts and
hands the device fd back over a socketpair (SCM_RIGHTS), its end named by the _FUSE_COMMFD variable.
Failures raise MountError with one line that says what went wrong.

`mount_device` tells which filesystem a path shows without asking the daemon, so that a mount is known
by its device, not by a path that may later show another filesystem.

Imports only `os` and `stat` at load; unionfs.libc (mount(2), umount2(2), statx(2)) and socket
(fusermount3) are loaded when a call needs them: a mount program execs this before its first answer.
"""

import os
import stat

# The one MountError of the package (a RuntimeError; str() is one line saying why)
from ..errors import MountError

__all__ = ["MountError", "open_device", "mount", "unmount", "parse_options", "mount_device"]

DEVICE = "/dev/fuse"
FUSERMOUNT = "fusermount3"

# mount(2) flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_NOSYMFOLLOW = 256
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 2

# option -> (flags to set, flags to clear)
_FLAG_OPTIONS = {
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0),
    "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0),
    "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0),
    "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
    "noatime": (MS_NOATIME, 0),
    "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0),
    "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0),
    "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0),
    "nostrictatime": (0, MS_STRICTATIME),
    "nosymfollow": (MS_NOSYMFOLLOW, 0),
    "symfollow": (0, MS_NOSYMFOLLOW),
    "lazytime": (MS_LAZYTIME, 0),
    "nolazytime": (0, MS_LAZYTIME),
}
# what the kernel's fuse takes in the mount data besides fd/rootmode/user_id/group_id
_KERNEL_OPTIONS = ("allow_other", "default_permissions")
_KERNEL_VALUE_OPTIONS = ("max_read", "blksize")


def open_device() -> int:
    """/dev/fuse opened O_RDWR|O_CLOEXEC."""
    try:
        return os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        hint = " (is the fuse module loaded? is /dev/fuse in this container?)" if exc.errno == 2 else ""
        raise MountError(f"cannot open {DEVICE}: {exc.strerror}{hint}") from None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,")


def parse_options(options) -> tuple:
    """(mount flags, [kernel data options], [the options as fusermount3 takes them], {"fsname": ...,
    "subtype": ...} where given) from an iterable of "name" / "name=value" strings. Unknown names
    (allow_root among them: it needs a filter in the session) raise MountError."""
    flags = MS_NOSUID | MS_NODEV  # libfuse's defaults; "suid"/"dev" clear them
    data = []
    passed = []
    names = {}
    for opt in options:
        name, _, value = opt.partition("=")
        if name in ("fsname", "subtype") and value:
            names[name] = value
        elif name in _FLAG_OPTIONS:
            on, off = _FLAG_OPTIONS[name]
            flags = (flags | on) & ~off
            passed.append(opt)
        elif name in _KERNEL_OPTIONS and not value:
            data.append(name)
            passed.append(name)
        elif name in _KERNEL_VALUE_OPTIONS and value.isdigit():
            data.append(opt)
            passed.append(opt)
        else:
            raise MountError(f"unknown or malformed mount option {opt!r}")
    return flags, data, passed, names


def _check_mountpoint(mountpoint: str) -> int:
    try:
        st = os.stat(mountpoint)
    except OSError as exc:
        raise MountError(f"mountpoint {mountpoint}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    return stat.S_IFMT(st.st_mode)


def _mount2(source: bytes, target: bytes, fstype: bytes, flags: int, data: bytes) -> None:
    from .. import libc

    c = libc.c_char_p
    if libc.function("mount", (c, c, c, libc.c_ulong, c))(source, target, fstype, flags, data) != 0:
        raise libc.error()


def _umount2(target: bytes, flags: int) -> None:
    from .. import libc

    if libc.function("umount2", (libc.c_char_p, libc.c_int))(target, flags) != 0:
        raise libc.error()


def mount(mountpoint, *, fsname: str = "fuse", subtype: str = "", options=(), method: str = "auto") -> int:
    """Mount a FUSE filesystem on *mountpoint*; returns the /dev/fuse fd to serve it on (close-on-exec).

    *options*: one option a string, unescaped: mount flags (ro, nosuid, noatime, dev, suid, ...), the
    kernel's allow_other, default_permissions, max_read=N, and fsname=/subtype= (which win over the
    arguments). *method*: "syscall" (mount(2): root, or root of a user namespace), "fusermount" (the
    setuid fusermount3), or "auto" (mount(2) when the effective uid is 0).
    """
    mountpoint = os.fspath(mountpoint)
    flags, data, passed, names = parse_options(options)
    fsname = names.get("fsname", fsname)
    subtype = names.get("subtype", subtype)
    rootmode = _check_mountpoint(mountpoint)
    if method == "auto":
        method = "syscall" if os.geteuid() == 0 else "fusermount"
    if method == "syscall":
        return _mount_syscall(mountpoint, fsname, subtype, flags, data, rootmode)
    if method == "fusermount":
        opts = [f"fsname={_escape(fsname)}"] + ([f"subtype={_escape(subtype)}"] if subtype else []) + passed
        return _mount_fusermount(mountpoint, ",".join(opts))
    raise ValueError(f"unknown mount method {method!r}")


def _mount_syscall(mountpoint, fsname, subtype, flags, data, rootmode) -> int:
    fd = open_device()
    try:
        opts = f"fd={fd},rootmode={rootmode:o},user_id={os.geteuid()},group_id={os.getegid()}"
        if data:
            opts += "," + ",".join(data)
        fstype = "fuse." + subtype if subtype else "fuse"
        try:
            _mount2(fsname.encode(), os.fsencode(mountpoint), fstype.encode(), flags, opts.encode())
        except OSError as exc:
            hint = " (needs root or CAP_SYS_ADMIN in the mount's user namespace)" if exc.errno == 1 else ""
            raise MountError(f"mount {mountpoint}: {exc.strerror}{hint}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _spawn_fusermount(args, extra_env=None, pass_fd=None):
    """Run fusermount3 with *args*; returns (pid, read end of its stderr)."""
    r, w = os.pipe()
    env = dict(os.environ)
    if extra_env:
        env.update(extra_env)
    actions = [(os.POSIX_SPAWN_DUP2, w, 2)]
    try:
        if pass_fd is not None:
            os.set_inheritable(pass_fd, True)
        pid = os.posix_spawnp(FUSERMOUNT, [FUSERMOUNT] + args, env, file_actions=actions)
    except FileNotFoundError:
        os.close(r)
        raise MountError(f"{FUSERMOUNT} not found on PATH (install fuse3)") from None
    finally:
        os.close(w)
    return pid, r


def _finish_fusermount(pid, err_fd) -> tuple:
    """Wait for fusermount3; returns (exit status, its last stderr line)."""
    chunks = []
    with open(err_fd, "rb", closefd=True) as f:
        chunks.append(f.read())
    _, status = os.waitpid(pid, 0)
    lines = b"".join(chunks).decode(errors="replace").strip().splitlines()
    return os.waitstatus_to_exitcode(status), (lines[-1] if lines else "")


def _mount_fusermount(mountpoint, opts) -> int:
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid, err_fd = _spawn_fusermount(
            ["-o", opts, "--", mountpoint], {"_FUSE_COMMFD": str(theirs.fileno())}, pass_fd=theirs.fileno()
        )
        theirs.close()
        try:
            _, fds, _, _ = socket.recv_fds(ours, 1, 1, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            fds = []
        code, message = _finish_fusermount(pid, err_fd)
    finally:
        ours.close()
        theirs.close()
    if not fds:
        raise MountError(message or f"{FUSERMOUNT} failed (exit status {code}) mounting {mountpoint}")
    for extra in fds[1:]:
        os.close(extra)
    return fds[0]


def unmount(mountpoint, *, method: str = "auto", lazy: bool = True) -> None:
    """Unmount *mountpoint*: umount2(2) (MNT_DETACH when *lazy*) as root, `fusermount3 -u [-z]` otherwise."""
    mountpoint = os.fspath(mountpoint)
    if method == "auto":
        method = "syscall" if os.geteuid() == 0 else "fusermount"
    if method == "syscall":
        try:
            _umount2(os.fsencode(mountpoint), MNT_DETACH if lazy else 0)
        except OSError as exc:
            raise MountError(f"unmount {mountpoint}: {exc.strerror}") from None
        return
    if method != "fusermount":
        raise ValueError(f"unknown unmount method {method!r}")
    pid, err_fd = _spawn_fusermount(["-u"] + (["-z"] if lazy else []) + ["--", mountpoint])
    code, message = _finish_fusermount(pid, err_fd)
    if code != 0:
        raise MountError(message or f"{FUSERMOUNT} -u {mountpoint} failed (exit status {code})")


_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_STATX_DONT_SYNC = 0x4000


def mount_device(path) -> tuple:
    """(major, minor) of the filesystem *path* shows, from statx(2) with AT_STATX_DONT_SYNC: FUSE answers
    it from what the kernel holds and sends no GETATTR, which the daemon asking could not answer (a
    plain stat of its own mount, before INIT's answer or while it waits, would hang it). The mount table
    would do too, but reading it is a millisecond where there are hundreds of mounts. OSError where
    statx fails."""
    import sys

    from .. import libc  # loaded already where a mount was made with it

    statx = libc.function("statx", (libc.c_int, libc.c_char_p, libc.c_int, libc.c_uint, libc.c_char_p))
    if statx is None:
        import errno

        raise OSError(errno.ENOSYS, "no statx in this C library")
    buf = libc.buffer(256)  # struct statx
    if statx(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW | _AT_STATX_DONT_SYNC, 0, buf) != 0:
        raise libc.error(path)
    raw = buf.raw
    return int.from_bytes(raw[136:140], sys.byteorder), int.from_bytes(raw[140:144], sys.byteorder)  # stx_dev
