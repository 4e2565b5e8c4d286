"""pytest plugin: unions of layers a test describes, mounted for the test and unmounted after it.

Installed with the package (entry point ``pytest11: unionfs``), so any project that has ``unionfs``
installed gets these fixtures without a conftest line:

``union_mount`` -- a factory; each call builds layer directories under the test's ``tmp_path``, mounts
pyunionfs over them and returns a ``MountedUnion``; every mount is unmounted when the test ends::

    def test_config_override(union_mount):
        u = union_mount({"lower": {"etc/app.conf": "default", "bin/": DIR},
                         "upper": {"etc/app.conf": "mine"}})
        assert (u.path / "etc/app.conf").read_text() == "mine"
        (u.path / "etc/app.conf").unlink()               # leaves a whiteout in u.upper
        assert sorted(os.listdir(u.path / "etc")) == []

``union`` -- one mounted union from a marker or an indirect parameter::

    @pytest.mark.union_layers({"lower0": {"a": "top"}, "lower1": {"a": "bottom", "b": "b"}}, options=["ro"])
    def test_read_only(union):
        assert (union.path / "a").read_text() == "top"

``union_engine`` -- the same layer description, used through ``unionfs.UnionFS`` (no FUSE, no mount):
for machines without /dev/fuse; same semantics and the same result on disk.

Layer description (`unionfs.embed.layerspec`, whose names this module exports): a dict with
``"lower"`` (one lower) or ``"lower0"``, ``"lower1"``, ... (``lower0`` on top) or ``"lowers"`` (a list,
topmost first), and ``"upper"`` (a dict; ``None`` or absent with ``readonly=True`` for a read-only
union). Each layer maps a relative path to its content: ``str`` or ``bytes`` (a file), ``DIR`` or a path
ending in ``/`` (a directory), ``File(data, mode=0o644)``, ``Dir(mode=0o755)``, ``Symlink(target)``,
``Fifo()``, ``Hardlink(other)``, ``WHITEOUT`` (a char 0/0 device, needs root or Linux 5.8+), ``OPAQUE``
(an opaque directory: ``trusted.overlay.opaque`` as root, ``user.overlay.opaque`` otherwise). Missing
parent directories are made.

The mount fixtures skip the test, saying why, where FUSE is unavailable (no /dev/fuse, no fusermount3,
pyfuse3 not importable, /dev/fuse not usable); ``union_engine`` never skips.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pytest

from .api import UnionMount, fuse_unavailable_reason
from .layerspec import DIR, OPAQUE, WHITEOUT, Dir, Fifo, File, Hardlink, Opaque, Symlink, build_layers

__all__ = [
    "DIR",
    "WHITEOUT",
    "OPAQUE",
    "File",
    "Dir",
    "Opaque",
    "Symlink",
    "Fifo",
    "Hardlink",
    "MountedUnion",
    "build_layers",
]


class MountedUnion:
    """A union made by the fixtures: ``path`` (the merged view; ``os.fspath(u)`` and ``u / "x"`` work
    too), ``lowers`` (topmost first), ``upper``, ``work`` (None when read-only), ``root`` (the directory
    holding them all), ``mount`` (the ``unionfs.UnionMount``; None for ``union_engine``), ``fs`` (the
    ``unionfs.UnionFS``; None for mounts)."""

    def __init__(
        self,
        root: Path,
        lowers: list,
        upper: Optional[Path],
        work: Optional[Path],
        path: Optional[Path],
        mount: Optional[UnionMount] = None,
        fs=None,
    ):
        self.root, self.lowers, self.upper, self.work = root, lowers, upper, work
        self.path, self.mount, self.fs = path, mount, fs

    @property
    def lower(self) -> Path:
        return self.lowers[0]

    def __fspath__(self):
        return os.fspath(self.path)

    def __truediv__(self, other):
        return self.path / other

    def __repr__(self):
        return f"<MountedUnion {self.path} lowers={[str(l) for l in self.lowers]} upper={self.upper}>"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "union_layers(spec, options=(), readonly=False): the layers of the `union` fixture (unionfs pytest plugin)",
    )


def _skip_without_fuse():
    reason = fuse_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def union_mount(tmp_path):
    """Factory: ``union_mount(spec, options=(), readonly=False, timeout=30) -> MountedUnion`` (mounted).

    Each call mounts one union under the test's tmp_path; all are unmounted when the test ends.
    Skips the test where FUSE is unavailable.
    """
    _skip_without_fuse()
    made = []

    def factory(spec: dict, options=(), readonly: bool = False, timeout: float = 30) -> MountedUnion:
        root = tmp_path / f"union{len(made)}"
        lowers, upper, work = build_layers(root, spec, readonly=readonly)
        mnt = root / "mnt"
        mnt.mkdir()
        m = UnionMount(lowers, upper, work, mnt, options=options, timeout=timeout)
        made.append(m)
        m.start()
        return MountedUnion(root, lowers, upper, work, mnt, mount=m)

    try:
        yield factory
    finally:
        errors = []
        for m in reversed(made):
            try:
                m.stop()
            except Exception as exc:  # keep unmounting the others
                errors.append(exc)
        if errors:
            raise errors[0]


def _spec_from(request):
    marker = request.node.get_closest_marker("union_layers")
    if marker is not None:
        spec = marker.args[0] if marker.args else marker.kwargs.get("spec", {})
        kw = {k: v for k, v in marker.kwargs.items() if k != "spec"}
        return spec, kw
    if hasattr(request, "param"):
        param = request.param
        if isinstance(param, tuple):
            return param[0], dict(param[1])
        return param, {}
    raise pytest.UsageError(
        "the `union` fixture needs @pytest.mark.union_layers({...}) or an indirect parameter with the layer description"
    )


@pytest.fixture
def union(request, union_mount):
    """One mounted union described by ``@pytest.mark.union_layers(spec, **kw)`` or an indirect param."""
    spec, kw = _spec_from(request)
    return union_mount(spec, **kw)


@pytest.fixture
def union_engine(tmp_path):
    """Factory: ``union_engine(spec, readonly=False, userxattr=False) -> MountedUnion`` whose ``fs`` is a
    ``unionfs.UnionFS`` over the layers (no FUSE; never skips); ``path`` is None."""
    from .paths import UnionFS

    made = []

    def factory(spec: dict, readonly: bool = False, userxattr: bool = False) -> MountedUnion:
        root = tmp_path / f"engine{len(made)}"
        lowers, upper, work = build_layers(root, spec, readonly=readonly)
        fs = UnionFS(lowers, upper, work, userxattr=userxattr)
        made.append(fs)
        return MountedUnion(root, lowers, upper, work, None, fs=fs)

    yield factory
    for fs in made:
        fs.close()
