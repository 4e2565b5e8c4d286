"""The stack: the layers of one union opened, its work dir and locks, and the options that say how the
layers are read and written.

Layer 0 is the upper when there is one, the lowers follow topmost first; with index=on the index is a
pseudo-layer after them (index.py). Everything else in the engine reaches the layers through here.
"""

import errno
import fcntl
import itertools
import os

from ..logger import get_logger
from . import xattrs
from .layermounts import MountTable
from .layers import Layer, remove_tree
from .whiteout import REDIRECT_MODES, TRUSTED_PREFIX, USER_PREFIX, Markers, make_whiteout

log = get_logger("unionfs")

WORK_SUBDIR = "work"


class LayerInUse(OSError):
    """An upper or work dir that another live mount holds."""


class Stack:
    """The open layers of a union of `lowers` (topmost first) under an optional `upper`, with `work` its
    work dir (both or neither)."""

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
        volatile=False,
    ):
        if not lowers:
            raise ValueError("at least one lower layer is needed")
        if redirect_dir not in REDIRECT_MODES:
            raise ValueError("redirect_dir is one of %s" % ", ".join(REDIRECT_MODES))
        if (upper is None) != (work is None):
            raise ValueError("upper and work go together")
        self.layers = []
        if upper is not None:
            self.layers.append(Layer(0, upper, writable=True))
        for path in lowers:
            self.layers.append(Layer(len(self.layers), path, writable=False))
        self.upper = self.layers[0] if upper is not None else None
        self.nlayers = len(self.layers)  # the stack; the index (index=on) is a pseudo-layer after it
        # uid 0 may chown (to the ids its user namespace maps); trusted.* xattrs are only for root in the
        # initial namespace, so the root of a user namespace (`unshare -r`) writes user.overlay.* markers.
        self.as_root = os.geteuid() == 0
        self.initial_userns = in_initial_user_namespace()
        marker_prefix = TRUSTED_PREFIX if self.as_root and not userxattr and self.initial_userns else USER_PREFIX
        self.marker_prefix = marker_prefix
        self.private_xattrs = xattrs.private_prefixes(marker_prefix)  # escaped and hidden, as the kernel
        # With squash options the stored owner is never shown: a chown the namespace cannot make (an
        # unmapped id) is then skipped, as fuse-overlayfs does, instead of failing the copy-up.
        self.ignore_chown_errors = ignore_chown_errors
        # The kernel's redirect_dir: "on" renames lower and merged directories by recording where they
        # came from; "follow" only follows such records, and so does "off" (the kernel's default, with
        # its redirect_always_follow=Y), so that an upper written with "on" reads the same under "off".
        # With user.overlay.* markers "off" means "nofollow", as the kernel's userxattr mode (which
        # refuses redirect_dir altogether): a redirect there is anyone's to write.
        self.redirect_create = redirect_dir == "on" and upper is not None
        self.redirect_follow = redirect_dir in ("on", "follow") or (
            redirect_dir == "off" and marker_prefix == TRUSTED_PREFIX
        )
        self.work = None  # the Layer of WORKDIR/work
        self.workdir = work  # the work dir as given (the index lives beside work/ in it)
        self._locks = []
        self.mounts = None
        if work is not None:
            try:
                # One mount at a time per upper and work dir (as the kernel's "in use" check): held by
                # this process until it ends, so a crashed daemon frees them.
                self._locks = [_lock_dir(upper, "upperdir"), _lock_dir(work, "workdir")]
                self.work = _open_work_dir(work)
            except BaseException:
                self.close()
                raise
        # `.wh.NAME` files and `.wh..wh..opq` are read as markers when asked (OCI layers) and whenever
        # this daemon cannot make char 0/0 whiteouts, in which case it writes them too.
        write_wh_files = self.work is not None and not _can_make_whiteouts(self.work.root_fd)
        self.markers = Markers(marker_prefix, whiteout_files, write_wh_files)
        if write_wh_files:
            log.warning("cannot create char 0/0 whiteouts here: writing .wh.NAME files instead")
        self._tmp_counter = itertools.count(1)
        # volatile (the kernel's and fuse-overlayfs's option, podman's `--rm` containers): the upper is
        # thrown away after a crash anyway, so fsync does not wait for the disk.
        self.volatile = volatile
        self.mounts = MountTable()
        self.mounts.track(self.layers)
        self.euid, self.egid = os.geteuid(), os.getegid()  # who owns what the daemon creates

    def require_upper(self) -> None:
        if self.upper is None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def tmp_name(self) -> bytes:
        """A fresh name in the work dir, where entries are prepared before they move into the upper."""
        return b"#%x" % next(self._tmp_counter)

    def close(self) -> None:
        """Close the layer fds and free the locks (idempotent)."""
        for layer in self.layers:
            layer.close()
        if self.mounts is not None:
            self.mounts.close()
        if self.work is not None:
            self.work.close()
        for fd in self._locks:
            os.close(fd)
        self._locks = []


def in_initial_user_namespace() -> bool:
    """Whether this process's user namespace maps every id to itself (the host's, as far as ids go)."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True  # no /proc: nothing says otherwise


def _can_make_whiteouts(work_fd: int) -> bool:
    """Whether this process may mknod a char 0/0 device (root, or Linux 5.8+ for anyone)."""
    name = b"#whiteout-probe-%d" % os.getpid()
    try:
        make_whiteout(work_fd, name)
    except PermissionError:
        return False
    os.unlink(name, dir_fd=work_fd)
    return True


def _lock_dir(path: str, what: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LayerInUse(errno.EBUSY, "%s %s is in use by another mount" % (what, path)) from None
    return fd


def _open_work_dir(workdir: str) -> Layer:
    """The staging dir W/work (the kernel's name too), emptied of what a crash left behind."""
    base = os.open(workdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            os.mkdir(WORK_SUBDIR, 0o700, dir_fd=base)
        except FileExistsError:
            pass
        work = Layer(-1, os.path.join(workdir, WORK_SUBDIR), writable=True)
    finally:
        os.close(base)
    fd = work.open(b"", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for entry in os.listdir(fd):
            remove_tree(work.root_fd, os.fsencode(entry))
    finally:
        os.close(fd)
    return work
