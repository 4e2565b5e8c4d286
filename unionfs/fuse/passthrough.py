"""Which opens the kernel may pass through to the backing file (FUSE_PASSTHROUGH), and their backing ids.

An open answered with a backing id has its reads, writes and maps done by the kernel on the backing
file itself (an upper file; on a mount without an upper layer, a lower one); the daemon still sees the
open, the close, stat, truncate and fsync. One backing id is
registered per kernel inode and let go at the last close of the handles passed through with it.
`UnionRequests` inherits these methods; the backend sets `backing_open`/`backing_close`.
"""

from __future__ import annotations

import errno
import os
import stat

from ..logger import get_logger

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a mount program's start)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..engine import UnionEngine

log = get_logger("unionfs")

_SUIDGID = stat.S_ISUID | stat.S_ISGID


class PassthroughRequests:
    """Uses the request layer's `union`, `backing_open`, `backing_close`, `kill_privs`, and keeps
    `_backing` (engine node -> [backing id, open handles passed through with it]; an upper file is one
    node id, so its engine node stands for the kernel inode) and `_passed` (fh -> engine node)."""

    union: UnionEngine
    backing_open: Callable[[int], int] | None
    backing_close: Callable[[int], None]
    kill_privs: bool
    _has_upper: bool
    _backing: dict
    _passed: dict

    def _pass_through(self, fh: int, handle, mode=None) -> int:
        """The backing id this open may pass through with, or 0. *mode*: the file's st_mode as shown,
        where the caller knows it (else it is looked up when needed).

        Only a file no later copy-up can change the backing of: one in the upper layer, or any file of
        a mount without an upper layer (nothing is ever copied up there, and a lower layer never
        changes). Otherwise a lower file's reads must keep coming here, so that a read-only open made
        before a copy-up reads the copy (as the kernel overlay reopens the real file). The kernel wants
        one backing file for all the opens of a node, and none of them without it: a node already open
        without passthrough (opened in a lower layer, copied up since) stays so until its last close.
        """
        node = handle.node
        register = self.backing_open
        if register is None or self._has_upper and (handle.layer != 0 or node.layer != 0):
            return 0
        held = self._backing.get(node)
        if held is None:
            if len(node.handles) > 1:
                return 0
            if self._has_upper and self.kill_privs and (self._mode_of(handle) if mode is None else mode) & _SUIDGID:
                # Its writes must come here to clear those bits: passed through, the kernel writes
                # with the daemon's privileges and, with HANDLE_KILLPRIV_V2, asks nobody to clear them.
                return 0
            try:
                # (read_fd: a lower file's open is left for its first need, and this is one)
                backing = register(self.union.read_fd(handle))
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.EOVERFLOW, errno.EXDEV):
                    # not for this mount at all (not privileged, not agreed, no such ioctl): stop asking
                    self.backing_open = None
                log.debug("passthrough refused (%s): reads and writes go through the daemon", exc)
                return 0
            held = self._backing[node] = [backing, 0]
        held[1] += 1
        self._passed[fh] = node
        return held[0]

    def _mode_of(self, handle) -> int:
        """The mode of an open file as shown: its backing file's (fstat), unless ownership records
        may say another."""
        if self.union.stack.layers[handle.layer].record is None:
            return os.fstat(handle.fd).st_mode
        return self.union.getattr(handle.node).st_mode

    def _passed_released(self, fh: int) -> None:
        node = self._passed.pop(fh, None)
        if node is None:
            return
        held = self._backing[node]
        held[1] -= 1
        if held[1] == 0:
            del self._backing[node]
            try:
                self.backing_close(held[0])
            except OSError as exc:
                log.debug("closing backing id %d: %s", held[0], exc)
