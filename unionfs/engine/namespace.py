"""Names made and removed: create, mkdir, mknod, symlink, link, unlink, rmdir, and the whiteouts and
opaque markers they leave.

A new entry is prepared in the work dir (owner, mode) and renamed into the upper, over a whiteout when
the name was deleted before (a directory made there is opaque); a new regular file the daemon's own ids
may own is made in place. Removing a name a lower layer shows leaves a whiteout in the upper.
"""

import errno
import os
import stat

from . import _sys, acls, ownership
from .files import OPEN_KEEP
from .layers import O_PATH_DIR, lstat_at, opened, remove_tree
from .nodes import Node
from .records import record
from .resolution import check_name
from .whiteout import WH_PREFIX, make_whiteout, proc_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import NamedTuple

    class Caller(NamedTuple):
        uid: int
        gid: int

else:  # a record, not a typing.NamedTuple or collections.namedtuple: see records.py
    Caller = record(
        "Caller", "uid gid", """Who asks: new entries get this owner (when the daemon may chown).""", __name__
    )


class Namespace:
    """Entries made and removed in the merged view."""

    def __init__(self, stack, nodes):
        self.stack, self.nodes = stack, nodes
        self.markers = stack.markers

    def connect(self, union) -> None:
        self.resolution, self.copyup, self.attributes = union.resolution, union.copyup, union.attributes
        self.listings, self.files, self.index = union.listings, union.files, union.index

    # ------------------------------------------------------------------ creating

    def check_new_name(self, name: bytes) -> None:
        check_name(name)
        if self.markers.read_wh_files and name.startswith(WH_PREFIX):
            raise OSError(errno.EINVAL, "names starting with .wh. are whiteout markers here")

    def _new_owner(self, parent: Node, caller: Caller, mode: int, parent_st=None):
        """Owner and mode of a new entry: the caller's, with a setgid parent's group inherited.
        *parent_st*: the parent's attributes as shown, where the caller has them already."""
        gid = caller.gid
        if parent_st is None:
            parent_st = self.attributes.getattr(parent)
        if parent_st.st_mode & stat.S_ISGID:
            gid = parent_st.st_gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return caller.uid, gid, mode

    def _prepare_create(self, parent: Node, name: bytes, whiteout: bool = False) -> None:
        self.stack.require_upper()
        if not parent.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        self.check_new_name(name)
        try:
            self.resolution.child(parent, name)
        except FileNotFoundError:
            pass
        else:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        if whiteout:
            # The kernel refuses to make a whiteout (char 0/0) through the mount: it would only vanish.
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        self.copyup.ensure_upper_dir(parent)

    def _finish_create(
        self,
        tmp_name: bytes,
        parent: Node,
        name: bytes,
        is_dir: bool,
        uid: int,
        gid: int,
        mode: "int | None",
        umask: int = 0,
    ) -> Node:
        """Set owner, mode and inherited ACLs of a work-dir entry, then move it to parent/name (over a
        whiteout). *mode*: as asked for, before the umask or the parent's default ACL narrow it (None:
        a symlink, which has neither)."""
        stack, attributes = self.stack, self.attributes
        work_fd = stack.work.root_fd
        try:
            with stack.upper.dir(parent.path()) as dfd:
                access = default = None
                if mode is not None:
                    # As the kernel's overlay: the work dir has no default ACL to apply, the parent's
                    # is applied here (or the umask where it has none).
                    mode, access, default = acls.new_entry(acls.read_default(dfd), mode, umask, is_dir)
                attributes.chown_new(tmp_name, uid, gid)
                if attributes.write_records:
                    made = os.stat(tmp_name, dir_fd=work_fd, follow_symlinks=False)
                    if not stat.S_ISLNK(made.st_mode):
                        perms = stat.S_IMODE(mode if mode is not None else made.st_mode)
                        attributes.write_record(proc_path(work_fd, tmp_name), False, uid, gid, perms)
                        mode = perms | ownership.BACKING_MODE
                        access = default = None  # the backing file's mode is not the entry's
                if mode is not None:
                    os.chmod(tmp_name, stat.S_IMODE(mode), dir_fd=work_fd)
                acls.apply(work_fd, tmp_name, access, default)  # after chmod, which would rewrite the mask
                # With redirect_dir=on or index=on the kernel assumes no lower changes offline, and
                # marks every new directory in a merged one opaque.
                offline_changes_off = stack.redirect_create or self.index.enabled
                whiteout = self.markers.whiteout_at(dfd, name)
                if is_dir and (whiteout or (offline_changes_off and len(parent.merge) > 1)):
                    # As the kernel: a directory made where a name was deleted hides what lay below.
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
        return self.resolution.attach(parent, name, 0, st, (0,), new=True)

    def create(self, parent: Node, name: bytes, mode: int, flags: int, caller: Caller, umask: int = 0):
        """Create and open a regular file: (node, FileHandle, stat). *umask*: the caller's, where *mode*
        is not narrowed by it yet (a default ACL of the parent replaces it, as on the kernel)."""
        self._prepare_create(parent, name)
        mode = stat.S_IFREG | (mode & 0o7777)
        open_flags = (flags & OPEN_KEEP) | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        made = self._create_in_place(parent, name, open_flags, caller, mode, umask)
        if made is not None:
            fd, node, st = made
        else:
            uid, gid, mode = self._new_owner(parent, caller, mode)
            tmp = self.stack.tmp_name()
            fd = os.open(tmp, open_flags, stat.S_IMODE(mode), dir_fd=self.stack.work.root_fd)
            try:
                node = self._finish_create(tmp, parent, name, False, uid, gid, mode, umask)
            except BaseException:
                os.close(fd)
                raise
            st = None
        handle = self.files.new_handle(fd, node, 0, flags)
        self.attributes.note_xattr_names(node, fd)
        if st is None:
            st = self.attributes.shown_fd(self.stack.upper, fd)
        return node, handle, st

    def _create_in_place(self, parent: Node, name: bytes, open_flags: int, caller: Caller, mode: int, umask: int):
        """(fd, node, its attributes as shown) of a regular file made straight in the upper parent, as
        the kernel's overlay does where no whiteout is in the way; None where it takes the work dir: a
        whiteout to replace, an owner the daemon must chown to (so that the name never shows a wrong
        owner), setuid/setgid bits, or ownership records. Saves the rename and the chown of every new
        file. The parent's attributes come from the fd it is opened with here, and the new file's from
        the fstat its node is made with: an untar's every file, one openat2 from the layer's root and
        two fstat fewer."""
        stack = self.stack
        upper = stack.upper
        if mode & 0o7000 or self.attributes.write_records:
            return None
        with upper.dir(parent.path()) as dfd:
            # Without ownership records the upper directory's own attributes are the ones shown.
            raw = upper.record is None
            parent_st = os.fstat(dfd) if raw or stack.as_root else None
            uid, gid, mode = self._new_owner(parent, caller, mode, parent_st if raw else None)
            if stack.as_root:
                made_gid = parent_st.st_gid if parent_st.st_mode & stat.S_ISGID else stack.egid
                if (uid, gid) != (stack.euid, made_gid):
                    return None
            if self.markers.whiteout_at(dfd, name) is not None:
                return None
            # The upper filesystem applies the parent's default ACL itself; the umask only where it has
            # none (this process's umask is 0).
            if umask & 0o777 and acls.read_default(dfd) is None:
                mode &= ~(umask & 0o777)
            fd = os.open(name, open_flags, stat.S_IMODE(mode), dir_fd=dfd)
            try:
                st = os.fstat(fd)
                node = self.resolution.attach(parent, name, 0, st, (), new=True)
            except BaseException:
                os.close(fd)
                os.unlink(name, dir_fd=dfd)
                raise
        return fd, node, st if raw else None

    def mkdir(self, parent: Node, name: bytes, mode: int, caller: Caller, umask: int = 0):
        self._prepare_create(parent, name)
        uid, gid, mode = self._new_owner(parent, caller, stat.S_IFDIR | (mode & 0o7777))
        tmp = self.stack.tmp_name()
        os.mkdir(tmp, 0o700, dir_fd=self.stack.work.root_fd)
        node = self._finish_create(tmp, parent, name, True, uid, gid, mode, umask)
        return node, self.attributes.getattr(node)

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, caller: Caller, umask: int = 0):
        self._prepare_create(parent, name, whiteout=stat.S_ISCHR(mode) and rdev == 0)
        uid, gid, mode = self._new_owner(parent, caller, mode)
        tmp = self.stack.tmp_name()
        os.mknod(tmp, stat.S_IFMT(mode) | 0o600, rdev, dir_fd=self.stack.work.root_fd)
        node = self._finish_create(tmp, parent, name, False, uid, gid, mode, umask)
        return node, self.attributes.getattr(node)

    def symlink(self, parent: Node, name: bytes, target: bytes, caller: Caller):
        self._prepare_create(parent, name)
        uid, gid, _ = self._new_owner(parent, caller, stat.S_IFLNK | 0o777)
        tmp = self.stack.tmp_name()
        os.symlink(target, tmp, dir_fd=self.stack.work.root_fd)
        node = self._finish_create(tmp, parent, name, False, uid, gid, None)
        return node, self.attributes.getattr(node)

    def copy_up_for_link(self, node: Node, new_name: bytes):
        """The copy-up a link of *node* needs first: a CopyUpJob, or None. A directory (EPERM) and a
        `.wh.` name are refused without copying anything (EEXIST and the like come after the copy-up,
        as through the kernel's VFS, which answers for names it knows itself)."""
        if node.is_dir:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        self.check_new_name(new_name)
        return self.copyup.job(node)

    def link(self, node: Node, new_parent: Node, new_name: bytes):
        if node.is_dir:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        self._prepare_create(new_parent, new_name)
        self.copyup.copy_up(node)
        upper, work_fd = self.stack.upper, self.stack.work.root_fd
        src_parent, _, src_name = node.path().rpartition(b"/")
        tmp = self.stack.tmp_name()
        with upper.dir(src_parent) as sdfd:
            os.link(src_name, tmp, src_dir_fd=sdfd, dst_dir_fd=work_fd, follow_symlinks=False)
        with upper.dir(new_parent.path()) as dfd:
            try:
                whiteout = self.markers.whiteout_at(dfd, new_name)
                if whiteout == "dev":
                    os.rename(tmp, new_name, src_dir_fd=work_fd, dst_dir_fd=dfd)
                else:
                    _sys.renameat2(work_fd, tmp, dfd, new_name, _sys.RENAME_NOREPLACE)
                    if whiteout == "file":
                        self.markers.drop_whiteout_file(dfd, new_name)
            except BaseException:
                remove_tree(work_fd, tmp)
                raise
            st = lstat_at(dfd, new_name)
        linked = self.resolution.attach(new_parent, new_name, 0, st, ())
        if self.index.is_entry(linked):
            self.index.count_link(linked, +1)
        return linked, self.attributes.getattr(linked)

    # ------------------------------------------------------------------ removing

    def unlink(self, parent: Node, name: bytes) -> None:
        self.stack.require_upper()
        node = self.resolution.child(parent, name)
        if node.is_dir:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        self._remove_entry(parent, name, node)

    def rmdir(self, parent: Node, name: bytes) -> None:
        self.stack.require_upper()
        node = self.resolution.child(parent, name)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        if node is self.nodes.root:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        if not self.listings.is_empty_dir(node):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
        self._remove_entry(parent, name, node)

    def _remove_entry(self, parent: Node, name: bytes, node: Node) -> None:
        stack, markers = self.stack, self.markers
        self.index.before_removal(node, parent, name)
        self.remember_if_last_name(node)
        self.copyup.ensure_upper_dir(parent)
        needs_whiteout = self.resolution.lower_visible(parent, name)
        work_fd = stack.work.root_fd
        indexed = self.index.is_entry(node)
        in_upper = self.resolution.upper_has(parent, name) if indexed else self.copyup.is_upper(node)
        with stack.upper.dir(parent.path()) as dfd:
            if in_upper:
                tmp = stack.tmp_name()
                if needs_whiteout and not markers.write_wh_files:
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
                        markers.make_whiteout(dfd, name)
            else:
                markers.make_whiteout(dfd, name)
        if indexed:
            self.index.count_link(node, -1)
        self.nodes.detach(parent, name)

    def remember_if_last_name(self, node: Node) -> None:
        """Keep the attributes of a node losing its last name: the kernel may hold it open without a
        daemon handle (fifos, devices, directories) and still ask for them (fstat)."""
        if len(node.names) == 1 and not node.handles:
            try:
                node.gone_stat = self.attributes.getattr(node)
            except OSError:
                pass
