"""Extended attributes: the overlay's private names, their escaping, and copying them.

As the kernel, a mount keeps its own markers in one namespace: `trusted.overlay.*`, or `user.overlay.*`
with userxattr (and when not root); fuse-overlayfs keeps its own in `user.fuseoverlayfs.*`. Those
namespaces are private to the mount: a name under such a prefix is stored escaped as
`<prefix>overlay.<rest>` (the kernel's escaping for nested overlays), and the markers themselves never
show in listings, so nobody can forge a marker through the mount. The other kernel namespace is an
ordinary one there, stored and shown as it is, as the kernel does.
"""

import errno
import os

from .whiteout import FUSEOVERLAYFS_PREFIX, OPAQUE_PREFIXES

ALL_PRIVATE = OPAQUE_PREFIXES  # every namespace a marker is read in (layertools' view of a layer)
_ESCAPE = b"overlay."


def private_prefixes(marker_prefix: bytes) -> tuple:
    """The namespaces private to a mount that writes its markers under *marker_prefix*."""
    return (marker_prefix, FUSEOVERLAYFS_PREFIX)


def to_stored(name: bytes, private=ALL_PRIVATE) -> bytes:
    for prefix in private:
        if name.startswith(prefix):
            return prefix + _ESCAPE + name[len(prefix) :]
    return name


def to_visible(stored: bytes, private=ALL_PRIVATE):
    """The name users see for a stored xattr, or None for the overlay's own markers."""
    for prefix in private:
        if stored.startswith(prefix):
            rest = stored[len(prefix) :]
            if rest.startswith(_ESCAPE):
                return prefix + rest[len(_ESCAPE) :]
            return None
    return stored


def is_marker(stored: bytes, private=ALL_PRIVATE) -> bool:
    return to_visible(stored, private) is None


def copy_all(src_path, dst_path, *, follow: bool = False, skip=(), private=ALL_PRIVATE) -> None:
    """Copy every xattr but the overlay's own markers and *skip*. Names the target refuses are skipped.
    *src_path*, *dst_path*: paths (bytes), or fds (then *follow* must be True: an fd is no link)."""
    try:
        names = os.listxattr(src_path, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        bname = os.fsencode(name)
        if is_marker(bname, private) or bname in skip:
            continue
        try:
            value = os.getxattr(src_path, bname, follow_symlinks=follow)
            os.setxattr(dst_path, bname, value, follow_symlinks=follow)
        except OSError as exc:
            # e.g. security.* or trusted.* refused to an unprivileged daemon, or an fs without them.
            if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.ENODATA, errno.EACCES):
                raise
