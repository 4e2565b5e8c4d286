"""Differential testing kit: the layer fixture, the operations, their normalised results and the
end-of-run comparisons shared by the hypothesis state machine (test_vs_kernel.py) and the fixed
replays (test_regressions.py).

Every operation runs once per side (kernel overlayfs, then pyunionfs) on identical copies of the same
layers and must give the same normalised answer: a value, or the errno *name*.

Normalisation (what is compared and why):
- st_ino/st_dev: never compared; overlay and FUSE number inodes their own way.
- atime/ctime: never compared; they record when the test ran, not what the filesystem did.
- directories: st_size and st_nlink are not compared (merged directory sizes are the upper's or a
  lower's ext4 block size; the kernel reports nlink 1 for merged dirs).
- mtime: times set by the fixture or by utime() are far in the past and compared exactly; anything
  newer than RECENT_NS only says "changed during the run" ("recent"), because the two sides run the
  same step a few milliseconds apart.
- upper layer on disk: whiteouts are compared as "char 0/0" only: the kernel makes all whiteouts hard
  links of one shared inode (work/#whiteout), so their mode/owner/times/nlink carry no meaning.
  trusted.overlay.* xattrs other than `opaque` (origin, impure, uuid, ...) are kernel-private
  bookkeeping and are ignored; the work dirs are ignored.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.helpers.xattrvalues import ACL
from tests.util import (
    FUSE_SKIP_REASON,
    kernel_overlay_skip_reason,
    mount_kernel_overlay,
    mount_pyunionfs,
    mounts_under,
    tree_snapshot,
)

SELF_CHECK = os.environ.get("DIFF_SELF_CHECK", "") not in ("", "0")

# --------------------------------------------------------------------------------------------
# The fixture: three lowers and an upper holding what real layers hold.

OLD = 1_500_000_000 * 10**9  # 2017: every time the fixture sets is below RECENT_NS
RECENT_NS = 1_600_000_000 * 10**9  # 2020-09: anything newer was set during the run
LONG = "L" * 250 + ".long"  # 255 bytes
UNI = "ünïcødé-😀"
UNI_UP = "ñdir"
WHITEOUT = "whiteout"
# Absolute symlinks must dangle: a write through a symlink to a real host file (say /etc/passwd) would
# change the host, and both sides would change the same file. The parent must not exist either, so
# that no operation can create the target.
ABS_TARGET = "/nonexistent-unionfs-difftest/abs"

# (layer, relpath, kind, payload, attrs) ; kinds: f(ile) d(ir) l(ink) w(hiteout) p(fifo) h(ardlink to)
# attrs: mode, uid, gid, xattrs (dict), opaque (bool)
FIXTURE = [
    # bottom lower
    ("l3", "a", "f", b"a from l3\n", {}),
    ("l3", "both", "f", b"both from l3\n", {}),
    ("l3", "wh_target", "f", b"hidden by l2 whiteout\n", {}),
    ("l3", "gone", "f", b"hidden by upper whiteout\n", {}),
    (
        "l3",
        "owned",
        "f",
        b"owned by 1001:1002\n",
        {"mode": 0o640, "uid": 1001, "gid": 1002, "xattrs": {"user.tag": b"l3"}},
    ),
    ("l3", "suid", "f", b"#!/bin/true\n", {"mode": 0o6755, "uid": 1001, "gid": 1002}),
    ("l3", "fifo_l", "p", None, {"mode": 0o644}),
    ("l3", "ftodir", "f", b"file below a dir\n", {}),
    ("l3", "dirtofile", "d", None, {}),
    ("l3", "dirtofile/under", "f", b"hidden by l2 file\n", {}),
    ("l3", "dm", "d", None, {}),
    ("l3", "dm/x3", "f", b"dm/x3 from l3\n", {}),
    ("l3", "dm/x2", "f", b"dm/x2 from l3 (hidden)\n", {}),
    ("l3", "dm/y3", "f", b"dm/y3 from l3 (whiteout in l2)\n", {}),
    ("l3", "dm/sub", "d", None, {"mode": 0o750, "uid": 1001, "gid": 1002}),
    ("l3", "dm/sub/deep", "f", b"deep\n", {"uid": 1001, "gid": 1002}),
    ("l3", "dop", "d", None, {}),
    ("l3", "dop/hidden", "f", b"below opaque dop\n", {}),
    ("l3", "dup_op", "d", None, {}),
    ("l3", "dup_op/old", "f", b"below opaque upper dup_op\n", {}),
    ("l3", "dlow", "d", None, {"mode": 0o775}),
    ("l3", "dlow/f", "f", b"dlow/f\n", {"xattrs": {"user.x": b"lowx"}}),
    ("l3", "dlow/e", "d", None, {}),
    ("l3", "sgid", "d", None, {"mode": 0o2775, "gid": 1002}),
    ("l3", "sgid/in", "f", b"in sgid\n", {"gid": 1002}),
    # new entries in it get its default ACL instead of the umask (copied up with it first)
    ("l3", "dacl", "d", None, {"xattrs": {"system.posix_acl_default": ACL}}),
    ("l3", "dacl/f", "f", b"in dacl\n", {}),
    # middle lower
    ("l2", "wh_target", "w", None, {}),
    ("l2", "dm", "d", None, {}),
    ("l2", "dm/x2", "f", b"dm/x2 from l2\n", {"mode": 0o600}),
    ("l2", "dm/y3", "w", None, {}),
    ("l2", "dirtofile", "f", b"file over a dir\n", {}),
    ("l2", "lnk_rel", "l", "a", {}),
    ("l2", "lnk_abs", "l", ABS_TARGET, {}),
    ("l2", "dangling", "l", "no/such/target", {}),
    ("l2", "lnk_dir", "l", "dm", {}),
    ("l2", UNI, "f", "unicode ✓\n".encode(), {}),
    # OCI/AUFS marker names are ordinary names to the kernel (and to pyunionfs's kernel-exact mode)
    ("l2", ".wh.a", "f", b"a plain file named .wh.a\n", {}),
    # top lower
    ("l1", "dop", "d", None, {"opaque": True}),
    ("l1", "dop/new1", "f", b"dop/new1 from l1\n", {}),
    ("l1", "hl_a", "f", b"hard linked\n", {"uid": 1001}),
    ("l1", "hl_b", "h", "hl_a", {}),
    ("l1", LONG, "f", b"long name\n", {}),
    ("l1", "dm", "d", None, {}),
    ("l1", "dm/x1", "f", b"dm/x1 from l1 (whiteout in upper)\n", {}),
    ("l1", "dm/z1", "f", b"dm/z1 from l1\n", {}),
    ("l1", "ftodir", "d", None, {}),
    ("l1", "ftodir/inner", "f", b"ftodir/inner\n", {}),
    ("l1", "xf", "f", b"xattrs\n", {"xattrs": {"user.a": b"1", "user.b": b"two"}}),
    ("l1", "emptyd", "d", None, {}),
    ("l1", "dm/.wh..wh..opq", "f", b"", {}),
    # upper
    ("upper", "f_up", "f", b"f_up\n", {}),
    ("upper", "both", "f", b"both from upper\n", {"mode": 0o664}),
    ("upper", "gone", "w", None, {}),
    ("upper", "dm", "d", None, {}),
    ("upper", "dm/xu", "f", b"dm/xu\n", {}),
    ("upper", "dm/x1", "w", None, {}),
    ("upper", "dup_op", "d", None, {"opaque": True}),
    ("upper", "dup_op/newfile", "f", b"dup_op/newfile\n", {}),
    ("upper", "du", "d", None, {}),
    ("upper", "du/f", "f", b"du/f\n", {}),
    ("upper", "du/sub", "d", None, {}),
    ("upper", UNI_UP, "d", None, {"uid": 65534, "gid": 65534}),
    ("upper", UNI_UP + "/ü", "f", b"u\n", {}),
]

LAYERS = ("l1", "l2", "l3")  # top-down, as in lowerdir=


def build_template(root: Path) -> Path:
    """Create root/{l1,l2,l3,upper,work} from FIXTURE, all times fixed in the past."""
    root.mkdir(parents=True, exist_ok=True)
    for layer in LAYERS + ("upper", "work"):
        (root / layer).mkdir()
    dirs = []
    for i, (layer, rel, kind, payload, attrs) in enumerate(FIXTURE):
        p = root / layer / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if kind == "f":
            p.write_bytes(payload)
        elif kind == "d":
            p.mkdir()
            dirs.append(p)
        elif kind == "l":
            os.symlink(payload, p)
        elif kind == "w":
            os.mknod(p, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        elif kind == "p":
            os.mkfifo(p)
        elif kind == "h":
            os.link(root / layer / payload, p)
        if "mode" in attrs:
            os.chmod(p, attrs["mode"])
        if "uid" in attrs or "gid" in attrs:
            os.chown(p, attrs.get("uid", -1), attrs.get("gid", -1), follow_symlinks=False)
            if "mode" in attrs:  # chown cleared setuid/setgid: put them back
                os.chmod(p, attrs["mode"])
        for k, v in attrs.get("xattrs", {}).items():
            os.setxattr(p, k, v)
        if attrs.get("opaque"):
            os.setxattr(p, "trusted.overlay.opaque", b"y")
        if kind != "d":
            t = OLD + i * 1_000_000_123
            os.utime(p, ns=(t, t), follow_symlinks=False)
    # directories last, deepest first, so that creating children does not move their mtimes
    for d in sorted(dirs, key=lambda p: -len(p.parts)):
        os.utime(d, ns=(OLD - 7 * 10**9, OLD - 7 * 10**9))
    for layer in LAYERS + ("upper",):
        os.utime(root / layer, ns=(OLD - 9 * 10**9, OLD - 9 * 10**9))
    return root


def _fixture_paths():
    """Path pool for the state machine: every fixture path plus new names in each directory."""
    paths = [""]
    dirs = [""]
    for _, rel, kind, _, _ in FIXTURE:
        if rel not in paths:
            paths.append(rel)
        if kind == "d" and rel not in dirs:
            dirs.append(rel)
    extra = []
    for d in dirs:
        for n in ("n1", "n2"):
            extra.append(f"{d}/{n}" if d else n)
    extra += [".wh.n1", "newd", "newd/n1", "newd/sub", "a/x", "lnk_dir/x2", "ftodir/n1"]
    return paths + [p for p in extra if p not in paths], dirs + ["newd"]


PATHS, DIRS = _fixture_paths()

# --------------------------------------------------------------------------------------------
# Mounting (tests/util.py).


def mount_daemon(mnt, lowers, upper, work, options=()):
    if SELF_CHECK:
        return mount_kernel_overlay(mnt, lowers, upper, work, options=options)
    # The kernel-exact mode: `.wh.` names are ordinary names, as on the kernel (README, whiteout_files).
    return mount_pyunionfs(mnt, lowers, upper, work, options=[*options, "whiteout_files=off"])


def skip_reason():
    """Why the differential test cannot run here, or None."""
    reason = kernel_overlay_skip_reason()
    if not reason and not SELF_CHECK:
        reason = FUSE_SKIP_REASON
    return reason


# --------------------------------------------------------------------------------------------
# Normalised results.


def err(e: OSError):
    return ("ERR", errno.errorcode.get(e.errno, str(e.errno)))


def mtime_token(ns: int):
    return ns if ns < RECENT_NS else "recent"


def _ftype(m):
    for test, ch in (
        (stat.S_ISDIR, "d"),
        (stat.S_ISREG, "f"),
        (stat.S_ISLNK, "l"),
        (stat.S_ISCHR, "c"),
        (stat.S_ISBLK, "b"),
        (stat.S_ISFIFO, "p"),
        (stat.S_ISSOCK, "s"),
    ):
        if test(m):
            return ch
    return "?"


def norm_stat(st):
    t = _ftype(st.st_mode)
    out = {
        "type": t,
        "mode": oct(stat.S_IMODE(st.st_mode)),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime": mtime_token(st.st_mtime_ns),
    }
    if t != "d":  # merged directory size/nlink are artifacts (see module docstring)
        out["nlink"] = st.st_nlink
        out["size"] = st.st_size
    if t in "cb":
        out["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    return out


def _lstat(p):
    try:
        return norm_stat(os.lstat(p))
    except OSError as e:
        return err(e)


BIG = 70_000  # a write of this many bytes (passed as an int so that failing steps print short)


def _data(d):
    return b"Z" * d if isinstance(d, int) else d


def _short(b):
    """Read results longer than 256 bytes are compared by length and sha256 (short messages)."""
    if isinstance(b, bytes) and len(b) > 256:
        return ("bytes", len(b), hashlib.sha256(b).hexdigest()[:16])
    return b


def _read_all(fd):
    chunks = []
    while True:
        b = os.read(fd, 65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


# Operations: f(root, *args) -> normalised result. Mutating ones also return the lstat of the paths
# they touched, so that a divergence shows at the step that caused it.

WRITE_MODES = {
    "trunc": os.O_WRONLY | os.O_TRUNC,
    "append": os.O_WRONLY | os.O_APPEND,
    "plain": os.O_WRONLY,
    "rdwr": os.O_RDWR,
}


def _attempt(fn, *args, **kwargs):
    """ "ok", or the errno of the OSError fn raised."""
    try:
        fn(*args, **kwargs)
        return "ok"
    except OSError as e:
        return err(e)


def op_stat(root, path, follow):
    try:
        return norm_stat(os.stat(os.path.join(root, path), follow_symlinks=follow))
    except OSError as e:
        return err(e)


def op_read(root, path):
    # O_NONBLOCK: opening a fifo must not block (it reads EOF without a writer)
    try:
        fd = os.open(os.path.join(root, path), os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return ("open", err(e))
    try:
        return _short(_read_all(fd))
    except OSError as e:
        return ("read", err(e))
    finally:
        os.close(fd)


def op_write(root, path, mode, offset, data):
    p = os.path.join(root, path)
    data = _data(data)
    try:
        fd = os.open(p, WRITE_MODES[mode] | os.O_NONBLOCK)  # fifo without reader: ENXIO, no block
    except OSError as e:
        return ("open", err(e)), _lstat(p)
    try:
        if mode in ("plain", "rdwr"):
            n = os.pwrite(fd, data, offset)
        else:
            n = os.write(fd, data)
        res = n
    except OSError as e:
        res = ("write", err(e))
    finally:
        os.close(fd)
    return res, _lstat(p), op_read(root, path)


def op_create(root, path, mode, data):
    p = os.path.join(root, path)
    data = _data(data)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as e:
        return err(e), _lstat(p)
    try:
        res = os.write(fd, data)
    except OSError as e:
        res = ("write", err(e))
    finally:
        os.close(fd)
    return res, _lstat(p)


def op_truncate(root, path, size):
    p = os.path.join(root, path)
    return _attempt(os.truncate, p, size), _lstat(p)


def op_chmod(root, path, mode):
    p = os.path.join(root, path)
    return _attempt(os.chmod, p, mode), _lstat(p)


def op_chown(root, path, uid, gid, follow):
    p = os.path.join(root, path)
    return _attempt(os.chown, p, uid, gid, follow_symlinks=follow), _lstat(p)


def op_utime(root, path, atime_ns, mtime_ns, follow):
    p = os.path.join(root, path)
    return _attempt(os.utime, p, ns=(atime_ns, mtime_ns), follow_symlinks=follow), _lstat(p)


def op_mkdir(root, path, mode):
    p = os.path.join(root, path)
    return _attempt(os.mkdir, p, mode), _lstat(p), op_listdir(root, path)


def op_rmdir(root, path):
    p = os.path.join(root, path)
    return _attempt(os.rmdir, p), _lstat(p)


def op_unlink(root, path):
    p = os.path.join(root, path)
    return _attempt(os.unlink, p), _lstat(p)


def op_symlink(root, target, path):
    p = os.path.join(root, path)
    return _attempt(os.symlink, target, p), _lstat(p)


def op_readlink(root, path):
    try:
        return os.readlink(os.path.join(root, path))
    except OSError as e:
        return err(e)


def op_listdir(root, path):
    try:
        return sorted(os.listdir(os.path.join(root, path)))
    except OSError as e:
        return err(e)


def op_rename(root, src, dst):
    s, d = os.path.join(root, src), os.path.join(root, dst)
    return _attempt(os.rename, s, d), _lstat(s), _lstat(d)


RENAME_FLAGS = {"noreplace": 1, "exchange": 2}  # renameat2(2)


def _renameat2(src, dst, flags):
    from unionfs.engine import _sys  # the package's ctypes shim (Python's os has no renameat2)

    _sys.renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), flags)  # AT_FDCWD


def op_rename2(root, src, dst, flag):
    s, d = os.path.join(root, src), os.path.join(root, dst)
    return _attempt(_renameat2, s, d, RENAME_FLAGS[flag]), _lstat(s), _lstat(d)


def op_exchange(root, src, dst):
    return op_rename2(root, src, dst, "exchange")


def op_link(root, src, dst):
    s, d = os.path.join(root, src), os.path.join(root, dst)
    return _attempt(os.link, s, d, follow_symlinks=False), _lstat(s), _lstat(d)


XATTR_FLAGS = {"any": 0, "create": os.XATTR_CREATE, "replace": os.XATTR_REPLACE}


def op_setxattr(root, path, name, value, flags, follow):
    p = os.path.join(root, path)
    return (
        _attempt(os.setxattr, p, name, value, XATTR_FLAGS[flags], follow_symlinks=follow),
        _lstat(p),
        op_listxattr(root, path, follow),
    )


def op_getxattr(root, path, name, follow):
    try:
        return os.getxattr(os.path.join(root, path), name, follow_symlinks=follow)
    except OSError as e:
        return err(e)


def op_listxattr(root, path, follow):
    # only user.* names are compared: security.* and the like are not the union's business
    try:
        names = os.listxattr(os.path.join(root, path), follow_symlinks=follow)
    except OSError as e:
        return err(e)
    return sorted(n for n in names if n.startswith("user."))


def op_removexattr(root, path, name, follow):
    p = os.path.join(root, path)
    return _attempt(os.removexattr, p, name, follow_symlinks=follow), _lstat(p)


def op_mkfifo(root, path, mode):
    p = os.path.join(root, path)
    return _attempt(os.mkfifo, p, mode), _lstat(p)


def op_mknod_whiteout(root, path, mode):
    """mknod of a char 0/0 device: a whiteout, which the kernel refuses (EPERM) to make through the mount."""
    p = os.path.join(root, path)
    return _attempt(os.mknod, p, stat.S_IFCHR | mode, os.makedev(0, 0)), _lstat(p)


def op_read_during_copyup(root, path, data):
    """Read through a descriptor opened read-only before the file was copied up by a write
    through a second descriptor (kernel 6.18 reads the new data)."""
    p = os.path.join(root, path)
    data = _data(data)
    try:
        fd1 = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return ("open ro", err(e))
    try:
        try:
            fd2 = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
        except OSError as e:
            return ("open wr", err(e))
        try:
            n = os.write(fd2, data)
        except OSError as e:
            n = ("write", err(e))
        finally:
            os.close(fd2)
        try:
            got = _short(os.pread(fd1, 1 << 20, 0))
        except OSError as e:
            got = ("pread", err(e))
        return n, got
    finally:
        os.close(fd1)


def op_fd_across(root, path, action, other, data):
    """A descriptor opened (read-write where allowed, else read-only) before the name is renamed to
    *other* or unlinked; then written and read through it, and fstat'ed."""
    p, q = os.path.join(root, path), os.path.join(root, other)
    data = _data(data)
    try:
        fd = os.open(p, os.O_RDWR | os.O_NONBLOCK)
        mode = "rw"
    except OSError as e:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
            mode = ("ro", err(e))
        except OSError as e2:
            return ("open", err(e2))
    try:
        res = _attempt(os.rename, p, q) if action == "rename" else _attempt(os.unlink, p)
        try:
            n = os.pwrite(fd, data, 3) if mode == "rw" else None
        except OSError as e:
            n = ("pwrite", err(e))
        try:
            got = _short(os.pread(fd, 1 << 20, 0))
        except OSError as e:
            got = ("pread", err(e))
        st = os.fstat(fd)
        return mode, res, n, got, (st.st_size, st.st_nlink if stat.S_ISREG(st.st_mode) else None)
    finally:
        os.close(fd)


OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}

# --------------------------------------------------------------------------------------------
# Whole-tree snapshots.


def _sha(path):
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        h.update(_read_all(fd))
    finally:
        os.close(fd)
    return h.hexdigest()


def _xattrs(path, keep):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        return err(e)
    out = {}
    for n in sorted(names):
        if keep(n):
            try:
                out[n] = os.getxattr(path, n, follow_symlinks=False)
            except OSError as e:
                out[n] = err(e)
    return out


def _walk(root, visit):
    out = {}

    def rec(rel):
        p = os.path.join(root, rel) if rel else root
        st = os.lstat(p)
        out[rel or "."] = visit(p, st)
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(p)):
                rec(os.path.join(rel, name) if rel else name)

    rec("")
    return out


def _with_extras(root, snap):
    """tree_snapshot entries plus what tree_snapshot leaves out: the mtime token and, for
    non-directories, nlink (hard links must survive or split exactly as in the kernel)."""
    out = {}
    for rel, e in snap.items():
        st = os.lstat(os.path.join(root, rel))
        extra = {"mtime": mtime_token(st.st_mtime_ns)}
        if e.type != "d":
            extra["nlink"] = st.st_nlink
        out[rel] = (e, extra)
    return out


def merged_snapshot(root):
    """The merged view as seen through a mount; every xattr the mount shows is compared."""
    return _with_extras(str(root), tree_snapshot(root))


def _keep_upper_xattr(n):
    # origin, impure, uuid: the kernel's file-handle bookkeeping, which pyunionfs does not write
    return not n.startswith("trusted.overlay.") or n in ("trusted.overlay.opaque", "trusted.overlay.redirect")


def upper_snapshot(root):
    """An upper layer left on disk, normalised as described in the module docstring."""
    out = {}
    for rel, (e, extra) in _with_extras(str(root), tree_snapshot(root)).items():
        if e.type == "c" and e.rdev == (0, 0):
            out[rel] = WHITEOUT
        else:
            xattrs = tuple((n, v) for n, v in e.xattrs if _keep_upper_xattr(n))
            out[rel] = (e._replace(xattrs=xattrs), extra)
    return out


def raw_snapshot(root):
    """Everything a writer could change in a lower, for the 'lowers untouched' check."""

    def visit(p, st):
        e = {
            "mode": st.st_mode,
            "uid": st.st_uid,
            "gid": st.st_gid,
            "ino": st.st_ino,
            "nlink": st.st_nlink,
            "size": st.st_size,
            "rdev": st.st_rdev,
            "mtime": st.st_mtime_ns,
            "ctime": st.st_ctime_ns,
            "xattrs": _xattrs(p, lambda n: True),
        }
        if stat.S_ISREG(st.st_mode):
            e["sha256"] = _sha(p)
        elif stat.S_ISLNK(st.st_mode):
            e["target"] = os.readlink(p)
        return e

    return _walk(str(root), visit)


def diff_dicts(a, b, la="kernel", lb="pyunionfs"):
    """Human-readable differences between two snapshots (empty list when equal)."""
    lines = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            lines.append(f"{k}: only in {lb}: {b[k]}")
        elif k not in b:
            lines.append(f"{k}: only in {la}: {a[k]}")
        elif a[k] != b[k]:
            lines.append(f"{k}: {la}={a[k]} {lb}={b[k]}")
    return lines


# --------------------------------------------------------------------------------------------
# A pair of mounts of identical layer copies.


class Pair:
    """Two mounts (kernel overlay as side 0, pyunionfs as side 1) of two copies of one template."""

    def __init__(self, template: Path, base: Path, options=()):
        """*options*: overlay mount options given to both sides (e.g. ["redirect_dir=on"])."""
        self.base = base
        self.options = list(options)
        self.sides = []
        self.stack = contextlib.ExitStack()
        self.lower_before = []
        self.labels = ("kernel", "kernel2" if SELF_CHECK else "pyunionfs")
        self.history = []  # op-level steps run so far, printed on failure for test_regressions.py
        try:
            for i, mount in enumerate((mount_kernel_overlay, mount_daemon)):
                d = base / f"side{i}"
                d.mkdir(parents=True)
                subprocess.run(["cp", "-a", f"{template}/.", str(d)], check=True)
                mnt = d / "mnt"
                mnt.mkdir()
                lowers = [d / l for l in LAYERS]
                self.lower_before.append({l: raw_snapshot(d / l) for l in LAYERS})
                self.stack.enter_context(mount(mnt, lowers, d / "upper", d / "work", options=options))
                self.sides.append(d)
        except BaseException:
            self.stack.close()
            raise

    @property
    def roots(self):
        return [str(d / "mnt") for d in self.sides]

    def run(self, name, *args):
        """Run one operation on both sides; return both results."""
        fn = OPS[name]
        return [fn(root, *args) for root in self.roots]

    def check(self, name, *args):
        self.history.append((name, *args))
        a, b = self.run(name, *args)
        assert a == b, (
            f"{name}{args!r} differs:\n  {self.labels[0]}: {a!r}\n"
            f"  {self.labels[1]}: {b!r}\n  replay steps: {self.history!r}"
        )
        return a

    def finish(self, compare=True):
        """Compare the merged views, unmount, compare the uppers and check the lowers."""
        problems = []
        try:
            if compare:
                snaps = [merged_snapshot(r) for r in self.roots]
                problems += ["merged " + l for l in diff_dicts(*snaps, *self.labels)]
        finally:
            self.stack.close()
        if not compare:
            return
        uppers = [upper_snapshot(d / "upper") for d in self.sides]
        problems += ["upper " + l for l in diff_dicts(*uppers, *self.labels)]
        # Interoperation: the kernel mounting the upper pyunionfs wrote (read-only, over the same
        # lowers) shows what pyunionfs showed. Not with index=on: the two keep different indexes.
        ours = self.sides[1]
        if "index=on" not in self.options:
            again, work = ours / "kernel-again", ours / "kernel-again-work"
            again.mkdir()
            work.mkdir()
            with mount_kernel_overlay(again, [ours / l for l in LAYERS], ours / "upper", work, options=["ro"]):
                seen = merged_snapshot(str(again))
            problems += [
                "kernel on the upper of " + l for l in diff_dicts(snaps[1], seen, self.labels[1], "kernel on its upper")
            ]
        for label, d, before in zip(self.labels, self.sides, self.lower_before):
            for l in LAYERS:
                for line in diff_dicts(before[l], raw_snapshot(d / l), "before", "after"):
                    problems.append(f"{label} lower {l} changed: {line}")
        assert not problems, "final state differs:\n  " + "\n  ".join(problems) + f"\n  replay steps: {self.history!r}"

    def cleanup(self):
        self.stack.close()
        if mounts_under(self.base):  # never rmtree through a mount left behind
            return
        shutil.rmtree(self.base, ignore_errors=True)


def replay(template, base, steps, options=()):
    """Run fixed steps [(op, *args), ...] on a fresh pair, compare each step and the final state."""
    pair = Pair(template, base, options)
    ok = False
    try:
        for name, *args in steps:
            pair.check(name, *args)
        ok = True
    finally:
        try:
            pair.finish(compare=ok)
        finally:
            pair.cleanup()


def minimize(template, base, steps, options=()):
    """Drop steps one at a time while the replay still fails; returns a locally minimal list.
    For hand use when hypothesis's shrinking ran out of time:
        python -m tests.differential.diffkit "[('op', args...), ...]"
    """

    def fails(candidate):
        d = Path(tempfile.mkdtemp(dir=base))
        try:
            replay(template, d, candidate, options)
        except AssertionError:
            return True
        return False

    steps = list(steps)
    assert fails(steps), "the steps do not fail"
    changed = True
    while changed:
        changed = False
        for i in reversed(range(len(steps))):
            cand = steps[:i] + steps[i + 1 :]
            if fails(cand):
                steps, changed = cand, True
    return steps


if __name__ == "__main__":
    import ast

    os.umask(0o022)
    work = Path(tempfile.mkdtemp(prefix="diffmin."))
    try:
        found = minimize(
            build_template(work / "template"),
            work,
            ast.literal_eval(sys.argv[1]),
            sys.argv[2].split(",") if len(sys.argv) > 2 else (),
        )
        print(repr(found))
    finally:
        if not mounts_under(work):
            shutil.rmtree(work, ignore_errors=True)
