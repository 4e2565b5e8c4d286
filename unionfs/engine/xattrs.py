"""Extended attributes: the overlay's private names, their escaping, and copying them.

The overlay keeps its own markers in `trusted.overlay.*` and `user.overlay.*` (and fuse-overlayfs in
`user.fuseoverlayfs.*`). All are read as markers, so none may be written or read raw through the mount:
a name under such a prefix is stored escaped as `<prefix>overlay.<rest>` (the kernel's escaping for nested
overlays), and the markers themselves never show in listings. Nobody can forge a marker through the
mount.
"""

import errno
import os

from .whiteout import OPAQUE_PREFIXES

PRIVATE_PREFIXES = OPAQUE_PREFIXES  # every namespace a marker is read in
_ESCAPE = b"overlay."


def to_stored(name: bytes) -> bytes:
    for prefix in PRIVATE_PREFIXES:
        if name.startswith(prefix):
            return prefix + _ESCAPE + name[len(prefix) :]
    return name


def to_visible(stored: bytes):
    """The name users see for a stored xattr, or None for the overlay's own markers."""
    for prefix in PRIVATE_PREFIXES:
        if stored.startswith(prefix):
            rest = stored[len(prefix) :]
            if rest.startswith(_ESCAPE):
                return prefix + rest[len(_ESCAPE) :]
            return None
    return stored


def is_marker(stored: bytes) -> bool:
    return to_visible(stored) is None


def copy_all(src_path: bytes, dst_path: bytes, *, follow: bool = False, skip=()) -> None:
    """Copy every xattr but the overlay's own markers and *skip*. Names the target refuses are skipped."""
    try:
        names = os.listxattr(src_path, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        bname = os.fsencode(name)
        if is_marker(bname) or bname in skip:
            continue
        try:
            value = os.getxattr(src_path, bname, follow_symlinks=follow)
            os.setxattr(dst_path, bname, value, follow_symlinks=follow)
        except OSError as exc:
            # e.g. security.* or trusted.* refused to an unprivileged daemon, or an fs without them.
            if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.ENODATA, errno.EACCES):
                raise
