"""The only system-call shims: openat2 (safe resolution), renameat2 (flags), fallocate (modes) and
listxattrat (a name's xattrs through its directory's fd).

Python's os module has none of them (os.posix_fallocate is mode 0 only). They are reached through
libc (unionfs.libc); where the kernel or libc lacks openat2, renameat2 or listxattrat, the callers get
OSError(ENOSYS) and fall back to slower portable code.
"""

import errno
import os

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

AT_SYMLINK_NOFOLLOW = 0x100

# openat2 (5.6) and listxattrat (6.13) have one number on every architecture (the unified table).
_UNIFIED = os.uname().machine in ("x86_64", "aarch64", "riscv64", "ppc64le", "s390x")
_SYS_OPENAT2 = 437 if _UNIFIED else None
_SYS_LISTXATTRAT = 465 if _UNIFIED else None
_have_openat2 = _SYS_OPENAT2 is not None
_have_listxattrat = _SYS_LISTXATTRAT is not None
XATTR_LIST_MAX = 65536  # the kernel's bound on a list of names


class _Libc:
    """The bindings (unionfs.libc), made at the first call: the engine opens and checks its layers
    without them."""

    def __init__(self):
        import _thread  # not threading: its import (functools, collections, ...) is ~5 ms of a mount's first lookup
        import struct

        from .. import libc

        self.libc = libc
        self.open_how = struct.Struct("=QQQ")  # struct open_how: flags, mode, resolve
        self.syscall = libc.function("syscall", restype=libc.c_long)
        self.sys_openat2 = libc.c_long(_SYS_OPENAT2 or -1)
        self.how_size = libc.c_size_t(self.open_how.size)
        self.sys_listxattrat = libc.c_long(_SYS_LISTXATTRAT or -1)
        self.names = libc.buffer(XATTR_LIST_MAX)  # one buffer, for lists that are not empty
        self.names_size = libc.c_size_t(XATTR_LIST_MAX)
        self.names_lock = _thread.allocate_lock()
        self.renameat2 = libc.function("renameat2", (libc.c_int, libc.c_char_p, libc.c_int, libc.c_char_p, libc.c_uint))
        self.fallocate = libc.function("fallocate64", (libc.c_int, libc.c_int, libc.c_int64, libc.c_int64))
        if self.fallocate is None:
            self.fallocate = libc.function("fallocate", (libc.c_int, libc.c_int, libc.c_int64, libc.c_int64))


_libc = None


def load() -> "_Libc":
    """Bind libc now (the first call of any shim does it otherwise)."""
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


def openat2(
    dirfd: int,
    path: bytes,
    flags: int,
    mode: int = 0,
    resolve: int = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
) -> int:
    """openat2(2): open *path* under *dirfd* without ever crossing a symlink or a mount point, or
    leaving dirfd. (A mount point inside a layer may be the union's own mount: stepping into it from
    the daemon's one thread would wait on itself forever. The kernel's overlay does not cross either.)"""
    global _have_openat2
    if not _have_openat2:
        raise OSError(errno.ENOSYS, "openat2 unavailable")
    c = _libc or load()
    how = c.open_how.pack(flags | os.O_CLOEXEC, mode, resolve)  # read by the kernel
    fd = c.syscall(c.sys_openat2, dirfd, path, how, c.how_size)  # a Python int passes as a C int
    if fd < 0:
        err = c.libc.get_errno()
        if err == errno.ENOSYS:
            _have_openat2 = False
        raise OSError(err, os.strerror(err), path)
    return fd


def renameat2(olddirfd: int, oldname: bytes, newdirfd: int, newname: bytes, flags: int = 0) -> None:
    """renameat2(2) with RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT."""
    if flags == 0:
        os.rename(oldname, newname, src_dir_fd=olddirfd, dst_dir_fd=newdirfd)
        return
    c = _libc or load()
    if c.renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 unavailable")
    if c.renameat2(olddirfd, oldname, newdirfd, newname, flags) != 0:
        raise c.libc.error(newname)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode flags (KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE, ...)."""
    c = _libc or load()
    if c.fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate unavailable")
    if c.fallocate(fd, mode, offset, length) != 0:
        raise c.libc.error()


def listxattrat(dirfd: int, name: bytes) -> list:
    """The xattr names (bytes) of *name* in directory *dirfd*, not following a symlink there:
    listxattrat(2), Linux 6.13. The same answer as os.listxattr of a /proc/self/fd path, without
    resolving that path (the first getxattr of a file, in process: 9.0-9.9 -> 6.1-8.5 us here).
    OSError(ENOSYS) where the kernel lacks it."""
    global _have_listxattrat
    if not _have_listxattrat:
        raise OSError(errno.ENOSYS, "listxattrat unavailable")
    c = _libc or load()
    # The size first: most files have no xattrs, and that is then the one call.
    size = c.syscall(c.sys_listxattrat, dirfd, name, AT_SYMLINK_NOFOLLOW, None, 0)
    if size > 0:
        with c.names_lock:
            size = c.syscall(c.sys_listxattrat, dirfd, name, AT_SYMLINK_NOFOLLOW, c.names, c.names_size)
            if size > 0:
                return c.names[: size - 1].split(b"\0")
    if size < 0:
        err = c.libc.get_errno()
        if err == errno.ENOSYS:
            _have_listxattrat = False
        raise OSError(err, os.strerror(err), name)
    return []
