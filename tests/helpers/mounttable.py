"""The mount table as the tests read it (str fields), and unmounting what a test left mounted.

Parsed by unionfs.engine.layermounts through unionfs.embed.lifecycle; nothing here stats a mount point,
so a hung FUSE mount can't block.
"""

from __future__ import annotations

import os
import shutil
from collections import namedtuple
from typing import Optional, Sequence

from unionfs.embed import lifecycle

FUSERMOUNT = shutil.which(lifecycle.FUSERMOUNT) or lifecycle.FUSERMOUNT

MountEntry = namedtuple("MountEntry", "mountpoint fstype source options")


def mount_table() -> list:
    """/proc/self/mountinfo as MountEntry (str fields), parsed by unionfs.engine.layermounts; never
    stats a mount point, so a hung FUSE mount can't block."""
    return [
        MountEntry(os.fsdecode(e.mountpoint), os.fsdecode(e.fstype), os.fsdecode(e.source), os.fsdecode(e.options))
        for e in lifecycle.mount_table()
    ]


_abs = lifecycle.real_mountpoint  # realpath of the parent only: the mount point may be a hung FUSE mount


def is_mountpoint(path) -> bool:
    return bool(lifecycle.mounts_at(_abs(path)))


def mount_entry(path) -> Optional[MountEntry]:
    p = _abs(path)
    found = [m for m in mount_table() if m.mountpoint == p]
    return found[-1] if found else None


def mounts_under(root, fstypes: Sequence[str] = ("fuse", "overlay")) -> list:
    """Mounts at or below `root` whose type is (or starts with) one of `fstypes`."""
    r = os.path.realpath(os.fspath(root))
    return [
        m
        for m in mount_table()
        if (m.mountpoint == r or m.mountpoint.startswith(r.rstrip("/") + "/"))
        and any(m.fstype == t or m.fstype.startswith(t + ".") for t in fstypes)
    ]


def unmount(path, *, fuse: bool = True) -> None:
    """Unmount `path` if mounted: normal unmount first, then a lazy one."""
    p = _abs(path)
    m = mount_entry(p)
    if m is not None:
        lifecycle.unmount(p, fuse=fuse and m.fstype.startswith("fuse"))
