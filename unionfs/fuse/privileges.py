"""Set-user-ID and set-group-ID cleared by the daemon, as the VFS would (HANDLE_KILLPRIV_V2).

With HANDLE_KILLPRIV_V2 agreed the kernel flags a write, truncate or O_TRUNC open by a caller without
CAP_FSETID, and every chown, and leaves the clearing to the filesystem: the daemon's own write, made
with CAP_FSETID, would clear nothing. `UnionRequests` inherits `_kill_suidgid` from here.
"""

from __future__ import annotations

import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a mount program's start)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..engine import UnionEngine
    from ..engine.idmap import IdMap
    from .nodetable import KernelNodes


def _in_group(caller, gid: int) -> bool:
    """Whether the caller (uid, gid, pid) is root (taken as privileged: a chown by root keeps a
    set-group-ID without group execute) or has *gid* as its group or a supplementary one (from /proc,
    as the request does not carry them); in doubt, no."""
    if caller.uid == 0 or caller.gid == gid:
        return True
    try:
        with open(f"/proc/{caller.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return str(gid).encode() in line.split()[1:]
    except OSError:
        pass
    return False


class PrivilegeRequests:
    """Uses the request layer's `union`, `nodes`, `gid_map` and `_attributes_changed` (the backend's
    way to make the kernel drop the attributes it caches of node ids; a failure is logged)."""

    union: UnionEngine
    nodes: KernelNodes
    gid_map: IdMap
    _attributes_changed: Callable[..., None]

    def _kill_suidgid(self, node, st, caller, handle=None):
        """Clear a regular file's set-user-ID, and its set-group-ID where the group may execute or
        *caller* is not in the group, as the VFS does on write, truncate and chown by a caller without
        CAP_FSETID (with HANDLE_KILLPRIV_V2 the kernel leaves it to the filesystem; the daemon's own
        write, with CAP_FSETID, would not). The backing filesystem drops security.capability itself
        on the daemon's write, truncate or chown. The kernel is told to drop the mode it caches (it
        refreshes only size and times after a write). Returns the attributes after."""
        mode = st.st_mode
        if not stat.S_ISREG(mode) or not mode & (stat.S_ISUID | stat.S_ISGID):
            return st
        kill = mode & stat.S_ISUID
        if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not _in_group(caller, self.gid_map.shown(st.st_gid))):
            kill |= stat.S_ISGID
        if not kill:
            return st
        st = self.union.setattr(node, mode=stat.S_IMODE(mode) & ~kill, handle=handle)
        node_id = self.nodes.id_of(node)
        if node_id is not None:
            self._attributes_changed(node_id)
        return st
