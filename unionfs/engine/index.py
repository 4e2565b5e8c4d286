"""index=on: lower hard links kept whole across copy-up, and st_ino kept across copy-up and remount.

Like the kernel's option, in pyunionfs's own format (the kernel's needs file handles and the lower
filesystems' uuids, and checks them; the two cannot share an index):
- a copied-up lower file records where it came from, `<markers>pyunionfs.origin` = "LAYER-INO" (the
  lower's position in the stack and its inode number, hex); a file shows that inode number (and so keeps
  its st_ino) across copy-up and remount;
- copying up one name of a lower file with several names also links the copy into `W/pyunionfs-index/`
  under the same "LAYER-INO"; every other name of that lower file then resolves to the index entry, so all
  names show one file (one st_ino, the new data) -- a name is linked into the upper when it is changed,
  as the kernel does;
- the union's link count of such a file is kept in `<markers>pyunionfs.nlink` on the index entry (the
  lower's count at copy-up, then one less for each name removed, one more for each link made);
- `W/pyunionfs-index/.lowers` records the lower layers' root inodes: mounting the upper over other lowers
  with index=on is refused, as the kernel refuses it.
"""

import errno
import os

DIR_NAME = "pyunionfs-index"
MANIFEST = ".lowers"
ORIGIN = b"pyunionfs.origin"
NLINK = b"pyunionfs.nlink"


def key(layer_index: int, ino: int) -> bytes:
    return b"%d-%x" % (layer_index, ino)


def parse_key(value: bytes):
    """(layer index, inode number) of a key, or None if it is not one."""
    layer, sep, ino = value.partition(b"-")
    if not sep or not layer.isdigit():
        return None
    try:
        return int(layer), int(ino, 16)
    except ValueError:
        return None


def manifest(lowers) -> bytes:
    """What identifies the lower stack: each lower's device and root inode, top first."""
    return b"".join(b"%d:%d\n" % (layer.dev, layer.root_ino) for layer in lowers)


def check_manifest(index_fd: int, expected: bytes) -> None:
    """Write the manifest on first use; refuse (ESTALE) an index made over other lowers."""
    try:
        fd = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=index_fd)
    except FileNotFoundError:
        fd = os.open(
            MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=index_fd
        )
        try:
            os.write(fd, expected)
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    try:
        found = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    if found != expected:
        raise OSError(errno.ESTALE, "index=on: this upper was indexed over other lower layers")
