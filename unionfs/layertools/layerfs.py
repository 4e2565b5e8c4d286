"""Reading layer directories for the layer tools: symlink-proof walking, markers in every format.

Every directory is opened relative to its parent's fd with O_NOFOLLOW, so a symlink inside a layer is
reported as a symlink and never walked into. Markers are read in all the formats met in the wild:

- whiteouts: a character device 0/0 (kernel, pyunionfs, fuse-overlayfs) or an empty `.wh.NAME` file
  (OCI layers, fuse-overlayfs where mknod fails);
- opaque directories: `trusted.overlay.opaque=y`, `user.overlay.opaque=y`, `user.fuseoverlayfs.opaque=y`
  or a `.wh..wh..opq` file inside the directory.

Names are bytes throughout.
"""

from __future__ import annotations

import os
import stat
from typing import Dict, List, Optional

from ..engine.whiteout import (
    FUSEOVERLAYFS_PREFIX,
    OPAQUE,
    TRUSTED_PREFIX,
    USER_PREFIX,
    WH_META_PREFIX,
    WH_OPAQUE,
    WH_PREFIX,
    is_whiteout,
)

OPAQUE_XATTRS = (TRUSTED_PREFIX + OPAQUE, USER_PREFIX + OPAQUE, FUSEOVERLAYFS_PREFIX + OPAQUE)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(name, dir_fd: Optional[int] = None) -> int:
    """An O_RDONLY fd of directory `name` (relative to dir_fd); a symlink there raises ENOTDIR/ELOOP."""
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def listdir(fd: int) -> List[bytes]:
    """The names in directory fd, as bytes, sorted."""
    return sorted(os.fsencode(n) for n in os.listdir(fd))


def node_path(dir_fd: int, name: bytes = b"") -> bytes:
    """A path reaching `name` in dir_fd through /proc (use with follow_symlinks=False)."""
    base = b"/proc/self/fd/%d" % dir_fd
    return base + b"/" + name if name else base


def has_opaque_xattr(dir_fd: int) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(node_path(dir_fd), name) == b"y":
                return True
        except OSError:
            pass
    return False


def is_opaque(dir_fd: int, names: Optional[List[bytes]] = None) -> bool:
    """The directory is opaque: an opaque xattr in any namespace, or a `.wh..wh..opq` file in it."""
    if has_opaque_xattr(dir_fd):
        return True
    if names is None:
        try:
            os.stat(WH_OPAQUE, dir_fd=dir_fd, follow_symlinks=False)
            return True
        except OSError:
            return False
    return WH_OPAQUE in names


def is_private_xattr(name: bytes) -> bool:
    """The overlay's own names (markers, kernel bookkeeping) and fuse-overlayfs's."""
    return name.startswith(FUSEOVERLAYFS_PREFIX)


def join(rel: bytes, name: bytes) -> bytes:
    return rel + b"/" + name if rel else name


class DirScan:
    """One directory of a layer: its real entries and the names its markers delete.

    `entries`: name -> lstat result, for every entry that is neither a whiteout nor a marker file.
    `whiteouts`: name -> lstat result of the marker (char 0/0 device or `.wh.NAME` file).
    `opaque`: the directory is opaque (xattr or `.wh..wh..opq`).
    """

    __slots__ = ("entries", "whiteouts", "opaque", "opaque_file")

    def __init__(self, fd: int):
        names = listdir(fd)
        self.entries: Dict[bytes, os.stat_result] = {}
        self.whiteouts: Dict[bytes, os.stat_result] = {}
        self.opaque_file = WH_OPAQUE in names
        self.opaque = self.opaque_file or has_opaque_xattr(fd)
        for n in names:
            if n.startswith(WH_META_PREFIX):
                continue  # .wh..wh..opq handled above; other AUFS metadata ignored
            st = os.stat(n, dir_fd=fd, follow_symlinks=False)
            if n.startswith(WH_PREFIX) and len(n) > len(WH_PREFIX):
                self.whiteouts.setdefault(n[len(WH_PREFIX) :], st)
            elif is_whiteout(st):
                self.whiteouts[n] = st
            else:
                self.entries[n] = st


class LowerEntry:
    """A name in the merged view of the lowers: the topmost lstat and, for a directory, the fds of every
    lower directory that merges into it (topmost first)."""

    __slots__ = ("st", "fds")

    def __init__(self, st: os.stat_result):
        self.st = st
        self.fds: List[int] = []

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def merged_children(dir_fds: List[int]) -> Dict[bytes, LowerEntry]:
    """The merged listing of one directory of a lower stack (dir_fds topmost first, all merged).

    The caller closes the returned entries (`LowerEntry.close`)."""
    result: Dict[bytes, Optional[LowerEntry]] = {}
    stopped: set = set()  # directory names whose merge already ended (opaque or non-dir below)
    try:
        for fd in dir_fds:
            scan = DirScan(fd)
            for n, st in scan.entries.items():
                if n in result:
                    ent = result[n]
                    if ent is None or not ent.is_dir or n in stopped:
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        stopped.add(n)
                        continue
                    cfd = open_dir(n, fd)
                    ent.fds.append(cfd)
                    if is_opaque(cfd):
                        stopped.add(n)
                    continue
                ent = LowerEntry(st)
                result[n] = ent
                if ent.is_dir:
                    cfd = open_dir(n, fd)
                    ent.fds.append(cfd)
                    if is_opaque(cfd):
                        stopped.add(n)
            for n in scan.whiteouts:
                result.setdefault(n, None)
            if scan.opaque:
                break
    except BaseException:
        for ent in result.values():
            if ent is not None:
                ent.close()
        raise
    return {n: e for n, e in result.items() if e is not None}


def close_all(entries: Dict[bytes, LowerEntry]) -> None:
    for e in entries.values():
        e.close()


def lower_roots(paths) -> List[int]:
    fds = []
    try:
        for p in paths:
            fds.append(os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds
