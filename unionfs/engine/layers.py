"""A layer: one directory of the stack, reached only through its root fd.

Every path the daemon uses inside a layer is relative bytes, resolved under the root fd with openat2
(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so a symlink planted or swapped in anywhere inside a layer is
never followed and nothing outside the layer is ever reached. Without openat2 (kernels before 5.6) the
same guarantee comes from walking one component at a time with O_NOFOLLOW.

A lower layer (never changed by the daemon) keeps the O_PATH fds of the directories it last looked in
(DIR_FDS of them, oldest let go first: lookups come in bursts per directory), so that `lstat` and `open`
of a name there are one fstatat / openat with O_NOFOLLOW of a single name beneath a directory opened the
safe way, and its xattrs one l*xattr call through that fd (`reach`): no symlink can be crossed (there is
no component between). Only a mount point could be, so the
mount table is looked at first (a poll, read again when it changed: layermounts.py) and a name it knows
as a mount point takes the openat2 path, which refuses it. openat2 through ctypes, fstat and close cost
three times that, for every layer a lookup looks in and once more for its attributes: most of a cold
lookup's time.
"""

import errno
import os

from . import _sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from .layermounts import MountTable

O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_CHUNK = 3072  # well below PATH_MAX (4096), which openat2 enforces on the whole path


class ClosingFd:
    """A descriptor, opened already, that a with block closes at its end. (Not contextlib's generator:
    cheaper per use, and contextlib is one import less in a mount program's start.)"""

    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


class Layer:
    """One directory of the stack. Index 0 is the top (the upper when there is one)."""

    def __init__(self, index: int, path: str, writable: bool):
        self.index = index
        self.path = path
        self.writable = writable
        self.root_fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(self.root_fd)
        self.dev = st.st_dev
        self.root_ino = st.st_ino
        self.record = None  # the ownership record xattr this layer uses (see ownership.py), or None
        # Mount points inside the layer (layermounts.py): {dir rel: {names}}, trusted when mounts_known.
        self.mounts_known = False
        self.covered = {}
        self.mount_table: MountTable | None = None  # keeps `covered` current (it sets itself here)
        self._dir_fds = {}  # lower layers: {directory rel: O_PATH fd}, insertion order = age

    def __repr__(self):
        return f"Layer({self.index}, {self.path!r}, writable={self.writable})"

    def close(self):
        fds, self._dir_fds = self._dir_fds, {}
        for fd in fds.values():
            os.close(fd)
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def open(self, rel: bytes, flags: int = os.O_PATH | os.O_NOFOLLOW, mode: int = 0) -> int:
        """Open *rel* (b"" is the root) without following any symlink; the caller closes the fd."""
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC
        if not rel:
            return os.open(".", (flags & ~os.O_NOFOLLOW), dir_fd=self.root_fd)
        if self.mounts_known and not self.writable:
            beneath = self._beneath(rel)
            if beneath is not None:
                return os.open(beneath[1], flags, mode, dir_fd=beneath[0])
        try:
            if len(rel) >= _PATH_CHUNK:
                return self._open_chunked(rel, flags, mode)
            return _sys.openat2(self.root_fd, rel, flags, mode)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                if exc.errno == errno.EXDEV:  # RESOLVE_BENEATH refused to leave the layer
                    raise OSError(errno.ELOOP, "path escapes the layer", rel) from None
                raise
        return self._open_walk(rel, flags, mode)

    def _open_chunked(self, rel: bytes, flags: int, mode: int) -> int:
        """openat2 refuses paths of PATH_MAX bytes and more, which deep unions reach: resolve them a
        piece (of whole names) at a time, each piece beneath the directory the last one opened."""
        parts = rel.split(b"/")
        pieces, cur = [], []
        for part in parts:
            if cur and sum(len(p) + 1 for p in cur) + len(part) >= _PATH_CHUNK:
                pieces.append(b"/".join(cur))
                cur = []
            cur.append(part)
        pieces.append(b"/".join(cur))
        fd = os.open(".", O_PATH_DIR & ~os.O_NOFOLLOW, dir_fd=self.root_fd)
        try:
            for piece in pieces[:-1]:
                nxt = _sys.openat2(fd, piece, O_PATH_DIR)
                os.close(fd)
                fd = nxt
            return _sys.openat2(fd, pieces[-1], flags, mode)
        finally:
            os.close(fd)

    def _open_walk(self, rel: bytes, flags: int, mode: int) -> int:
        parts = rel.split(b"/")
        fd = os.open(".", O_PATH_DIR & ~os.O_NOFOLLOW, dir_fd=self.root_fd)
        try:
            for part in parts[:-1]:
                if part in (b"", b".", b".."):
                    raise OSError(errno.EINVAL, "bad path component", rel)
                nxt = os.open(part, O_PATH_DIR, dir_fd=fd)
                os.close(fd)
                fd = nxt
            if parts[-1] in (b"", b".", b".."):
                raise OSError(errno.EINVAL, "bad path component", rel)
            return os.open(parts[-1], flags, mode, dir_fd=fd)
        finally:
            os.close(fd)

    def opened(self, rel: bytes, flags: int = os.O_PATH | os.O_NOFOLLOW) -> ClosingFd:
        """`open` for the length of a with block."""
        return ClosingFd(self.open(rel, flags))

    def dir(self, rel: bytes):
        """An O_PATH fd of the directory *rel* for a with block, usable as dir_fd for *at calls."""
        return self.opened(rel, O_PATH_DIR)

    DIR_FDS = 16

    def lstat(self, rel: bytes) -> os.stat_result:
        if not rel:
            return os.fstat(self.root_fd)
        if self.mounts_known and not self.writable:
            beneath = self._beneath(rel)
            if beneath is not None:
                return os.stat(beneath[1], dir_fd=beneath[0], follow_symlinks=False)
        fd = self.open(rel)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def reach(self, rel: bytes):
        """(directory fd, name) through which one *at call (not following a symlink) reaches *rel* of a
        lower layer; the fd is the layer's own (kept: not to be closed). None where only a path resolved
        by openat2 will do: the upper, the root, a mount point, the mount table unknown."""
        if not rel or self.writable or not self.mounts_known:
            return None
        return self._beneath(rel)

    def _beneath(self, rel: bytes):
        """(directory fd, name) to reach *rel* of a lower layer with a plain *at call, or None where
        only openat2 will do (a mount point, or the mount table no longer known)."""
        table = self.mount_table
        if table is not None:  # (always, once mounts_known: the table set itself here)
            table.refresh()
        parent, _, name = rel.rpartition(b"/")
        if not self.mounts_known or name in self.covered.get(parent, ()):
            return None
        if not parent:
            return self.root_fd, name
        dir_fd = self._dir_fds.get(parent)
        if dir_fd is None:
            dir_fd = self._keep_dir(parent)
        return dir_fd, name

    def _keep_dir(self, rel: bytes) -> int:
        fd = self.open(rel, O_PATH_DIR)  # errors are the path's: ENOENT, ENOTDIR, ELOOP (a symlink)
        fds = self._dir_fds
        if len(fds) >= self.DIR_FDS:
            os.close(fds.pop(next(iter(fds))))
        fds[rel] = fd
        return fd


def open_at(dir_fd: int, name: bytes, flags: int, mode: int = 0) -> int:
    """Open one name under an fd without following a symlink or crossing a mount point there."""
    try:
        return _sys.openat2(dir_fd, name, flags | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)


def opened(dir_fd: int, name: bytes, flags: int) -> ClosingFd:
    """`open_at` for the length of a with block."""
    return ClosingFd(open_at(dir_fd, name, flags))


def lstat_at(dir_fd: int, name: bytes) -> os.stat_result:
    """lstat of one name under an fd, never stepping into a mount point (fstatat would)."""
    fd = open_at(dir_fd, name, os.O_PATH)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def remove_tree(dir_fd: int, name: bytes) -> None:
    """Remove name (a file or a whole tree) under dir_fd without following symlinks."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except (IsADirectoryError, PermissionError):
        pass
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.EPERM):
            raise
    fd = open_at(dir_fd, name, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for entry in os.listdir(fd):
            remove_tree(fd, os.fsencode(entry))
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)
