"""Attributes and xattrs: what stat shows of a node (with the owner and mode its ownership record gives),
their changes (setattr, copied up first), owners of new entries, and the xattrs of the merged view.

Ownership records (ownership.py): which layers keep them is found when the union opens
(`setup_records`); every stat of such a layer shows what its record says, and with
`xattr_permissions` the upper takes records instead of chown/chmod.
"""

import errno
import os
import stat

from . import _sys, ownership, xattrs
from .layers import O_PATH_DIR, Layer
from .nodes import Node
from .whiteout import proc_path

# What a chmod, chown or truncate can change among a file's xattrs: chmod rewrites an access ACL,
# chown and truncate drop file capabilities (the filesystem does, whoever asks). Nothing else, and
# neither adds an xattr: known names without these stay right.
_CHANGED_BY_SETATTR = (b"system.posix_acl_access", b"security.capability")
_NO_NAMES: frozenset = frozenset()


def forget_changed_xattrs(node: Node) -> None:
    """After a chmod, chown or truncate of *node*: forget its known xattr names if that may have changed
    them."""
    names = node.xattr_names
    if names is not None and any(n in names for n in _CHANGED_BY_SETATTR):
        node.xattr_names = None


class WithNlink:
    """A stat result with another st_nlink (an indexed file's union link count, or 0 once unlinked)."""

    __slots__ = ("_st", "st_nlink")

    def __init__(self, st, nlink):
        self._st, self.st_nlink = st, nlink

    def __getattr__(self, name):
        return getattr(self._st, name)


class Attributes:
    """Attributes and xattrs of the merged view, and the ownership records behind them."""

    def __init__(self, stack, nodes):
        self.stack, self.nodes = stack, nodes
        self.layers = stack.layers
        self.strict_records = self.records_in_use = self.write_records = False

    def connect(self, union) -> None:
        self.resolution, self.copyup, self.index = union.resolution, union.copyup, union.index
        self.files = union.files

    # ------------------------------------------------------------------ ownership records

    def setup_records(self, xattr_permissions: int) -> None:
        """Which layers keep owners and modes in ownership records, and whether the upper takes them
        (-o xattr_permissions=1|2, fuse-overlayfs's option)."""
        stack = self.stack
        for layer in self.layers:
            layer.record = ownership.layer_record_name(proc_path(layer.root_fd))
        # The real root's mount honours setuid and devices: user.* records may not grant those.
        self.strict_records = stack.as_root and stack.initial_userns
        self.records_in_use = any(layer.record for layer in self.layers)
        self.write_records = bool(xattr_permissions) and stack.upper is not None
        if not self.write_records:
            return
        upper = stack.upper
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
                    st = self.record_view(
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

    def record_view(self, st, path: bytes, record: bytes, follow: bool):
        """*st* as an ownership record at *path* shows it (see ownership.view)."""
        return ownership.view(st, path, record, follow, self.strict_records)

    def shown_fd(self, layer: Layer, fd: int):
        """fstat of fd, with the owner and mode its ownership record gives (when the layer has those)."""
        st = os.fstat(fd)
        if layer.record is None:
            return st
        return self.record_view(st, proc_path(fd), layer.record, True)

    def write_record(self, path: bytes, follow: bool, uid: int, gid: int, mode: int) -> None:
        os.setxattr(path, self.stack.upper.record, ownership.encode(uid, gid, mode), follow_symlinks=follow)

    def _record_change(self, fd: int, shown, uid, gid, mode) -> None:
        """Write the owner and mode a setattr gives (None: as *shown*) to the ownership record of the
        upper file open as *fd*."""
        self.write_record(
            proc_path(fd),
            True,
            shown.st_uid if uid is None else uid,
            shown.st_gid if gid is None else gid,
            shown.st_mode if mode is None else mode,
        )

    def chown_new(self, tmp_name: bytes, uid: int, gid: int) -> None:
        """Give a work-dir entry its owner (when the daemon may chown at all, and keeps no records)."""
        stack = self.stack
        if not stack.as_root or self.write_records:
            return
        try:
            os.chown(tmp_name, uid, gid, dir_fd=stack.work.root_fd, follow_symlinks=False)
        except OSError as exc:
            # EINVAL: an id this user namespace does not map (it shows as the overflow id 65534 here).
            if exc.errno not in (errno.EINVAL, errno.EPERM):
                raise
            if not stack.ignore_chown_errors:
                # The kernel's answer when a copy-up cannot keep an owner the namespace cannot name.
                raise OSError(errno.EOVERFLOW, "cannot give the copy its owner %d:%d here" % (uid, gid)) from None

    # ------------------------------------------------------------------ stat

    def getattr(self, node: Node) -> os.stat_result:
        if not node.names and node is not self.nodes.root:
            for handle in node.handles:  # unlinked but still open
                fd = self.files.fd_of(handle)
                st = self.shown_fd(self.layers[handle.layer], fd)
                if self.index.is_entry(node):
                    # An indexed file counts the union's names on its index entry (other names may be
                    # left that nobody looked up); its backing file also has the index's own name.
                    return WithNlink(st, self.index.union_links(fd, st))
                return st
            if node.gone_stat is not None:  # opened by the kernel alone (a fifo): its last attributes
                return WithNlink(node.gone_stat, 0)
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        layer = self.layers[node.layer]
        rel = self.resolution.rel(node, node.layer)
        if self.index.is_entry(node):
            return self.index.stat(rel)
        if layer.record is None:
            return layer.lstat(rel)
        with layer.opened(rel, os.O_PATH) as fd:
            return self.shown_fd(layer, fd)

    def reported_nlink(self, node: Node, st: os.stat_result) -> int:
        # As the kernel: a merged directory reports 1 ("find" then does not count subdirectories).
        if node.is_dir and len(node.merge) > 1:
            return 1
        return st.st_nlink

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(proc_path(self.layers[0].root_fd))

    def unlinked_fd(self, node: Node, for_change: bool = False):
        """An open fd of a node whose last name is gone (None if it still has a name).

        A change needs a descriptor on the upper copy: a lower file is never written.
        """
        if node.names or node is self.nodes.root:
            return None
        for handle in node.handles:
            if handle.layer == 0 or not for_change:
                return self.files.fd_of(handle)
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))

    def copy_up_for_setattr(self, node: Node, size):
        """The copy-up a setattr (truncating to *size*, or None) needs first: a CopyUpJob, or None."""
        self.stack.require_upper()
        if size is not None and node.is_dir:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not node.names:
            return None  # the root (in the upper), or a file whose last name is gone: changed through its fd
        return self.copyup.job(node, with_data=size != 0)

    def setattr(self, node: Node, *, size, mode, uid, gid, atime_ns, mtime_ns, handle) -> os.stat_result:
        """Change what is not None. Nothing at all is a chown(-1, -1): as on the kernel's overlay it
        copies up, and the upper file's own chown(-1, -1) updates its ctime and drops set-user-ID and
        a file capability."""
        job = self.copy_up_for_setattr(node, size)  # None when the caller ran it, or for an unlinked file
        times_only = size is None and mode is None and uid is None and gid is None
        noop_chown = times_only and atime_ns is None and mtime_ns is None
        xattrs_change = not times_only or noop_chown  # a utimes changes no xattr
        fd = self.unlinked_fd(node, for_change=True)
        if fd is None and size is None:
            fd = self._open_upper_fd(node)
        if fd is not None:
            st = self._setattr_fd(node, fd, size, mode, uid, gid, atime_ns, mtime_ns, handle, noop_chown)
            if xattrs_change:
                forget_changed_xattrs(node)
            return st
        self.copyup.run(job)
        if xattrs_change:
            forget_changed_xattrs(node)
        upper = self.stack.upper
        rel = node.path()
        parent, _, name = rel.rpartition(b"/")
        with upper.opened(rel, os.O_PATH) as fd, upper.dir(parent) as dfd:
            # The entry is reached as name under its parent with AT_SYMLINK_NOFOLLOW, or (the root,
            # chmod of a non-symlink) through its own O_PATH fd: never through a symlink.
            st = os.fstat(fd)
            is_link = stat.S_ISLNK(st.st_mode)
            if self.write_records and (uid is not None or gid is not None or mode is not None):
                # Owner and mode go to the record; the backing file keeps its own (a symlink can hold
                # no user.* xattr: as fuse-overlayfs, its chown is let go).
                if not is_link:
                    self._record_change(fd, self.record_view(st, proc_path(fd), upper.record, True), uid, gid, mode)
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
                    with upper.opened(rel, os.O_WRONLY) as wfd:
                        os.ftruncate(wfd, size)
            if uid is not None or gid is not None or noop_chown:
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
            return self.shown_fd(upper, fd)

    def _open_upper_fd(self, node: Node):
        """A descriptor open on the node's upper file, from one of its open handles; None when it has
        none. A change of owner, mode or times through it resolves no path: a tar sets them (three
        SETATTRs a file, which the kernel sends without the file's handle) while the file it has just
        written is still open, and each took two openat2 from the layer's root and a /proc path."""
        if not node.handles or node.layer != 0 or self.index.is_entry(node):
            return None
        for handle in node.handles:
            if handle.layer == 0 and handle.fd >= 0 and not handle.stays:
                return handle.fd
        return None

    def _setattr_fd(self, node, fd, size, mode, uid, gid, atime_ns, mtime_ns, handle, noop_chown):
        """setattr through an open descriptor of the upper file: an unlinked, still open file, or one
        with an open handle (`_open_upper_fd`)."""
        upper = self.stack.upper
        if size is not None:
            writable = [h.fd for h in node.handles if h.writable and h.layer == 0]
            if not writable:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            os.ftruncate(handle.fd if handle is not None and handle.writable else writable[0], size)
        if self.write_records and (uid is not None or gid is not None or mode is not None):
            self._record_change(fd, self.shown_fd(upper, fd), uid, gid, mode)
            uid = gid = mode = None
        if uid is not None or gid is not None or noop_chown:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        if mode is not None:
            os.fchmod(fd, stat.S_IMODE(mode))
        if atime_ns is not None or mtime_ns is not None:
            if atime_ns is None or mtime_ns is None:  # the one not given stays (a tar gives both)
                st = os.fstat(fd)
                atime_ns = st.st_atime_ns if atime_ns is None else atime_ns
                mtime_ns = st.st_mtime_ns if mtime_ns is None else mtime_ns
            os.utime(fd, ns=(atime_ns, mtime_ns))
        return self.shown_fd(upper, fd)

    # ------------------------------------------------------------------ xattrs

    def _at_entry(self, layer: Layer, node: Node, call, *args):
        """call(path, *args, follow_symlinks=...) on the node's entry in *layer*, reached through /proc
        without following a symlink: a lower entry through its parent's kept fd (nothing to open or
        close; a container engine's diff comes here for every file of the image), any other through an
        fd opened for the call."""
        rel = self.resolution.rel(node, layer.index)
        if rel:
            reached = layer.reach(rel)
            if reached is not None:
                return call(proc_path(*reached), *args, follow_symlinks=False)
        with _ProcPath(layer, rel) as (path, follow):
            return call(path, *args, follow_symlinks=follow)

    def _private_record(self, name: bytes) -> bool:
        """Ownership records are the daemon's while a layer uses them: never shown, never set."""
        return self.records_in_use and name in ownership.NAMES

    def getxattr(self, node: Node, name: bytes) -> bytes:
        value = self.find_xattr(node, name)
        if value is None:
            raise OSError(errno.ENODATA, os.strerror(errno.ENODATA))
        return value

    def find_xattr(self, node: Node, name: bytes):
        """The value of xattr *name*, or None when the node has none (ENODATA). No exception for that:
        a container engine's diff asks every file for security.capability, which nearly none has."""
        if self.records_in_use and name in ownership.NAMES:
            return None  # the daemon's own (see _private_record)
        private = self.stack.private_xattrs
        stored = xattrs.to_stored(name, private) if name.startswith(private) else name
        if not node.names and node is not self.nodes.root:
            fd = self.unlinked_fd(node)
            try:
                return os.getxattr(fd, stored)
            except OSError as exc:
                if exc.errno == errno.ENODATA:
                    return None
                raise
        names = node.xattr_names
        if names is None:
            names = self._stored_xattr_names(node)
        if stored not in names:
            # Every change goes through the daemon, so the list is current: answer without a syscall.
            return None
        try:
            return self._at_entry(self.layers[node.layer], node, os.getxattr, stored)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.ENODATA):
                return None
            raise

    @staticmethod
    def note_xattr_names(node: Node, fd: int) -> None:
        """Know the node's xattr names from an open fd of its backing file (a file just made: what the
        filesystem gave it, an inherited ACL or a security label), so its first getxattr resolves no
        path."""
        try:
            node.xattr_names = frozenset(os.fsencode(n) for n in os.listxattr(fd))
        except OSError:
            node.xattr_names = None  # asked again when needed

    def _stored_xattr_names(self, node: Node) -> frozenset:
        if not node.names:
            fd = self.unlinked_fd(node)
            if fd is not None:
                return frozenset(map(os.fsencode, os.listxattr(fd)))
        try:
            listed = self._list_at_entry(self.layers[node.layer], node)
        except OSError as exc:
            if exc.errno != errno.ENOTSUP:
                raise
            listed = []
        names = frozenset(listed) if listed else _NO_NAMES
        node.xattr_names = names
        return names

    def _list_at_entry(self, layer: Layer, node: Node) -> list:
        """The xattr names (bytes) of the node's entry in *layer*: a lower entry's through its parent's
        kept fd, with listxattrat where the kernel has it (no /proc path to resolve); else as _at_entry."""
        rel = self.resolution.rel(node, layer.index)
        if rel:
            reached = layer.reach(rel)
            if reached is not None:
                try:
                    return _sys.listxattrat(*reached)
                except OSError as exc:
                    if exc.errno != errno.ENOSYS:
                        raise
                return list(map(os.fsencode, os.listxattr(proc_path(*reached), follow_symlinks=False)))
        with _ProcPath(layer, rel) as (path, follow):
            return list(map(os.fsencode, os.listxattr(path, follow_symlinks=follow)))

    def listxattr(self, node: Node):
        # The names listed last are current (every change goes through the daemon and forgets them), as
        # getxattr relies on: a container engine's diff lists every entry's xattrs.
        stored = node.xattr_names
        if stored is None:
            stored = self._stored_xattr_names(node)
        if not stored:
            return []  # most files have none
        private = self.stack.private_xattrs
        names = []
        for item in stored:
            visible = xattrs.to_visible(item, private)
            if visible is not None and not self._private_record(visible):
                names.append(visible)
        return names

    def _xattr_target(self, node: Node, name: bytes, removing: bool = False) -> Layer:
        """The layer an xattr change is made in: the upper (after copy-up), or an indexed file's entry."""
        entry = self.index.is_entry(node)
        self.copyup.run(self.copy_up_for_xattr(node, name, removing))
        return self.index.layer if entry else self.stack.upper

    def copy_up_for_xattr(self, node: Node, name: bytes, removing: bool = False):
        """The copy-up a setxattr (or a removexattr) of *name* needs first: a CopyUpJob, or None (an
        indexed file's xattrs change on its index entry). The errors the change gives before any
        copy-up are raised here."""
        self.stack.require_upper()
        if self._private_record(name):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        if removing:
            self.getxattr(node, name)  # ENODATA before any copy-up, as the kernel
        if self.index.is_entry(node):
            return None
        return self.copyup.job(node)

    def setxattr(self, node: Node, name: bytes, value: bytes, flags: int = 0) -> None:
        layer = self._xattr_target(node, name)
        node.xattr_names = None
        fd = self.unlinked_fd(node, for_change=True)
        if fd is not None:
            os.setxattr(fd, xattrs.to_stored(name, self.stack.private_xattrs), value, flags)
            return
        self._at_entry(layer, node, os.setxattr, xattrs.to_stored(name, self.stack.private_xattrs), value, flags)

    def removexattr(self, node: Node, name: bytes) -> None:
        layer = self._xattr_target(node, name, removing=True)
        node.xattr_names = None
        fd = self.unlinked_fd(node, for_change=True)
        if fd is not None:
            os.removexattr(fd, xattrs.to_stored(name, self.stack.private_xattrs))
            return
        self._at_entry(layer, node, os.removexattr, xattrs.to_stored(name, self.stack.private_xattrs))


class _ProcPath:
    """An fd opened to reach the entry *rel* of *layer* (b"": its root) through /proc, closed on exit."""

    def __init__(self, layer, rel):
        self.layer, self.rel, self.fd = layer, rel, -1

    def __enter__(self):
        """(path, follow): the entry's own O_PATH fd through /proc (no mount point crossed), or for a
        symlink its name under the parent's fd, not followed."""
        if not self.rel:
            self.fd = self.layer.open(b"", O_PATH_DIR)
            return proc_path(self.fd), True
        self.fd = self.layer.open(self.rel)
        if not stat.S_ISLNK(os.fstat(self.fd).st_mode):
            return proc_path(self.fd), True
        os.close(self.fd)
        parent, _, name = self.rel.rpartition(b"/")
        self.fd = self.layer.open(parent, O_PATH_DIR)
        return proc_path(self.fd, name), False

    def __exit__(self, *exc):
        if self.fd >= 0:
            os.close(self.fd)
