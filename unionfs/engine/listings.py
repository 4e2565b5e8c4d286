"""Listings: the merged readdir of a directory (each name once, upper first, whiteouts and what they hide
left out), its entries resolved in one pass per layer, and the kept listing of a directory that cannot
have changed since."""

import errno
import os
import stat

from .layers import join, lstat_at
from .nodes import Node
from .whiteout import WH_OPAQUE, WH_PREFIX, is_whiteout, is_whiteout_entry, proc_path

LISTING_SETTLE_NS = 1_000_000_000  # an upper directory changed more recently is listed from the layers


class Listings:
    """Directory listings of the merged view."""

    def __init__(self, stack, nodes, clock):
        self.stack, self.nodes = stack, nodes
        self.layers, self.markers = stack.layers, stack.markers
        self.clock = clock  # wall-clock nanoseconds, compared with the upper directory's times

    def connect(self, union) -> None:
        self.resolution, self.attributes, self.index = union.resolution, union.attributes, union.index

    def _layer_entries(self, node: Node):
        """(position in node.merge, layer index, dir fd, DirEntry) for every entry of every merged layer."""
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        for pos, index in enumerate(node.merge):
            try:
                fd = self.layers[index].open(self.resolution.rel(node, index), os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue
                raise
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        yield pos, index, fd, entry
            finally:
                os.close(fd)

    def listdir(self, node: Node):
        """The merged names of a directory: each once, upper first, whiteouts and what they hide left out."""
        read_wh = self.markers.read_wh_files
        names = {}
        pending, layer_pos = [], None
        for pos, _index, fd, entry in self._layer_entries(node):
            if pos != layer_pos:
                for marked in pending:  # a layer's .wh. files hide what the layers below hold
                    names.setdefault(marked, False)
                pending, layer_pos = [], pos
            name = os.fsencode(entry.name)
            if read_wh and name.startswith(WH_PREFIX):
                if name != WH_OPAQUE:
                    pending.append(name[len(WH_PREFIX) :])
                continue
            if name not in names:
                names[name] = not is_whiteout_entry(fd, entry)
        return [name for name, visible in names.items() if visible]

    def is_empty_dir(self, node: Node) -> bool:
        return not self.listdir(node)

    def scan(self, node: Node):
        """The merged listing with each name resolved: [(name, layer index, lstat, merged layers,
        lower paths, upper redirect)].

        One pass over each layer's directory answers what a lookup of every name would, with one
        fstatat per visible name instead of a path resolution per name and layer (readdirplus). A
        directory with a redirect marker merges other paths below it: that name is looked up whole.
        """
        redirect_follow = self.stack.redirect_follow
        last = len(node.merge) - 1
        bottom = self.stack.nlayers - 1
        found = {}  # name -> [layer index, stat, merge list, merge stopped]
        hidden = set()
        redirected = []
        pending, layer_pos = [], None
        read_wh = self.markers.read_wh_files
        self.stack.mounts.refresh()
        for pos, index, fd, entry in self._layer_entries(node):
            if pos != layer_pos:
                for marked in pending:  # a layer's .wh. files hide what the layers below hold
                    rec = found.get(marked)
                    if rec is None:
                        hidden.add(marked)
                    else:
                        rec[3] = True
                pending, layer_pos = [], pos
                more_below = index < bottom if redirect_follow else pos < last
                layer = self.layers[index]
                # fstatat where no mount point can be met (layermounts.py), else openat2, which refuses them
                covered = layer.covered.get(self.resolution.rel(node, index), ()) if layer.mounts_known else None
                record = layer.record
            name = os.fsencode(entry.name)
            if read_wh and name.startswith(WH_PREFIX):
                if name != WH_OPAQUE:
                    pending.append(name[len(WH_PREFIX) :])
                continue
            rec = found.get(name)
            if rec is None:
                if name in hidden:
                    continue
                try:
                    if covered is None or name in covered:
                        st = lstat_at(fd, name)
                    else:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:  # gone since getdents, or a mount point: not ours to step into
                    continue
                if is_whiteout(st):
                    hidden.add(name)
                    continue
                if record is not None:
                    st = self.attributes.record_view(st, proc_path(fd, name), record, False)
                is_dir = stat.S_ISDIR(st.st_mode)
                stopped = not is_dir or (more_below and self._entry_stops(fd, name, redirected, layer.writable))
                found[name] = [index, st, [index] if is_dir else None, stopped]
            elif not rec[3]:
                if entry.is_dir(follow_symlinks=False):
                    rec[2].append(index)
                    rec[3] = more_below and self._entry_stops(fd, name, redirected, layer.writable)
                else:
                    rec[3] = True  # a whiteout or a non-directory below stops the merge
        for name in redirected:
            del found[name]
        result = []
        parent_lpaths = node.lpaths
        for name, rec in found.items():
            merge = tuple(rec[2]) if rec[2] else ()
            lpaths = None
            if parent_lpaths is not None and merge:
                lpaths = {i: join(parent_lpaths[i], name) for i in merge if i}
            result.append((name, rec[0], rec[1], merge, lpaths, None))
        for name in redirected:
            resolved = self.resolution.resolve(node, name)
            if resolved is not None:
                result.append((name,) + resolved)
        return result

    def _entry_stops(self, dir_fd: int, name: bytes, redirected: list, upper: bool) -> bool:
        """Whether the directory *name* in dir_fd stops the merge (opaque); a redirect marker puts the
        name on *redirected* (its merge is another path's) and stops this pass's merging of it."""
        opaque, target = self.markers.of_entry(dir_fd, name, upper)
        if opaque:
            return True
        if target is not None and self.stack.redirect_follow:
            redirected.append(name)
            return True
        return False

    def list_entries(self, node: Node):
        """The merged listing as [(name, file type, scan entry or None)].

        A directory whose listing cannot have changed since the last one is answered from that one,
        without reading the layers: then the scan entry is None and nothing is known of the entries but
        their names and types (the caller asks `lookup` for attributes). As the kernel's overlay keeps
        its merged-dir cache until the directory changes: lower layers never change under a mount, and
        every change of the upper directory moves its mtime or ctime (a name made, removed or renamed,
        a whiteout, an opaque or redirect marker). A change less than LISTING_SETTLE_NS ago is not
        trusted to show (timestamps tick coarsely), so a directory in flux is always read again.
        """
        key = self._listing_key(node)
        cached = node.listing
        if key is not None and cached is not None and cached[0] == key:
            return [(name, ftype, None) for name, ftype in cached[1]]
        scanned = self.scan(node)
        node.listing = None if key is None else (key, [(e[0], stat.S_IFMT(e[2].st_mode)) for e in scanned])
        return [(e[0], stat.S_IFMT(e[2].st_mode), e) for e in scanned]

    def _listing_key(self, node: Node):
        """What must stay the same for a listing to stay valid, or None (do not keep this listing)."""
        mounts, upper = self.stack.mounts, self.stack.upper
        mounts.refresh()
        if upper is None or not node.merge or node.merge[0] != 0:
            # no upper part (or no upper at all): only a copy-up (through the daemon) adds one
            return (mounts.generation, node.merge, node.lpaths)
        try:
            st = upper.lstat(self.resolution.rel(node, 0))
        except OSError:
            return None
        if self.clock() - max(st.st_mtime_ns, st.st_ctime_ns) < LISTING_SETTLE_NS:
            return None
        return (mounts.generation, node.merge, node.lpaths, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)

    def attach_scanned(self, parent: Node, scanned):
        """(node, stat) for one entry of `scan`, as `lookup` gives them."""
        name, index, st, merge, lpaths, redirect = scanned
        node = self.resolution.attach(parent, name, index, st, merge, lpaths, redirect)
        if self.index.is_entry(node):
            st = self.attributes.getattr(node)  # the index entry, not the lower name's old file
        self.nodes.prefer_name(node, parent, name)
        return node, st

    def is_scanned_node(self, node: Node, scanned) -> bool:
        """Whether a `scan` entry resolves to *node* as it stands (same backing entry; an index=on
        entry never matches, its key is its origin's)."""
        st = scanned[2]
        return node.key == (scanned[1], st.st_dev, st.st_ino)
