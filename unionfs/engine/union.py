"""The union engine: kernel-overlayfs semantics over layer directories, with no FUSE in sight.

Every method works on nodes of the merged view and raises OSError with the errno a user must see.
Changes land in the upper layer only; a lower entry is copied up before its first change; removing a
lower entry leaves a char 0/0 whiteout; new entries are prepared in the work dir and renamed into place.
The engine is single-threaded: only `CopyUpJob.copy_data` may run in another thread.
"""

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass

from . import _sys, copyup, ownership, xattrs
from . import index as indexing
from .layers import O_PATH_DIR, Layer, join, lstat_at, opened, remove_tree
from .nodes import Node, NodeTable
from .stack import Stack
from .whiteout import (
    REDIRECT,
    REDIRECT_MAX,
    WH_OPAQUE,
    WH_PREFIX,
    is_whiteout,
    is_whiteout_entry,
    make_whiteout,
    proc_path,
)

log = logging.getLogger("unionfs")

NAME_MAX = 255
_ACCMODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
# The open flags passed on to the backing file. The rest are the kernel's business (it created and
# checked the file, it positions O_APPEND writes), would break unaligned I/O (O_DIRECT), or are not
# open(2) flags at all: the kernel sends __FMODE_EXEC (0o40) on exec, which openat2 refuses (EINVAL).
_OPEN_KEEP = _ACCMODE | os.O_SYNC | os.O_DSYNC | getattr(os, "O_LARGEFILE", 0)


@dataclass
class Caller:
    """Who asks: new entries get this owner (when the daemon may chown)."""

    uid: int
    gid: int


class FileHandle:
    """An open regular file: a descriptor on its backing in one layer."""

    __slots__ = ("fd", "node", "layer", "writable")

    def __init__(self, fd, node, layer, writable):
        self.fd, self.node, self.layer, self.writable = fd, node, layer, writable


class CopyUpJob:
    """One copy-up in flight (see copyup.py); created by Union.copy_up_begin."""

    __slots__ = ("node", "src_layer", "src_st", "src_fd", "tmp_name", "dst_fd", "with_data", "linked")

    def __init__(self, node, src_layer, src_st):
        self.node, self.src_layer, self.src_st = node, src_layer, src_st
        self.src_fd = self.dst_fd = -1
        self.tmp_name = None
        self.with_data = False
        self.linked = False  # index=on: the name was linked up to its index entry; nothing to commit

    @property
    def data_size(self) -> int:
        return self.src_st.st_size if self.with_data else 0

    def copy_data(self) -> None:
        """The blocking part; touches nothing but the two fds, so it may run in a worker thread."""
        if self.with_data:
            copyup.copy_data(self.src_fd, self.dst_fd, self.src_st.st_size)

    def close(self):
        for fd in (self.src_fd, self.dst_fd):
            if fd >= 0:
                os.close(fd)
        self.src_fd = self.dst_fd = -1


class Union:
    """A merged view of `lowers` (topmost first) under an optional `upper` that takes every change."""

    def __init__(
        self,
        lowers,
        upper=None,
        work=None,
        *,
        userxattr=False,
        whiteout_files=True,
        redirect_dir="off",
        ignore_chown_errors=False,
        xattr_permissions=0,
        index=False,
        volatile=False,
        clock=time.time_ns,
    ):
        self.stack = stack = Stack(
            lowers,
            upper,
            work,
            userxattr=userxattr,
            whiteout_files=whiteout_files,
            redirect_dir=redirect_dir,
            ignore_chown_errors=ignore_chown_errors,
            volatile=volatile,
        )
        self.layers, self.upper, self.work, self.nlayers = stack.layers, stack.upper, stack.work, stack.nlayers
        self.as_root, self.marker_prefix = stack.as_root, stack.marker_prefix
        self.ignore_chown_errors = ignore_chown_errors
        self.redirect_create, self.redirect_follow = stack.redirect_create, stack.redirect_follow
        self.markers, self.mounts, self.volatile = stack.markers, stack.mounts, stack.volatile
        self.clock = clock  # wall-clock nanoseconds, to compare with file times (tests set their own)
        top = self.layers[0]
        single_dev = len({layer.dev for layer in self.layers}) == 1
        self.nodes = NodeTable((0, top.dev, top.root_ino), tuple(range(len(self.layers))), single_dev)
        self.index_pos = None
        self.offline_changes_off = self.redirect_create or (bool(index) and self.work is not None)
        try:
            self._setup_records(xattr_permissions)
            if index and self.work is not None:
                self._setup_index(work)
        except BaseException:
            self.close()
            raise

    def _setup_index(self, workdir: str) -> None:
        """index=on (see index.py): W/pyunionfs-index, reached like a layer at position index_pos."""
        path = os.path.join(workdir, indexing.DIR_NAME)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        if os.path.islink(path):
            raise OSError(errno.EINVAL, "the index %s is a symlink" % path)
        layer = Layer(self.nlayers, path, writable=True)
        if not stat.S_ISDIR(os.fstat(layer.root_fd).st_mode) or layer.dev != self.upper.dev:
            layer.close()
            raise OSError(errno.EINVAL, "the index is not a directory on the upper's filesystem")
        self.layers.append(layer)
        self.index_pos = layer.index
        indexing.check_manifest(layer.root_fd, indexing.manifest(self.layers[1 : self.nlayers]))
        self.origin_name = self.marker_prefix + indexing.ORIGIN
        self.nlink_name = self.marker_prefix + indexing.NLINK

    def _setup_records(self, xattr_permissions: int) -> None:
        """Which layers keep owners and modes in ownership records (ownership.py), and whether the upper
        takes them (-o xattr_permissions=1|2, fuse-overlayfs's option)."""
        for layer in self.layers:
            layer.record = ownership.layer_record_name(proc_path(layer.root_fd))
        # The real root's mount honours setuid and devices: user.* records may not grant those.
        self.strict_records = self.as_root and self.stack.initial_userns
        self.records_in_use = any(layer.record for layer in self.layers)
        self.write_records = bool(xattr_permissions) and self.upper is not None
        if not self.write_records:
            return
        upper = self.upper
        if xattr_permissions == 1:
            name = ownership.PRIVILEGED
        else:
            name = ownership.USER if upper.record == ownership.USER else ownership.CONTAINERS
        if upper.record != name:
            # The root's record: the merged root as it shows now (a lower's record, or the real one).
            root = proc_path(upper.root_fd)
            st = os.stat(root)
            for layer in self.layers[1:]:
                if layer.record:
                    st = self._record_view(
                        os.stat(proc_path(layer.root_fd)), proc_path(layer.root_fd), layer.record, True
                    )
                    break
            try:
                os.setxattr(root, name, ownership.encode(st.st_uid, st.st_gid, st.st_mode))
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    "cannot write the ownership record %s on the upper dir (%s)" % (name.decode(), exc.strerror),
                ) from None
            upper.record = name
        self.records_in_use = True

    def close(self):
        """Close the layer fds and free the locks (idempotent)."""
        self.stack.close()

    @property
    def read_wh_files(self) -> bool:
        return self.markers.read_wh_files

    @property
    def write_wh_files(self) -> bool:
        return self.markers.write_wh_files

    @property
    def root(self) -> Node:
        return self.nodes.root

    @property
    def writes_need_reads(self) -> bool:
        """Always False: the engine opens files as asked, so it cannot serve the kernel's write-back
        cache (which reads partial pages through files opened write-only). The FUSE adapter sets it
        from its cache setting; only False is accepted."""
        return False

    @writes_need_reads.setter
    def writes_need_reads(self, value: bool) -> None:
        if value:
            raise ValueError("the union engine does not support the kernel's write-back cache")

    # ------------------------------------------------------------------ resolution

    def _check_name(self, name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
        if not name or b"/" in name or name in (b".", b".."):
            raise OSError(errno.EINVAL, "bad name")

    def _in_layer(self, layer: Layer, rel: bytes):
        """What one layer holds at rel: its lstat, WHITED_OUT, or None."""
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
        if self.read_wh_files:
            parent_rel, _, name = rel.rpartition(b"/")
            try:
                layer.lstat(join(parent_rel, WH_PREFIX + name))
                return WHITED_OUT
            except OSError:
                pass
        return None

    def _rel(self, node: Node, index: int) -> bytes:
        """The path of *node* in layer *index* (which must hold it or merge it)."""
        if index == self.index_pos and index is not None:
            return indexing.key(node.key[0], node.key[2])
        if node.is_dir:
            if index and node.lpaths is not None:
                return node.lpaths[index]
            return node.path()
        if index == 0 or not node.names:
            return node.path()
        parent, name = node.names[0]
        if parent.lpaths is None:
            return node.path()
        return join(self._rel(parent, index), name)

    def _resolve(self, parent: Node, name: bytes):
        """Look *name* up top-down across the layers merged into *parent*.

        Returns (layer index, lstat of the topmost entry, merged layers, lower paths, upper redirect)
        or None when the name is absent or whited out. As the kernel, a directory's redirect marker
        sends the lookup in the layers below to another path: "name" in the same parent, "/a/b" from
        the layers' root (and then through every layer below, whatever the parent merges).
        """
        parent_rel = parent.path()
        parent_lpaths = parent.lpaths
        top = None
        merge, rels = [], []
        redirect = None
        lookup, absolute, followed = name, False, False
        layers = parent.merge
        bottom = self.nlayers - 1
        pos = 0
        while pos < len(layers):
            index = layers[pos]
            pos += 1
            if absolute:
                rel = lookup
            else:
                rel = join(parent_lpaths[index] if index and parent_lpaths else parent_rel, lookup)
            layer = self.layers[index]
            st = self._in_layer(layer, rel)
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
            if (index == bottom) if self.redirect_follow else (pos >= len(layers)):
                break
            opaque, target = self.markers.of_dir(layer, rel)
            if opaque:
                break
            if target is None or not self.redirect_follow:
                continue
            if index == 0:
                redirect = target
            followed = True
            if target.startswith(b"/"):
                lookup, absolute = target[1:], True
                layers, pos = [i for i in self.root.merge if i > index], 0
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

    def _attach(self, parent, name, index, st, merge, lpaths=None, redirect=None) -> Node:
        key = (index, st.st_dev, st.st_ino)
        shared = (index != 0 or self.upper is None) and not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1
        if self.index_pos is not None and not stat.S_ISDIR(st.st_mode):
            index, key, shared = self._indexed(parent, name, index, st, key, shared)
        node = self.nodes.attach(parent, name, key, stat.S_ISDIR(st.st_mode), index, merge, lpaths, redirect)
        node.shared_lower = shared
        return node

    def _indexed(self, parent: Node, name: bytes, index: int, st, key, shared):
        """index=on: (layer, node key, shared) of a non-directory. A copy records its origin, which keys
        it (so it keeps the lower's inode number); a lower file whose copy is indexed is the index entry."""
        if index == 0:
            rel = join(parent.path(), name)
            origin = self._read_origin(rel)
            if origin is None:
                return index, key, shared
            lower, ino = origin
            key = (lower, self.layers[lower].dev, ino)
        elif st.st_nlink > 1:
            lower, ino = index, st.st_ino
        else:
            return index, key, shared
        try:
            self.layers[self.index_pos].lstat(indexing.key(lower, ino))
        except FileNotFoundError:
            return index, key, shared
        return self.index_pos, key, True

    def _read_origin(self, rel: bytes):
        try:
            with self.upper.opened(rel, os.O_PATH) as fd:
                if stat.S_ISLNK(os.fstat(fd).st_mode):
                    return None
                value = os.getxattr(proc_path(fd), self.origin_name)
        except OSError:
            return None
        origin = indexing.parse_key(value)
        if origin is None or not 0 < origin[0] < self.nlayers:
            return None
        return origin

    def child(self, parent: Node, name: bytes) -> Node:
        """The node of parent/name without taking a lookup reference; ENOENT if absent."""
        if not parent.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        self._check_name(name)
        node = parent.children.get(name)
        if node is not None:
            return node
        absent = parent.absent
        if absent is not None and name in absent:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        if self.read_wh_files and name.startswith(WH_PREFIX):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))  # markers, not entries
        found = self._resolve(parent, name)
        if found is None:
            # Remembered: the kernel's create after its negative lookup asks again at once.
            if absent is None or len(absent) >= ABSENT_MAX:
                parent.absent = absent = set()
            absent.add(name)
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return self._attach(parent, name, *found)

    def lookup(self, parent: Node, name: bytes):
        """(node, stat) of parent/name, counting one kernel lookup of the node."""
        if name == b".":
            node = parent
        elif name == b"..":
            node = parent.parent or self.root
        else:
            node = self.child(parent, name)
            self.nodes.prefer_name(node, parent, name)
        st = self.getattr(node)
        node.lookups += 1
        return node, st

    def forget(self, node_id: int, count: int) -> None:
        node = self.nodes.by_id.get(node_id)
        if node is not None:
            self.nodes.forget(node, count)

    def getattr(self, node: Node) -> os.stat_result:
        if not node.names and node is not self.root:
            for handle in node.handles:  # unlinked but still open
                return self._shown_fd(self.layers[handle.layer], handle.fd)
            if node.gone_stat is not None:  # opened by the kernel alone (a fifo): its last attributes
                return _WithNlink(node.gone_stat, 0)
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        layer = self.layers[node.layer]
        rel = self._rel(node, node.layer)
        if node.layer == self.index_pos:
            return self._index_stat(rel)
        if layer.record is None:
            return layer.lstat(rel)
        with layer.opened(rel, os.O_PATH) as fd:
            return self._shown_fd(layer, fd)

    def _index_stat(self, key: bytes):
        """An index entry's stat, with the union's link count (index.py) as st_nlink."""
        with self.layers[self.index_pos].opened(key, os.O_PATH) as fd:
            st = self._shown_fd(self.upper, fd)
            try:
                nlink = int(os.getxattr(proc_path(fd), self.nlink_name))
            except (OSError, ValueError):
                return st
        return _WithNlink(st, max(nlink, 1))

    def _record_view(self, st, path: bytes, record: bytes, follow: bool):
        """*st* as an ownership record at *path* shows it (see ownership.view)."""
        return ownership.view(st, path, record, follow, self.strict_records)

    def _shown_fd(self, layer: Layer, fd: int):
        """fstat of fd, with the owner and mode its ownership record gives (when the layer has those)."""
        st = os.fstat(fd)
        if layer.record is None:
            return st
        return self._record_view(st, proc_path(fd), layer.record, True)

    def reported_nlink(self, node: Node, st: os.stat_result) -> int:
        # As the kernel: a merged directory reports 1 ("find" then does not count subdirectories).
        if node.is_dir and len(node.merge) > 1:
            return 1
        return st.st_nlink

    # ------------------------------------------------------------------ directories

    def _layer_entries(self, node: Node):
        """(position in node.merge, layer index, dir fd, DirEntry) for every entry of every merged layer."""
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        for pos, index in enumerate(node.merge):
            try:
                fd = self.layers[index].open(self._rel(node, index), os.O_RDONLY | os.O_DIRECTORY)
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
        names = {}
        pending, layer_pos = [], None
        for pos, _index, fd, entry in self._layer_entries(node):
            if pos != layer_pos:
                for marked in pending:  # a layer's .wh. files hide what the layers below hold
                    names.setdefault(marked, False)
                pending, layer_pos = [], pos
            name = os.fsencode(entry.name)
            if self.read_wh_files and name.startswith(WH_PREFIX):
                if name != WH_OPAQUE:
                    pending.append(name[len(WH_PREFIX) :])
                continue
            if name not in names:
                names[name] = not is_whiteout_entry(fd, entry)
        return [name for name, visible in names.items() if visible]

    def scan(self, node: Node):
        """The merged listing with each name resolved: [(name, layer index, lstat, merged layers,
        lower paths, upper redirect)].

        One pass over each layer's directory answers what a lookup of every name would, with one
        fstatat per visible name instead of a path resolution per name and layer (readdirplus). A
        directory with a redirect marker merges other paths below it: that name is looked up whole.
        """
        last = len(node.merge) - 1
        bottom = self.nlayers - 1
        found = {}  # name -> [layer index, stat, merge list, merge stopped]
        hidden = set()
        redirected = []
        pending, layer_pos = [], None
        read_wh = self.read_wh_files
        self.mounts.refresh()
        for pos, index, fd, entry in self._layer_entries(node):
            if pos != layer_pos:
                for marked in pending:  # a layer's .wh. files hide what the layers below hold
                    rec = found.get(marked)
                    if rec is None:
                        hidden.add(marked)
                    else:
                        rec[3] = True
                pending, layer_pos = [], pos
                more_below = index < bottom if self.redirect_follow else pos < last
                layer = self.layers[index]
                # fstatat where no mount point can be met (mounts.py), else openat2, which refuses them
                covered = layer.covered.get(self._rel(node, index), ()) if layer.mounts_known else None
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
                    st = self._record_view(st, proc_path(fd, name), record, False)
                is_dir = stat.S_ISDIR(st.st_mode)
                stopped = not is_dir or (more_below and self._entry_stops(fd, name, redirected))
                found[name] = [index, st, [index] if is_dir else None, stopped]
            elif not rec[3]:
                if entry.is_dir(follow_symlinks=False):
                    rec[2].append(index)
                    rec[3] = more_below and self._entry_stops(fd, name, redirected)
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
            resolved = self._resolve(node, name)
            if resolved is not None:
                result.append((name,) + resolved)
        return result

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
        self.mounts.refresh()
        if self.upper is None or not node.merge or node.merge[0] != 0:
            # no upper part (or no upper at all): only a copy-up (through the daemon) adds one
            return (self.mounts.generation, node.merge, node.lpaths)
        try:
            st = self.upper.lstat(self._rel(node, 0))
        except OSError:
            return None
        if self.clock() - max(st.st_mtime_ns, st.st_ctime_ns) < LISTING_SETTLE_NS:
            return None
        return (self.mounts.generation, node.merge, node.lpaths, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)

    def _entry_stops(self, dir_fd: int, name: bytes, redirected: list) -> bool:
        """Whether the directory *name* in dir_fd stops the merge (opaque); a redirect marker puts the
        name on *redirected* (its merge is another path's) and stops this pass's merging of it."""
        opaque, target = self.markers.of_entry(dir_fd, name)
        if opaque:
            return True
        if target is not None and self.redirect_follow:
            redirected.append(name)
            return True
        return False

    def lookup_scanned(self, parent: Node, scanned):
        """(node, stat) for one entry of `scan`, counting one kernel lookup, like `lookup`."""
        node, st = self.attach_scanned(parent, scanned)
        node.lookups += 1
        return node, st

    def attach_scanned(self, parent: Node, scanned):
        """(node, stat) for one entry of `scan`, without counting a lookup."""
        name, index, st, merge, lpaths, redirect = scanned
        node = self._attach(parent, name, index, st, merge, lpaths, redirect)
        if node.layer == self.index_pos and self.index_pos is not None:
            st = self.getattr(node)  # the index entry, not the lower name's old file
        self.nodes.prefer_name(node, parent, name)
        return node, st

    def is_scanned_node(self, node: Node, scanned) -> bool:
        """Whether a `scan` entry resolves to *node* as it stands (same backing entry; an index=on
        entry never matches, its key is its origin's)."""
        st = scanned[2]
        return node.key == (scanned[1], st.st_dev, st.st_ino)

    def is_empty_dir(self, node: Node) -> bool:
        return not self.listdir(node)

    # ------------------------------------------------------------------ copy-up

    def is_upper(self, node: Node) -> bool:
        """Whether changes to the node need no copy-up: it is in the upper (under the name it is reached
        by, for an indexed file)."""
        if node.layer == 0:
            return self.upper is not None
        if node.layer == self.index_pos and self.index_pos is not None and node.names:
            parent, name = node.names[0]
            return self._upper_has(parent, name)
        return False

    def indexed(self, node: Node) -> bool:
        """index=on: the node is an index entry (its data is in the upper's filesystem already; xattr
        changes go there without linking the name up, as the kernel)."""
        return node.layer == self.index_pos and self.index_pos is not None

    def _upper_has(self, parent: Node, name: bytes) -> bool:
        try:
            self.upper.lstat(join(parent.path(), name))
            return True
        except OSError:
            return False

    def ensure_upper_dir(self, node: Node) -> None:
        """Copy a directory and its missing parents up (metadata only, not contents, not opaque)."""
        self.stack.require_upper()
        if node.merge and node.merge[0] == 0:
            return
        parent = node.parent
        if parent is None:
            raise OSError(errno.ESTALE, "directory is no longer reachable")
        self.ensure_upper_dir(parent)
        self._copy_up_entry(node, with_data=False)

    def copy_up(self, node: Node, with_data: bool = True) -> None:
        """Synchronous copy-up (library use; the FUSE adapter runs copy_data in a thread)."""
        if self.is_upper(node):
            return
        if node.is_dir:
            self.ensure_upper_dir(node)
            return
        self._copy_up_entry(node, with_data)

    def copy_up_begin(self, node: Node, with_data: bool = True) -> CopyUpJob:
        self.stack.require_upper()
        if node.parent is None:
            raise OSError(errno.ENOENT, "file has no name left")
        self.ensure_upper_dir(node.parent)
        if node.layer == self.index_pos and self.index_pos is not None:
            job = CopyUpJob(node, self.layers[self.index_pos], None)
            self._link_up(node)
            job.linked = True
            return job
        layer = self.layers[node.layer]
        rel = self._rel(node, node.layer)
        src_st = layer.lstat(rel)
        job = CopyUpJob(node, layer, src_st)
        job.tmp_name = self.stack.tmp_name()
        try:
            if stat.S_ISREG(src_st.st_mode):
                job.with_data = with_data and src_st.st_size > 0
                job.src_fd = layer.open(rel, os.O_RDONLY)
                job.dst_fd = os.open(
                    job.tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=self.work.root_fd
                )
            else:
                self._make_special(job.tmp_name, src_st, layer, rel)
        except BaseException:
            self.copy_up_abort(job)
            raise
        return job

    def _make_special(self, tmp_name, st, layer, rel):
        work_fd = self.work.root_fd
        if stat.S_ISLNK(st.st_mode):
            parent, _, name = rel.rpartition(b"/")
            with layer.dir(parent) as dfd:
                target = os.readlink(name, dir_fd=dfd)
            os.symlink(target, tmp_name, dir_fd=work_fd)
        elif stat.S_ISDIR(st.st_mode):
            os.mkdir(tmp_name, 0o700, dir_fd=work_fd)
        else:
            os.mknod(tmp_name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=work_fd)

    def _link_up(self, node: Node) -> None:
        """index=on: the name the node is reached by becomes a link to its index entry in the upper."""
        tmp = self.stack.tmp_name()
        os.link(
            self._rel(node, self.index_pos),
            tmp,
            src_dir_fd=self.layers[self.index_pos].root_fd,
            dst_dir_fd=self.work.root_fd,
            follow_symlinks=False,
        )
        parent, name = node.names[0]
        try:
            self._copy_up_rename(tmp, parent, name)
        except BaseException:
            remove_tree(self.work.root_fd, tmp)
            raise

    def _index_entry(self, job: CopyUpJob) -> bool:
        """index=on, at a copy-up's commit: record the origin; a lower file with several names also gets
        its index entry (the copy, linked), which all its names resolve to from now on."""
        if self.index_pos is None or job.node.is_dir or job.src_layer.index == 0:
            return False
        node = job.node
        origin = indexing.key(node.key[0], node.key[2])
        path = proc_path(self.work.root_fd, job.tmp_name)
        if stat.S_ISLNK(job.src_st.st_mode):
            return False  # no user xattrs on symlinks; a symlink keeps no st_ino
        os.setxattr(path, self.origin_name, origin, follow_symlinks=False)
        if job.src_st.st_nlink < 2:
            return False
        os.setxattr(path, self.nlink_name, b"%d" % job.src_st.st_nlink, follow_symlinks=False)
        os.link(
            job.tmp_name,
            origin,
            src_dir_fd=self.work.root_fd,
            dst_dir_fd=self.layers[self.index_pos].root_fd,
            follow_symlinks=False,
        )
        return True

    def copy_up_commit(self, job: CopyUpJob) -> None:
        node = job.node
        if job.linked:
            return
        src_parent, _, src_name = self._rel(node, job.src_layer.index).rpartition(b"/")
        with job.src_layer.dir(src_parent) as src_dfd:
            src_path = proc_path(src_dfd, src_name)
            shown = job.src_st
            if job.src_layer.record is not None:  # the copy keeps the owner and mode the user saw
                shown = self._record_view(shown, src_path, job.src_layer.record, False)
            self._chown_new(job.tmp_name, shown.st_uid, shown.st_gid)
            mode = shown.st_mode
            if self.write_records and not stat.S_ISLNK(mode):
                self._write_record(proc_path(self.work.root_fd, job.tmp_name), False, shown.st_uid, shown.st_gid, mode)
                mode |= ownership.BACKING_MODE
            copyup.set_mode_xattrs_times(
                self.work.root_fd,
                job.tmp_name,
                job.src_st,
                mode=mode,
                src_xattr_path=src_path,
                skip=ownership.NAMES if self.records_in_use else (),
            )
        indexed = self._index_entry(job)
        parent, name = node.names[0]
        self._copy_up_rename(job.tmp_name, parent, name)
        job.tmp_name = None
        upper_st = self.upper.lstat(node.path())
        node.layer = 0
        node.xattr_names = None
        if node.is_dir:
            node.merge = (0,) + tuple(node.merge)
        if self.index_pos is not None and not node.is_dir and not stat.S_ISLNK(upper_st.st_mode):
            # index=on: the node keeps its origin's key (and st_ino); an indexed one all its names.
            if indexed:
                node.layer = self.index_pos
            return
        self.nodes.rekey(node, (0, upper_st.st_dev, upper_st.st_ino))
        node.shared_lower = False
        if len(node.names) > 1:
            # Copy-up splits a lower hard link (index=off): the other names stay the lower file.
            for parent, other in node.names[1:]:
                self.nodes.detach(parent, other)

    def copy_up_abort(self, job: CopyUpJob) -> None:
        job.close()
        if job.tmp_name is not None:
            remove_tree(self.work.root_fd, job.tmp_name)
            job.tmp_name = None

    def _copy_up_entry(self, node: Node, with_data: bool) -> None:
        job = self.copy_up_begin(node, with_data)
        try:
            job.copy_data()
            self.copy_up_commit(job)
        finally:
            self.copy_up_abort(job)

    def _copy_up_rename(self, tmp_name: bytes, parent: Node, name: bytes) -> None:
        """Move a copied-up work-dir entry to parent/name in the upper, leaving the parent's times."""
        with self.upper.dir(parent.path()) as dfd:
            before = os.fstat(dfd)
            _sys.renameat2(self.work.root_fd, tmp_name, dfd, name, _sys.RENAME_NOREPLACE)
            # Copy-up does not change the merged parent's times, as in the kernel.
            os.utime(proc_path(dfd), ns=(before.st_atime_ns, before.st_mtime_ns))

    # ------------------------------------------------------------------ helpers for changes

    def _lower_visible(self, parent: Node, name: bytes) -> bool:
        """Whether a lower layer merged into *parent* shows *name* (so removing it needs a whiteout)."""
        for index in parent.merge:
            if index == 0:
                continue
            st = self._in_layer(self.layers[index], join(self._rel(parent, index), name))
            if st is not None:
                return st is not WHITED_OUT
        return False

    def _chown_new(self, tmp_name: bytes, uid: int, gid: int) -> None:
        """Give a work-dir entry its owner (when the daemon may chown at all, and keeps no records)."""
        if not self.as_root or self.write_records:
            return
        try:
            os.chown(tmp_name, uid, gid, dir_fd=self.work.root_fd, follow_symlinks=False)
        except OSError as exc:
            # EINVAL: an id this user namespace does not map (it shows as the overflow id 65534 here).
            if exc.errno not in (errno.EINVAL, errno.EPERM):
                raise
            if not self.ignore_chown_errors:
                # The kernel's answer when a copy-up cannot keep an owner the namespace cannot name.
                raise OSError(errno.EOVERFLOW, "cannot give the copy its owner %d:%d here" % (uid, gid)) from None

    def _write_record(self, path: bytes, follow: bool, uid: int, gid: int, mode: int) -> None:
        os.setxattr(path, self.upper.record, ownership.encode(uid, gid, mode), follow_symlinks=follow)

    def _check_new_name(self, name: bytes) -> None:
        self._check_name(name)
        if self.read_wh_files and name.startswith(WH_PREFIX):
            raise OSError(errno.EINVAL, "names starting with .wh. are whiteout markers here")

    def _new_owner(self, parent: Node, caller: Caller, mode: int):
        """Owner and mode of a new entry: the caller's, with a setgid parent's group inherited."""
        gid = caller.gid
        parent_st = self.getattr(parent)
        if parent_st.st_mode & stat.S_ISGID:
            gid = parent_st.st_gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return caller.uid, gid, mode

    def _prepare_create(self, parent: Node, name: bytes):
        self.stack.require_upper()
        if not parent.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        self._check_new_name(name)
        try:
            self.child(parent, name)
        except FileNotFoundError:
            pass
        else:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        self.ensure_upper_dir(parent)

    def _finish_create(
        self, tmp_name: bytes, parent: Node, name: bytes, is_dir: bool, uid: int, gid: int, mode: int
    ) -> Node:
        """Set owner and mode of a work-dir entry, then move it to parent/name (over a whiteout)."""
        work_fd = self.work.root_fd
        try:
            self._chown_new(tmp_name, uid, gid)
            if self.write_records:
                made = os.stat(tmp_name, dir_fd=work_fd, follow_symlinks=False)
                if not stat.S_ISLNK(made.st_mode):
                    perms = stat.S_IMODE(mode if mode is not None else made.st_mode)
                    self._write_record(proc_path(work_fd, tmp_name), False, uid, gid, perms)
                    mode = perms | ownership.BACKING_MODE
            if mode is not None:
                os.chmod(tmp_name, stat.S_IMODE(mode), dir_fd=work_fd)
            with self.upper.dir(parent.path()) as dfd:
                whiteout = self.markers.whiteout_at(dfd, name)
                if is_dir and (whiteout or (self.offline_changes_off and len(parent.merge) > 1)):
                    # As the kernel: a directory made where a name was deleted hides what lay below
                    # (and with redirect_dir=on or index=on every new directory in a merged one is
                    # marked so: the kernel then assumes no lower changes offline).
                    with opened(work_fd, tmp_name, O_PATH_DIR) as fd:
                        self.markers.set_opaque(fd)
                if is_dir and whiteout == "dev":
                    _sys.renameat2(work_fd, tmp_name, dfd, name, _sys.RENAME_EXCHANGE)
                    os.unlink(tmp_name, dir_fd=work_fd)  # now the old whiteout
                elif whiteout == "dev":
                    os.rename(tmp_name, name, src_dir_fd=work_fd, dst_dir_fd=dfd)
                else:
                    _sys.renameat2(work_fd, tmp_name, dfd, name, _sys.RENAME_NOREPLACE)
                    if whiteout == "file":
                        self.markers.drop_whiteout_file(dfd, name)
                st = lstat_at(dfd, name)
        except BaseException:
            remove_tree(work_fd, tmp_name)
            raise
        merge = (0,)
        return self._attach(parent, name, 0, st, merge)

    # ------------------------------------------------------------------ creating

    def create(self, parent: Node, name: bytes, mode: int, flags: int, caller: Caller):
        """Create and open a regular file: (node, FileHandle, stat); counts one lookup."""
        self._prepare_create(parent, name)
        uid, gid, mode = self._new_owner(parent, caller, stat.S_IFREG | (mode & 0o7777))
        tmp = self.stack.tmp_name()
        open_flags = (flags & _OPEN_KEEP) | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        made = self._create_in_place(parent, name, open_flags, uid, gid, mode)
        if made is not None:
            fd, node = made
        else:
            fd = os.open(tmp, open_flags, stat.S_IMODE(mode), dir_fd=self.work.root_fd)
            try:
                node = self._finish_create(tmp, parent, name, False, uid, gid, mode if mode & 0o7000 else None)
            except BaseException:
                os.close(fd)
                raise
        handle = self._new_handle(fd, node, 0, flags)
        node.lookups += 1
        return node, handle, self._shown_fd(self.upper, fd)

    def _create_in_place(self, parent: Node, name: bytes, open_flags: int, uid: int, gid: int, mode: int):
        """(fd, node) of a regular file made straight in the upper parent, as the kernel's overlay does
        where no whiteout is in the way; None where it takes the work dir: a whiteout to replace, an
        owner the daemon must chown to (so that the name never shows a wrong owner), setuid/setgid
        bits, or ownership records. Saves the rename and the chown of every new file."""
        if mode & 0o7000 or self.write_records:
            return None
        with self.upper.dir(parent.path()) as dfd:
            if self.as_root:
                parent_st = os.fstat(dfd)
                made_gid = parent_st.st_gid if parent_st.st_mode & stat.S_ISGID else self.stack.egid
                if (uid, gid) != (self.stack.euid, made_gid):
                    return None
            if self.markers.whiteout_at(dfd, name) is not None:
                return None
            fd = os.open(name, open_flags, stat.S_IMODE(mode), dir_fd=dfd)
            try:
                node = self._attach(parent, name, 0, os.fstat(fd), ())
            except BaseException:
                os.close(fd)
                os.unlink(name, dir_fd=dfd)
                raise
        return fd, node

    def mkdir(self, parent: Node, name: bytes, mode: int, caller: Caller):
        self._prepare_create(parent, name)
        uid, gid, mode = self._new_owner(parent, caller, stat.S_IFDIR | (mode & 0o7777))
        tmp = self.stack.tmp_name()
        os.mkdir(tmp, 0o700, dir_fd=self.work.root_fd)
        node = self._finish_create(tmp, parent, name, True, uid, gid, mode)
        node.lookups += 1
        return node, self.getattr(node)

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, caller: Caller):
        self._prepare_create(parent, name)
        uid, gid, mode = self._new_owner(parent, caller, mode)
        tmp = self.stack.tmp_name()
        os.mknod(tmp, stat.S_IFMT(mode) | 0o600, rdev, dir_fd=self.work.root_fd)
        node = self._finish_create(tmp, parent, name, False, uid, gid, mode)
        node.lookups += 1
        return node, self.getattr(node)

    def symlink(self, parent: Node, name: bytes, target: bytes, caller: Caller):
        self._prepare_create(parent, name)
        uid, gid, _ = self._new_owner(parent, caller, stat.S_IFLNK | 0o777)
        tmp = self.stack.tmp_name()
        os.symlink(target, tmp, dir_fd=self.work.root_fd)
        node = self._finish_create(tmp, parent, name, False, uid, gid, None)
        node.lookups += 1
        return node, self.getattr(node)

    def check_link(self, new_name: bytes) -> None:
        """The name errors `link` gives before its copy-up, for a caller that copies up first (the
        FUSE adapter): a `.wh.` name is refused without copying anything (EEXIST and the like come
        after the copy-up, as on the kernel)."""
        self._check_new_name(new_name)

    def link(self, node: Node, new_parent: Node, new_name: bytes):
        if node.is_dir:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        self._prepare_create(new_parent, new_name)
        self.copy_up(node)
        src_parent, _, src_name = node.path().rpartition(b"/")
        tmp = self.stack.tmp_name()
        with self.upper.dir(src_parent) as sdfd:
            os.link(src_name, tmp, src_dir_fd=sdfd, dst_dir_fd=self.work.root_fd, follow_symlinks=False)
        with self.upper.dir(new_parent.path()) as dfd:
            try:
                whiteout = self.markers.whiteout_at(dfd, new_name)
                if whiteout == "dev":
                    os.rename(tmp, new_name, src_dir_fd=self.work.root_fd, dst_dir_fd=dfd)
                else:
                    _sys.renameat2(self.work.root_fd, tmp, dfd, new_name, _sys.RENAME_NOREPLACE)
                    if whiteout == "file":
                        self.markers.drop_whiteout_file(dfd, new_name)
            except BaseException:
                remove_tree(self.work.root_fd, tmp)
                raise
            st = lstat_at(dfd, new_name)
        linked = self._attach(new_parent, new_name, 0, st, ())
        if linked.layer == self.index_pos and self.index_pos is not None:
            self._count_link(linked, +1)
        linked.lookups += 1
        return linked, self.getattr(linked)

    # ------------------------------------------------------------------ removing

    def unlink(self, parent: Node, name: bytes) -> None:
        self.stack.require_upper()
        node = self.child(parent, name)
        if node.is_dir:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        self._remove_entry(parent, name, node)

    def rmdir(self, parent: Node, name: bytes) -> None:
        self.stack.require_upper()
        node = self.child(parent, name)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        if node is self.root:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        if not self.is_empty_dir(node):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
        self._remove_entry(parent, name, node)

    def _index_before_removal(self, node: Node, parent: Node, name: bytes) -> None:
        """index=on: a name of a lower file with several names is about to go; as the kernel, the file
        is copied up (and indexed) first, so that the other names keep an exact link count."""
        if self.index_pos is None or node.is_dir or node.layer in (0, self.index_pos) or not node.shared_lower:
            return
        self.nodes.prefer_name(node, parent, name)
        self.copy_up(node)

    def _remove_entry(self, parent: Node, name: bytes, node: Node) -> None:
        self._index_before_removal(node, parent, name)
        self._remember_if_last_name(node)
        self.ensure_upper_dir(parent)
        needs_whiteout = self._lower_visible(parent, name)
        work_fd = self.work.root_fd
        indexed = node.layer == self.index_pos and self.index_pos is not None
        in_upper = self._upper_has(parent, name) if indexed else self.is_upper(node)
        with self.upper.dir(parent.path()) as dfd:
            if in_upper:
                tmp = self.stack.tmp_name()
                if needs_whiteout and not self.write_wh_files:
                    # Swap the entry for a whiteout in one step, then clear the old entry away.
                    make_whiteout(work_fd, tmp)
                    _sys.renameat2(work_fd, tmp, dfd, name, _sys.RENAME_EXCHANGE)
                    remove_tree(work_fd, tmp)
                else:
                    if node.is_dir:
                        os.rename(name, tmp, src_dir_fd=dfd, dst_dir_fd=work_fd)
                        remove_tree(work_fd, tmp)
                    else:
                        os.unlink(name, dir_fd=dfd)
                    if needs_whiteout:  # .wh. files: not atomic, as fuse-overlayfs
                        self.markers.make_whiteout(dfd, name)
            else:
                self.markers.make_whiteout(dfd, name)
        if indexed:
            self._count_link(node, -1)
        self.nodes.detach(parent, name)

    def _remember_if_last_name(self, node: Node) -> None:
        """Keep the attributes of a node losing its last name: the kernel may hold it open without a
        daemon handle (fifos, devices, directories) and still ask for them (fstat)."""
        if len(node.names) == 1 and not node.handles:
            try:
                node.gone_stat = self.getattr(node)
            except OSError:
                pass

    def _count_link(self, node: Node, change: int) -> None:
        """index=on: the union's link count of an indexed file, kept on its index entry."""
        with self.layers[self.index_pos].opened(self._rel(node, self.index_pos), os.O_PATH) as fd:
            path = proc_path(fd)
            try:
                count = int(os.getxattr(path, self.nlink_name))
            except (OSError, ValueError):
                count = os.fstat(fd).st_nlink - 1
            os.setxattr(path, self.nlink_name, b"%d" % max(count + change, 0))

    # ------------------------------------------------------------------ rename

    def check_rename(self, parent: Node, name: bytes, new_parent: Node, new_name: bytes, flags: int = 0):
        """The errors `rename` gives before it copies anything up, for a caller that copies the source
        up first (the FUSE adapter, in a worker thread): as the kernel, a refused rename copies nothing."""
        self.stack.require_upper()
        if flags & ~(_sys.RENAME_NOREPLACE | _sys.RENAME_EXCHANGE) or flags == (
            _sys.RENAME_NOREPLACE | _sys.RENAME_EXCHANGE
        ):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self._check_new_name(new_name)
        if flags & _sys.RENAME_EXCHANGE:
            node, other = self.child(parent, name), self.child(new_parent, new_name)
            if other is not node:
                self._check_movable(node, new_parent)
                self._check_movable(other, parent)

    def rename(self, parent: Node, name: bytes, new_parent: Node, new_name: bytes, flags: int = 0):
        self.check_rename(parent, name, new_parent, new_name, flags)
        if flags & _sys.RENAME_EXCHANGE:
            return self._exchange(parent, name, new_parent, new_name)
        node = self.child(parent, name)
        if not new_parent.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        try:
            target = self.child(new_parent, new_name)
        except FileNotFoundError:
            target = None
        if target is not None and flags & _sys.RENAME_NOREPLACE:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        if target is node and not self._split_on_copy_up(node, parent, name, new_parent, new_name):
            return  # the same file (or the same name): nothing to do, as rename(2)
        self._check_movable(node, new_parent)
        if target is not None:
            if node.is_dir and not target.is_dir:
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            if not node.is_dir and target.is_dir:
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
            if target.is_dir and not self.is_empty_dir(target):
                if self.is_upper(target) and len(target.merge) == 1:
                    # The kernel leaves a pure-upper target's emptiness to the upper's rename(2), after
                    # it has copied the moving directory up and recorded its redirect (redirect_dir=on)
                    # or, moving into a merged directory, marked it opaque: so does this.
                    if self._moves_by_redirect(node):
                        self.copy_up(node)
                        self._set_redirect(node, same_dir=parent is new_parent)
                    elif len(new_parent.merge) > 1:
                        with self.upper.dir(parent.path()) as sdfd, opened(sdfd, name, O_PATH_DIR) as fd:
                            self.markers.set_opaque(fd)
                    self._failing_upper_rename(parent, name, new_parent, new_name)
                raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
        redirect = self._moves_by_redirect(node)
        if target is not None and target is not node:
            self._index_before_removal(target, new_parent, new_name)
            self._remember_if_last_name(target)
        self.nodes.prefer_name(node, parent, name)  # the name copied (or linked) up is the one moved
        self.copy_up(node)
        self.ensure_upper_dir(new_parent)
        if redirect:
            self._set_redirect(node, same_dir=parent is new_parent)
        leave_whiteout = self._lower_visible(parent, name)
        work_fd = self.work.root_fd
        with self.upper.dir(parent.path()) as sdfd, self.upper.dir(new_parent.path()) as ddfd:
            if node.is_dir and not redirect and len(new_parent.merge) > 1:
                # As the kernel: a directory moved into a merged directory must not merge below.
                with opened(sdfd, name, O_PATH_DIR) as fd:
                    self.markers.set_opaque(fd)
            try:
                existing = lstat_at(ddfd, new_name)
            except FileNotFoundError:
                existing = None
            if existing is None and self.read_wh_files:
                self.markers.drop_whiteout_file(ddfd, new_name)  # the name is taken again
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                # An upper directory that is empty in the merged view holds only whiteouts: clear them.
                with opened(ddfd, new_name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW) as tfd:
                    for entry in os.listdir(tfd):
                        remove_tree(tfd, os.fsencode(entry))
            if node.is_dir and existing is not None and not stat.S_ISDIR(existing.st_mode):
                # Directory over a whiteout: exchange, then the whiteout sits at the old name.
                _sys.renameat2(sdfd, name, ddfd, new_name, _sys.RENAME_EXCHANGE)
                if not leave_whiteout:
                    os.unlink(name, dir_fd=sdfd)
            elif leave_whiteout and self.write_wh_files:
                os.rename(name, new_name, src_dir_fd=sdfd, dst_dir_fd=ddfd)
                self.markers.make_whiteout(sdfd, name)
            elif leave_whiteout:
                try:
                    _sys.renameat2(sdfd, name, ddfd, new_name, _sys.RENAME_WHITEOUT)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.EPERM, errno.ENOSYS):
                        raise
                    # No RENAME_WHITEOUT here: a whiteout is prepared and moved in afterwards.
                    os.rename(name, new_name, src_dir_fd=sdfd, dst_dir_fd=ddfd)
                    tmp = self.stack.tmp_name()
                    make_whiteout(work_fd, tmp)
                    os.rename(tmp, name, src_dir_fd=work_fd, dst_dir_fd=sdfd)
            else:
                os.rename(name, new_name, src_dir_fd=sdfd, dst_dir_fd=ddfd)
        if target is not None:
            if self.indexed(target) and target is not node:
                self._count_link(target, -1)  # one name of an indexed file replaced
            self.nodes.detach(new_parent, new_name)
        if redirect:
            self._pin_lower_paths(node)
        self.nodes.move(node, parent, name, new_parent, new_name)
        if node.is_dir and not redirect:
            node.merge = (0,)

    def _failing_upper_rename(self, parent: Node, name: bytes, new_parent: Node, new_name: bytes) -> None:
        """The upper rename(2) the kernel makes onto a non-empty upper directory, which fails: its error
        is the caller's, and so are its side effects on the upper filesystem (ext4 touches the parent
        while preparing a RENAME_WHITEOUT)."""
        flags = 0
        if self._lower_visible(parent, name) and not self.write_wh_files:
            flags = _sys.RENAME_WHITEOUT
        with self.upper.dir(parent.path()) as sdfd, self.upper.dir(new_parent.path()) as ddfd:
            try:
                _sys.renameat2(sdfd, name, ddfd, new_name, flags)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS) and flags:
                    return  # no RENAME_WHITEOUT here: the caller says ENOTEMPTY
                raise
        raise OSError(errno.EIO, "rename onto a non-empty directory succeeded in the upper")

    def _split_on_copy_up(self, node: Node, parent: Node, name: bytes, new_parent: Node, new_name: bytes) -> bool:
        """Two names of one lower file (a hard link) that copy-up will split, so that a rename between
        them is not the no-op it is between names of one file: the kernel (index=off) gives such names
        separate inodes, copies the source up and renames it over the other. Copies *name* up."""
        if (parent, name) == (new_parent, new_name) or node.is_dir or self.is_upper(node) or self.index_pos is not None:
            return False  # (index=on keeps them one file: rename between them does nothing, as there)
        self.nodes.prefer_name(node, parent, name)  # the name that is copied up
        self.copy_up(node)
        return True

    def _moves_by_redirect(self, node: Node) -> bool:
        """A lower or merged directory moves by recording a redirect (only with redirect_dir=on)."""
        return node.is_dir and not (self.is_upper(node) and len(node.merge) == 1)

    def _set_redirect(self, node: Node, same_dir: bool) -> None:
        """Record where a directory that is about to move merges from, as the kernel's ovl_set_redirect:
        its old name when it stays in its parent, else its absolute path in the lower layers. A redirect
        it already has stays when it still holds ("/..." always, "name" within the same parent)."""
        current = node.redirect
        if current is not None and (same_dir or current.startswith(b"/")):
            return
        if same_dir:
            value = node.names[0][1]
        else:
            parts, walk = [], node
            while walk is not self.root:
                marker = walk.redirect
                if marker is not None and marker.startswith(b"/"):
                    parts.append(marker[1:])
                    break
                parts.append(marker if marker is not None else walk.names[0][1])
                walk = walk.names[0][0]
            value = b"/" + b"/".join(reversed(parts))
        if len(value) > REDIRECT_MAX:
            raise OSError(errno.EXDEV, "redirect too long")  # as the kernel: mv copies instead
        with self.upper.opened(node.path(), O_PATH_DIR) as fd:
            try:
                os.setxattr(proc_path(fd), self.marker_prefix + REDIRECT, value)
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EPERM):
                    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV)) from None
                raise
        node.redirect = value

    def _pin_lower_paths(self, node: Node) -> None:
        """Before a merged directory moves, it and every directory below it that the table holds keep
        their lower paths: those no longer follow their names in the merged view."""
        todo = [node]
        while todo:
            walk = todo.pop()
            if not walk.is_dir:
                continue
            if walk.lpaths is None:
                rel = walk.path()
                walk.lpaths = {index: rel for index in walk.merge if index}
            todo.extend(walk.children.values())

    def _check_movable(self, node: Node, new_parent: Node) -> None:
        if not node.is_dir:
            return
        if self._moves_by_redirect(node) and not self.redirect_create:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))  # a lower directory: redirect_dir=off
        anc = new_parent
        while anc is not None:
            if anc is node:  # into itself
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            anc = anc.parent

    def _exchange(self, parent: Node, name: bytes, new_parent: Node, new_name: bytes) -> None:
        """RENAME_EXCHANGE: both entries are copied up and swap names in the upper."""
        node = self.child(parent, name)
        if not new_parent.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        other = self.child(new_parent, new_name)
        if other is node:
            if not self._split_on_copy_up(node, parent, name, new_parent, new_name):
                return
            other = self.child(new_parent, new_name)  # now a lower file of its own
        self._check_movable(node, new_parent)
        self._check_movable(other, parent)
        redirects = [moving for moving in (node, other) if self._moves_by_redirect(moving)]
        self.copy_up(node)
        self.copy_up(other)
        self.ensure_upper_dir(parent)
        self.ensure_upper_dir(new_parent)
        for moving in redirects:
            self._set_redirect(moving, same_dir=parent is new_parent)
        with self.upper.dir(parent.path()) as sdfd, self.upper.dir(new_parent.path()) as ddfd:
            for moving, dfd, entry, dest in ((node, sdfd, name, new_parent), (other, ddfd, new_name, parent)):
                if moving.is_dir and moving not in redirects and len(dest.merge) > 1:
                    with opened(dfd, entry, O_PATH_DIR) as fd:
                        self.markers.set_opaque(fd)
            _sys.renameat2(sdfd, name, ddfd, new_name, _sys.RENAME_EXCHANGE)
        for moving in redirects:
            self._pin_lower_paths(moving)
        self.nodes.exchange(node, parent, name, other, new_parent, new_name)

    # ------------------------------------------------------------------ files

    def _new_handle(self, fd, node, layer, flags) -> FileHandle:
        handle = FileHandle(fd, node, layer, flags & _ACCMODE != os.O_RDONLY)
        node.opens += 1
        node.handles.append(handle)
        return handle

    def open(self, node: Node, flags: int) -> FileHandle:
        if node.is_dir:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        writing = flags & _ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            self.stack.require_upper()
            self.copy_up(node, with_data=not flags & os.O_TRUNC)
        open_flags = (flags & _OPEN_KEEP) | (flags & os.O_TRUNC)
        fd = self.layers[node.layer].open(self._rel(node, node.layer), open_flags)
        return self._new_handle(fd, node, node.layer, flags)

    def read(self, handle: FileHandle, offset: int, size: int) -> bytes:
        if handle.layer != handle.node.layer and not handle.writable and handle.node.names:
            # The file was copied up after this read-only open: read the new copy, as the kernel does.
            node = handle.node
            fd = self.layers[node.layer].open(self._rel(node, node.layer), os.O_RDONLY)
            os.close(handle.fd)
            handle.fd, handle.layer = fd, handle.node.layer
        return os.pread(handle.fd, size, offset)

    def write(self, handle: FileHandle, offset: int, data: bytes) -> int:
        return os.pwrite(handle.fd, data, offset)

    def fsync(self, handle: FileHandle, datasync: bool) -> None:
        if self.volatile:
            return
        (os.fdatasync if datasync else os.fsync)(handle.fd)

    def release(self, handle: FileHandle) -> None:
        node = handle.node
        os.close(handle.fd)
        handle.fd = -1
        try:
            node.handles.remove(handle)
        except ValueError:
            pass
        node.opens -= 1
        self.nodes.maybe_drop(node)

    def opendir(self, node: Node) -> None:
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        node.opens += 1

    def releasedir(self, node: Node) -> None:
        node.opens -= 1
        self.nodes.maybe_drop(node)

    def readlink(self, node: Node) -> bytes:
        parent, _, name = self._rel(node, node.layer).rpartition(b"/")
        with self.layers[node.layer].dir(parent) as dfd:
            return os.readlink(name, dir_fd=dfd)

    # ------------------------------------------------------------------ attributes

    def setattr(
        self,
        node: Node,
        *,
        size=None,
        mode=None,
        uid=None,
        gid=None,
        atime_ns=None,
        mtime_ns=None,
        handle: FileHandle = None,
    ) -> os.stat_result:
        self.stack.require_upper()
        if size is not None and node.is_dir:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        fd = self._unlinked_fd(node, for_change=True)
        if fd is not None:
            return self._setattr_fd(node, fd, size, mode, uid, gid, atime_ns, mtime_ns, handle)
        if not self.is_upper(node):
            self.copy_up(node, with_data=size != 0)
        node.xattr_names = None  # chmod may rewrite an ACL, chown drops file capabilities
        rel = node.path()
        parent, _, name = rel.rpartition(b"/")
        with self.upper.opened(rel, os.O_PATH) as fd, self.upper.opened(parent, O_PATH_DIR) as dfd:
            # The entry is reached as name under its parent with AT_SYMLINK_NOFOLLOW, or (the root,
            # chmod of a non-symlink) through its own O_PATH fd: never through a symlink.
            st = os.fstat(fd)
            is_link = stat.S_ISLNK(st.st_mode)
            if self.write_records and (uid is not None or gid is not None or mode is not None):
                # Owner and mode go to the record; the backing file keeps its own (a symlink can hold
                # no user.* xattr: as fuse-overlayfs, its chown is let go).
                if not is_link:
                    shown = self._record_view(st, proc_path(fd), self.upper.record, True)
                    self._write_record(
                        proc_path(fd),
                        True,
                        shown.st_uid if uid is None else uid,
                        shown.st_gid if gid is None else gid,
                        shown.st_mode if mode is None else mode,
                    )
                uid = gid = mode = None
            # A symlink is reached as name under its parent without following it (a symlink is never a
            # mount point); anything else through its own O_PATH fd, so no mount point is crossed.
            target, where = (name, dfd) if is_link else (proc_path(fd), None)
            if size is not None:
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
                if handle is not None and handle.writable and handle.layer == 0:
                    os.ftruncate(handle.fd, size)
                else:
                    with self.upper.opened(rel, os.O_WRONLY) as wfd:
                        os.ftruncate(wfd, size)
            if uid is not None or gid is not None:
                os.chown(
                    target,
                    -1 if uid is None else uid,
                    -1 if gid is None else gid,
                    dir_fd=where,
                    follow_symlinks=where is None,
                )
            if mode is not None:
                if is_link:
                    raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
                os.chmod(proc_path(fd), stat.S_IMODE(mode))
            if atime_ns is not None or mtime_ns is not None:
                if atime_ns is None or mtime_ns is None:
                    st = os.fstat(fd)
                    atime_ns = st.st_atime_ns if atime_ns is None else atime_ns
                    mtime_ns = st.st_mtime_ns if mtime_ns is None else mtime_ns
                os.utime(target, ns=(atime_ns, mtime_ns), dir_fd=where, follow_symlinks=where is None)
            return self._shown_fd(self.upper, fd)

    def _setattr_fd(self, node, fd, size, mode, uid, gid, atime_ns, mtime_ns, handle):
        """setattr of an unlinked, still open file: through its open descriptors."""
        if size is not None:
            writable = [h.fd for h in node.handles if h.writable and h.layer == 0]
            if not writable:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            os.ftruncate(handle.fd if handle is not None and handle.writable else writable[0], size)
        if self.write_records and (uid is not None or gid is not None or mode is not None):
            shown = self._shown_fd(self.upper, fd)
            self._write_record(
                proc_path(fd),
                True,
                shown.st_uid if uid is None else uid,
                shown.st_gid if gid is None else gid,
                shown.st_mode if mode is None else mode,
            )
            uid = gid = mode = None
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        if mode is not None:
            os.fchmod(fd, stat.S_IMODE(mode))
        if atime_ns is not None or mtime_ns is not None:
            st = os.fstat(fd)
            os.utime(
                fd,
                ns=(st.st_atime_ns if atime_ns is None else atime_ns, st.st_mtime_ns if mtime_ns is None else mtime_ns),
            )
        node.xattr_names = None
        return self._shown_fd(self.upper, fd)

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(proc_path(self.layers[0].root_fd))

    # ------------------------------------------------------------------ xattrs

    def _xattr_path(self, layer: Layer, node: Node):
        """(context manager of) a /proc path that reaches the entry without following a symlink."""
        rel = self._rel(node, layer.index)
        if not rel:
            return _ProcPath(layer, b"", None)
        parent, _, name = rel.rpartition(b"/")
        return _ProcPath(layer, parent, name)

    def _private_record(self, name: bytes) -> bool:
        """Ownership records are the daemon's while a layer uses them: never shown, never set."""
        return self.records_in_use and name in ownership.NAMES

    def getxattr(self, node: Node, name: bytes) -> bytes:
        if self._private_record(name):
            raise OSError(errno.ENODATA, os.strerror(errno.ENODATA))
        stored = xattrs.to_stored(name)
        fd = self._unlinked_fd(node)
        if fd is not None:
            return os.getxattr(fd, stored)
        names = node.xattr_names
        if names is None:
            names = self._stored_xattr_names(node)
        if stored not in names:
            # Every change goes through the daemon, so the list is current: answer without a syscall.
            raise OSError(errno.ENODATA, os.strerror(errno.ENODATA))
        with self._xattr_path(self.layers[node.layer], node) as (path, follow):
            try:
                return os.getxattr(path, stored, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno == errno.ENOTSUP:
                    raise OSError(errno.ENODATA, os.strerror(errno.ENODATA)) from None
                raise

    def _unlinked_fd(self, node: Node, for_change: bool = False):
        """An open fd of a node whose last name is gone (None if it still has a name).

        A change needs a descriptor on the upper copy: a lower file is never written.
        """
        if node.names or node is self.root:
            return None
        for handle in node.handles:
            if handle.layer == 0 or not for_change:
                return handle.fd
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))

    def _stored_xattr_names(self, node: Node) -> frozenset:
        fd = self._unlinked_fd(node)
        if fd is not None:
            return frozenset(os.fsencode(n) for n in os.listxattr(fd))
        with self._xattr_path(self.layers[node.layer], node) as (path, follow):
            try:
                names = frozenset(os.fsencode(n) for n in os.listxattr(path, follow_symlinks=follow))
            except OSError as exc:
                if exc.errno != errno.ENOTSUP:
                    raise
                names = frozenset()
        node.xattr_names = names
        return names

    def listxattr(self, node: Node):
        stored = self._stored_xattr_names(node)
        names = []
        for item in stored:
            visible = xattrs.to_visible(item)
            if visible is not None and not self._private_record(visible):
                names.append(visible)
        return names

    def _xattr_target(self, node: Node) -> Layer:
        """The layer an xattr change is made in: the upper (after copy-up), or an indexed file's entry."""
        if self.indexed(node):
            return self.layers[self.index_pos]
        self.copy_up(node)
        return self.upper

    def setxattr(self, node: Node, name: bytes, value: bytes, flags: int = 0) -> None:
        self.stack.require_upper()
        if self._private_record(name):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        layer = self._xattr_target(node)
        node.xattr_names = None
        fd = self._unlinked_fd(node, for_change=True)
        if fd is not None:
            os.setxattr(fd, xattrs.to_stored(name), value, flags)
            return
        with self._xattr_path(layer, node) as (path, follow):
            os.setxattr(path, xattrs.to_stored(name), value, flags, follow_symlinks=follow)

    def removexattr(self, node: Node, name: bytes) -> None:
        self.stack.require_upper()
        if self._private_record(name):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        self.getxattr(node, name)  # ENODATA before any copy-up, as the kernel
        layer = self._xattr_target(node)
        node.xattr_names = None
        fd = self._unlinked_fd(node, for_change=True)
        if fd is not None:
            os.removexattr(fd, xattrs.to_stored(name))
            return
        with self._xattr_path(layer, node) as (path, follow):
            os.removexattr(path, xattrs.to_stored(name), follow_symlinks=follow)


class _WithNlink:
    """A stat result with another st_nlink (an indexed file's union link count)."""

    __slots__ = ("_st", "st_nlink")

    def __init__(self, st, nlink):
        self._st, self.st_nlink = st, nlink

    def __getattr__(self, name):
        return getattr(self._st, name)


class _ProcPath:
    def __init__(self, layer, parent, name):
        self.layer, self.parent, self.name, self.fd = layer, parent, name, -1

    def __enter__(self):
        """(path, follow): the entry's own O_PATH fd through /proc (no mount point crossed), or for a
        symlink its name under the parent's fd, not followed."""
        if self.name is None:
            self.fd = self.layer.open(b"", O_PATH_DIR)
            return proc_path(self.fd), True
        self.fd = self.layer.open(join(self.parent, self.name))
        if not stat.S_ISLNK(os.fstat(self.fd).st_mode):
            return proc_path(self.fd), True
        os.close(self.fd)
        self.fd = self.layer.open(self.parent, O_PATH_DIR)
        return proc_path(self.fd, self.name), False

    def __exit__(self, *exc):
        os.close(self.fd)


WHITED_OUT = object()  # _in_layer's answer for a whiteout


ABSENT_MAX = 1024  # names remembered as absent per directory (then forgotten all at once)
LISTING_SETTLE_NS = 1_000_000_000  # an upper directory changed more recently is listed from the layers
