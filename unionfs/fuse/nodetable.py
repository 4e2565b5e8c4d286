"""The nodes as the kernel knows them: FUSE node ids, the kernel's lookup counts, `Entry` records.

The engine counts nothing (unionfs.engine.nodes): a node lives while somebody holds it. This table
holds every node the kernel has a reference to, by FUSE's lookup-count rule: each entry a reply
carries (lookup, create, mkdir, mknod, symlink, link, a readdirplus entry with attributes) gives the
kernel one reference to its node id, FORGET and BATCH_FORGET give references back, and a node id
whose count reaches zero is dropped (the engine node is then let go, unless an open handle or a
child still holds it). The root is never forgotten.

Node ids: the node's st_ino (`Node.ino`), which pyfuse3 requires (its node id is st_ino) and the
native backend keeps for now. The engine never gives two live nodes one st_ino, and a node the table
holds is live, so an id names one node for as long as the kernel holds it.
"""

import errno
from typing import NamedTuple

from ..engine.nodes import ROOT_ID


class Entry(NamedTuple):
    """A node's attributes as the kernel is to see them, with how long it may cache them.

    node_id 0 is "no node": a negative lookup (cache the absence for entry_timeout; every other field 0).
    """

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

    # The names the native protocol session packs by (unionfs.protocol.operations.Entry's), so a
    # record goes to the wire as it is.
    @property
    def attr_flags(self) -> int:
        return 0

    @property
    def node(self) -> int:
        return self.node_id

    @property
    def ino(self) -> int:
        return self.st_ino


_new = tuple.__new__  # a record straight from a tuple: no Python-level __new__ per reply


class KernelNodes:
    """The nodes the kernel holds, by node id, and the `Entry` records that show them.

    `reported_nlink(node, st)` is the engine's link count as shown; `uid_map`/`gid_map` the mount's id
    mappings; `timeout` how long the kernel may cache names and attributes.
    """

    def __init__(self, root, reported_nlink, uid_map, gid_map, timeout: float):
        self._held = {ROOT_ID: [root, 1]}  # node id -> [node, the kernel's lookup count]
        self._nlink = reported_nlink
        self.uid_map, self.gid_map = uid_map, gid_map
        self.timeout = timeout
        self.negative = Entry(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, timeout, timeout)

    def __len__(self):
        return len(self._held)

    def node(self, node_id: int):
        """The engine node of a node id the kernel holds; ESTALE for any other id."""
        try:
            return self._held[node_id][0]
        except KeyError:
            raise OSError(errno.ESTALE, "unknown node id %d" % node_id) from None

    def holds(self, node) -> bool:
        """Whether the kernel holds a reference to *node*."""
        held = self._held.get(node.ino)
        return held is not None and held[0] is node

    def forget(self, node_id: int, count: int) -> None:
        """The kernel gives back *count* references of *node_id* (unknown ids are ignored)."""
        held = self._held.get(node_id)
        if held is None or node_id == ROOT_ID:
            return
        held[1] -= count
        if held[1] <= 0:
            del self._held[node_id]

    def entry(self, node, st) -> Entry:
        """The Entry of a reply that gives the kernel one more reference to *node*."""
        node_id = node.ino
        held = self._held.get(node_id)
        if held is None:
            self._held[node_id] = [node, 1]
        else:
            held[1] += 1
        return self.attributes(node_id, node, st)

    def attributes(self, node_id: int, node, st) -> Entry:
        """The Entry of *node* (as node id *node_id*) for a reply that gives no reference (getattr)."""
        timeout = self.timeout
        return _new(
            Entry,
            (
                node_id,
                0,
                node.ino,
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
                # A lower file with several names is split by copy-up; a zero entry timeout makes the
                # kernel ask for the name each time, so the daemon knows which name is being changed.
                0 if node.shared_lower else timeout,
                timeout,
            ),
        )
