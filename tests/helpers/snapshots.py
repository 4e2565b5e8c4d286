"""Tree snapshots: every entry under a directory with its type, mode, owner, content hash, link target,
device numbers and xattrs; a hash of a whole tree; readable differences between two snapshots."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections import namedtuple
from typing import Sequence

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
