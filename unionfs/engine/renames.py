"""Renames and redirects: rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE on the merged view.

Whatever moves is copied up and renamed in the upper, leaving a whiteout where a lower layer shows the
old name. A directory that a lower layer holds moves only with redirect_dir=on (else EXDEV, and `mv`
copies): it records where it merges from (a redirect marker), as the kernel's ovl_set_redirect.
"""

import errno
import os
import stat

from . import _sys
from .layers import O_PATH_DIR, lstat_at, opened, remove_tree
from .nodes import Node
from .whiteout import REDIRECT, REDIRECT_MAX, make_whiteout, proc_path


class Renames:
    """rename(2) on the merged view."""

    def __init__(self, stack, nodes):
        self.stack, self.nodes = stack, nodes
        self.markers = stack.markers

    def connect(self, union) -> None:
        self.resolution, self.listings, self.copyup = union.resolution, union.listings, union.copyup
        self.namespace, self.index = union.namespace, union.index

    def check_rename(self, parent: Node, name: bytes, new_parent: Node, new_name: bytes, flags: int = 0):
        """The errors `rename` gives before it copies anything up, for a caller that copies the source
        up first (the FUSE adapter, in a worker thread): as the kernel, a refused rename copies nothing."""
        self.stack.require_upper()
        if flags & ~(_sys.RENAME_NOREPLACE | _sys.RENAME_EXCHANGE) or flags == (
            _sys.RENAME_NOREPLACE | _sys.RENAME_EXCHANGE
        ):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self.namespace.check_new_name(new_name)
        if flags & _sys.RENAME_EXCHANGE:
            node, other = self.resolution.child(parent, name), self.resolution.child(new_parent, new_name)
            if other is not node:
                self._check_movable(node, new_parent)
                self._check_movable(other, parent)

    def copy_up_for_rename(self, parent: Node, name: bytes, new_parent: Node, new_name: bytes, flags: int = 0):
        """The copy-up a rename needs before it runs: a CopyUpJob for a moving non-directory, or None
        (nothing there, a directory, a read-only union: the rename itself answers). The errors it gives
        before any copy-up are raised here."""
        if self.stack.upper is None:
            return None
        try:
            node = self.resolution.child(parent, name)
        except OSError:
            return None
        if node.is_dir:
            return None
        self.check_rename(parent, name, new_parent, new_name, flags)
        self.nodes.prefer_name(node, parent, name)  # a file with several names: the one that moves
        return self.copyup.job(node)

    def rename(self, parent: Node, name: bytes, new_parent: Node, new_name: bytes, flags: int = 0):
        self.check_rename(parent, name, new_parent, new_name, flags)
        if flags & _sys.RENAME_EXCHANGE:
            return self._exchange(parent, name, new_parent, new_name)
        child, copy_up, upper, markers = self.resolution.child, self.copyup.copy_up, self.stack.upper, self.markers
        node = child(parent, name)
        if not new_parent.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        try:
            target = child(new_parent, new_name)
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
            if target.is_dir and not self.listings.is_empty_dir(target):
                if self.copyup.is_upper(target) and len(target.merge) == 1:
                    # The kernel leaves a pure-upper target's emptiness to the upper's rename(2), after
                    # it has copied the moving directory up and recorded its redirect (redirect_dir=on)
                    # or, moving into a merged directory, marked it opaque: so does this.
                    if self._moves_by_redirect(node):
                        copy_up(node)
                        self._set_redirect(node, same_dir=parent is new_parent)
                    elif len(new_parent.merge) > 1:
                        with upper.dir(parent.path()) as sdfd, opened(sdfd, name, O_PATH_DIR) as fd:
                            markers.set_opaque(fd)
                    self._failing_upper_rename(parent, name, new_parent, new_name)
                raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
        redirect = self._moves_by_redirect(node)
        if target is not None and target is not node:
            self.index.before_removal(target, new_parent, new_name)
            self.namespace.remember_if_last_name(target)
        self.nodes.prefer_name(node, parent, name)  # the name copied (or linked) up is the one moved
        copy_up(node)
        self.copyup.ensure_upper_dir(new_parent)
        if redirect:
            self._set_redirect(node, same_dir=parent is new_parent)
        leave_whiteout = self.resolution.lower_visible(parent, name)
        with upper.dir(parent.path()) as sdfd:
            if new_parent is parent:  # one directory: opened once
                self._rename_in_upper(node, sdfd, name, sdfd, new_name, new_parent, redirect, leave_whiteout)
            else:
                with upper.dir(new_parent.path()) as ddfd:
                    self._rename_in_upper(node, sdfd, name, ddfd, new_name, new_parent, redirect, leave_whiteout)
        if target is not None:
            if self.index.is_entry(target) and target is not node:
                self.index.count_link(target, -1)  # one name of an indexed file replaced
            self.nodes.detach(new_parent, new_name)
        if redirect:
            self._pin_lower_paths(node)
        self.nodes.move(node, parent, name, new_parent, new_name)
        if node.is_dir and not redirect:
            node.merge = (0,)

    def _rename_in_upper(
        self, node: Node, sdfd: int, name: bytes, ddfd: int, new_name: bytes, new_parent: Node, redirect, leave_whiteout
    ) -> None:
        """The rename itself, in the upper: *name* in the directory *sdfd* to *new_name* in *ddfd*
        (the upper directory of *new_parent*), leaving a whiteout where a lower shows *name*."""
        markers, work_fd = self.markers, self.stack.work.root_fd
        if node.is_dir and not redirect and len(new_parent.merge) > 1:
            # As the kernel: a directory moved into a merged directory must not merge below.
            with opened(sdfd, name, O_PATH_DIR) as fd:
                markers.set_opaque(fd)
        try:
            existing = lstat_at(ddfd, new_name)
        except FileNotFoundError:
            existing = None
        if existing is None and markers.read_wh_files:
            markers.drop_whiteout_file(ddfd, new_name)  # the name is taken again
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
        elif leave_whiteout and markers.write_wh_files:
            os.rename(name, new_name, src_dir_fd=sdfd, dst_dir_fd=ddfd)
            markers.make_whiteout(sdfd, name)
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

    def _failing_upper_rename(self, parent: Node, name: bytes, new_parent: Node, new_name: bytes) -> None:
        """The upper rename(2) the kernel makes onto a non-empty upper directory, which fails: its error
        is the caller's, and so are its side effects on the upper filesystem (ext4 touches the parent
        while preparing a RENAME_WHITEOUT)."""
        flags = 0
        if self.resolution.lower_visible(parent, name) and not self.markers.write_wh_files:
            flags = _sys.RENAME_WHITEOUT
        upper = self.stack.upper
        with upper.dir(parent.path()) as sdfd, upper.dir(new_parent.path()) as ddfd:
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
        if (
            (parent, name) == (new_parent, new_name)
            or node.is_dir
            or self.copyup.is_upper(node)
            or self.index.enabled  # index=on keeps them one file: rename between them does nothing, as there
        ):
            return False
        self.nodes.prefer_name(node, parent, name)  # the name that is copied up
        self.copyup.copy_up(node)
        return True

    def _moves_by_redirect(self, node: Node) -> bool:
        """A lower or merged directory moves by recording a redirect (only with redirect_dir=on)."""
        return node.is_dir and not (self.copyup.is_upper(node) and len(node.merge) == 1)

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
            while walk is not self.nodes.root:
                marker = walk.redirect
                if marker is not None and marker.startswith(b"/"):
                    parts.append(marker[1:])
                    break
                parts.append(marker if marker is not None else walk.names[0][1])
                walk = walk.names[0][0]
            value = b"/" + b"/".join(reversed(parts))
        if len(value) > REDIRECT_MAX:
            raise OSError(errno.EXDEV, "redirect too long")  # as the kernel: mv copies instead
        with self.stack.upper.opened(node.path(), O_PATH_DIR) as fd:
            try:
                os.setxattr(proc_path(fd), self.stack.marker_prefix + REDIRECT, value)
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
        if self._moves_by_redirect(node) and not self.stack.redirect_create:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))  # a lower directory: redirect_dir=off
        anc = new_parent
        while anc is not None:
            if anc is node:  # into itself
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            anc = anc.parent

    def _exchange(self, parent: Node, name: bytes, new_parent: Node, new_name: bytes) -> None:
        """RENAME_EXCHANGE: both entries are copied up and swap names in the upper."""
        child = self.resolution.child
        node = child(parent, name)
        if not new_parent.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        other = child(new_parent, new_name)
        if other is node:
            if not self._split_on_copy_up(node, parent, name, new_parent, new_name):
                return
            other = child(new_parent, new_name)  # now a lower file of its own
        self._check_movable(node, new_parent)
        self._check_movable(other, parent)
        redirects = [moving for moving in (node, other) if self._moves_by_redirect(moving)]
        # Files with several names: the names exchanged are the ones copied up.
        self.nodes.prefer_name(node, parent, name)
        self.copyup.copy_up(node)
        self.nodes.prefer_name(other, new_parent, new_name)
        self.copyup.copy_up(other)
        self.copyup.ensure_upper_dir(parent)
        self.copyup.ensure_upper_dir(new_parent)
        for moving in redirects:
            self._set_redirect(moving, same_dir=parent is new_parent)
        upper = self.stack.upper
        with upper.dir(parent.path()) as sdfd, upper.dir(new_parent.path()) as ddfd:
            for moving, dfd, entry, dest in ((node, sdfd, name, new_parent), (other, ddfd, new_name, parent)):
                if moving.is_dir and moving not in redirects and len(dest.merge) > 1:
                    with opened(dfd, entry, O_PATH_DIR) as fd:
                        self.markers.set_opaque(fd)
            _sys.renameat2(sdfd, name, ddfd, new_name, _sys.RENAME_EXCHANGE)
        for moving in redirects:
            self._pin_lower_paths(moving)
        self.nodes.exchange(node, parent, name, other, new_parent, new_name)
