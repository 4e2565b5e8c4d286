"""Layer directories for one union, built from a layer description (unionfs.embed.layerspec, the
pytest plugin's language), and exact copies of them."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

from tests.helpers.snapshots import hash_tree, tree_snapshot
from unionfs.embed import layerspec
from unionfs.embed.layerspec import DIR, WHITEOUT, Dir, Fifo, File, Hardlink, Symlink

__all__ = [
    "DIR",
    "WHITEOUT",
    "Dir",
    "Fifo",
    "File",
    "Hardlink",
    "Symlink",
    "Opaque",
    "Layers",
    "make_layers",
    "copy_layers",
]


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
