"""The nodes as the kernel knows them: FUSE node ids, the kernel's lookup counts, `Entry` records.

The engine counts nothing (unionfs.engine.nodes): a node lives while somebody holds it. This table
holds every node the kernel has a reference to, by FUSE's lookup-count rule: each entry a reply
carries (lookup, create, mkdir, mknod, symlink, link, a readdirplus entry with attributes) gives the
kernel one reference to its node id, FORGET and BATCH_FORGET give references back, and a node id
whose count reaches zero is dropped (the engine node is then let go, unless an open handle or a
child still holds it). The root is never forgotten.

Node ids, two ways:
- `separate_ids` (the native backend): node ids are handles this table hands out, never reused, and
  st_ino is the engine's `Node.ino`, which may change (a copy-up that splits a lower hard link shows
  the upper file's number, as the kernel). Each name of a lower file with several names (index=off, with
  an upper) is a node id of its own, as the kernel overlay makes such names separate inodes sharing one
  st_ino: the kernel then sends rename and RENAME_EXCHANGE between two of them to the daemon, and every
  request says which name it came through, so the right name is copied up. Such a node id follows its
  name: when a copy-up splits the names, the others resolve to their lower file again. Their
  attributes are not cached (a zero attribute timeout), since the split changes them. With index=on
  such names stay one file, so they stay one node id, as below.
- otherwise (pyfuse3, whose node id is st_ino): one node id per engine node, its `Node.ino` when the
  kernel holds no other node under that number, else a fresh one; st_ino is the node id. Names of one
  lower file are then one inode, and the request layer gives them a zero entry timeout so that the
  kernel looks the name up before each use.
"""

import errno
from _operator import itemgetter  # the C module itself: operator.py is only its Python front

from ..engine.nodes import ROOT_ID
from ..engine.records import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the daemon's start)
if TYPE_CHECKING:
    from typing import NamedTuple

    class _EntryFields(NamedTuple):
        node_id: int
        generation: int
        st_ino: int
        mode: int
        nlink: int
        uid: int
        gid: int
        rdev: int
        size: int
        blksize: int
        blocks: int
        atime_ns: int
        mtime_ns: int
        ctime_ns: int
        entry_timeout: float
        attr_timeout: float

else:  # a record (engine/records.py): collections.namedtuple's import would cost the daemon's start ~1.5 ms
    _EntryFields = record(
        "Entry",
        "node_id generation st_ino mode nlink uid gid rdev size blksize blocks atime_ns mtime_ns ctime_ns "
        "entry_timeout attr_timeout",
        "",
        __name__,
    )


class Entry(_EntryFields):
    """A node's attributes as the kernel is to see them, with how long it may cache them.

    node_id 0 is "no node": a negative lookup (cache the absence for entry_timeout; every other field 0).
    """

    __slots__ = ()

    # The names the native protocol session packs by (unionfs.protocol.operations.Entry's), so a
    # record goes to the wire as it is (itemgetter: read in C, no Python frame per reply).
    attr_flags = 0
    node = property(itemgetter(0), doc="node_id")
    ino = property(itemgetter(2), doc="st_ino")


_new = tuple.__new__  # a record straight from a tuple: no Python-level __new__ per reply
_FALLBACK_BASE = 1 << 62  # node ids when st_ino is the node id and the node's number is taken


class _Inode:
    """One node id: its engine node, the kernel's count, and for a name of a lower hard link (separate
    ids only) the name it stands for."""

    __slots__ = ("node", "count", "parent", "name", "filled")

    def __init__(self, node, parent=None, name=None):
        self.node, self.count, self.parent, self.name = node, 0, parent, name
        self.filled = False  # its data was put into the kernel's page cache at an open (see first_fill)


class KernelNodes:
    """The nodes the kernel holds, by node id, and the `Entry` records that show them.

    `union` is the engine (names are resolved through it), `uid_map`/`gid_map` the mount's id mappings,
    `timeout` how long the kernel may cache names and attributes.
    """

    def __init__(self, union, uid_map, gid_map, timeout: float):
        self.union = union
        root = _Inode(union.root)
        root.count = 1
        self._inodes = {ROOT_ID: root}  # node id -> _Inode
        self._by_node = {union.root: ROOT_ID}  # engine node -> node id (not names of lower hard links)
        self._by_name = {}  # (parent node, name) -> node id of a lower hard link's name (separate ids)
        self._next_id = ROOT_ID + 1
        self._next_fallback = _FALLBACK_BASE
        self._nlink = union.reported_nlink
        self.uid_map, self.gid_map = uid_map, gid_map
        self.timeout = timeout
        self._indexed = union.index.enabled
        self.separate_ids = True
        self.negative = Entry(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, timeout, timeout)

    def __len__(self):
        return len(self._inodes)

    @property
    def separate_ids(self) -> bool:
        return self._separate_ids

    @separate_ids.setter
    def separate_ids(self, value: bool) -> None:
        self._separate_ids = value
        # A node id for each name of a lower hard link: only where ids are apart from st_ino, and not
        # with index=on, whose names of one lower file stay one file (one inode, as the kernel's).
        self._per_name = value and not self._indexed

    def node(self, node_id: int):
        """The engine node of a node id the kernel holds; ESTALE for any other id. A name of a lower
        hard link becomes the name the node is reached by (what a change copies up)."""
        try:
            inode = self._inodes[node_id]
        except KeyError:
            raise OSError(errno.ESTALE, "unknown node id %d" % node_id) from None
        if inode.parent is None:
            return inode.node
        node, where = inode.node, (inode.parent, inode.name)
        if where not in node.names:
            # A copy-up through another name split this one off: it is its lower file again.
            node = inode.node = self.union.child(inode.parent, inode.name)
        self.union.nodes.prefer_name(node, inode.parent, inode.name)
        return node

    def first_fill(self, node_id: int) -> bool:
        """True the first time it is asked for a node id the kernel holds (its page cache is to be filled
        now), False after: the kernel's cache of an inode lives no longer than the node id does."""
        inode = self._inodes.get(node_id)
        if inode is None or inode.filled:
            return False
        inode.filled = True
        return True

    def id_of(self, node):
        """The node id the kernel holds *node* by (None: none, or only by names of a lower hard link)."""
        return self._by_node.get(node)

    def holds(self, node) -> bool:
        """Whether the kernel holds a reference to *node* under a node id of its own."""
        return node in self._by_node

    def shown_ino(self, node) -> int:
        """The st_ino the kernel is shown for *node* (a readdir's d_ino)."""
        if self.separate_ids:
            return node.ino
        return self._by_node.get(node, node.ino)

    def forget(self, node_id: int, count: int) -> None:
        """The kernel gives back *count* references of *node_id* (unknown ids are ignored)."""
        inode = self._inodes.get(node_id)
        if inode is None or node_id == ROOT_ID:
            return
        inode.count -= count
        if inode.count > 0:
            return
        del self._inodes[node_id]
        if self._by_node.get(inode.node) == node_id:
            del self._by_node[inode.node]
        if inode.parent is not None and self._by_name.get((inode.parent, inode.name)) == node_id:
            del self._by_name[inode.parent, inode.name]

    def _new_id(self, node) -> int:
        if self.separate_ids:
            node_id = self._next_id
            self._next_id += 1
            return node_id
        node_id = node.ino
        if node_id in self._inodes:
            while self._next_fallback in self._inodes:
                self._next_fallback += 1
            node_id = self._next_fallback
            self._next_fallback += 1
        return node_id

    def entry(self, node, st, parent=None, name=None, node_id=None) -> Entry:
        """The Entry of a reply that gives the kernel one more reference to *node*, found as
        parent/name where given; *node_id*: the reply names that node id (a link of it)."""
        if node_id is None and parent is not None and self._per_name:
            node_id = self._by_name.get((parent, name))
            if node_id is not None:
                inode = self._inodes[node_id]
                if inode.node is not node and (parent, name) in inode.node.names:
                    self._unname(node_id, inode)  # the name is another file's now
                    node_id = None
        if node_id is None:
            node_id = self._by_node.get(node)
            if node_id is None:
                node_id = self._new_id(node)
                if self._per_name and node.shared_lower and parent is not None:
                    inode = self._inodes[node_id] = _Inode(node, parent, name)
                    self._by_name[parent, name] = node_id
                else:
                    inode = self._inodes[node_id] = _Inode(node)
                    self._by_node[node] = node_id
            else:
                inode = self._inodes[node_id]
        else:
            inode = self._inodes[node_id]
            if inode.node is not node:
                inode.node = node
            if inode.parent is not None and not node.shared_lower:
                # A name of a lower hard link whose copy is its own file now: one node id for the file.
                self._unname(node_id, inode)
                self._by_node.setdefault(node, node_id)
        inode.count += 1
        return self.attributes(node_id, node, st)

    def _unname(self, node_id: int, inode) -> None:
        if self._by_name.get((inode.parent, inode.name)) == node_id:
            del self._by_name[inode.parent, inode.name]
        inode.parent = inode.name = None

    def removed(self, parent, name) -> None:
        """parent/name went (unlink, or a rename over it): a node id standing for that name has none."""
        node_id = self._by_name.get((parent, name))
        if node_id is not None:
            self._unname(node_id, self._inodes[node_id])

    def moved(self, parent, name, new_parent, new_name, exchange: bool = False) -> None:
        """A rename (or RENAME_EXCHANGE) moved the names: node ids standing for them follow."""
        ids = self._by_name
        source, target = ids.pop((parent, name), None), ids.pop((new_parent, new_name), None)
        if target is not None:
            if exchange:
                ids[parent, name] = target
                self._inodes[target].parent, self._inodes[target].name = parent, name
            else:
                self._inodes[target].parent = self._inodes[target].name = None
        if source is not None:
            ids[new_parent, new_name] = source
            self._inodes[source].parent, self._inodes[source].name = new_parent, new_name

    def attributes(self, node_id: int, node, st) -> Entry:
        """The Entry of *node* (as node id *node_id*) for a reply that gives no reference (getattr)."""
        timeout = self.timeout
        return _new(
            Entry,
            (
                node_id,
                0,
                node.ino if self.separate_ids else node_id,
                st.st_mode,
                self._nlink(node, st),
                self.uid_map.shown(st.st_uid),
                self.gid_map.shown(st.st_gid),
                st.st_rdev,
                st.st_size,
                st.st_blksize,
                st.st_blocks,
                st.st_atime_ns,
                st.st_mtime_ns,
                st.st_ctime_ns,
                # Names of a lower hard link: a copy-up through one splits it off and changes its
                # attributes (nlink, st_ino), maybe in a request that fails (no attributes then go back).
                # So the kernel asks for them each time: for the name (entry timeout) where the names
                # share a node id, for the attributes where each name has its own.
                0 if node.shared_lower and not self._per_name else timeout,
                0 if node.shared_lower and self._per_name else timeout,
            ),
        )
