"""`UnionEngine`: the engine's front, one object per union, made of the parts that do the work.

Each public method hands the call to the part whose job it is (see the package docstring); callers
(the FUSE adapter, the path API, the tests) see one object and never the parts.
"""

from __future__ import annotations

import time

from .attributes import Attributes
from .copyup import CopyUp, CopyUpJob
from .files import FileHandle, Files
from .index import Index
from .listings import Listings
from .namespace import Caller, Namespace
from .nodes import Node, NodeTable
from .renames import Renames
from .resolution import Resolution
from .stack import LayerInUse, Stack

__all__ = ["Caller", "CopyUpJob", "FileHandle", "LayerInUse", "UnionEngine"]


class UnionEngine:
    """A merged view of `lowers` (topmost first) under an optional `upper` that takes every change.

    Every method works on nodes of the merged view and raises OSError with the errno a user must see.
    The engine is single-threaded: only `CopyUpJob.copy_data` may run in another thread. `clock` gives
    the wall-clock time in nanoseconds (the kept listings compare it with directory times).
    """

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
        stack = Stack(
            lowers,
            upper,
            work,
            userxattr=userxattr,
            whiteout_files=whiteout_files,
            redirect_dir=redirect_dir,
            ignore_chown_errors=ignore_chown_errors,
            volatile=volatile,
        )
        self._build(stack, xattr_permissions, index, clock)

    @classmethod
    def over(cls, stack: Stack, *, xattr_permissions=0, index=False, clock=time.time_ns) -> UnionEngine:
        """The engine over layers already opened and checked (a Stack; the daemon opens it before its
        mount and makes the rest afterwards). Takes the stack: closing the engine closes it, and so
        does a failure here."""
        engine = cls.__new__(cls)
        engine._build(stack, xattr_permissions, index, clock)
        return engine

    def _build(self, stack: Stack, xattr_permissions, index, clock) -> None:
        self.stack = stack
        self.layers, self.upper, self.work = stack.layers, stack.upper, stack.work
        try:
            top = stack.layers[0]
            single_dev = len({layer.dev for layer in stack.layers}) == 1
            self.nodes = nodes = NodeTable((0, top.dev, top.root_ino), tuple(range(stack.nlayers)), single_dev)
            self.index = Index(stack, nodes)
            self.resolution = Resolution(stack, nodes)
            self.listings = Listings(stack, nodes, clock)
            self.copyup = CopyUp(stack, nodes)
            self.namespace = Namespace(stack, nodes)
            self.renames = Renames(stack, nodes)
            self.files = Files(stack, nodes)
            self.attributes = Attributes(stack, nodes)
            for part in (
                self.index,
                self.resolution,
                self.listings,
                self.copyup,
                self.namespace,
                self.renames,
                self.files,
                self.attributes,
            ):
                part.connect(self)
            self.attributes.setup_records(xattr_permissions)
            # The queries every request of a tree walk makes go straight to their part (the methods
            # below say what they do): one Python frame less each, on the daemon's hottest path.
            self.lookup = self.resolution.lookup
            self.getattr = self.attributes.getattr
            self.reported_nlink = self.attributes.reported_nlink
            self.find_xattr = self.attributes.find_xattr
            self.listxattr = self.attributes.listxattr
            if index and stack.workdir is not None:
                self.index.open(stack.workdir)
        except BaseException:
            stack.close()
            raise

    def close(self) -> None:
        """Close the layer fds and free the locks (idempotent)."""
        self.stack.close()

    @property
    def root(self) -> Node:
        return self.nodes.root

    @property
    def read_wh_files(self) -> bool:
        """`.wh.NAME` files and `.wh..wh..opq` are markers in every layer."""
        return self.stack.markers.read_wh_files

    @property
    def write_wh_files(self) -> bool:
        """Whiteouts are written as `.wh.NAME` files (this daemon cannot make char 0/0 devices)."""
        return self.stack.markers.write_wh_files

    @property
    def strict_records(self) -> bool:
        """Ownership records under user.* names grant no setuid/setgid bits and no device type."""
        return self.attributes.strict_records

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

    # ------------------------------------------------------------------ names (resolution.py)

    def child(self, parent: Node, name: bytes) -> Node:
        """The node of parent/name; ENOENT if absent."""
        return self.resolution.child(parent, name)

    def lookup(self, parent: Node, name: bytes):
        """(node, stat) of parent/name; parent/name becomes the name the node is reached by (a file
        with several names is copied up through the name looked up last)."""
        return self.resolution.lookup(parent, name)

    # ------------------------------------------------------------------ listings (listings.py)

    def listdir(self, node: Node):
        """The merged names of a directory."""
        return self.listings.listdir(node)

    def scan(self, node: Node):
        """The merged listing with each name resolved (see Listings.scan)."""
        return self.listings.scan(node)

    def list_entries(self, node: Node):
        """The merged listing as [(name, file type, scan entry or None)] (see Listings.list_entries)."""
        return self.listings.list_entries(node)

    def attach_scanned(self, parent: Node, scanned):
        return self.listings.attach_scanned(parent, scanned)

    def is_scanned_node(self, node: Node, scanned) -> bool:
        return self.listings.is_scanned_node(node, scanned)

    def is_empty_dir(self, node: Node) -> bool:
        return self.listings.is_empty_dir(node)

    # ------------------------------------------------------------------ copy-up (copyup.py)

    def is_upper(self, node: Node) -> bool:
        """Whether changes to the node need no copy-up."""
        return self.copyup.is_upper(node)

    def is_index_entry(self, node: Node) -> bool:
        """index=on: the node is an index entry (xattr changes go there without a copy-up)."""
        return self.index.is_entry(node)

    def ensure_upper_dir(self, node: Node) -> None:
        self.copyup.ensure_upper_dir(node)

    def copy_up(self, node: Node, with_data: bool = True) -> None:
        """Synchronous copy-up (library use; the FUSE adapter runs copy_data in a thread)."""
        self.copyup.copy_up(node, with_data)

    # What a change must copy up first, for a caller that runs the copy itself (the FUSE request
    # layer: a big file's bytes in a worker thread, one copy of a node at a time). Each returns None
    # (nothing to copy), the job in flight for the node (wait for it to end, then ask again), or a
    # begun CopyUpJob: run its copy_data, then copy_up_commit, or copy_up_abort if anything failed.
    # The errors the change gives before any copy-up are raised by these. The change itself (open,
    # setattr, ...) then finds nothing left to copy.

    def copy_up_for_open(self, node: Node, flags: int) -> CopyUpJob | None:
        return self.files.copy_up_for_open(node, flags)

    def copy_up_for_setattr(self, node: Node, size: int | None) -> CopyUpJob | None:
        return self.attributes.copy_up_for_setattr(node, size)

    def copy_up_for_xattr(self, node: Node, name: bytes, removing: bool = False) -> CopyUpJob | None:
        return self.attributes.copy_up_for_xattr(node, name, removing)

    def copy_up_for_link(self, node: Node, new_name: bytes) -> CopyUpJob | None:
        return self.namespace.copy_up_for_link(node, new_name)

    def copy_up_for_rename(
        self, parent: Node, name: bytes, new_parent: Node, new_name: bytes, flags: int = 0
    ) -> CopyUpJob | None:
        return self.renames.copy_up_for_rename(parent, name, new_parent, new_name, flags)

    def copy_up_job(self, node: Node, with_data: bool = True) -> CopyUpJob | None:
        """What any change of *node* must copy up first (see CopyUp.job)."""
        return self.copyup.job(node, with_data)

    def copy_up_begin(self, node: Node, with_data: bool = True) -> CopyUpJob:
        return self.copyup.begin(node, with_data)

    def copy_up_run(self, job: CopyUpJob) -> None:
        """Run a begun job here and now: claim it, copy, commit; abort it if anything fails."""
        self.copyup.run(job)

    def copy_up_commit(self, job: CopyUpJob) -> None:
        """Move a job's copy into place (its descriptors closed); if this fails, abort the job."""
        self.copyup.commit(job)

    def copy_up_abort(self, job: CopyUpJob) -> None:
        """Undo a job that failed (only then: a committed job is done)."""
        self.copyup.abort(job)

    # ------------------------------------------------------------------ making and removing (namespace.py)

    # *umask*: the caller's umask, where *mode* is not narrowed by it yet. The new entry gets the parent's
    # default POSIX ACL where it has one (the umask then does not apply), as on the kernel's overlay;
    # 0 where the caller applied it already.

    def create(self, parent: Node, name: bytes, mode: int, flags: int, caller: Caller, umask: int = 0):
        """Create and open a regular file: (node, FileHandle, stat)."""
        return self.namespace.create(parent, name, mode, flags, caller, umask)

    def mkdir(self, parent: Node, name: bytes, mode: int, caller: Caller, umask: int = 0):
        return self.namespace.mkdir(parent, name, mode, caller, umask)

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, caller: Caller, umask: int = 0):
        return self.namespace.mknod(parent, name, mode, rdev, caller, umask)

    def symlink(self, parent: Node, name: bytes, target: bytes, caller: Caller):
        return self.namespace.symlink(parent, name, target, caller)

    def link(self, node: Node, new_parent: Node, new_name: bytes):
        return self.namespace.link(node, new_parent, new_name)

    def unlink(self, parent: Node, name: bytes) -> None:
        self.namespace.unlink(parent, name)

    def rmdir(self, parent: Node, name: bytes) -> None:
        self.namespace.rmdir(parent, name)

    # ------------------------------------------------------------------ renames (renames.py)

    def check_rename(self, parent: Node, name: bytes, new_parent: Node, new_name: bytes, flags: int = 0):
        """The errors `rename` gives before it copies anything up."""
        self.renames.check_rename(parent, name, new_parent, new_name, flags)

    def rename(self, parent: Node, name: bytes, new_parent: Node, new_name: bytes, flags: int = 0):
        return self.renames.rename(parent, name, new_parent, new_name, flags)

    # ------------------------------------------------------------------ files (files.py)

    def open(self, node: Node, flags: int) -> FileHandle:
        return self.files.open(node, flags)

    def read(self, handle: FileHandle, offset: int, size: int) -> bytes:
        return self.files.read(handle, offset, size)

    def prefetch(self, node: Node, size: int) -> None:
        self.files.prefetch(node, size)

    def read_fd(self, handle: FileHandle) -> int:
        return self.files.read_fd(handle)

    def write(self, handle: FileHandle, offset: int, data: bytes) -> int:
        return self.files.write(handle, offset, data)

    def fsync(self, handle: FileHandle, datasync: bool) -> None:
        self.files.fsync(handle, datasync)

    def lseek(self, handle: FileHandle, offset: int, whence: int) -> int:
        return self.files.lseek(handle, offset, whence)

    def fallocate(self, handle: FileHandle, offset: int, length: int, mode: int) -> None:
        self.files.fallocate(handle, offset, length, mode)

    def copy_file_range(self, src: FileHandle, src_offset: int, dst: FileHandle, dst_offset: int, length: int) -> int:
        return self.files.copy_file_range(src, src_offset, dst, dst_offset, length)

    def release(self, handle: FileHandle) -> None:
        self.files.release(handle)

    def opendir(self, node: Node) -> None:
        self.files.opendir(node)

    def releasedir(self, node: Node) -> None:
        self.files.releasedir(node)

    def readlink(self, node: Node) -> bytes:
        return self.files.readlink(node)

    # ------------------------------------------------------------------ attributes (attributes.py)

    def getattr(self, node: Node):
        return self.attributes.getattr(node)

    def reported_nlink(self, node: Node, st) -> int:
        return self.attributes.reported_nlink(node, st)

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
    ):
        return self.attributes.setattr(
            node, size=size, mode=mode, uid=uid, gid=gid, atime_ns=atime_ns, mtime_ns=mtime_ns, handle=handle
        )

    def statfs(self):
        return self.attributes.statfs()

    def getxattr(self, node: Node, name: bytes) -> bytes:
        return self.attributes.getxattr(node, name)

    def find_xattr(self, node: Node, name: bytes):
        """The value of xattr *name*, or None when the node has none (getxattr's ENODATA, not raised)."""
        return self.attributes.find_xattr(node, name)

    def listxattr(self, node: Node):
        return self.attributes.listxattr(node)

    def setxattr(self, node: Node, name: bytes, value: bytes, flags: int = 0) -> None:
        self.attributes.setxattr(node, name, value, flags)

    def removexattr(self, node: Node, name: bytes) -> None:
        self.attributes.removexattr(node, name)
