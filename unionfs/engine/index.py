"""Origin records (always) and index=on: st_ino kept across copy-up and remount, lower hard links kept whole.

Origin records, with or without index=on, as the kernel records `trusted.overlay.origin` at copy-up
(in pyunionfs's own format: the kernel's needs file handles and the lower filesystems' uuids):
- a copied-up lower non-directory records where it came from, `<markers>pyunionfs.origin` = "LAYER-INO"
  (the lower's position in the stack and its inode number, hex), and its node is keyed by that origin,
  so it keeps showing the lower's st_ino for good: after the kernel forgets it and after a remount;
- without index=on a lower file with several names records none, as the kernel (its names split at
  copy-up, so the copies cannot all show the lower's number): its copy shows the upper file's st_ino;
- a symlink records one where the marker namespace allows it (trusted.*; user.* xattrs are refused on
  symlinks).

index=on, like the kernel's option, in pyunionfs's own format (the two cannot share an index):
- copying up one name of a lower file with several names also links the copy into `W/pyunionfs-index/`
  under the same "LAYER-INO"; every other name of that lower file then resolves to the index entry, so all
  names show one file (one st_ino, the new data) -- a name is linked into the upper when it is changed,
  as the kernel does;
- the union's link count of such a file is kept in `<markers>pyunionfs.nlink` on the index entry (the
  lower's count at copy-up, then one less for each name removed, one more for each link made);
- `W/pyunionfs-index/.lowers` records the lower layers' root inodes: mounting the upper over other lowers
  with index=on is refused, as the kernel refuses it.

`Index` is both for one union, every place they change what the other parts do; with index=off its
`pos` is None and its answers about the index are "nothing to do".
"""

import errno
import os
import stat

from .attributes import WithNlink
from .layers import Layer, remove_tree
from .nodes import Node
from .whiteout import proc_path

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


class Index:
    """index=on: the index pseudo-layer at position `pos` of the stack (None when index=off)."""

    def __init__(self, stack, nodes):
        self.stack, self.nodes = stack, nodes
        self.pos = self.layer = None
        self.origin_name = stack.marker_prefix + ORIGIN
        self.nlink_name = stack.marker_prefix + NLINK
        # Origins matter where an upper file can be a lower one's copy.
        self.origins = stack.upper is not None and stack.nlayers > 1

    def connect(self, union) -> None:
        self.resolution, self.copyup, self.attributes = union.resolution, union.copyup, union.attributes

    @property
    def enabled(self) -> bool:
        return self.pos is not None

    def open(self, workdir: str) -> None:
        """Use W/pyunionfs-index, reached like a layer at position `pos` (after the stack's layers)."""
        stack = self.stack
        path = os.path.join(workdir, DIR_NAME)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        if os.path.islink(path):
            raise OSError(errno.EINVAL, "the index %s is a symlink" % path)
        layer = Layer(stack.nlayers, path, writable=True)
        if not stat.S_ISDIR(os.fstat(layer.root_fd).st_mode) or layer.dev != stack.upper.dev:
            layer.close()
            raise OSError(errno.EINVAL, "the index is not a directory on the upper's filesystem")
        stack.layers.append(layer)
        self.pos = layer.index
        self.layer = layer
        check_manifest(layer.root_fd, manifest(stack.layers[1 : stack.nlayers]))

    def is_entry(self, node: Node) -> bool:
        """Whether the node is an index entry: its data is in the upper's filesystem already, and xattr
        changes go there without linking the name up, as the kernel."""
        return node.layer == self.pos and self.pos is not None

    def entry_name(self, node: Node) -> bytes:
        """The name of an index entry in the index: its origin's key, which is also the node's."""
        return key(node.key[0], node.key[2])

    def node_identity(self, parent: Node, name: bytes, index: int, st, node_key, shared):
        """(layer, node key, shared) of the non-directory parent/name found in layer *index*: a copy
        records its origin, which keys it (so it keeps the lower's inode number); with index=on a lower
        file whose copy is indexed is the index entry."""
        if index == 0:
            origin = self._read_origin(parent.path(), name) if self.origins else None
            if origin is None:
                return index, node_key, shared
            lower, ino = origin
            node_key = (lower, self.stack.layers[lower].dev, ino)
            if self.pos is None:
                return index, node_key, shared
        elif self.pos is not None and st.st_nlink > 1:
            lower, ino = index, st.st_ino
        else:
            return index, node_key, shared
        try:
            self.layer.lstat(key(lower, ino))
        except FileNotFoundError:
            return index, node_key, shared
        return self.pos, node_key, True

    def _read_origin(self, parent_rel: bytes, name: bytes):
        """(lower layer index, inode number) an upper entry records as its origin, or None."""
        try:
            with self.stack.upper.dir(parent_rel) as dfd:
                value = os.getxattr(proc_path(dfd, name), self.origin_name, follow_symlinks=False)
        except OSError:
            return None
        origin = parse_key(value)
        if origin is None or not 0 < origin[0] < self.stack.nlayers:
            return None
        return origin

    def stat(self, entry: bytes):
        """An index entry's stat, with the union's link count as st_nlink."""
        with self.layer.opened(entry, os.O_PATH) as fd:
            st = self.attributes.shown_fd(self.stack.upper, fd)
            try:
                nlink = int(os.getxattr(proc_path(fd), self.nlink_name))
            except (OSError, ValueError):
                return st
        return WithNlink(st, max(nlink, 1))

    def link_up(self, node: Node) -> None:
        """The name the node is reached by becomes a link to its index entry in the upper."""
        stack = self.stack
        tmp = stack.tmp_name()
        os.link(
            self.entry_name(node),
            tmp,
            src_dir_fd=self.layer.root_fd,
            dst_dir_fd=stack.work.root_fd,
            follow_symlinks=False,
        )
        parent, name = node.names[0]
        try:
            self.copyup.move_into_upper(tmp, parent, name)
        except BaseException:
            remove_tree(stack.work.root_fd, tmp)
            raise

    def record_origin(self, job):
        """At a copy-up's commit, before the copy moves into place: record the origin of a lower
        non-directory's copy (see the module docstring); with index=on one with several names also gets
        its index entry (the copy, linked), which all its names resolve to from now on. What it did:
        None, "origin" or "indexed"."""
        src_st = job.src_st
        if job.node.is_dir or job.src_layer.index == 0:
            return None
        if src_st.st_nlink > 1 and (self.pos is None or stat.S_ISLNK(src_st.st_mode)):
            return None  # names that split: their copies cannot all show the lower's st_ino
        work_fd = self.stack.work.root_fd
        origin = self.entry_name(job.node)
        # the copy's own fd where it has one (a regular file): no path to resolve
        path = job.dst_fd if job.dst_fd >= 0 else proc_path(work_fd, job.tmp_name)
        try:
            os.setxattr(path, self.origin_name, origin, follow_symlinks=job.dst_fd >= 0)
        except OSError as exc:
            if not stat.S_ISLNK(src_st.st_mode) or exc.errno not in (errno.EPERM, errno.ENOTSUP):
                raise
            return None  # user.* xattrs on a symlink: it keeps no st_ino
        if self.pos is None or src_st.st_nlink < 2:
            return "origin"
        os.setxattr(path, self.nlink_name, b"%d" % src_st.st_nlink, follow_symlinks=job.dst_fd >= 0)
        os.link(job.tmp_name, origin, src_dir_fd=work_fd, dst_dir_fd=self.layer.root_fd, follow_symlinks=False)
        return "indexed"

    def keep_identity(self, node: Node, recorded) -> bool:
        """After a copy-up: whether the node keeps its origin key (and st_ino), as one that recorded its
        origin does; the one `record_origin` indexed becomes the index entry of all its names."""
        if recorded == "indexed":
            node.layer = self.pos
        return recorded is not None

    def union_links(self, fd: int, st) -> int:
        """The union's link count of the indexed file open as *fd* (stat *st*): 0 once its last name
        is gone, as the kernel shows it."""
        try:
            return max(int(os.getxattr(fd, self.nlink_name)), 0)
        except (OSError, ValueError):
            return max(st.st_nlink - 1, 0)

    def count_link(self, node: Node, change: int) -> None:
        """The union's link count of an indexed file, kept on its index entry: *change* it."""
        with self.layer.opened(self.entry_name(node), os.O_PATH) as fd:
            path = proc_path(fd)
            try:
                count = int(os.getxattr(path, self.nlink_name))
            except (OSError, ValueError):
                count = os.fstat(fd).st_nlink - 1
            os.setxattr(path, self.nlink_name, b"%d" % max(count + change, 0))

    def before_removal(self, node: Node, parent: Node, name: bytes) -> None:
        """A name of a lower file with several names is about to go: as the kernel, the file is copied
        up (and indexed) first, so that the other names keep an exact link count."""
        if self.pos is None or node.is_dir or node.layer in (0, self.pos) or not node.shared_lower:
            return
        self.nodes.prefer_name(node, parent, name)
        self.copyup.copy_up(node)
