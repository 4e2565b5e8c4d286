"""Copy-up: bring a lower entry into the upper layer before its first change.

A job has three steps so that the long one can run in a worker thread:
- begin (event-loop thread): parents are copied up first, a temp entry is made in the work dir;
- copy_data (any thread, fds only): the bytes, skipping holes; reflink or copy_file_range when the
  filesystem offers them, else a buffered loop;
- commit (event-loop thread): owner, mode, xattrs, times, then one rename into the upper.
Until the rename, nothing is visible in the upper: a crash leaves only a temp in the work dir.
"""

import errno
import fcntl
import os
import stat

from . import xattrs
from .whiteout import proc_path

_FICLONE = 0x40049409
_CHUNK = 1 << 20


def copy_data(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy *size* bytes; holes stay holes. Blocking: may run in a worker thread."""
    try:
        fcntl.ioctl(dst_fd, _FICLONE, src_fd)
        return
    except OSError:
        pass
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


def _copy_range(src_fd, dst_fd, start, end):
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


def set_mode_xattrs_times(
    dir_fd: int, name: bytes, st: os.stat_result, *, mode: int = None, src_xattr_path: bytes = None, skip=()
) -> None:
    """Give a new entry in dir_fd (already given its owner) the mode (*mode*, else st's), the xattrs
    (but *skip*'s names) and the times of *st*.

    Order matters: chown clears setuid/setgid and file capabilities, so mode and xattrs come after it,
    and times come last because the other steps change ctime only but xattrs may touch mtime on some fs.
    """
    if not stat.S_ISLNK(st.st_mode):
        # a fresh entry of ours, not a symlink
        os.chmod(name, stat.S_IMODE(st.st_mode if mode is None else mode), dir_fd=dir_fd)
    if src_xattr_path is not None:
        xattrs.copy_all(src_xattr_path, proc_path(dir_fd, name), skip=skip)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
