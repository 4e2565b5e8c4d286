"""Resolution: what a name of the merged view is, and its node.

A name is looked up top-down through the layers its parent merges: a whiteout ends the search, a
non-directory is the answer, a directory merges with the same-named directories below until one is
opaque; a redirect marker sends the search in the layers below to another path.
"""

import errno
import os
import stat

from .layers import Layer, join
from .nodes import Node
from .whiteout import WH_PREFIX, is_whiteout

NAME_MAX = 255
ABSENT_MAX = 1024  # names remembered as absent per directory (then forgotten all at once)
WHITED_OUT = object()  # in_layer's answer for a whiteout


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
    if not name or b"/" in name or name in (b".", b".."):
        raise OSError(errno.EINVAL, "bad name")


class Resolution:
    """Names looked up through the layers, nodes attached for them, a node's path in each layer."""

    def __init__(self, stack, nodes):
        self.stack, self.nodes = stack, nodes
        self.layers, self.markers = stack.layers, stack.markers
        self._devs = {}  # st_dev -> the one int object the nodes' keys hold for it

    def connect(self, union) -> None:
        self.index, self.attributes = union.index, union.attributes

    def in_layer(self, layer: Layer, rel: bytes, markers: bool = True):
        """What one layer holds at rel: its lstat, WHITED_OUT, or None. *markers* False: a `.wh.` file
        is not looked for, where its answer would change nothing (no layer is searched after this
        one, so a whiteout and nothing end the search alike): one failing lookup less in every
        negative LOOKUP."""
        try:
            st = layer.lstat(rel)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        except OSError as exc:
            if exc.errno != errno.ELOOP:  # ELOOP: a symlink where a directory was, not ours to follow
                raise
            return None
        if st is not None:
            return WHITED_OUT if is_whiteout(st) else st
        if markers and self.markers.read_wh_files:
            parent_rel, _, name = rel.rpartition(b"/")
            try:
                layer.lstat(join(parent_rel, WH_PREFIX + name))
                return WHITED_OUT
            except OSError:
                pass
        return None

    def rel(self, node: Node, index: int) -> bytes:
        """The path of *node* in layer *index* (which must hold it or merge it)."""
        if index == self.index.pos:
            return self.index.entry_name(node)
        if node.is_dir:
            if index and node.lpaths is not None:
                return node.lpaths[index]
            return node.path()
        if index == 0 or not node.names:
            return node.path()
        parent, name = node.names[0]
        if parent.lpaths is None:
            return node.path()
        return join(self.rel(parent, index), name)

    def resolve(self, parent: Node, name: bytes):
        """Look *name* up top-down across the layers merged into *parent*.

        Returns (layer index, lstat of the topmost entry, merged layers, lower paths, upper redirect)
        or None when the name is absent or whited out. As the kernel, a directory's redirect marker
        sends the lookup in the layers below to another path: "name" in the same parent, "/a/b" from
        the layers' root (and then through every layer below, whatever the parent merges).
        """
        redirect_follow = self.stack.redirect_follow
        parent_rel = parent.path()
        parent_lpaths = parent.lpaths
        top = None
        merge, rels = [], []
        redirect = None
        lookup, absolute, followed = name, False, False
        layers = parent.merge
        bottom = self.stack.nlayers - 1
        pos = 0
        while pos < len(layers):
            index = layers[pos]
            pos += 1
            if absolute:
                rel = lookup
            else:
                rel = join(parent_lpaths[index] if index and parent_lpaths else parent_rel, lookup)
            layer = self.layers[index]
            # (a redirect may give the loop new layers, but only after a directory is found here)
            st = self.in_layer(layer, rel, pos < len(layers))
            if st is None:
                continue
            if st is WHITED_OUT:
                break
            is_dir = stat.S_ISDIR(st.st_mode)
            if top is None:
                top = (index, st)
            elif not is_dir:
                break  # a non-directory below a directory stops the merge
            if not is_dir:
                break
            merge.append(index)
            rels.append(rel)
            # Following redirects, the kernel reads markers down to the last layer of all (an absolute
            # redirect reaches layers the parent does not merge); else to the parent's last layer.
            if (index == bottom) if redirect_follow else (pos >= len(layers)):
                break
            opaque, target = self.markers.of_dir(layer, rel)
            if opaque:
                break
            if target is None or not redirect_follow:
                continue
            if index == 0:
                redirect = target
            followed = True
            if target.startswith(b"/"):
                lookup, absolute = target[1:], True
                layers, pos = [i for i in self.nodes.root.merge if i > index], 0
            elif absolute:
                lookup = join(lookup.rpartition(b"/")[0], target)
            else:
                lookup = target
        if top is None:
            return None
        lpaths = None
        if parent_lpaths is not None or followed:
            lpaths = {index: rel for index, rel in zip(merge, rels) if index}
        return top[0], top[1], tuple(merge), lpaths, redirect

    def attach(self, parent, name, index, st, merge, lpaths=None, redirect=None, new=False) -> Node:
        """The node of a resolved entry, made or found in the node table under parent/name. *new*: an
        upper entry the daemon has just made, which records no origin (none to read)."""
        dev = st.st_dev
        key = (index, self._devs.setdefault(dev, dev), st.st_ino)  # one int object a device, not a node
        is_dir = stat.S_ISDIR(st.st_mode)
        shared = (index != 0 or self.stack.upper is None) and not is_dir and st.st_nlink > 1
        ino_key = None
        if not is_dir and not new and (index == 0 or self.index.pos is not None):
            index, key, shared = self.index.node_identity(parent, name, index, st, key, shared)
        elif is_dir and index == 0 and len(merge) > 1 and self.stack.upper is not None:
            ino_key = lambda: self._lower_dir_key(parent, name, merge[1], lpaths)  # noqa: E731
        node = self.nodes.attach(parent, name, key, is_dir, index, merge, lpaths, redirect, ino_key)
        node.shared_lower = shared
        return node

    def _lower_dir_key(self, parent: Node, name: bytes, lower: int, lpaths):
        """The key of a merged directory's topmost lower directory: its st_ino is the one the directory
        shows, as the kernel shows a merged (or copied-up) directory's."""
        rel = lpaths[lower] if lpaths and lower in lpaths else join(self.rel(parent, lower), name)
        st = self.layers[lower].lstat(rel)
        return (lower, st.st_dev, st.st_ino)

    def child(self, parent: Node, name: bytes) -> Node:
        """The node of parent/name; ENOENT if absent. It becomes the name the node is reached by."""
        return self._child(parent, name)[0]

    def _child(self, parent: Node, name: bytes):
        """(node, its lstat when this lookup just made that: a cold lookup needs no second stat for the
        attributes; else None)."""
        if not parent.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        check_name(name)
        node = parent.children.get(name)
        if node is not None:
            if node.shared_lower:
                self.nodes.prefer_name(node, parent, name)  # the name a change came through is copied up
            return node, None
        absent = parent.absent
        if absent is not None and name in absent:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        if self.markers.read_wh_files and name.startswith(WH_PREFIX):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))  # markers, not entries
        found = self.resolve(parent, name)
        if found is None:
            # Remembered: the kernel's create after its negative lookup asks again at once.
            if absent is None or len(absent) >= ABSENT_MAX:
                parent.absent = absent = set()
            absent.add(name)
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        node = self.attach(parent, name, *found)
        index, st = found[0], found[1]
        # The attributes are that very lstat unless they come from elsewhere: another layer (an index
        # entry), or an ownership record that overrides them (attributes.getattr).
        if node.layer != index or self.layers[index].record is not None or self.index.is_entry(node):
            st = None
        return node, st

    def lookup(self, parent: Node, name: bytes):
        """(node, stat) of parent/name ("." and ".." too); it becomes the name the node is reached by."""
        if name == b".":
            node = parent
        elif name == b"..":
            node = parent.parent or self.nodes.root
        else:
            node, st = self._child(parent, name)
            self.nodes.prefer_name(node, parent, name)
            if st is not None:
                return node, st
        return node, self.attributes.getattr(node)

    def lower_visible(self, parent: Node, name: bytes) -> bool:
        """Whether a lower layer merged into *parent* shows *name* (so removing it needs a whiteout)."""
        merge = parent.merge
        last = merge[-1] if merge else 0
        for index in merge:
            if index == 0:
                continue
            st = self.in_layer(self.layers[index], join(self.rel(parent, index), name), index != last)
            if st is not None:
                return st is not WHITED_OUT
        return False

    def upper_has(self, parent: Node, name: bytes) -> bool:
        """Whether the upper holds parent/name (under that very name)."""
        try:
            self.stack.upper.lstat(join(parent.path(), name))
            return True
        except OSError:
            return False
