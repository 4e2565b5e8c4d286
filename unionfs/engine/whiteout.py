"""The overlay's on-disk markers: whiteouts (char 0/0 devices, or OCI `.wh.` files), opaque and redirect
markers on directories.

Opaque markers are read in the kernel's two xattr namespaces (`trusted.overlay.*`, `user.overlay.*`) and
in fuse-overlayfs's `user.fuseoverlayfs.*`; the kernel namespace chosen at mount time is written.
"""

import os
import stat

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


def read_dir_markers(path: bytes, prefix: bytes, follow: bool = False):
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
        if name.endswith(b"." + OPAQUE) and name[: -len(OPAQUE)] in OPAQUE_PREFIXES:
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
