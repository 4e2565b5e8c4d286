"""OCI image layer tarballs: export an upper layer, import (apply) a layer tarball into a directory.

Export writes a PAX tarball, sorted and reproducible:
- entries in depth-first order, each directory's children sorted by name (bytes); the layer's root is
  the first entry, `./`;
- char 0/0 whiteouts (and `.wh.NAME` files already in the upper) become empty `.wh.NAME` files; an
  opaque directory (xattr in either namespace, or a `.wh..wh..opq` file) is followed by
  `DIR/.wh..wh..opq`;
- numeric owner (uname/gname empty unless asked), full mode (setuid/setgid/sticky), mtime with
  nanoseconds (a PAX `mtime` record when not a whole second), no atime/ctime;
- xattrs as `SCHILY.xattr.NAME` records, except the overlay's own (`trusted.overlay.*`,
  `user.overlay.*` markers and bookkeeping, `user.fuseoverlayfs.*`); a name the mount stored escaped
  (`trusted.overlay.overlay.x`) is written as the user sees it (`trusted.overlay.x`);
- hard links (same inode, nlink > 1) as tar hard links to the first name in that order; whiteouts are
  never linked to each other (the kernel shares one inode between its whiteouts);
- sockets are left out (tar has no type for them), with a warning.
Gzip output (`--gzip` or a `.gz`/`.tgz` name) has a zero timestamp and no file name in its header.

Import applies a tarball (plain, gzip, bzip2 or xz) to a layer directory:
- `.wh.NAME` becomes a char 0/0 whiteout NAME, `.wh..wh..opq` the opaque xattr on its directory
  (`trusted.overlay.opaque=y`, or `user.overlay.opaque=y` with userxattr or when not root);
- every path is checked before use: absolute names, `..` components, and marker names used as
  directories are refused; every directory on the way is opened relative to its parent with
  O_NOFOLLOW, so a symlink (from the tarball or already in the directory) is never followed; files
  are created with O_CREAT|O_EXCL|O_NOFOLLOW; hard-link targets are resolved the same way, inside the
  directory. Symlink *targets* are stored as they are (an absolute target is normal in a root fs);
- xattrs named under the overlay's prefixes are stored escaped, as the mount would store them, so a
  tarball cannot forge an opaque marker other than with `.wh..wh..opq`;
- an entry replaces what the directory already has at its name (directories merge);
- on any error: one line, exit status 1, and when the directory was empty (or created) before, it is
  emptied (or removed) again. Nothing is ever written outside it.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import shutil
import stat
import sys
import tarfile
import tempfile
from typing import BinaryIO, Dict, List, Optional, Tuple

from ..engine.whiteout import OPAQUE, TRUSTED_PREFIX, USER_PREFIX, WH_META_PREFIX, WH_OPAQUE, WH_PREFIX
from ..engine.xattrs import to_stored, to_visible
from . import layerfs
from .layerfs import join

XATTR_PAX = "SCHILY.xattr."
CHUNK = 1 << 20


class LayerError(Exception):
    """Bad input or a refused entry: the message is the one line shown to the user."""


# --------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------


class Progress:
    """A one-line counter on stderr, only when stderr is a terminal (and not asked to be quiet)."""

    def __init__(self, verb: str, enabled: Optional[bool] = None, stream=None):
        import time

        self._time = time.monotonic
        self.stream = stream or sys.stderr
        if enabled is None:
            try:
                enabled = self.stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = enabled
        self.verb = verb
        self.entries = 0
        self.bytes = 0
        self._last = 0.0
        self._shown = False

    def add(self, entries: int = 0, nbytes: int = 0) -> None:
        self.entries += entries
        self.bytes += nbytes
        if self.enabled:
            now = self._time()
            if now - self._last >= 0.2:
                self._last = now
                self._show()

    def _show(self) -> None:
        self.stream.write(f"\r{self.verb}: {self.entries} entries, {self.bytes / 1048576:.1f} MiB ")
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        if self.enabled and self._shown:
            self._show()
            self.stream.write("\n")
            self.stream.flush()


def warn(msg: str) -> None:
    sys.stderr.write(f"pyunionfs-layer: warning: {msg}\n")


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def _mtime_fields(info: tarfile.TarInfo, st: os.stat_result) -> None:
    sec, nsec = divmod(st.st_mtime_ns, 1_000_000_000)
    info.mtime = sec
    if nsec:
        info.pax_headers["mtime"] = f"{sec}.{nsec:09d}".rstrip("0")


def _export_xattrs(path: bytes, follow: bool = False) -> Dict[str, str]:
    """The xattrs to record; `follow` for a /proc/self/fd/N path that stands for the entry itself."""
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    out = {}
    for name in sorted(os.fsencode(n) for n in names):
        if layerfs.is_private_xattr(name):
            continue
        visible = to_visible(name)
        if visible is None:
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                continue
            raise
        out[XATTR_PAX + visible.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return out


class _Exporter:
    def __init__(self, tf: tarfile.TarFile, progress: Progress, names: bool):
        self.tf = tf
        self.progress = progress
        self.names = names
        self.links: Dict[Tuple[int, int], str] = {}
        self._unames: Dict[int, str] = {}
        self._gnames: Dict[int, str] = {}

    def _owner(self, info: tarfile.TarInfo, st: os.stat_result) -> None:
        info.uid, info.gid = st.st_uid, st.st_gid
        if self.names:
            import grp
            import pwd

            if st.st_uid not in self._unames:
                try:
                    self._unames[st.st_uid] = pwd.getpwuid(st.st_uid).pw_name
                except KeyError:
                    self._unames[st.st_uid] = ""
            if st.st_gid not in self._gnames:
                try:
                    self._gnames[st.st_gid] = grp.getgrgid(st.st_gid).gr_name
                except KeyError:
                    self._gnames[st.st_gid] = ""
            info.uname, info.gname = self._unames[st.st_uid], self._gnames[st.st_gid]

    def _info(
        self, name: str, st: os.stat_result, type_: bytes, path: Optional[bytes], follow: bool = False
    ) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = type_
        info.mode = stat.S_IMODE(st.st_mode)
        self._owner(info, st)
        _mtime_fields(info, st)
        if path is not None:
            info.pax_headers.update(_export_xattrs(path, follow))
        return info

    def _marker(self, name: str, st: os.stat_result) -> None:
        """An empty regular file: `.wh.NAME` or `.wh..wh..opq`, with the marker's owner and mtime."""
        info = tarfile.TarInfo(name)
        info.type = tarfile.REGTYPE
        info.mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0
        self._owner(info, st)
        _mtime_fields(info, st)
        self.tf.addfile(info)
        self.progress.add(1)

    def export_dir(self, fd: int, rel: bytes, st: os.stat_result) -> None:
        prefix = os.fsdecode(rel) + "/" if rel else ""
        info = self._info(prefix or ".", st, tarfile.DIRTYPE, layerfs.node_path(fd), follow=True)
        self.tf.addfile(info)
        self.progress.add(1)
        scan = layerfs.DirScan(fd)
        if scan.opaque:
            if scan.opaque_file:
                ost = os.stat(WH_OPAQUE, dir_fd=fd, follow_symlinks=False)
            else:
                ost = st
            self._marker(prefix + WH_OPAQUE.decode(), ost)
        items: List[Tuple[bytes, bytes, os.stat_result, bool]] = []
        for n, wst in scan.whiteouts.items():
            if n not in scan.entries:
                items.append((WH_PREFIX + n, n, wst, True))
        for n, est in scan.entries.items():
            items.append((n, n, est, False))
        items.sort(key=lambda t: t[0])
        for outname, n, est, is_wh in items:
            tname = prefix + os.fsdecode(outname)
            if is_wh:
                self._marker(tname, est)
                continue
            crel = join(rel, n)
            mode = est.st_mode
            if stat.S_ISDIR(mode):
                cfd = layerfs.open_dir(n, fd)
                try:
                    self.export_dir(cfd, crel, os.fstat(cfd))
                finally:
                    os.close(cfd)
                continue
            if stat.S_ISSOCK(mode):
                warn(f"{os.fsdecode(crel)}: socket left out (tar cannot store sockets)")
                continue
            key = (est.st_dev, est.st_ino)
            if est.st_nlink > 1 and key in self.links:
                info = tarfile.TarInfo(tname)
                info.type = tarfile.LNKTYPE
                info.linkname = self.links[key]
                info.mode = stat.S_IMODE(mode)
                self._owner(info, est)
                _mtime_fields(info, est)
                self.tf.addfile(info)
                self.progress.add(1)
                continue
            if est.st_nlink > 1:
                self.links[key] = tname
            path = layerfs.node_path(fd, n)
            if stat.S_ISREG(mode):
                ffd = os.open(n, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=fd)
                try:
                    fst = os.fstat(ffd)
                    info = self._info(tname, fst, tarfile.REGTYPE, path)
                    info.size = fst.st_size
                    with os.fdopen(ffd, "rb", closefd=False) as f:
                        self.tf.addfile(info, _Counting(f, self.progress))
                finally:
                    os.close(ffd)
                self.progress.add(1)
            elif stat.S_ISLNK(mode):
                info = self._info(tname, est, tarfile.SYMTYPE, path)
                info.linkname = os.fsdecode(os.readlink(n, dir_fd=fd))
                self.tf.addfile(info)
                self.progress.add(1)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                t = (
                    tarfile.CHRTYPE
                    if stat.S_ISCHR(mode)
                    else tarfile.BLKTYPE
                    if stat.S_ISBLK(mode)
                    else tarfile.FIFOTYPE
                )
                info = self._info(tname, est, t, path)
                if t != tarfile.FIFOTYPE:
                    info.devmajor, info.devminor = os.major(est.st_rdev), os.minor(est.st_rdev)
                self.tf.addfile(info)
                self.progress.add(1)


class _Counting(io.RawIOBase):
    def __init__(self, f, progress: Progress):
        self.f = f
        self.progress = progress

    def read(self, n=-1):
        data = self.f.read(n)
        self.progress.add(0, len(data))
        return data

    def readable(self):
        return True


def export_layer(
    upper: str, out: BinaryIO, *, gzip_out: bool = False, names: bool = False, progress: Optional[Progress] = None
) -> None:
    """Write the upper directory `upper` to the binary stream `out` as an OCI layer tarball."""
    progress = progress or Progress("export", enabled=False)
    try:
        root = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise LayerError(f"{upper}: {exc.strerror}") from None
    gz = None
    try:
        stream: BinaryIO = out
        if gzip_out:
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6)
            stream = gz
        with tarfile.open(
            fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
        ) as tf:
            _Exporter(tf, progress, names).export_dir(root, b"", os.fstat(root))
        if gz is not None:
            gz.close()
        progress.done()
    finally:
        os.close(root)


# --------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------


def split_member_name(name: str, what: Optional[str] = None) -> List[bytes]:
    """The components of a tar member name, or LayerError for a name that would leave the directory."""
    what = what or f"entry {name!r}"
    raw = os.fsencode(name)
    if raw.startswith(b"/"):
        raise LayerError(f"{what}: absolute path refused")
    if b"\0" in raw:
        raise LayerError(f"{what}: NUL in name")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise LayerError(f"{what}: '..' component refused (would leave the layer directory)")
    return parts


def _pax_mtime_ns(info: tarfile.TarInfo) -> int:
    s = info.pax_headers.get("mtime")
    if s:
        try:
            neg = s.startswith("-")
            whole, _, frac = s.lstrip("-").partition(".")
            ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
            return -ns if neg else ns
        except ValueError:
            pass
    return int(info.mtime) * 1_000_000_000


class _Importer:
    def __init__(self, root_fd: int, userxattr: bool, progress: Progress):
        self.root = root_fd
        self.as_root = os.geteuid() == 0
        self.opaque_name = (USER_PREFIX if (userxattr or not self.as_root) else TRUSTED_PREFIX) + OPAQUE
        self.progress = progress
        self.deferred: Dict[Tuple[bytes, ...], Tuple[int, int]] = {}  # dir -> (mode, mtime_ns)
        self.skipped_xattrs: set = set()

    # -- resolution ------------------------------------------------------------------------------
    def parent(self, parts: List[bytes], member: str) -> int:
        """An O_PATH fd of the directory holding parts[-1], creating missing directories (0755)."""
        fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.root)
        try:
            for i, comp in enumerate(parts[:-1]):
                if comp.startswith(WH_PREFIX):
                    raise LayerError(f"entry {member!r}: whiteout name {os.fsdecode(comp)!r} used as a directory")
                nfd = self._open_sub(fd, comp, member, create=True, rel=parts[: i + 1])
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _open_sub(self, fd: int, comp: bytes, member: str, *, create: bool, rel) -> int:
        flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(comp, flags, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
            shown = os.fsdecode(b"/".join(rel))
            if stat.S_ISLNK(st.st_mode):
                raise LayerError(f"entry {member!r}: {shown!r} is a symlink; refusing to write through it")
            raise LayerError(f"entry {member!r}: {shown!r} is not a directory")
        os.mkdir(comp, 0o755, dir_fd=fd)
        return os.open(comp, flags, dir_fd=fd)

    def _remove(self, pfd: int, name: bytes) -> None:
        """Remove whatever is at name (a directory with everything in it), never following a symlink."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)

    # -- metadata --------------------------------------------------------------------------------
    def _chown(self, pfd: int, name: bytes, info: tarfile.TarInfo) -> None:
        if not self.as_root:
            return
        os.chown(name, info.uid, info.gid, dir_fd=pfd, follow_symlinks=False)

    def _xattrs(self, pfd: int, name: bytes, info: tarfile.TarInfo, member: str) -> None:
        path = layerfs.node_path(pfd, name)
        follow = not name  # /proc/self/fd/N itself stands for the directory: follow that magic link
        for key, value in sorted(info.pax_headers.items()):
            if not key.startswith(XATTR_PAX):
                continue
            xname = os.fsencode(key[len(XATTR_PAX) :])
            if not xname:
                continue
            stored = to_stored(xname)
            try:
                os.setxattr(path, stored, value.encode("utf-8", "surrogateescape"), follow_symlinks=follow)
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                    if xname not in self.skipped_xattrs:
                        self.skipped_xattrs.add(xname)
                        warn(f"xattr {os.fsdecode(xname)} not stored ({exc.strerror}), first on {member!r}")
                    continue
                raise

    def _chmod_nonlink(self, pfd: int, name: bytes, mode: int) -> None:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                return
            os.chmod(layerfs.node_path(fd), mode)
        finally:
            os.close(fd)

    # -- entries ---------------------------------------------------------------------------------
    def apply(self, info: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        member = info.name
        parts = split_member_name(member)
        if not parts:
            if not info.isdir():
                raise LayerError(f"entry {member!r}: the layer root must be a directory")
            pfd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.root)
            try:
                if self.as_root:
                    os.chown(layerfs.node_path(pfd), info.uid, info.gid)
                self._xattrs(pfd, b"", info, member)
            finally:
                os.close(pfd)
            self.deferred[()] = (info.mode & 0o7777, _pax_mtime_ns(info))
            return
        name = parts[-1]
        pfd = self.parent(parts, member)
        try:
            if name == WH_OPAQUE:
                os.setxattr(layerfs.node_path(pfd), self.opaque_name, b"y")
                return
            if name.startswith(WH_META_PREFIX):
                return  # other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): meaningless here
            if name.startswith(WH_PREFIX):
                target = name[len(WH_PREFIX) :]
                if target in (b"", b".", b".."):
                    raise LayerError(f"entry {member!r}: bad whiteout name")
                self._remove(pfd, target)
                os.mknod(target, stat.S_IFCHR | 0o000, 0, dir_fd=pfd)
                self._chown(pfd, target, info)
                os.utime(target, ns=(_pax_mtime_ns(info),) * 2, dir_fd=pfd, follow_symlinks=False)
                return
            self._apply_entry(pfd, name, parts, info, tf, member)
        finally:
            os.close(pfd)

    def _apply_entry(self, pfd, name, parts, info, tf, member) -> None:
        mtime = _pax_mtime_ns(info)
        mode = info.mode & 0o7777
        if info.isdir():
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and not stat.S_ISDIR(st.st_mode):
                self._remove(pfd, name)
                st = None
            if st is None:
                os.mkdir(name, 0o700, dir_fd=pfd)
            self._chown(pfd, name, info)
            self._xattrs(pfd, name, info, member)
            self.deferred[tuple(parts)] = (mode, mtime)
            self.progress.add(1)
            return
        if info.islnk():
            tparts = split_member_name(info.linkname, f"entry {member!r}: hard link target {info.linkname!r}")
            if not tparts:
                raise LayerError(f"entry {member!r}: hard link to the layer root")
            try:
                tpfd = self._resolve_existing(tparts[:-1], member)
            except FileNotFoundError:
                raise LayerError(f"entry {member!r}: hard link target {info.linkname!r} not found") from None
            try:
                try:
                    tst = os.stat(tparts[-1], dir_fd=tpfd, follow_symlinks=False)
                except FileNotFoundError:
                    raise LayerError(f"entry {member!r}: hard link target {info.linkname!r} not found") from None
                if stat.S_ISDIR(tst.st_mode):
                    raise LayerError(f"entry {member!r}: hard link to a directory")
                if tparts == parts:
                    return
                self._remove(pfd, name)
                os.link(tparts[-1], name, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(tpfd)
            self.progress.add(1)
            return
        self._remove(pfd, name)
        if info.isreg():
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
            try:
                src = tf.extractfile(info)
                remaining = info.size
                while remaining > 0:
                    chunk = src.read(min(CHUNK, remaining))
                    if not chunk:
                        raise LayerError(f"entry {member!r}: unexpected end of data")
                    view = memoryview(chunk)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                    remaining -= len(chunk)
                    self.progress.add(0, len(chunk))
                if self.as_root:
                    os.fchown(fd, info.uid, info.gid)
                self._xattrs(pfd, name, info, member)
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)
        elif info.issym():
            os.symlink(os.fsencode(info.linkname), name, dir_fd=pfd)
            self._chown(pfd, name, info)
            self._xattrs(pfd, name, info, member)
            os.utime(name, ns=(mtime, mtime), dir_fd=pfd, follow_symlinks=False)
        elif info.ischr() or info.isblk() or info.isfifo():
            kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK if info.isblk() else stat.S_IFIFO
            dev = os.makedev(info.devmajor, info.devminor) if kind != stat.S_IFIFO else 0
            try:
                os.mknod(name, kind | (mode & 0o777), dev, dir_fd=pfd)
            except PermissionError:
                raise LayerError(f"entry {member!r}: cannot create a device node (not permitted)") from None
            self._chown(pfd, name, info)
            self._xattrs(pfd, name, info, member)
            self._chmod_nonlink(pfd, name, mode)
            os.utime(name, ns=(mtime, mtime), dir_fd=pfd, follow_symlinks=False)
        else:
            raise LayerError(f"entry {member!r}: unsupported tar entry type {info.type!r}")
        self.progress.add(1)

    def _resolve_existing(self, dparts: List[bytes], member: str) -> int:
        fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.root)
        try:
            for i, comp in enumerate(dparts):
                nfd = self._open_sub(fd, comp, member, create=False, rel=dparts[: i + 1])
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def finish(self) -> None:
        """Directory modes and mtimes, deepest first (creating children changed the mtimes)."""
        for parts in sorted(self.deferred, key=lambda p: (-len(p), p)):
            mode, mtime = self.deferred[parts]
            fd = os.open(".", layerfs.DIR_FLAGS, dir_fd=self.root)
            try:
                for comp in parts:
                    nfd = layerfs.open_dir(comp, fd)
                    os.close(fd)
                    fd = nfd
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)


def _empty_dir(fd: int) -> None:
    for n in layerfs.listdir(fd):
        st = os.stat(n, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(n, dir_fd=fd)
        else:
            os.unlink(n, dir_fd=fd)


def import_layer(src: BinaryIO, layerdir: str, *, userxattr: bool = False, progress: Optional[Progress] = None) -> None:
    """Apply the tarball read from `src` to `layerdir` (created if missing; its parent must exist)."""
    progress = progress or Progress("import", enabled=False)
    created = False
    try:
        os.mkdir(layerdir, 0o755)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise LayerError(f"{layerdir}: {exc.strerror}") from None
    try:
        root = os.open(layerdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise LayerError(f"{layerdir}: {exc.strerror}") from None
    was_empty = created or not os.listdir(root)
    old_umask = os.umask(0)
    ok = False
    try:
        imp = _Importer(root, userxattr, progress)
        try:
            stream = _decompressed(src)
            with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape") as tf:
                for info in tf:
                    imp.apply(info, tf)
            # Read the compressed stream to its end: a truncated or corrupt one fails here (CRC, size).
            while stream.read(CHUNK):
                pass
            imp.finish()
        except LayerError:
            raise
        except (tarfile.TarError, EOFError) + zlib_errors() as exc:
            raise LayerError(f"not a readable tar archive: {exc}") from None
        except OSError as exc:
            where = f" ({os.fsdecode(exc.filename)})" if exc.filename else ""
            raise LayerError(f"{exc.strerror or exc}{where}") from None
        progress.done()
        ok = True
    finally:
        os.umask(old_umask)
        if not ok and was_empty:
            try:
                _empty_dir(root)
            except OSError:
                pass
        os.close(root)
        if not ok and created:
            try:
                os.rmdir(layerdir)
            except OSError:
                pass


def _decompressed(src: BinaryIO) -> BinaryIO:
    """`src` itself, or a decompressing reader chosen by the magic bytes (gzip, bzip2, xz)."""
    if not hasattr(src, "peek"):
        src = io.BufferedReader(src)
    head = src.peek(6)[:6]
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=src, mode="rb")
    if head[:3] == b"BZh":
        import bz2

        return bz2.BZ2File(src, "rb")
    if head == b"\xfd7zXZ\x00":
        import lzma

        return lzma.LZMAFile(src, "rb")
    return src


def zlib_errors():
    import lzma
    import zlib

    return (zlib.error, lzma.LZMAError, gzip.BadGzipFile)


def open_output(path: str):
    """(binary stream, commit(), abort()) for OUT: a temp file beside it renamed into place, or stdout."""
    if path == "-":
        out = sys.stdout.buffer
        return out, out.flush, lambda: None
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    f = os.fdopen(fd, "wb")

    def commit():
        f.flush()
        os.fsync(f.fileno())
        os.fchmod(f.fileno(), 0o666 & ~_umask())
        f.close()
        os.replace(tmp, path)

    def abort():
        f.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass

    return f, commit, abort


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
