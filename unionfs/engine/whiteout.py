"""The overlay's on-disk markers: whiteouts (char 0/0 devices, or OCI `.wh.` files), opaque and redirect
markers on directories.

Opaque markers are read in the kernel's two xattr namespaces (`trusted.overlay.*`, `user.overlay.*`) and
in fuse-overlayfs's `user.fuseoverlayfs.*` in the lower layers; the kernel namespace chosen at mount time
is written, and in the upper only it (and fuse-overlayfs's) is read: the other kernel namespace is an
ordinary one through the mount (as on the kernel), so whatever is set there through the mount is no marker.
"""

import errno
import os
import stat

from . import _sys
from .layers import O_PATH_DIR, Layer, lstat_at

TRUSTED_PREFIX = b"trusted.overlay."
USER_PREFIX = b"user.overlay."
FUSEOVERLAYFS_PREFIX = b"user.fuseoverlayfs."  # fuse-overlayfs's own, where it could not write trusted.*
OPAQUE_PREFIXES = (TRUSTED_PREFIX, USER_PREFIX, FUSEOVERLAYFS_PREFIX)  # opaque markers read in each
OPAQUE = b"opaque"
REDIRECT = b"redirect"
# The kernel's redirect_dir values: "on" records redirects when lower directories move; all but
# "nofollow" follow them ("off" is the kernel's default, with redirect_always_follow=Y, and ours).
REDIRECT_MODES = ("off", "follow", "on", "nofollow")
REDIRECT_MAX = 256  # the kernel's default redirect_max: longer redirects are not made (EXDEV)
# The OCI (AUFS) forms: `.wh.NAME` hides NAME, `.wh..wh..opq` makes its directory opaque; other
# `.wh..wh.*` names are AUFS metadata.
WH_PREFIX = b".wh."
NAME_MAX = 255  # a name's longest, in bytes, on Linux filesystems
WH_OPAQUE = b".wh..wh..opq"
WH_META_PREFIX = b".wh..wh."


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


def set_opaque(dir_path_fd: int, prefix: bytes) -> None:
    os.setxattr(proc_path(dir_path_fd), prefix + OPAQUE, b"y")


def read_dir_markers(path: bytes, prefix: bytes, follow: bool = False, opaque_prefixes=OPAQUE_PREFIXES):
    """(opaque, redirect) of the directory at *path*: a /proc path, either a directory fd's name
    (follow=False, so a symlink there is not followed) or an fd's own magic link (follow=True).

    One listxattr answers for the common directory that carries neither, instead of a getxattr per
    marker. Opaque is read in both namespaces, a redirect only in *prefix*'s (the one this mount uses,
    as the kernel). A redirect that is not one the kernel would accept is ignored (None).
    """
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError:
        return False, None
    if not names:
        return False, None
    opaque, redirect = False, None
    for item in names:
        name = os.fsencode(item)
        if name.endswith(b"." + OPAQUE) and name[: -len(OPAQUE)] in opaque_prefixes:
            try:
                opaque = opaque or os.getxattr(path, name, follow_symlinks=follow) == b"y"
            except OSError:
                pass
        elif name == prefix + REDIRECT:
            try:
                redirect = valid_redirect(os.getxattr(path, name, follow_symlinks=follow))
            except OSError:
                pass
    return opaque, redirect


def valid_redirect(value: bytes):
    """*value* if it is a redirect the kernel follows: "/a/b" (from the layer root) or "name" (in the
    same parent); None for anything else (empty components, ".", "..", NUL bytes, a bare "/")."""
    if not value or b"\0" in value:
        return None
    parts = value[1:].split(b"/") if value.startswith(b"/") else [value]
    if not value.startswith(b"/") and b"/" in value:
        return None
    if any(part in (b"", b".", b"..") or len(part) > 255 for part in parts):
        return None
    return value


class Markers:
    """The marker forms one union reads and writes: the xattr namespace of the opaque and redirect
    markers it writes (*prefix*), whether `.wh.` files are markers in every layer (*read_wh_files*), and
    whether it writes them because it cannot make char 0/0 whiteouts (*write_wh_files*)."""

    def __init__(self, prefix: bytes, read_wh_files: bool, write_wh_files: bool):
        self.prefix = prefix
        self.upper_opaque = (prefix, FUSEOVERLAYFS_PREFIX)  # the upper's other kernel namespace is anyone's
        self.read_wh_files = read_wh_files or write_wh_files
        self.write_wh_files = write_wh_files

    def of_dir(self, layer: Layer, rel: bytes):
        """(opaque, redirect) of the directory at rel in layer."""
        try:
            fd = layer.open(rel, O_PATH_DIR)
        except OSError:
            return False, None
        try:
            opaque_prefixes = self.upper_opaque if layer.writable else OPAQUE_PREFIXES
            opaque, redirect = read_dir_markers(proc_path(fd), self.prefix, True, opaque_prefixes)
            return opaque or (self.read_wh_files and _has_opq_file(fd)), redirect
        finally:
            os.close(fd)

    def of_entry(self, dir_fd: int, name: bytes, upper: bool):
        """(opaque, redirect) of the directory *name* in dir_fd (a directory of the upper, or a lower's)."""
        opaque_prefixes = self.upper_opaque if upper else OPAQUE_PREFIXES
        opaque, redirect = read_dir_markers(proc_path(dir_fd, name), self.prefix, False, opaque_prefixes)
        return opaque or (self.read_wh_files and _opq_file_in(dir_fd, name)), redirect

    def whiteout_at(self, parent_dfd: int, name: bytes):
        """The kind of whiteout a directory holds at name: "dev" (char 0/0), "file" (.wh.NAME) or None.

        A plain fstatat, not lstat_at: a mount point there shows its mounted root, which is never a
        whiteout, and the caller's next step (an O_EXCL create, a rename) then fails on the name as it
        would anyway; one syscall where lstat_at takes three, on every create.
        """
        try:
            if is_whiteout(os.stat(name, dir_fd=parent_dfd, follow_symlinks=False)):
                return "dev"
            return None
        except FileNotFoundError:
            pass
        if self.read_wh_files:
            try:
                os.stat(WH_PREFIX + name, dir_fd=parent_dfd, follow_symlinks=False)
                return "file"
            except OSError:
                pass
        return None

    def make_whiteout(self, dir_fd: int, name: bytes) -> None:
        """A whiteout for name in dir_fd: char 0/0, or a .wh.NAME file where mknod is refused."""
        if self.write_wh_files:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(WH_PREFIX + name, flags, 0, dir_fd=dir_fd))
        else:
            make_whiteout(dir_fd, name)

    def set_opaque(self, dir_path_fd: int) -> None:
        """Mark a directory opaque: the xattr, or a .wh..wh..opq file where xattrs are refused."""
        try:
            set_opaque(dir_path_fd, self.prefix)
        except OSError as exc:
            if not (self.read_wh_files and exc.errno in (errno.ENOTSUP, errno.EPERM)):
                raise
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(WH_OPAQUE, flags, 0, dir_fd=dir_path_fd))

    def drop_whiteout_file(self, dir_fd: int, name: bytes) -> None:
        """Remove a .wh.NAME file (when there is one): the name is taken again."""
        if len(WH_PREFIX) + len(name) > NAME_MAX:
            return  # such a .wh. file cannot exist (pjdfstest renames to 255-byte names)
        try:
            os.unlink(WH_PREFIX + name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass


def is_whiteout_entry(dir_fd: int, entry: os.DirEntry) -> bool:
    # d_type answers for the common kinds without a stat; only special files need one.
    if entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False) or entry.is_symlink():
        return False
    try:
        return is_whiteout(lstat_at(dir_fd, os.fsencode(entry.name)))
    except OSError:
        return False


def _has_opq_file(dir_path_fd: int) -> bool:
    try:
        lstat_at(dir_path_fd, WH_OPAQUE)
        return True
    except OSError:
        return False


def _opq_file_in(dir_fd: int, name: bytes) -> bool:
    try:
        fd = _sys.openat2(dir_fd, name + b"/" + WH_OPAQUE, os.O_PATH | os.O_NOFOLLOW)
    except OSError:
        return False
    os.close(fd)
    return True
