"""File I/O: open files and their handles, reads and writes, fsync, directory handles, readlink.

A handle is a descriptor on the file's backing in one layer. Opening for writing (or O_TRUNC) copies
the file up first; a read-only handle of a file copied up since reads the copy, as on the kernel.
"""

import errno
import os

from . import _sys
from .nodes import Node

ACCMODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
# The open flags passed on to the backing file. The rest are the kernel's business (it created and
# checked the file, it positions O_APPEND writes), would break unaligned I/O (O_DIRECT), or are not
# open(2) flags at all: the kernel sends __FMODE_EXEC (0o40) on exec, which openat2 refuses (EINVAL).
OPEN_KEEP = ACCMODE | os.O_SYNC | os.O_DSYNC | getattr(os, "O_LARGEFILE", 0)


class FileHandle:
    """An open regular file: a descriptor on its backing in one layer, or (a read-only open of a lower
    file) the path to open it by when a call first needs it (`Files.fd_of`)."""

    __slots__ = ("fd", "node", "layer", "writable", "name", "stays", "later")

    def __init__(self, fd, node, layer, writable, name=None):
        self.fd, self.node, self.layer, self.writable = fd, node, layer, writable
        self.name = name  # (parent, name) it was opened through
        self.stays = False  # its name was split off by another name's copy-up: it keeps reading its layer
        self.later = None  # fd -1: (path in the layer, open flags), opened at the first call needing it


class Files:
    """Open files and directories of the merged view."""

    def __init__(self, stack, nodes):
        self.stack, self.nodes = stack, nodes
        self.layers = stack.layers

    def connect(self, union) -> None:
        self.resolution, self.copyup = union.resolution, union.copyup

    def new_handle(self, fd: int, node: Node, layer: int, flags: int) -> FileHandle:
        """A handle of the open fd (of the node's backing in layer), counted on the node."""
        handle = FileHandle(fd, node, layer, flags & ACCMODE != os.O_RDONLY, node.names[0] if node.names else None)
        if node.handles:
            node.handles.append(handle)
        else:
            node.handles = [handle]  # (a node without open files holds an empty tuple: most nodes)
        return handle

    def copy_up_for_open(self, node: Node, flags: int):
        """The copy-up an open with *flags* needs first: a CopyUpJob (see CopyUp.job), or None."""
        if node.is_dir or not (flags & ACCMODE != os.O_RDONLY or flags & os.O_TRUNC):
            return None
        self.stack.require_upper()
        return self.copyup.job(node, with_data=not flags & os.O_TRUNC)

    def open(self, node: Node, flags: int) -> FileHandle:
        if node.is_dir:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        self.copyup.run(self.copy_up_for_open(node, flags))  # nothing left when the caller ran it
        open_flags = (flags & OPEN_KEEP) | (flags & os.O_TRUNC)
        rel = self.resolution.rel(node, node.layer)
        if flags & ACCMODE == os.O_RDONLY and not open_flags & os.O_TRUNC and not self.layers[node.layer].writable:
            # A lower file read-only: opened when a call first needs it. Its layer never changes, so the
            # path stays its path; a read the kernel's cache answers (a file read before) needs none.
            handle = self.new_handle(-1, node, node.layer, flags)
            handle.later = (rel, open_flags)
            return handle
        fd = self.layers[node.layer].open(rel, open_flags)
        return self.new_handle(fd, node, node.layer, flags)

    def prefetch(self, node: Node, size: int) -> None:
        """Have the kernel start reading the first *size* bytes of a regular file's backing into the page
        cache (posix_fadvise WILLNEED: the reads are submitted, nobody waits for them)."""
        # (O_NONBLOCK: should the name be a FIFO by now, the open must not wait for a writer)
        fd = self.layers[node.layer].open(self.resolution.rel(node, node.layer), os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def fd_of(self, handle: FileHandle) -> int:
        """The handle's fd, opened now if the open left it for later."""
        if handle.fd < 0 and handle.later is not None:
            rel, flags = handle.later
            handle.fd = self.layers[handle.layer].open(rel, flags)
            handle.later = None
        return handle.fd

    def _current_fd(self, handle: FileHandle) -> int:
        if handle.layer != handle.node.layer and not handle.writable and handle.node.names and not handle.stays:
            # The file was copied up after this read-only open: read the new copy, as the kernel does.
            node = handle.node
            fd = self.layers[node.layer].open(self.resolution.rel(node, node.layer), os.O_RDONLY)
            if handle.fd >= 0:
                os.close(handle.fd)
            handle.fd, handle.layer, handle.later = fd, handle.node.layer, None
            return fd
        return handle.fd if handle.fd >= 0 else self.fd_of(handle)

    def read(self, handle: FileHandle, offset: int, size: int) -> bytes:
        return os.pread(self._current_fd(handle), size, offset)

    def read_fd(self, handle: FileHandle) -> int:
        """The fd that `read` reads now (for a caller that moves the data itself: splice); it stays the
        handle's, valid until the next call on the handle."""
        return self._current_fd(handle)

    def lseek(self, handle: FileHandle, offset: int, whence: int) -> int:
        """SEEK_DATA / SEEK_HOLE (the kernel answers the other whences itself) on the backing file."""
        return os.lseek(self._current_fd(handle), offset, whence)

    def fallocate(self, handle: FileHandle, offset: int, length: int, mode: int) -> None:
        """fallocate(2) on an open file (open for writing, so already in the upper layer)."""
        if not handle.writable:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        _sys.fallocate(handle.fd, mode, offset, length)

    def copy_file_range(self, src: FileHandle, src_offset: int, dst: FileHandle, dst_offset: int, length: int) -> int:
        """Copy between two open files of the union on their backing files (a reflink or an in-kernel
        copy where the layers' filesystem has one). EXDEV (backings on two filesystems) makes the kernel
        copy through reads and writes itself."""
        if not dst.writable:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return os.copy_file_range(self._current_fd(src), dst.fd, length, src_offset, dst_offset)

    def write(self, handle: FileHandle, offset: int, data: bytes) -> int:
        return os.pwrite(handle.fd, data, offset)

    def fsync(self, handle: FileHandle, datasync: bool) -> None:
        if self.stack.volatile or handle.fd < 0:  # (not opened yet: a lower file, nothing to write out)
            return
        (os.fdatasync if datasync else os.fsync)(handle.fd)

    def release(self, handle: FileHandle) -> None:
        node = handle.node
        if handle.fd >= 0:
            os.close(handle.fd)
        handle.fd, handle.later = -1, None
        handles = node.handles
        if handle in handles:
            if len(handles) == 1:
                node.handles = ()
            else:
                handles.remove(handle)

    def opendir(self, node: Node) -> None:
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))

    def releasedir(self, node: Node) -> None:
        pass  # the directory handle held the node; nothing else to undo

    def readlink(self, node: Node) -> bytes:
        parent, _, name = self.resolution.rel(node, node.layer).rpartition(b"/")
        with self.layers[node.layer].dir(parent) as dfd:
            return os.readlink(name, dir_fd=dfd)
