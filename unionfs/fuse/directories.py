"""Directory handles and readdir for the request layer (`UnionRequests` inherits them).

A handle holds its directory's node and a snapshot of the merged listing, taken at the first readdir
from offset 0 (and at each rewinddir), so a listing read in many small pieces gives every name once.
readdirplus entries carry one kernel reference each (nodetable.py), taken back if the reply is full.

A directory the kernel opened without asking (handle 0: the native backend answers OPENDIR ENOSYS
where the kernel offers zero-message opendir, native_operations.py) has no handle to keep its snapshot.
Each readdir from offset 0 then takes a snapshot of its own, and the offsets it gives out name it
(`_SNAP_SHIFT`): a reader goes on in the listing it began, as with a handle, whoever else lists the
directory meanwhile. The newest `_SNAPSHOTS` are kept; one is let go when it is read to its end (the
kernel's last call, which finds nothing). A reader whose snapshot was let go goes on at its position in
a fresh listing. The offsets stay below 2**31, for 32-bit telldir.
"""

from __future__ import annotations

import errno
import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a mount program's start)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ..engine import UnionEngine
    from .nodetable import KernelNodes

_S_IFDIR = stat.S_IFDIR
_SNAPSHOTS = 64  # listings of handle 0 kept at once
_SNAP_SHIFT = 24  # an offset of handle 0: snapshot number << 24 | position (a directory of < 16M names)
_SNAP_IDS = 127  # snapshot numbers 1..127, reused in turn (more than _SNAPSHOTS: a reused one is let go)
_POSITION = (1 << _SNAP_SHIFT) - 1


class _DirHandle:
    __slots__ = ("node", "names")

    def __init__(self, node):
        self.node = node
        self.names = None  # union.list_entries(), taken at the first readdir from offset 0 (and rewinddir)


class DirectoryRequests:
    """opendir, readdir, releasedir, fsyncdir. Uses the request layer's `union`, `nodes`, `_node`,
    `_entry`, `_fh`, `_dirs`, `bare_entries` and its error boundary `_failure`."""

    union: UnionEngine
    nodes: KernelNodes
    bare_entries: bool
    _dirs: dict[int, _DirHandle]
    _snapshots: dict  # snapshot number -> (node, entries): handle-0 listings
    _snapshot_number: int
    _fh: Iterator[int]
    _node: Callable
    _entry: Callable
    _failure: Callable[[Exception, str, tuple], OSError]

    async def opendir(self, node_id: int) -> int:
        """A directory handle number."""
        return self.opendir_now(node_id)

    def opendir_now(self, node_id: int) -> int:
        try:
            node = self._node(node_id)
            self.union.opendir(node)
            fh = next(self._fh)
            self._dirs[fh] = _DirHandle(node)
            return fh
        except Exception as exc:
            raise self._failure(exc, "opendir", (node_id,)) from None

    async def readdir(self, fh: int, offset: int, reply, plus: bool = True) -> None:
        self.readdir_now(fh, offset, reply, plus)

    def readdir_now(self, fh: int, offset: int, reply, plus: bool = True, node_id: int = 0) -> None:
        """List the directory from *offset* (0, or a next_offset given before) by calling
        reply(name: bytes, ino: int, ftype: int, entry: Entry | None, next_offset: int) -> bool
        for each entry until it returns False (the reply is full; that entry was not sent).

        ino is the entry's d_ino, ftype its S_IFMT bits. With *plus*, *entry* carries the attributes
        and one kernel reference of the node (taken back here if reply returns False), or is None:
        "." and "..", and files the kernel holds already, go without attributes when `bare_entries`
        (readdirplus with node id 0). Without *plus* *entry* is always None and no reference is taken.
        *fh* 0: the directory *node_id*, opened by the kernel without an opendir (the module's docstring).
        """
        try:
            union = self.union
            if fh:
                handle = self._dirs[fh]
                node = handle.node
                if offset == 0 or handle.names is None:
                    handle.names = self._listing(node)
                entries, start, tag = handle.names, offset, 0
            else:
                node = self._node(node_id)
                entries, start, tag = self._snapshot(node, offset)
                if start >= len(entries):
                    self._snapshots.pop(tag >> _SNAP_SHIFT, None)  # read to its end
                    return
            bare = self.bare_entries and plus
            for index in range(start, len(entries)):
                name, ftype, scanned = entries[index]
                if index < 2:
                    # The kernel takes no lookup reference for "." and ".." and reads no attributes of
                    # them (fuse_direntplus_link skips them): d_ino and d_type are all that count.
                    target = node if index == 0 else (node.parent or union.root)
                    if not reply(name, self.nodes.shown_ino(target), _S_IFDIR, None, tag | (index + 1)):
                        return
                    continue
                child = node.children.get(name)
                if not plus:
                    if scanned is not None:
                        child = union.attach_scanned(node, scanned)[0]
                    elif child is None:
                        try:
                            child = union.child(node, name)
                        except OSError:
                            continue  # gone behind the mount since
                    if not reply(name, self.nodes.shown_ino(child), ftype, None, tag | (index + 1)):
                        return
                    continue
                # A file the kernel holds goes without attributes (bare_entries.py): a refresh would
                # drop its cached ACLs. Directories keep theirs: reading a directory makes the kernel
                # drop its atime, and without this refresh the walker's next stat of it would be a
                # request. A shared lower file is looked up by name each time (entry_timeout 0).
                if (
                    bare
                    and child is not None
                    and self.nodes.holds(child)
                    and not child.is_dir
                    and not child.shared_lower
                    and (scanned is None or union.is_scanned_node(child, scanned))
                ):
                    if not reply(name, self.nodes.shown_ino(child), ftype, None, tag | (index + 1)):
                        return
                    continue
                if scanned is None:  # a listing kept from before: the entry's attributes are looked up
                    try:
                        child, st = union.lookup(node, name)
                    except OSError:
                        continue  # gone behind the mount since
                else:
                    child, st = union.attach_scanned(node, scanned)
                entry = self._entry(child, st, node, name)
                if not reply(name, entry.st_ino, ftype, entry, tag | (index + 1)):
                    self.nodes.forget(entry.node_id, 1)
                    return
        except Exception as exc:
            raise self._failure(exc, "readdir", (fh, offset)) from None

    def _listing(self, node) -> list:
        return [(b".", _S_IFDIR, None), (b"..", _S_IFDIR, None)] + self.union.list_entries(node)

    def _snapshot(self, node, offset: int):
        """(entries, position to go on from, offset tag) of a handle-0 listing of *node* at *offset*."""
        snapshots = self._snapshots
        position = offset & _POSITION
        if offset:
            kept = snapshots.get(offset >> _SNAP_SHIFT)
            if kept is not None and kept[0] is node:
                return kept[1], position, offset & ~_POSITION
        # from the start, or a snapshot let go (or not this directory's): a new one
        entries = self._listing(node)
        if len(entries) > _POSITION:
            raise OSError(errno.EOVERFLOW, "a directory of 16M names or more: positions do not fit")
        number = self._snapshot_number % _SNAP_IDS + 1
        self._snapshot_number = number
        snapshots.pop(number, None)
        while len(snapshots) >= _SNAPSHOTS:
            del snapshots[next(iter(snapshots))]  # the oldest
        snapshots[number] = (node, entries)
        return entries, position, number << _SNAP_SHIFT

    async def releasedir(self, fh: int) -> None:
        self.releasedir_now(fh)

    def releasedir_now(self, fh: int) -> None:
        try:
            handle = self._dirs.pop(fh)
            self.union.releasedir(handle.node)
        except Exception as exc:
            raise self._failure(exc, "releasedir", (fh,)) from None

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass
