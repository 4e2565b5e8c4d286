"""The overlay's on-disk markers: whiteouts (char 0/0 devices) and opaque directories.

Both the kernel's xattr namespaces are read (`trusted.overlay.*` and `user.overlay.*`); the one chosen at
mount time is written.
"""
import os
import stat

TRUSTED_PREFIX = b"trusted.overlay."
USER_PREFIX = b"user.overlay."
OPAQUE = b"opaque"


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def make_whiteout(dir_fd: int, name: bytes) -> None:
    """A whiteout is `c--------- 0, 0`, as the kernel makes it."""
    os.mknod(name, stat.S_IFCHR | 0o000, 0, dir_fd=dir_fd)


def proc_path(fd: int, name: bytes = b"") -> bytes:
    """A path that reaches an entry through an already resolved fd (no symlink in between).

    With *name* the final component is looked up in the directory fd; callers pass
    follow_symlinks=False so that a symlink there is not followed.
    """
    base = b"/proc/self/fd/%d" % fd
    return base + b"/" + name if name else base


def is_opaque_dir(dir_path_fd: int) -> bool:
    """True if the directory (an O_PATH fd) carries an opaque marker in either namespace."""
    path = proc_path(dir_path_fd)
    for prefix in (TRUSTED_PREFIX, USER_PREFIX):
        try:
            if os.getxattr(path, prefix + OPAQUE) == b"y":
                return True
        except OSError:
            pass
    return False


def is_opaque_entry(dir_fd: int, name: bytes) -> bool:
    """True if the directory *name* in dir_fd carries an opaque marker (no symlink followed)."""
    path = proc_path(dir_fd, name)
    for prefix in (TRUSTED_PREFIX, USER_PREFIX):
        try:
            if os.getxattr(path, prefix + OPAQUE, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return False


def set_opaque(dir_path_fd: int, prefix: bytes) -> None:
    os.setxattr(proc_path(dir_path_fd), prefix + OPAQUE, b"y")
