"""The layer-description language: layer directories made from a dict, for tests and examples.

Public through the pytest plugin (``from unionfs.embed.pytest_plugin import DIR, File, ...``); the
project's own tests build their layers with it too.

A description is a dict with ``"lower"`` (one lower) or ``"lower0"``, ``"lower1"``, ... (``lower0`` on
top) or ``"lowers"`` (a list, topmost first), and ``"upper"`` (a dict; ``None`` or absent with
``readonly=True`` for a read-only union). Each layer maps a relative path to its content:

- ``str`` or ``bytes``: a file; ``File(data, mode=0o644, xattrs=None, uid=, gid=, mtime_ns=)`` with
  metadata;
- ``DIR`` or a path ending in ``/``: a directory; ``Dir(mode=0o755, uid=, gid=, xattrs=, mtime_ns=)``
  with metadata (applied after the directory's children are made, so its mtime stays);
- ``Symlink(target, uid=, gid=)``; ``Fifo(mode=0o644)``; ``Hardlink(other)``, another name of the
  entry at ``other`` in the same layer;
- ``WHITEOUT``: a char 0/0 device (needs root or Linux 5.8+);
- ``OPAQUE`` or ``Opaque(user=None, **Dir metadata)``: an opaque directory, ``trusted.overlay.opaque``
  as root and ``user.overlay.opaque`` otherwise (``user=True``/``False`` chooses).

Missing parent directories are made. ``uid``/``gid`` (``None``: the caller's) need root to differ.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

__all__ = ["DIR", "WHITEOUT", "OPAQUE", "File", "Dir", "Opaque", "Symlink", "Fifo", "Hardlink", "build_layers"]


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return self.name


DIR = _Marker("DIR")
WHITEOUT = _Marker("WHITEOUT")
OPAQUE = _Marker("OPAQUE")


class File:
    """A file with a mode (and optional xattrs {name: bytes}, owner, mtime in ns)."""

    def __init__(
        self,
        data=b"",
        mode: int = 0o644,
        xattrs: Optional[dict] = None,
        *,
        uid: Optional[int] = None,
        gid: Optional[int] = None,
        mtime_ns: Optional[int] = None,
    ):
        self.data = data.encode() if isinstance(data, str) else bytes(data)
        self.mode, self.uid, self.gid, self.mtime_ns = mode, uid, gid, mtime_ns
        self.xattrs = dict(xattrs or {})


class Dir:
    """A directory with a mode (and optional xattrs, owner, mtime in ns)."""

    def __init__(
        self,
        mode: int = 0o755,
        uid: Optional[int] = None,
        gid: Optional[int] = None,
        xattrs: Optional[dict] = None,
        mtime_ns: Optional[int] = None,
    ):
        self.mode, self.uid, self.gid, self.mtime_ns = mode, uid, gid, mtime_ns
        self.xattrs = dict(xattrs or {})


def _opaque_xattr(user: Optional[bool]) -> str:
    if user is None:
        user = os.geteuid() != 0
    return ("user" if user else "trusted") + ".overlay.opaque"


class Opaque(Dir):
    """An opaque directory; ``user``: None (``user.`` unless root), True (``user.``), False (``trusted.``)."""

    def __init__(self, *, user: Optional[bool] = None, **kw):
        super().__init__(**kw)
        self.xattrs[_opaque_xattr(user)] = b"y"


class Symlink:
    def __init__(self, target, uid: Optional[int] = None, gid: Optional[int] = None):
        self.target = os.fspath(target)
        self.uid, self.gid = uid, gid


class Fifo:
    def __init__(self, mode: int = 0o644):
        self.mode = mode


class Hardlink:
    """Another name for the entry at `other` (a path in the same layer)."""

    def __init__(self, other):
        self.other = os.fspath(other)


def _chown(path, uid, gid):
    if uid is not None or gid is not None:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid, follow_symlinks=False)


def _set_xattrs(path, xattrs: dict) -> None:
    for k, v in xattrs.items():
        os.setxattr(path, k, v.encode() if isinstance(v, str) else v, follow_symlinks=False)


def populate(layer: Path, entries: Optional[dict]) -> None:
    """Make the entries of one layer description in the directory `layer`."""
    layer = Path(layer)
    dir_meta = []
    links = []
    for rel, content in sorted((entries or {}).items()):
        is_dir = rel.endswith("/")
        rel = rel.strip("/")
        if not rel or ".." in rel.split("/"):
            raise ValueError(f"{layer.name}: bad path {rel!r} in the layer description")
        p = layer / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, (str, bytes, bytearray)) and not is_dir:
            content = File(content)
        if is_dir or content is DIR:
            p.mkdir(exist_ok=True)
        elif content is OPAQUE:
            p.mkdir(exist_ok=True)
            os.setxattr(p, _opaque_xattr(None), b"y")
        elif isinstance(content, Dir):
            p.mkdir(exist_ok=True)
            dir_meta.append((p, content))
        elif content is WHITEOUT:
            os.mknod(p, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        elif isinstance(content, File):
            p.write_bytes(content.data)
            _set_xattrs(p, content.xattrs)
            _chown(p, content.uid, content.gid)
            os.chmod(p, content.mode)  # after chown, which clears set-id bits
            if content.mtime_ns is not None:
                os.utime(p, ns=(content.mtime_ns, content.mtime_ns))
        elif isinstance(content, Symlink):
            os.symlink(content.target, p)
            _chown(p, content.uid, content.gid)
        elif isinstance(content, Fifo):
            os.mkfifo(p, content.mode)
            os.chmod(p, content.mode)
        elif isinstance(content, Hardlink):
            links.append((p, content))
        else:
            raise TypeError(f"{layer.name}/{rel}: unknown layer content {content!r}")
    for p, link in links:
        os.link(layer / link.other.strip("/"), p, follow_symlinks=False)
    # Directory metadata last, deepest first: making children changes a directory's mtime.
    for p, d in sorted(dir_meta, key=lambda x: -len(x[0].parts)):
        _set_xattrs(p, d.xattrs)
        _chown(p, d.uid, d.gid)
        os.chmod(p, d.mode)
        if d.mtime_ns is not None:
            os.utime(p, ns=(d.mtime_ns, d.mtime_ns))


def build_layers(root, spec: dict, *, readonly: bool = False):
    """Make the layer directories of `spec` under `root`; returns (lowers, upper, work)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    known = {"lower", "lowers", "upper"}
    bad = [k for k in spec if k not in known and not (k.startswith("lower") and k[5:].isdigit())]
    if bad:
        raise ValueError(f"unknown layer names {bad}: use lower, lower0.. (lower0 on top), lowers, upper")
    if "lowers" in spec:
        lower_specs = list(spec["lowers"])
    elif "lower" in spec:
        lower_specs = [spec["lower"]]
    else:
        n = max([int(k[5:]) + 1 for k in spec if k.startswith("lower") and k[5:].isdigit()] or [1])
        lower_specs = [spec.get(f"lower{i}") or {} for i in range(n)]
    lowers = []
    for i, entries in enumerate(lower_specs or [{}]):
        d = root / f"lower{i}"
        d.mkdir()
        populate(d, entries)
        lowers.append(d)
    if readonly or ("upper" in spec and spec["upper"] is None):
        return lowers, None, None
    upper, work = root / "upper", root / "work"
    upper.mkdir()
    work.mkdir()
    populate(upper, spec.get("upper") or {})
    return lowers, upper, work
