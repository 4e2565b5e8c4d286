"""POSIX default ACLs on new entries: what a directory's default ACL gives an entry made in it.

The upper filesystem applies a default ACL by itself when the daemon creates straight in the upper
directory. An entry made in the work dir and renamed into place does not get it that way (the work
dir has no default ACL), so the daemon applies it as the kernel's overlay does for such entries: the
new mode's permission bits are ANDed into a copy of the default ACL (owner, other, and the mask or
else the owning group), the mode takes the result, the copy becomes the access ACL unless the mode says
it all, and a directory also inherits the default ACL itself. Without a default ACL the caller's
umask applies instead.

The format (`system.posix_acl_*`): a little-endian u32 version (2), then 8-byte entries (u16 tag,
u16 permissions, u32 id).
"""

import errno
import os
import struct

from .whiteout import proc_path

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"

_VERSION = 2
_HEAD = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
# No ACL here: the filesystem has none (ENODATA) or cannot hold one.
_NONE = (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP)


def read_default(dir_fd: int) -> "bytes | None":
    """The default ACL of the directory open as *dir_fd* (O_PATH will do), None where it has none."""
    try:
        value = os.getxattr(proc_path(dir_fd), DEFAULT)
    except OSError as exc:
        if exc.errno in _NONE:
            return None
        raise
    return value if _valid(value) else None


def _valid(value: bytes) -> bool:
    return (
        len(value) >= _HEAD.size + _ENTRY.size
        and (len(value) - _HEAD.size) % _ENTRY.size == 0
        and _HEAD.unpack_from(value)[0] == _VERSION
    )


def inherit(default: bytes, mode: int):
    """(mode, access ACL or None) of an entry made with *mode* under the default ACL *default*: the
    kernel's posix_acl_create rule. The access ACL is None where the mode's permission bits say all of
    it (only the owner, owning group and other entries)."""
    entries = [list(e) for e in _ENTRY.iter_unpack(memoryview(default)[_HEAD.size :])]
    owner = (mode >> 6) & 7
    group = (mode >> 3) & 7
    other = mode & 7
    extended = False
    group_obj = mask = None
    for entry in entries:
        tag = entry[0]
        if tag == _USER_OBJ:
            entry[1] &= owner
            owner = entry[1]
        elif tag == _OTHER:
            entry[1] &= other
            other = entry[1]
        elif tag == _GROUP_OBJ:
            group_obj = entry
        elif tag == _MASK:
            mask = entry
            extended = True
        elif tag in (_USER, _GROUP):
            extended = True
    if mask is not None:
        mask[1] &= group
        group = mask[1]
    elif group_obj is not None:
        group_obj[1] &= group
        group = group_obj[1]
    mode = (mode & ~0o777) | (owner << 6) | (group << 3) | other
    if not extended:
        return mode, None
    return mode, _HEAD.pack(_VERSION) + b"".join(_ENTRY.pack(*e) for e in entries)


def new_entry(default: "bytes | None", mode: int, umask: int, is_dir: bool):
    """(mode, access ACL or None, default ACL or None) of an entry made with *mode* by a caller with
    *umask*, in a directory whose default ACL is *default* (None: it has none)."""
    if default is None:
        return mode & ~(umask & 0o777), None, None
    mode, access = inherit(default, mode)
    return mode, access, default if is_dir else None


def apply(dir_fd: int, name: bytes, access: "bytes | None", default: "bytes | None") -> None:
    """Set the access and default ACLs of the new entry *name* in *dir_fd*, where given (a symlink
    there is not followed)."""
    path = proc_path(dir_fd, name)
    if access is not None:
        os.setxattr(path, ACCESS, access, follow_symlinks=False)
    if default is not None:
        os.setxattr(path, DEFAULT, default, follow_symlinks=False)
