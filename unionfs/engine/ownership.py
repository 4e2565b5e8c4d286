"""Ownership records: owner and mode kept in an xattr where the daemon cannot chown, as fuse-overlayfs.

A rootless daemon (one uid, or a user namespace that maps few ids) cannot give a file the owner the
container asks for. fuse-overlayfs then records "uid:gid:mode" in an xattr of the file and shows that
instead of what the file really has; container tools (containers/storage) write the same records on
their layers. pyunionfs reads and writes them in fuse-overlayfs's format, so layers move between the two:

- a layer uses records when its root directory carries one: `security.fuseoverlayfs.override_stat`
  (fuse-overlayfs's `xattr_permissions=1`), `user.containers.override_stat` (`xattr_permissions=2`) or
  `user.fuseoverlayfs.override_stat` (older fuse-overlayfs), looked for in that order;
- the value is "UID:GID:MODE" (MODE in octal; its permission bits are shown, the file type stays the
  file's) or "UID:GID:MODE:TYPE" with TYPE one of dir, file, symlink, pipe, socket, block-MAJ-MIN,
  char-MAJ-MIN (how fuse-overlayfs records a device it could not make);
- with `-o xattr_permissions=1|2` the upper takes records: new entries, copy-ups, chown and chmod write
  the record and leave the backing file's owner alone (its mode gets u+rwx,go+rx so the daemon can use
  it); a malformed record is ignored (the file's own owner and mode show).

Safety: anyone may set user.* xattrs on files they own, so a record under a user.* name could make a
file of theirs look setuid root, or like a device node. Where that would matter -- a daemon running as
the real root, whose mount is neither nosuid nor nodev -- such records give no setuid/setgid bits and no
device type (`strict`); `security.fuseoverlayfs.override_stat` needs CAP_SYS_ADMIN to set and is taken
whole.
"""

import os
import stat

PRIVILEGED = b"security.fuseoverlayfs.override_stat"
CONTAINERS = b"user.containers.override_stat"
USER = b"user.fuseoverlayfs.override_stat"
NAMES = (PRIVILEGED, CONTAINERS, USER)  # fuse-overlayfs's order of preference on a layer's root
BACKING_MODE = 0o755  # or-ed into a recorded entry's real mode, as fuse-overlayfs does

_TYPES = {
    b"dir": stat.S_IFDIR,
    b"file": stat.S_IFREG,
    b"symlink": stat.S_IFLNK,
    b"pipe": stat.S_IFIFO,
    b"socket": stat.S_IFSOCK,
    b"block": stat.S_IFBLK,
    b"char": stat.S_IFCHR,
}


def layer_record_name(root_path: bytes):
    """The record name a layer uses (from its root directory's xattrs), or None."""
    for name in NAMES:
        try:
            os.getxattr(root_path, name)
            return name
        except OSError:
            continue
    return None


def parse(value: bytes):
    """(uid, gid, permission bits, file type or None, rdev or None) of a record, or None if malformed."""
    parts = value.split(b":")
    if len(parts) not in (3, 4):
        return None
    try:
        uid, gid, mode = int(parts[0]), int(parts[1]), int(parts[2], 8)
    except ValueError:
        return None
    if not (0 <= uid < 1 << 32 and 0 <= gid < 1 << 32 and 0 <= mode < 1 << 32):
        return None
    kind = rdev = None
    if len(parts) == 4:
        word = parts[3]
        for prefix, fmt in _TYPES.items():
            if word.startswith(prefix):
                kind = fmt
                if fmt in (stat.S_IFBLK, stat.S_IFCHR):
                    numbers = word[len(prefix) :].lstrip(b"-").split(b"-")
                    try:
                        rdev = os.makedev(int(numbers[0]), int(numbers[1]))
                    except (ValueError, IndexError):
                        return None
                break
        else:
            return None
    return uid, gid, stat.S_IMODE(mode), kind, rdev


def encode(uid: int, gid: int, mode: int) -> bytes:
    return b"%d:%d:%o" % (uid, gid, stat.S_IMODE(mode))


class StatView:
    """An os.stat_result with the owner and mode a record gives; every other field is the file's."""

    __slots__ = ("_st", "st_uid", "st_gid", "st_mode", "st_rdev")

    def __init__(self, st, record, strict: bool = False):
        uid, gid, perms, kind, rdev = record
        if strict:
            perms &= ~(stat.S_ISUID | stat.S_ISGID)
            if kind in (stat.S_IFBLK, stat.S_IFCHR):
                kind = rdev = None
        self._st = st
        self.st_uid, self.st_gid = uid, gid
        self.st_mode = (kind if kind is not None else stat.S_IFMT(st.st_mode)) | perms
        self.st_rdev = rdev if rdev is not None else st.st_rdev

    def __getattr__(self, name):
        return getattr(self._st, name)


def view(st, path: bytes, name: bytes, follow: bool, strict: bool = False):
    """*st* as the record at *path* (a /proc path) shows it; *st* itself when there is none. *strict*:
    a user.* record gives no setuid/setgid bit and no device type (see the module's docstring)."""
    if stat.S_ISLNK(st.st_mode):
        return st  # user.* xattrs cannot be set on symlinks: they show as they are
    try:
        record = parse(os.getxattr(path, name, follow_symlinks=follow))
    except OSError:
        return st
    return st if record is None else StatView(st, record, strict and name != PRIVILEGED)
