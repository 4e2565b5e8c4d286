"""The node table: the merged view's objects, their names and the inode numbers they show.

A node is one object of the merged view. Non-directories are keyed by their backing file
(layer, st_dev, st_ino), so all names of one file share one node and one st_ino, as on the kernel;
a copied-up file that records its origin is keyed by that origin (see `Resolution.attach`).
Directories have exactly one name.

`Node.ino` is the st_ino the union shows (it changes only when a copy-up splits a lower hard link:
the copy shows its own number, as the kernel's). It is derived from the key's inode number (a merged
directory's from its topmost lower directory's, as the kernel's), so it is the same when a node is
dropped and made again, and matches the layer's own numbering when all layers share one filesystem
(the kernel's samefs case). When that number is already shown by a different live node (after a
copy-up changed a node's backing, or a file with inode number 1), a fresh one from a private range is
used, so two live nodes never show one st_ino.

The table holds no counts: a node lives while somebody holds it. Children are held weakly; a node holds
its parents (through its names), an open `FileHandle` holds its node, and callers hold what they still
need (the FUSE request layer holds every node the kernel knows, `unionfs.fuse.nodetable`). A node
nobody holds goes away by itself, and a lookup makes it again from the layers.
"""

import errno

from .weakvalues import WeakValues, ref

ROOT_ID = 1
_FALLBACK_BASE = 1 << 48
_INO_MASK = (1 << 48) - 1
# A read-only empty mapping: what types.MappingProxyType is, without importing `types` (~0.5 ms of a
# daemon's start before its first answer).
_NO_CHILDREN = type(type.__dict__)({})


def _set_child(parent, name: bytes, node) -> None:
    parent.children[name] = node
    if parent.absent:
        parent.absent.discard(name)


class Node:
    __slots__ = (
        "ino",
        "is_dir",
        "names",
        "layer",
        "merge",
        "key",
        "children",
        "shared_lower",
        "handles",
        "xattr_names",
        "lpaths",
        "redirect",
        "gone_stat",
        "absent",
        "listing",
        "is_root",
        "table",
        "__weakref__",
    )

    def __init__(self, ino, is_dir, layer, merge, key, table=None):
        self.ino = ino  # st_ino as shown (see the module docstring)
        self.is_dir = is_dir
        self.names = []  # [(parent Node, name bytes)], the first one is used to reach the file
        self.layer = layer  # index of the topmost layer that holds this entry
        self.merge = merge  # directories: layers merged into this one, top first
        self.key = key  # (layer, st_dev, st_ino) of the backing entry, or of the origin it records
        # name -> child Node, held weakly (directories; others have none)
        self.children = WeakValues() if is_dir else _NO_CHILDREN
        self.shared_lower = False  # a lower file with other names (hard links): see fuse/nodetable.py
        self.handles = ()  # open FileHandles (a list while any), to stat a file whose last name is gone
        self.xattr_names = None  # stored xattr names once listed (the kernel asks for
        #                          security.capability before every write): None = not known
        self.lpaths = None  # directories: {lower layer index: path in it} where that differs
        #                          from path() (a redirect, or a moved ancestor); None = path() everywhere
        self.redirect = None  # directories: the upper's redirect marker ("/a/b" or "name"), if any
        self.gone_stat = None  # the last stat of a node whose last name went while the kernel may still
        #                          hold it open without a daemon handle (a fifo, a device, a directory)
        self.absent = None  # directories: names a lookup found in no layer, until a name is made
        #                          here (the layers change only through the daemon); None = none known
        self.listing = None  # directories: (key, [(name, file type)]) of the last listing, see
        #                          Listings.list_entries
        self.is_root = False
        self.table = table  # the NodeTable whose maps hold this node (they drop it when it dies)

    def __del__(self, _ref=ref):
        # Nobody holds the node any more: the entries that held it weakly go (see weakvalues). The
        # names hold its parents, so they are alive here.
        wr = _ref(self)
        for parent, name in self.names:
            parent.children.discard(name, wr)
        table = self.table
        if table is not None:
            table.by_ino.discard(self.ino, wr)
            table.by_key.discard(self.key, wr)

    def __repr__(self):
        return f"Node({self.ino}, {self.names[:1]!r}, layer={self.layer}, merge={self.merge})"

    @property
    def parent(self):
        return self.names[0][0] if self.names else None

    def path(self) -> bytes:
        """Relative path in the upper (and in every lower unless `lpaths` says otherwise)."""
        if not self.names:
            if self.is_root:
                return b""
            # Unlinked (maybe still open): it has no path, and b"" would be the layer's root.
            raise OSError(errno.ENOENT, "no name left")
        parts = []
        node = self
        while node.names:
            parent, name = node.names[0]
            parts.append(name)
            node = parent
        if not node.is_root:
            raise OSError(errno.ESTALE, "node is no longer reachable")
        parts.reverse()
        return b"/".join(parts)


class NodeTable:
    def __init__(self, root_key, root_merge, single_dev: bool):
        self.single_dev = single_dev
        self._dev_index = {}
        self._next_fallback = _FALLBACK_BASE
        self.by_ino = WeakValues()  # st_ino -> the live node that shows it
        self.by_key = WeakValues()
        # The root shows the top layer's root number, as the kernel's overlay (the upper's, or the top
        # lower's): a backend whose node ids are st_ino shows the root as node 1 whatever this says.
        root_ino = self._new_ino(root_key)
        self.root = Node(root_ino, True, root_merge[0], root_merge, root_key, self)  # held by the table
        self.root.is_root = True
        self.by_ino[root_ino] = self.root
        self.by_key[root_key] = self.root

    def __len__(self):
        """How many nodes are alive."""
        return len(self.by_ino)

    def _new_ino(self, key) -> int:
        _layer, dev, ino = key
        if self.single_dev:
            wanted = ino
        else:
            index = self._dev_index.setdefault(dev, len(self._dev_index) + 1)
            wanted = (index << 48) | (ino & _INO_MASK) if index < 0x7FFF and ino <= _INO_MASK else 0
        if wanted and wanted != ROOT_ID and wanted < (1 << 63) and wanted not in self.by_ino:
            return wanted
        while self._next_fallback in self.by_ino:
            self._next_fallback += 1
        self._next_fallback += 1
        return self._next_fallback - 1

    def attach(
        self, parent: Node, name: bytes, key, is_dir: bool, layer: int, merge, lpaths=None, redirect=None, ino_key=None
    ) -> Node:
        """The node for parent/name, resolved to the backing *key*; reuses a live node of that key.
        A new node's st_ino comes from *key*, or from what `ino_key()` returns where given."""
        node = parent.children.get(name)
        if node is not None and node.key == key and node.is_dir == is_dir:
            node.layer, node.merge, node.lpaths, node.redirect = layer, merge, lpaths, redirect
            return node
        if node is not None:
            self.detach(parent, name)
        node = self.by_key.get(key)
        if node is not None and node.is_dir == is_dir:
            if is_dir:
                # A directory has one name: it was moved behind our back; follow it.
                for old_parent, old_name in list(node.names):
                    self._unname(node, old_parent, old_name)
            node.layer, node.merge, node.lpaths, node.redirect = layer, merge, lpaths, redirect
        else:
            if ino_key is not None:
                try:
                    ino_key = ino_key()
                except OSError:  # changed behind the mount: the backing entry's number will do
                    ino_key = None
            node = Node(self._new_ino(ino_key or key), is_dir, layer, merge, key, self)
            node.lpaths, node.redirect = lpaths, redirect
            self.by_ino[node.ino] = node
            self.by_key[key] = node
            node.names = [(parent, name)]
            _set_child(parent, name, node)
            return node
        node.names.insert(0, (parent, name))
        _set_child(parent, name, node)
        return node

    def rekey(self, node: Node, key, renumber: bool = False) -> None:
        """The node's backing entry changed (copy-up); its st_ino stays, or with *renumber* becomes the
        new key's."""
        if self.by_key.get(node.key) is node:
            del self.by_key[node.key]
        node.key = key
        if renumber:
            if self.by_ino.get(node.ino) is node:
                del self.by_ino[node.ino]
            node.ino = self._new_ino(key)
            self.by_ino[node.ino] = node
        # A stale node that claimed this backing loses it: the fresh one wins.
        self.by_key[key] = node

    def prefer_name(self, node: Node, parent: Node, name: bytes) -> None:
        """Make parent/name the name used to reach the node (the one most recently looked up)."""
        if node.names and node.names[0] != (parent, name):
            try:
                node.names.remove((parent, name))
            except ValueError:
                pass
            node.names.insert(0, (parent, name))

    def _unname(self, node: Node, parent: Node, name: bytes) -> None:
        if parent.children.get(name) is node:
            del parent.children[name]
        try:
            node.names.remove((parent, name))
        except ValueError:
            pass

    def detach(self, parent: Node, name: bytes):
        """parent/name no longer names its node (unlink, rmdir, rename away)."""
        node = parent.children.get(name)
        if node is None:
            return None
        self._unname(node, parent, name)
        if not node.names and self.by_key.get(node.key) is node:
            # The backing may be reused by another file; this node keeps its st_ino while held.
            del self.by_key[node.key]
        return node

    def move(self, node: Node, parent: Node, name: bytes, new_parent: Node, new_name: bytes) -> None:
        self.detach(new_parent, new_name)
        if parent.children.get(name) is node:
            del parent.children[name]
        node.names = [(new_parent, new_name) if n == (parent, name) else n for n in node.names]
        if (new_parent, new_name) not in node.names:
            node.names.insert(0, (new_parent, new_name))
        _set_child(new_parent, new_name, node)

    def exchange(self, a: Node, a_parent: Node, a_name: bytes, b: Node, b_parent: Node, b_name: bytes):
        """a and b swapped names (RENAME_EXCHANGE)."""
        a.names = [(b_parent, b_name) if n == (a_parent, a_name) else n for n in a.names]
        b.names = [(a_parent, a_name) if n == (b_parent, b_name) else n for n in b.names]
        _set_child(b_parent, b_name, a)
        _set_child(a_parent, a_name, b)
