"""`UnionFS`: the union engine with path strings, for programs that want union semantics without FUSE.

    from unionfs import UnionFS

    with UnionFS(["lower1", "lower2"], "upper", "work") as fs:
        fs.write_bytes("etc/motd", b"hello\\n")      # copies etc/ up, writes upper/etc/motd
        fs.remove("f2")                               # leaves a char 0/0 whiteout in upper/
        print(fs.listdir("."), fs.read_bytes("f1"))
        with fs.open("log", "a") as f:
            f.write("one more line\\n")

The layers on disk end up exactly as a pyunionfs (or kernel overlayfs) mount would leave them after the
same operations: `unionfs.UnionEngine` does the work, and this module only turns paths into engine nodes.
It needs no /dev/fuse, no mount and no root; it works on machines and containers without FUSE.

Paths are relative to the union's root (a leading "/" is ignored, "." is skipped, ".." goes up but never
above the root); str paths give str names, bytes paths bytes names, like `os`. Symlinks inside the union
are never followed: `stat` is `lstat`, `open` of a symlink fails with ELOOP, and a symlink used as a
directory in the middle of a path fails with ENOTDIR. Failures raise OSError with the errno a process
would get through a mount (ENOENT, EEXIST, ENOTEMPTY, EXDEV for a lower directory's rename, EROFS without
an upper, ...).

Differences from a mount, all because no kernel is in between:
- No permission checks: the engine acts with the rights of this process (a mount of root checks the
  caller's rights against the modes first, `default_permissions`).
- New entries belong to `caller` (default: this process's euid/egid; ownership is applied only when this
  process is root) and `mode & ~umask`, where `umask` defaults to the process umask when `UnionFS` is made;
  in a directory with a default POSIX ACL they get that ACL instead of the umask, as through a mount.
- `stat()` returns the backing file's `os.stat_result` (its st_dev; a mount reports its own device) with
  the st_ino and nlink a mount reports (see `UnionFS.stat`).
- One `UnionFS` is one engine: do not use the same layers through two of them, or through a mount, at
  the same time (just as a layer must not be changed behind a mount). It is not thread-safe.
"""

from __future__ import annotations

import errno
import io
import os
import stat as _stat
from typing import Optional, Union

from ..engine import Caller, UnionEngine

__all__ = ["UnionFS"]

PathArg = Union[str, bytes, os.PathLike]


def _err(code: Optional[int], path=None) -> OSError:
    # code is an errno taken from an OSError (typed Optional there); it is never None in practice
    code = code or errno.EIO
    return OSError(code, os.strerror(code), path) if path is not None else OSError(code, os.strerror(code))


def _process_umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # not thread-safe, only without /proc
    os.umask(old)
    return old


class UnionFS:
    """A union of `lowers` (topmost first) and an optional `upper`/`work`, used through path strings.

    Arguments are those of `unionfs.UnionEngine` (`userxattr=True` writes `user.overlay.opaque` markers; they
    are `user.overlay.*` anyway when not root; `redirect_dir="on"` lets lower directories be renamed;
    `whiteout_files=False` is the kernel-exact mode where `.wh.` names are ordinary, as `-o
    whiteout_files=off`),
    plus `caller` (a `unionfs.Caller`: owner of new entries)
    and `umask`. `fs.union` is the underlying `UnionEngine` for node-level calls. Close with `close()` or use
    as a context manager; open files keep working until closed.
    """

    def __init__(
        self,
        lowers,
        upper=None,
        work=None,
        *,
        userxattr: bool = False,
        redirect_dir: str = "off",
        whiteout_files: bool = True,
        caller: Optional[Caller] = None,
        umask: Optional[int] = None,
    ):
        if isinstance(lowers, (str, bytes, os.PathLike)):
            lowers = [lowers]
        fspath = lambda p: os.fsdecode(os.fspath(p)) if p is not None else None  # noqa: E731
        self.union = UnionEngine(
            [fspath(p) for p in lowers],
            fspath(upper),
            fspath(work),
            userxattr=userxattr,
            redirect_dir=redirect_dir,
            whiteout_files=whiteout_files,
        )
        self.caller = caller if caller is not None else Caller(os.geteuid(), os.getegid())
        self.umask = _process_umask() if umask is None else umask

    # -------------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Close the layer descriptors (idempotent)."""
        self.union.close()

    def __enter__(self) -> UnionFS:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------- resolution

    @staticmethod
    def _parts(path: PathArg):
        p = os.fspath(path)
        is_bytes = isinstance(p, bytes)
        parts = [c for c in os.fsencode(p).split(b"/") if c and c != b"."]
        return parts, is_bytes

    def _walk(self, parts):
        node = self.union.root
        for part in parts:
            if part == b"..":
                node = node.parent or self.union.root
                continue
            node = self.union.child(node, part)
        return node

    def _node(self, path: PathArg):
        parts, _ = self._parts(path)
        try:
            return self._walk(parts)
        except OSError as exc:
            raise _err(exc.errno, os.fspath(path)) from None

    def _parent(self, path: PathArg):
        """(parent node, final name) of a path that names an entry (not the root)."""
        parts, _ = self._parts(path)
        # ".." in the last place: resolve it all the way; the root has no parent entry.
        while parts and parts[-1] == b"..":
            parts = parts[:-2] if len(parts) > 1 else []
        if not parts:
            raise _err(errno.EBUSY if path else errno.ENOENT, os.fspath(path))
        try:
            parent = self._walk(parts[:-1])
        except OSError as exc:
            raise _err(exc.errno, os.fspath(path)) from None
        if not parent.is_dir:
            raise _err(errno.ENOTDIR, os.fspath(path))
        return parent, parts[-1]

    def _call(self, path, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except OSError as exc:
            if exc.errno is not None:
                # the engine's own file names are layer-relative internals: name the caller's path
                raise _err(exc.errno, os.fspath(path)) from None
            raise

    # -------------------------------------------------------------------- queries

    def exists(self, path: PathArg) -> bool:
        try:
            self._node(path)
            return True
        except OSError:
            return False

    def stat(self, path: PathArg) -> os.stat_result:
        """lstat of the merged entry (symlinks not followed).

        st_ino is the number a mount of the same layers shows for the entry (`Node.ino`), as the kernel
        overlay shows it when all layers are on one filesystem: the backing file's, and a copied-up
        lower file's keeps the lower's (its copy records the origin). st_dev is the backing file's (a
        mount shows its own device), st_nlink the count a mount reports (1 for a merged directory).
        """
        node = self._node(path)
        st = self._call(path, self.union.getattr, node)
        nlink = self.union.reported_nlink(node, st)
        if nlink == st.st_nlink and node.ino == st.st_ino:
            return st
        values = list(st)
        values[_stat.ST_NLINK] = nlink
        values[_stat.ST_INO] = node.ino
        extra = {f: getattr(st, f) for f in dir(st) if f.startswith("st_")}
        extra["st_nlink"] = nlink
        extra["st_ino"] = node.ino
        return os.stat_result(values, extra)

    lstat = stat

    def isdir(self, path: PathArg) -> bool:
        try:
            return _stat.S_ISDIR(self.stat(path).st_mode)
        except OSError:
            return False

    def isfile(self, path: PathArg) -> bool:
        try:
            return _stat.S_ISREG(self.stat(path).st_mode)
        except OSError:
            return False

    def islink(self, path: PathArg) -> bool:
        try:
            return _stat.S_ISLNK(self.stat(path).st_mode)
        except OSError:
            return False

    def listdir(self, path: PathArg = ".") -> list:
        """Merged names of a directory, sorted ('.' and '..' not included)."""
        _, is_bytes = self._parts(path)
        names = sorted(self._call(path, self.union.listdir, self._node(path)))
        return names if is_bytes else [os.fsdecode(n) for n in names]

    def readlink(self, path: PathArg):
        _, is_bytes = self._parts(path)
        node = self._node(path)
        st = self._call(path, self.union.getattr, node)
        if not _stat.S_ISLNK(st.st_mode):
            raise _err(errno.EINVAL, os.fspath(path))
        target = self._call(path, self.union.readlink, node)
        return target if is_bytes else os.fsdecode(target)

    def getxattr(self, path: PathArg, name) -> bytes:
        return self._call(path, self.union.getxattr, self._node(path), os.fsencode(name))

    def listxattr(self, path: PathArg) -> list:
        return [os.fsdecode(n) for n in self._call(path, self.union.listxattr, self._node(path))]

    # -------------------------------------------------------------------- files

    def open(
        self,
        path: PathArg,
        mode: str = "r",
        buffering: int = -1,
        encoding: Optional[str] = None,
        errors: Optional[str] = None,
        newline: Optional[str] = None,
        *,
        perm: int = 0o666,
    ):
        """Like the builtin `open` (modes r w a x, + and b/t); `perm` is the new file's mode before umask.

        Opening for writing copies a lower file up (without its data for 'w'), as on a mount.
        """
        chars = set(mode)
        if not chars <= set("rwaxbt+") or len(chars & set("rwax")) != 1 or {"b", "t"} <= chars:
            raise ValueError(f"invalid mode: {mode!r}")
        binary = "b" in chars
        if binary and (encoding or errors or newline):
            raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
        plus = "+" in chars
        if "r" in chars:
            flags = os.O_RDWR if plus else os.O_RDONLY
        else:
            flags = (os.O_RDWR if plus else os.O_WRONLY) | os.O_CREAT
            flags |= {"w": os.O_TRUNC, "a": os.O_APPEND, "x": os.O_EXCL}[(chars & set("wax")).pop()]
        raw = self._open_raw(path, flags, perm)
        if buffering == 0:
            if not binary:
                raw.close()
                raise ValueError("can't have unbuffered text I/O")
            return raw
        size = io.DEFAULT_BUFFER_SIZE if buffering in (-1, 1) else buffering
        buf: io.BufferedIOBase
        if plus:
            buf = io.BufferedRandom(raw, size)
        elif "r" in chars:
            buf = io.BufferedReader(raw, size)
        else:
            buf = io.BufferedWriter(raw, size)
        if binary:
            return buf
        text = io.TextIOWrapper(buf, encoding or "utf-8", errors, newline, line_buffering=buffering == 1)
        text.mode = mode  # type: ignore[misc]  # TextIOWrapper's mode is a plain attribute, as open() sets it
        return text

    def _open_raw(self, path: PathArg, flags: int, perm: int) -> _UnionFile:
        parent, name = self._parent(path)
        try:
            node = self.union.child(parent, name)
        except FileNotFoundError:
            node = None
        except OSError as exc:
            raise _err(exc.errno, os.fspath(path)) from None
        if node is None:
            if not flags & os.O_CREAT:
                raise _err(errno.ENOENT, os.fspath(path))
            node, handle, _st = self._call(
                path, self.union.create, parent, name, perm & 0o7777, flags, self.caller, self.umask
            )
        else:
            if flags & os.O_CREAT and flags & os.O_EXCL:
                raise _err(errno.EEXIST, os.fspath(path))
            if node.is_dir:
                raise _err(errno.EISDIR, os.fspath(path))
            handle = self._call(path, self.union.open, node, flags)
        return _UnionFile(self, handle, os.fspath(path), flags)

    def read_bytes(self, path: PathArg) -> bytes:
        with self.open(path, "rb") as f:
            return f.read()

    def read_text(self, path: PathArg, encoding: str = "utf-8") -> str:
        return self.read_bytes(path).decode(encoding)

    def write_bytes(self, path: PathArg, data: bytes, *, perm: int = 0o666) -> int:
        """Create or truncate `path` and write `data` (a lower file is copied up without its data)."""
        with self.open(path, "wb", perm=perm) as f:
            return f.write(data)

    def write_text(self, path: PathArg, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(path, text.encode(encoding))

    def truncate(self, path: PathArg, size: int) -> None:
        node = self._node(path)
        self._call(path, self.union.setattr, node, size=size)

    # -------------------------------------------------------------------- names

    def mkdir(self, path: PathArg, mode: int = 0o777, *, parents: bool = False, exist_ok: bool = False) -> None:
        """Make a directory (over a whiteout: an opaque one, as on the kernel)."""
        if parents:
            parts, _ = self._parts(path)
            for i in range(1, len(parts)):
                prefix = b"/".join(parts[:i])
                if not self.isdir(prefix):
                    self.mkdir(prefix, mode)
        parent, name = self._parent(path)
        try:
            self.union.mkdir(parent, name, mode & 0o7777, self.caller, self.umask)
        except OSError as exc:
            if exc.errno == errno.EEXIST and exist_ok and self.isdir(path):
                return
            raise _err(exc.errno, os.fspath(path)) from None

    def makedirs(self, path: PathArg, mode: int = 0o777, exist_ok: bool = False) -> None:
        self.mkdir(path, mode, parents=True, exist_ok=exist_ok)

    def rmdir(self, path: PathArg) -> None:
        parent, name = self._parent(path)
        self._call(path, self.union.rmdir, parent, name)

    def remove(self, path: PathArg) -> None:
        """Remove a non-directory (a lower one leaves a whiteout)."""
        parent, name = self._parent(path)
        self._call(path, self.union.unlink, parent, name)

    unlink = remove

    def rename(self, src: PathArg, dst: PathArg, *, noreplace: bool = False) -> None:
        """rename(2); a directory present in a lower gives EXDEV (redirect_dir=off)."""
        sparent, sname = self._parent(src)
        dparent, dname = self._parent(dst)
        flags = 1 if noreplace else 0  # RENAME_NOREPLACE
        self._call(src, self.union.rename, sparent, sname, dparent, dname, flags)

    replace = rename

    def symlink(self, target: PathArg, path: PathArg) -> None:
        """Make `path` a symlink to `target` (the order of os.symlink)."""
        parent, name = self._parent(path)
        self._call(path, self.union.symlink, parent, name, os.fsencode(os.fspath(target)), self.caller)

    def link(self, src: PathArg, dst: PathArg) -> None:
        """Hard link (copies a lower file up first)."""
        node = self._node(src)
        parent, name = self._parent(dst)
        self._call(dst, self.union.link, node, parent, name)

    def mknod(self, path: PathArg, mode: int = 0o600 | _stat.S_IFREG, device: int = 0) -> None:
        parent, name = self._parent(path)
        self._call(path, self.union.mknod, parent, name, mode, device, self.caller, self.umask)

    # -------------------------------------------------------------------- attributes

    def chmod(self, path: PathArg, mode: int) -> None:
        self._call(path, self.union.setattr, self._node(path), mode=mode)

    def chown(self, path: PathArg, uid: int = -1, gid: int = -1) -> None:
        self._call(
            path, self.union.setattr, self._node(path), uid=None if uid == -1 else uid, gid=None if gid == -1 else gid
        )

    def utime(self, path: PathArg, ns: tuple) -> None:
        """Set (atime_ns, mtime_ns)."""
        self._call(path, self.union.setattr, self._node(path), atime_ns=ns[0], mtime_ns=ns[1])

    def setxattr(self, path: PathArg, name, value: bytes, flags: int = 0) -> None:
        """Set an xattr (copy-up first); overlay-private names are stored escaped, as on a mount."""
        self._call(path, self.union.setxattr, self._node(path), os.fsencode(name), bytes(value), flags)

    def removexattr(self, path: PathArg, name) -> None:
        self._call(path, self.union.removexattr, self._node(path), os.fsencode(name))

    # -------------------------------------------------------------------- walking

    def walk(self, top: PathArg = "."):
        """Like os.walk(topdown=True) over the merged view; symlinks are reported as files."""
        names = self.listdir(top)
        dirs, files = [], []
        for name in names:
            child = os.path.join(top, name) if not isinstance(name, bytes) else os.path.join(os.fsencode(top), name)
            (dirs if self.isdir(child) else files).append(name)
        yield top, dirs, files
        for name in dirs:
            child = os.path.join(top, name) if not isinstance(name, bytes) else os.path.join(os.fsencode(top), name)
            yield from self.walk(child)


class _UnionFile(io.RawIOBase):
    """A raw file over an engine FileHandle; keeps its own offset, honours O_APPEND."""

    def __init__(self, fs: UnionFS, handle, name, flags: int):
        super().__init__()
        self._fs = fs
        self._union = fs.union
        self._handle = handle
        self._pos = 0
        self.name = name
        acc = flags & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
        self._readable = acc in (os.O_RDONLY, os.O_RDWR)
        self._writable = acc in (os.O_WRONLY, os.O_RDWR)
        self._append = bool(flags & os.O_APPEND)

    def readable(self):
        return self._readable

    def writable(self):
        return self._writable

    def seekable(self):
        return True

    def _size(self) -> int:
        return os.fstat(self._handle.fd).st_size

    def readinto(self, b) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if not self._readable:
            raise io.UnsupportedOperation("not readable")
        data = self._union.read(self._handle, self._pos, len(b))
        n = len(data)
        b[:n] = data
        self._pos += n
        return n

    def write(self, b) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if not self._writable:
            raise io.UnsupportedOperation("not writable")
        if self._append:
            self._pos = self._size()
        n = self._union.write(self._handle, self._pos, bytes(b))
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size() + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: Optional[int] = None) -> int:
        if not self._writable:
            raise io.UnsupportedOperation("not writable")
        size = self._pos if size is None else size
        self._union.setattr(self._handle.node, size=size, handle=self._handle)
        return size

    def flush(self) -> None:
        pass

    def fsync(self) -> None:
        self._union.fsync(self._handle, False)

    def close(self) -> None:
        if not self.closed:
            try:
                self._union.release(self._handle)
            finally:
                super().close()
