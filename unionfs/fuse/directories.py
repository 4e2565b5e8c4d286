"""Directory handles and readdir for the request layer (`UnionRequests` inherits them).

A handle holds its directory's node and a snapshot of the merged listing, taken at the first readdir
from offset 0 (and at each rewinddir), so a listing read in many small pieces gives every name once.
readdirplus entries carry one kernel reference each (nodetable.py), taken back if the reply is full.
"""

from __future__ import annotations

import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a mount program's start)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ..engine import UnionEngine
    from .nodetable import KernelNodes

_S_IFDIR = stat.S_IFDIR


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

    def readdir_now(self, fh: int, offset: int, reply, plus: bool = True) -> None:
        """List the directory from *offset* (0, or a next_offset given before) by calling
        reply(name: bytes, ino: int, ftype: int, entry: Entry | None, next_offset: int) -> bool
        for each entry until it returns False (the reply is full; that entry was not sent).

        ino is the entry's d_ino, ftype its S_IFMT bits. With *plus*, *entry* carries the attributes
        and one kernel reference of the node (taken back here if reply returns False), or is None:
        "." and "..", and files the kernel holds already, go without attributes when `bare_entries`
        (readdirplus with node id 0). Without *plus* *entry* is always None and no reference is taken.
        """
        try:
            handle = self._dirs[fh]
            node = handle.node
            union = self.union
            if offset == 0 or handle.names is None:
                handle.names = [(b".", _S_IFDIR, None), (b"..", _S_IFDIR, None)] + union.list_entries(node)
            entries = handle.names
            bare = self.bare_entries and plus
            for index in range(offset, len(entries)):
                name, ftype, scanned = entries[index]
                if index < 2:
                    # The kernel takes no lookup reference for "." and ".." and reads no attributes of
                    # them (fuse_direntplus_link skips them): d_ino and d_type are all that count.
                    target = node if index == 0 else (node.parent or union.root)
                    if not reply(name, self.nodes.shown_ino(target), _S_IFDIR, None, index + 1):
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
                    if not reply(name, self.nodes.shown_ino(child), ftype, None, index + 1):
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
                    if not reply(name, self.nodes.shown_ino(child), ftype, None, index + 1):
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
                if not reply(name, entry.st_ino, ftype, entry, index + 1):
                    self.nodes.forget(entry.node_id, 1)
                    return
        except Exception as exc:
            raise self._failure(exc, "readdir", (fh, offset)) from None

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
