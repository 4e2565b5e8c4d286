"""Copy-up: bring a lower entry into the upper layer before its first change.

A job (`CopyUpJob`, from `CopyUp.begin`) has three steps so that the long one can run in a worker
thread:
- begin (event-loop thread): parents are copied up first, a temp entry is made in the work dir;
- copy_data (any thread, fds only): the bytes, skipping holes; reflink or copy_file_range when the
  filesystem offers them, else a buffered loop;
- commit (event-loop thread): owner, mode, xattrs, times, then one rename into the upper.
Until the rename, nothing is visible in the upper: a crash leaves only a temp in the work dir.
A directory is copied up without its contents (`ensure_upper_dir`), a file with its missing parents.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from . import _sys, ownership, xattrs
from .layers import remove_tree
from .nodes import Node
from .whiteout import proc_path

_FICLONE = 0x40049409
_CHUNK = 1 << 20


# (source dev, target dev) pairs whose filesystems refused FICLONE as such: not asked again (one
# failing ioctl less a copy-up)
_NO_CLONE: set = set()
_CLONE_NEVER = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV)


def copy_data(src_fd: int, dst_fd: int, size: int, *, dense: bool = False, devs=None) -> None:
    """Copy *size* bytes; holes stay holes. *dense*: the source has no holes (its blocks cover its size),
    so they are not looked for. *devs*: (source dev, target dev), to remember a refused reflink by.
    Blocking: may run in a worker thread."""
    if devs not in _NO_CLONE:
        try:
            fcntl.ioctl(dst_fd, _FICLONE, src_fd)
            return
        except OSError as exc:
            if devs is not None and exc.errno in _CLONE_NEVER:
                _NO_CLONE.add(devs)
    if dense:
        if _copy_range(src_fd, dst_fd, 0, size) < size:
            os.ftruncate(dst_fd, size)
        return
    offset = 0
    while offset < size:
        try:
            data_start = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            data_start = offset
        try:
            data_end = min(os.lseek(src_fd, data_start, os.SEEK_HOLE), size)
        except OSError:
            data_end = size
        _copy_range(src_fd, dst_fd, data_start, data_end)
        offset = data_end
    os.ftruncate(dst_fd, size)


def _copy_range(src_fd, dst_fd, start, end) -> int:
    """Copy [start, end); returns where it stopped (before *end* only at the source's end)."""
    pos = start
    use_cfr = hasattr(os, "copy_file_range")
    while pos < end:
        count = min(end - pos, 64 * _CHUNK)
        if use_cfr:
            try:
                done = os.copy_file_range(src_fd, dst_fd, count, pos, pos)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                use_cfr = False
                continue
        else:
            buf = os.pread(src_fd, min(count, _CHUNK), pos)
            done = os.pwrite(dst_fd, buf, pos) if buf else 0
        if done <= 0:
            break
        pos += done
    return pos


def set_mode_xattrs_times(
    dir_fd: int,
    name: bytes,
    st: os.stat_result,
    *,
    mode: int = None,
    src_xattr_path: bytes = None,
    xattr_fds: tuple = None,
    skip=(),
    private=xattrs.ALL_PRIVATE,
) -> None:
    """Give a new entry in dir_fd (already given its owner) the mode (*mode*, else st's), the xattrs
    (but *skip*'s names) and the times of *st*. The xattrs come from *src_xattr_path* (not followed),
    or from the first of *xattr_fds* (source fd, fd of the new entry) to the second.

    Order matters: chown clears setuid/setgid and file capabilities, so mode and xattrs come after it,
    and times come last because the other steps change ctime only but xattrs may touch mtime on some fs.
    """
    if not stat.S_ISLNK(st.st_mode):
        # a fresh entry of ours, not a symlink
        os.chmod(name, stat.S_IMODE(st.st_mode if mode is None else mode), dir_fd=dir_fd)
    if xattr_fds is not None:
        xattrs.copy_all(xattr_fds[0], xattr_fds[1], follow=True, skip=skip, private=private)
    elif src_xattr_path is not None:
        xattrs.copy_all(src_xattr_path, proc_path(dir_fd, name), skip=skip, private=private)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


class CopyUpJob:
    """One copy-up in flight; made by CopyUp.begin, finished by its commit, or (on failure only) cleaned
    up by its abort."""

    __slots__ = (
        "node",
        "src_layer",
        "src_st",
        "src_fd",
        "tmp_name",
        "dst_fd",
        "dst_dev",
        "with_data",
        "linked",
        "claimed",
    )

    def __init__(self, node, src_layer, src_st):
        self.node, self.src_layer, self.src_st = node, src_layer, src_st
        self.src_fd = self.dst_fd = -1
        self.dst_dev = -1  # the work dir's filesystem
        self.tmp_name = None
        self.with_data = False
        self.linked = False  # index=on: the name was linked up to its index entry; nothing to commit
        self.claimed = False  # someone runs it (see claim)

    def claim(self) -> None:
        """Take the job to run; a job in flight is another caller's (EBUSY), never run twice."""
        if self.claimed:
            raise OSError(errno.EBUSY, "copy-up in progress")
        self.claimed = True

    @property
    def data_size(self) -> int:
        return self.src_st.st_size if self.with_data else 0

    def copy_data(self) -> None:
        """The blocking part; touches nothing but the two fds, so it may run in a worker thread."""
        if self.with_data:
            st = self.src_st
            dense = st.st_blocks * 512 >= st.st_size
            copy_data(self.src_fd, self.dst_fd, st.st_size, dense=dense, devs=(st.st_dev, self.dst_dev))

    def close(self):
        for fd in (self.src_fd, self.dst_fd):
            if fd >= 0:
                os.close(fd)
        self.src_fd = self.dst_fd = -1


class CopyUp:
    """Copy-ups of one union: jobs begun, committed and aborted, directories copied up bare."""

    def __init__(self, stack, nodes):
        self.stack, self.nodes = stack, nodes
        self.in_flight = {}  # node -> its job, from begin to commit or abort

    def connect(self, union) -> None:
        self.resolution, self.attributes, self.index = union.resolution, union.attributes, union.index

    def is_upper(self, node: Node) -> bool:
        """Whether changes to the node need no copy-up: it is in the upper (under the name it is reached
        by, for an indexed file)."""
        if node.layer == 0:
            return self.stack.upper is not None
        if self.index.is_entry(node) and node.names:
            parent, name = node.names[0]
            return self.resolution.upper_has(parent, name)
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

    def job(self, node: Node, with_data: bool = True) -> CopyUpJob | None:
        """What must be copied before *node* is changed: None when nothing (it is in the upper already,
        or a directory, copied up here: metadata only); the job in flight for it when there is one (the
        caller waits for that one to end, then asks again); else a begun job for the caller to run:
        copy_data (in a worker thread if it likes), then commit, or abort on failure (`run`)."""
        if self.is_upper(node):
            return None
        running = self.in_flight.get(node)
        if running is not None:
            return running
        if node.is_dir:
            self.ensure_upper_dir(node)
            return None
        return self.begin(node, with_data)

    def run(self, job: CopyUpJob | None) -> None:
        """Run a job begun by `begin` or `job` to its end, here and now."""
        if job is None:
            return
        job.claim()
        try:
            job.copy_data()
            self.commit(job)
        except BaseException:
            self.abort(job)
            raise

    def copy_up(self, node: Node, with_data: bool = True) -> None:
        """Synchronous copy-up (library use; the FUSE adapter runs copy_data in a thread)."""
        if self.is_upper(node):
            return
        if node.is_dir:
            self.ensure_upper_dir(node)
            return
        self._copy_up_entry(node, with_data)

    def _copy_up_entry(self, node: Node, with_data: bool) -> None:
        self.run(self.begin(node, with_data))

    def begin(self, node: Node, with_data: bool = True) -> CopyUpJob:
        stack = self.stack
        stack.require_upper()
        if node.parent is None:
            raise OSError(errno.ENOENT, "file has no name left")
        self.ensure_upper_dir(node.parent)
        if self.index.is_entry(node):
            job = CopyUpJob(node, self.index.layer, None)
            self.index.link_up(node)
            job.linked = True
            return job
        layer = stack.layers[node.layer]
        rel = self.resolution.rel(node, node.layer)
        src_st = layer.lstat(rel)
        job = CopyUpJob(node, layer, src_st)
        job.tmp_name = stack.tmp_name()
        job.dst_dev = stack.work.dev
        work_fd = stack.work.root_fd
        self.in_flight[node] = job
        try:
            if stat.S_ISREG(src_st.st_mode):
                job.with_data = with_data and src_st.st_size > 0
                job.src_fd = layer.open(rel, os.O_RDONLY)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                job.dst_fd = os.open(job.tmp_name, flags, 0o600, dir_fd=work_fd)
            else:
                _make_special(work_fd, job.tmp_name, src_st, layer, rel)
        except BaseException:
            self.abort(job)
            raise
        return job

    def commit(self, job: CopyUpJob) -> None:
        """Move the copy into place; on an error the caller aborts the job."""
        if job.linked:
            return
        self._commit(job)
        job.close()
        self.in_flight.pop(job.node, None)

    def _commit(self, job: CopyUpJob) -> None:
        node = job.node
        if job.src_fd >= 0 and job.src_layer.record is None:
            self._give_metadata(job, None)  # a regular file: its xattrs through the two open fds
        else:
            src_parent, _, src_name = self.resolution.rel(node, job.src_layer.index).rpartition(b"/")
            with job.src_layer.dir(src_parent) as src_dfd:
                self._give_metadata(job, proc_path(src_dfd, src_name))
        recorded = self.index.record_origin(job)
        parent, name = node.names[0]
        self.move_into_upper(job.tmp_name, parent, name)
        job.tmp_name = None
        # (the copy's fd, where there is one, is the upper file now: renamed, not reopened)
        upper_st = os.fstat(job.dst_fd) if job.dst_fd >= 0 else self.stack.upper.lstat(node.path())
        node.layer = 0
        node.xattr_names = None
        if node.is_dir:
            node.merge = (0,) + tuple(node.merge)
        if self.index.keep_identity(node, recorded):
            return
        # A file's copy without an origin (a lower hard link's name, split off) shows its own number, as
        # on the kernel; a directory keeps the one it showed.
        self.nodes.rekey(node, (0, upper_st.st_dev, upper_st.st_ino), renumber=not node.is_dir)
        node.shared_lower = False
        if len(node.names) > 1:
            # Copy-up splits a lower hard link (index=off): the other names stay the lower file, and so
            # do the files opened through them.
            for handle in node.handles:
                if handle.name != node.names[0]:
                    handle.stays = True
            for parent, other in node.names[1:]:
                self.nodes.detach(parent, other)

    def _give_metadata(self, job: CopyUpJob, src_path) -> None:
        """Owner, mode, xattrs and times of the source for the copy in the work dir: the source reached
        by *src_path* (a path not to follow), or None for a regular file's two open fds."""
        attributes, work_fd = self.attributes, self.stack.work.root_fd
        shown = job.src_st
        if job.src_layer.record is not None:  # the copy keeps the owner and mode the user saw
            shown = attributes.record_view(shown, src_path, job.src_layer.record, False)
        attributes.chown_new(job.tmp_name, shown.st_uid, shown.st_gid)
        mode = shown.st_mode
        if attributes.write_records and not stat.S_ISLNK(mode):
            attributes.write_record(proc_path(work_fd, job.tmp_name), False, shown.st_uid, shown.st_gid, mode)
            mode |= ownership.BACKING_MODE
        set_mode_xattrs_times(
            work_fd,
            job.tmp_name,
            job.src_st,
            mode=mode,
            src_xattr_path=src_path,
            xattr_fds=None if src_path is not None else (job.src_fd, job.dst_fd),
            skip=ownership.NAMES if attributes.records_in_use else (),
            private=self.stack.private_xattrs,
        )

    def abort(self, job: CopyUpJob) -> None:
        """Undo a job that failed: its descriptors closed, its copy in the work dir removed."""
        if self.in_flight.get(job.node) is job:
            del self.in_flight[job.node]
        job.close()
        if job.tmp_name is not None:
            remove_tree(self.stack.work.root_fd, job.tmp_name)
            job.tmp_name = None

    def move_into_upper(self, tmp_name: bytes, parent: Node, name: bytes) -> None:
        """Move a copied-up work-dir entry to parent/name in the upper, leaving the parent's times."""
        with self.stack.upper.dir(parent.path()) as dfd:
            before = os.fstat(dfd)
            _sys.renameat2(self.stack.work.root_fd, tmp_name, dfd, name, _sys.RENAME_NOREPLACE)
            # Copy-up does not change the merged parent's times, as in the kernel.
            os.utime(proc_path(dfd), ns=(before.st_atime_ns, before.st_mtime_ns))


def _make_special(work_fd: int, tmp_name: bytes, st, layer, rel: bytes) -> None:
    """The copy of a non-regular entry (symlink, directory, device, fifo, socket) in the work dir."""
    if stat.S_ISLNK(st.st_mode):
        parent, _, name = rel.rpartition(b"/")
        with layer.dir(parent) as dfd:
            target = os.readlink(name, dir_fd=dfd)
        os.symlink(target, tmp_name, dir_fd=work_fd)
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(tmp_name, 0o700, dir_fd=work_fd)
    else:
        os.mknod(tmp_name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=work_fd)
