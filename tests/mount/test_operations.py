"""POSIX operations through a real mount, on upper-only, lower-only and merged entries.

Each test runs on pyunionfs and on kernel overlayfs (the `impl` fixture): the kernel run checks the test.
Besides what a user sees through the mount, the tests check what lands in the upper layer, and
`union_mount` checks that every lower is byte-identical (data, metadata, xattrs) afterwards.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import hashlib
import os
import platform
import stat
import subprocess
import threading

import pytest

from tests.util import DIR, WHITEOUT, Dir, Fifo, File, Hardlink, Opaque, Symlink, tree_snapshot

from .conftest import union_mount

T0 = 1_600_000_000_123_456_789  # a fixed mtime in ns, to see that copy-up keeps it
OPQ = "trusted.overlay.opaque"


def standard_spec():
    return {
        "lower0": {
            "lo_file": File(
                "lower file\n", mode=0o640, uid=1234, gid=2345, xattrs={"user.test": b"hello"}, mtime_ns=T0
            ),
            "both_file": File("lower version\n", mode=0o600),
            "dir_lo": Dir(mode=0o750, uid=1234, gid=2345, xattrs={"user.dirattr": b"d"}, mtime_ns=T0),
            "dir_lo/x": "x in lower\n",
            "dir_lo/sub": Dir(mode=0o700, uid=1235, gid=1235, mtime_ns=T0),
            "dir_lo/sub/deep": File("deep\n", mode=0o604, uid=1236, gid=1236, mtime_ns=T0),
            "dir_both": Dir(mode=0o711),
            "dir_both/dlo": "dlo\n",
            "dir_both/dboth": "dboth lower\n",
            "dir_both/dwh": "hidden by whiteout\n",
            "dir_lo_empty": DIR,
            "dir_gone": DIR,
            "dir_gone/a": "a\n",
            "link_lo": Symlink("lo_file"),
            "wh_target": "should be hidden\n",
            "whd": DIR,
            "whd/old": "old\n",
            "opq": DIR,
            "opq/hidden": "hidden\n",
        },
        "upper": {
            "up_file": File("upper file\n", mode=0o604, uid=4321, gid=4321, mtime_ns=T0),
            "both_file": File("upper version\n", mode=0o640),
            "dir_both": Dir(mode=0o755),
            "dir_both/dup": "dup\n",
            "dir_both/dboth": "dboth upper\n",
            "dir_both/dwh": WHITEOUT,
            "dir_up": Dir(mode=0o750),
            "dir_up/y": "y\n",
            "dir_up_empty": DIR,
            "dir_gone/a": WHITEOUT,
            "wh_target": WHITEOUT,
            "whd": WHITEOUT,
            "opq": Opaque(),
            "opq/visible": "visible\n",
        },
    }


FILES = {"upper": "up_file", "lower": "lo_file", "both": "both_file"}
DIRS = {"upper": "dir_up", "lower": "dir_lo", "both": "dir_both"}
FILE_DATA = {"upper": b"upper file\n", "lower": b"lower file\n", "both": b"upper version\n"}


@pytest.fixture
def L(layers):
    return layers(standard_spec())


def is_whiteout(path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def xattr_names(path) -> list:
    return os.listxattr(path, follow_symlinks=False)


def assert_errno(err, fn, *args, **kw):
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    assert ei.value.errno == err, f"expected {errno.errorcode[err]}, got {ei.value!r}"


# ---------------------------------------------------------------------------------------------------
# lookup, stat, read, readdir
# ---------------------------------------------------------------------------------------------------


def test_merged_view(L, impl):
    m = L.mnt
    with union_mount(impl, L):
        assert sorted(os.listdir(m)) == sorted(
            [
                "lo_file",
                "both_file",
                "up_file",
                "dir_lo",
                "dir_both",
                "dir_up",
                "dir_lo_empty",
                "dir_up_empty",
                "dir_gone",
                "link_lo",
                "opq",
            ]
        )
        assert sorted(os.listdir(m / "dir_both")) == ["dboth", "dlo", "dup"]
        assert (m / "dir_both/dboth").read_bytes() == b"dboth upper\n"
        assert (m / "dir_both/dlo").read_bytes() == b"dlo\n"
        assert (m / "dir_lo/sub/deep").read_bytes() == b"deep\n"
        assert os.listdir(m / "dir_gone") == []
        for kind, name in FILES.items():
            assert (m / name).read_bytes() == FILE_DATA[kind]


@pytest.mark.parametrize("kind", FILES)
def test_stat_file(L, impl, kind):
    name = FILES[kind]
    src = (L.upper if kind != "lower" else L.lower) / name
    want = os.lstat(src)
    with union_mount(impl, L):
        st = os.lstat(L.mnt / name)
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(want.st_mode)
        assert (st.st_uid, st.st_gid) == (want.st_uid, want.st_gid)
        assert st.st_size == want.st_size
        assert st.st_mtime_ns == want.st_mtime_ns
        assert st.st_nlink == 1
        # stat does not copy up
        assert not os.path.lexists(L.upper / name) or kind != "lower"


@pytest.mark.parametrize("kind", DIRS)
def test_stat_dir(L, impl, kind):
    name = DIRS[kind]
    src = (L.upper if kind != "lower" else L.lower) / name
    want = os.lstat(src)
    with union_mount(impl, L):
        st = os.lstat(L.mnt / name)
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(want.st_mode)
        assert (st.st_uid, st.st_gid) == (want.st_uid, want.st_gid)
        root = os.stat(L.mnt)
        assert stat.S_ISDIR(root.st_mode)


def test_whiteouts_hidden(L, impl):
    m = L.mnt
    with union_mount(impl, L):
        assert "wh_target" not in os.listdir(m)
        assert "whd" not in os.listdir(m)
        assert "dwh" not in os.listdir(m / "dir_both")
        for p in ("wh_target", "whd", "whd/old", "dir_both/dwh", "dir_gone/a"):
            assert not os.path.lexists(m / p), p
            assert_errno(errno.ENOENT, os.lstat, m / p)
            assert_errno(errno.ENOENT, os.open, m / p, os.O_RDONLY)


def test_read_does_not_copy_up(L, impl):
    with union_mount(impl, L):
        with open(L.mnt / "lo_file", "rb") as f:
            assert f.read() == b"lower file\n"
        os.listdir(L.mnt / "dir_lo")
        os.getxattr(L.mnt / "lo_file", "user.test")
        os.readlink(L.mnt / "link_lo")
    assert not os.path.lexists(L.upper / "lo_file")
    assert not os.path.lexists(L.upper / "dir_lo")
    assert not os.path.lexists(L.upper / "link_lo")


@pytest.mark.parametrize("form", ["trusted", "user"])
def test_opaque_dir_hides_lower(layers, impl, form):
    L = layers(
        {
            "lower0": {"o": DIR, "o/hidden": "h\n", "o/sub": DIR, "o/sub/deep": "d\n", "o/same": "lower\n"},
            "upper": {"o": Opaque(user=(form == "user")), "o/visible": "v\n", "o/same": "upper\n"},
        }
    )
    # An upper's user.overlay.* markers count only with userxattr, on the kernel and on pyunionfs (which
    # reads both forms in lowers): without it that namespace is anyone's to write through the mount.
    options = ["userxattr"] if form == "user" else []
    with union_mount(impl, L, options):
        assert sorted(os.listdir(L.mnt / "o")) == ["same", "visible"]
        assert (L.mnt / "o/same").read_bytes() == b"upper\n"
        assert not os.path.lexists(L.mnt / "o/hidden")
        assert not os.path.lexists(L.mnt / "o/sub")
        # the marker itself is private
        assert not [n for n in xattr_names(L.mnt / "o") if ".overlay." in n]


@pytest.mark.parametrize("userxattr", [False, True], ids=["trusted", "userxattr"])
def test_only_the_mounts_own_xattr_namespace_is_private(layers, impl, userxattr):
    """The namespace a mount keeps its markers in (trusted.overlay.*, or user.overlay.* with userxattr)
    is escaped when set through the mount and hidden when found in a layer; the other one is ordinary."""
    own, other = ("user", "trusted") if userxattr else ("trusted", "user")
    L = layers({"lower0": {"f": File(b"f\n"), "g": File(b"g\n", xattrs={"user.overlay.lx": b"L"})}, "upper": {}})
    os.setxattr(L.lowers[0] / "g", "trusted.overlay.lt", b"T")
    with union_mount(impl, L, ["userxattr"] if userxattr else []):
        f = L.mnt / "f"
        os.setxattr(f, f"{own}.overlay.x", b"1")
        os.setxattr(f, f"{other}.overlay.y", b"2")
        assert os.getxattr(f, f"{own}.overlay.x") == b"1"
        assert os.getxattr(f, f"{other}.overlay.y") == b"2"
        assert {f"{own}.overlay.x", f"{other}.overlay.y"} <= set(xattr_names(f))
        shown = {"user": "user.overlay.lx", "trusted": "trusted.overlay.lt"}
        assert shown[other] in xattr_names(L.mnt / "g") and shown[own] not in xattr_names(L.mnt / "g")
        assert os.getxattr(L.mnt / "g", shown[other]) in (b"L", b"T")
        assert_errno(errno.ENODATA, os.getxattr, L.mnt / "g", shown[own])
    stored = set(xattr_names(L.upper / "f"))
    assert {f"{own}.overlay.overlay.x", f"{other}.overlay.y"} <= stored, stored


def test_three_lowers_precedence(layers, impl):
    L = layers(
        {
            "lower0": {
                "a": "0\n",
                "d": DIR,
                "d/x0": "x0\n",
                "d/shared": "from 0\n",
                "filedir": "file in 0\n",
                "dirfile": DIR,
                "dirfile/in0": "in0\n",
                "o": Opaque(),
                "o/top": "top\n",
                "gone": WHITEOUT,
            },
            "lower1": {
                "a": "1\n",
                "b": "1b\n",
                "d": DIR,
                "d/x1": "x1\n",
                "d/shared": "from 1\n",
                "filedir": DIR,
                "filedir/in1": "in1\n",
                "dirfile": "file in 1\n",
                "o": DIR,
                "o/mid": "mid\n",
                "gone": "gone in 1\n",
            },
            "lower2": {
                "a": "2\n",
                "b": "2b\n",
                "c": "2c\n",
                "d": DIR,
                "d/x2": "x2\n",
                "d/shared": "from 2\n",
                "dirfile": DIR,
                "dirfile/in2": "in2\n",
                "o": DIR,
                "o/bottom": "b\n",
                "gone": "gone in 2\n",
                "w": DIR,
                "w/keep": "k\n",
                "w/drop": "d\n",
            },
            "upper": {"w": DIR, "w/drop": WHITEOUT},
        }
    )
    m = L.mnt
    with union_mount(impl, L):
        assert sorted(os.listdir(m)) == ["a", "b", "c", "d", "dirfile", "filedir", "o", "w"]
        assert (m / "a").read_bytes() == b"0\n"
        assert (m / "b").read_bytes() == b"1b\n"
        assert (m / "c").read_bytes() == b"2c\n"
        assert sorted(os.listdir(m / "d")) == ["shared", "x0", "x1", "x2"]
        assert (m / "d/shared").read_bytes() == b"from 0\n"
        # a non-directory hides directories below it
        assert os.path.isfile(m / "filedir")
        assert (m / "filedir").read_bytes() == b"file in 0\n"
        # a directory over a non-directory is not merged with anything below
        assert sorted(os.listdir(m / "dirfile")) == ["in0"]
        # opaque in the middle of the stack
        assert sorted(os.listdir(m / "o")) == ["top"]
        # whiteout in a lower
        assert not os.path.lexists(m / "gone")
        assert sorted(os.listdir(m / "w")) == ["keep"]
        # a write copies up from the right layer
        with open(m / "b", "ab") as f:
            f.write(b"+\n")
        with open(m / "d/x2", "ab") as f:
            f.write(b"+\n")
    assert (L.upper / "b").read_bytes() == b"1b\n+\n"
    assert (L.upper / "d/x2").read_bytes() == b"x2\n+\n"
    assert OPQ not in xattr_names(L.upper / "d")


# ---------------------------------------------------------------------------------------------------
# Large directory, read in small getdents chunks
# ---------------------------------------------------------------------------------------------------

_SYS_GETDENTS64 = {
    "x86_64": 217,
    "aarch64": 61,
    "arm64": 61,
    "ppc64le": 202,
    "s390x": 220,
    "riscv64": 61,
    "loongarch64": 61,
}


def getdents_names(path, bufsize=1024):
    """Names in `path` read with getdents64 and a small buffer; returns (names, number of calls)."""
    nr = _SYS_GETDENTS64.get(platform.machine())
    if nr is None:
        pytest.skip(f"getdents64 syscall number unknown for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(bufsize)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    names, calls = [], 0
    try:
        while True:
            n = libc.syscall(ctypes.c_long(nr), ctypes.c_int(fd), buf, ctypes.c_uint(bufsize))
            calls += 1
            if n < 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
            if n == 0:
                break
            raw = buf.raw[:n]
            off = 0
            while off < n:
                reclen = int.from_bytes(raw[off + 16 : off + 18], "little")
                name = raw[off + 19 : off + reclen].split(b"\0", 1)[0]
                names.append(os.fsdecode(name))
                off += reclen
    finally:
        os.close(fd)
    return names, calls


@pytest.mark.timeout(180)
def test_large_merged_directory(layers, impl):
    n_lower, n_upper, overlap, n_wh = 6000, 5000, 1000, 500
    lower = {f"big/l{i:05d}": b"" for i in range(n_lower)}
    lower.update({f"big/c{i:05d}": b"L" for i in range(overlap)})
    lower.update({f"big/w{i:05d}": b"" for i in range(n_wh)})
    upper = {f"big/u{i:05d}": b"" for i in range(n_upper)}
    upper.update({f"big/c{i:05d}": b"U" for i in range(overlap)})
    upper.update({f"big/w{i:05d}": WHITEOUT for i in range(n_wh)})
    L = layers({"lower0": lower, "upper": upper})
    expected = {p.split("/")[1] for p in lower} | {p.split("/")[1] for p in upper}
    expected -= {f"w{i:05d}" for i in range(n_wh)}
    assert len(expected) == n_lower + n_upper + overlap >= 10000
    big = L.mnt / "big"
    with union_mount(impl, L):
        names, calls = getdents_names(big, 1024)
        assert calls > 100
        counts = collections.Counter(names)
        dups = [n for n, c in counts.items() if c > 1]
        assert not dups, f"names listed more than once: {dups[:10]} ({len(dups)} in all)"
        assert set(names) - {".", ".."} == expected
        assert "." in counts and ".." in counts
        assert sorted(os.listdir(big)) == sorted(expected)
        with os.scandir(big) as it:
            assert sorted(e.name for e in it) == sorted(expected)
        out = subprocess.run(
            f"ls -f '{big}' | wc -l", shell=True, capture_output=True, text=True, timeout=60, check=True
        ).stdout
        assert int(out) == len(expected) + 2  # with . and ..
        assert (big / "c00007").read_bytes() == b"U"


# ---------------------------------------------------------------------------------------------------
# Changing files: write, append, O_TRUNC, truncate, chmod, chown, utime, xattrs
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FILES)
def test_append(L, impl, kind):
    name = FILES[kind]
    with union_mount(impl, L):
        with open(L.mnt / name, "ab") as f:
            f.write(b"more\n")
        assert (L.mnt / name).read_bytes() == FILE_DATA[kind] + b"more\n"
        # write at an offset through a read-write descriptor
        fd = os.open(L.mnt / name, os.O_RDWR)
        try:
            assert os.pwrite(fd, b"X", 0) == 1
            assert os.pread(fd, 3, 0)[:1] == b"X"
        finally:
            os.close(fd)
    assert (L.upper / name).read_bytes() == b"X" + FILE_DATA[kind][1:] + b"more\n"


@pytest.mark.parametrize("kind", FILES)
def test_open_trunc(L, impl, kind):
    name = FILES[kind]
    with union_mount(impl, L):
        fd = os.open(L.mnt / name, os.O_WRONLY | os.O_TRUNC)
        os.close(fd)
        assert os.stat(L.mnt / name).st_size == 0
        assert (L.mnt / name).read_bytes() == b""
    assert (L.upper / name).read_bytes() == b""


@pytest.mark.parametrize("kind", FILES)
def test_truncate(L, impl, kind):
    name = FILES[kind]
    with union_mount(impl, L):
        os.truncate(L.mnt / name, 3)
        assert (L.mnt / name).read_bytes() == FILE_DATA[kind][:3]
        os.truncate(L.mnt / name, 10000)
        assert os.stat(L.mnt / name).st_size == 10000
        with open(L.mnt / name, "r+b") as f:
            os.ftruncate(f.fileno(), 2)
    assert (L.upper / name).read_bytes() == FILE_DATA[kind][:2]


@pytest.mark.parametrize("kind", list(FILES) + ["dir_" + k for k in DIRS])
def test_chmod(L, impl, kind):
    name = DIRS[kind[4:]] if kind.startswith("dir_") else FILES[kind]
    with union_mount(impl, L):
        os.chmod(L.mnt / name, 0o701)
        assert stat.S_IMODE(os.stat(L.mnt / name).st_mode) == 0o701
    assert stat.S_IMODE(os.lstat(L.upper / name).st_mode) == 0o701
    if kind == "dir_lower":
        # a directory copy-up copies the directory, not its contents
        assert os.listdir(L.upper / name) == []
        assert OPQ not in xattr_names(L.upper / name)


@pytest.mark.parametrize("kind", list(FILES) + ["dir_" + k for k in DIRS])
def test_chown(L, impl, kind):
    name = DIRS[kind[4:]] if kind.startswith("dir_") else FILES[kind]
    with union_mount(impl, L):
        os.chown(L.mnt / name, 4000, 4001)
        st = os.stat(L.mnt / name)
        assert (st.st_uid, st.st_gid) == (4000, 4001)
        os.chown(L.mnt / name, -1, 4002)
        assert os.stat(L.mnt / name).st_gid == 4002
    st = os.lstat(L.upper / name)
    assert (st.st_uid, st.st_gid) == (4000, 4002)


@pytest.mark.parametrize("kind", list(FILES) + ["dir_" + k for k in DIRS])
def test_utime_ns(L, impl, kind):
    name = DIRS[kind[4:]] if kind.startswith("dir_") else FILES[kind]
    atime, mtime = 1_500_000_000_111_111_111, 1_400_000_000_987_654_321
    with union_mount(impl, L):
        os.utime(L.mnt / name, ns=(atime, mtime))
        st = os.stat(L.mnt / name)
        assert st.st_mtime_ns == mtime
        assert st.st_atime_ns == atime
    st = os.lstat(L.upper / name)
    assert st.st_mtime_ns == mtime
    assert st.st_atime_ns == atime


def test_symlink_utime_nofollow(L, impl):
    mtime = 1_300_000_000_000_000_007
    with union_mount(impl, L):
        os.utime(L.mnt / "link_lo", ns=(mtime, mtime), follow_symlinks=False)
        assert os.lstat(L.mnt / "link_lo").st_mtime_ns == mtime
        assert os.stat(L.mnt / "link_lo").st_mtime_ns == T0  # the target is untouched
    assert os.readlink(L.upper / "link_lo") == "lo_file"
    assert os.lstat(L.upper / "link_lo").st_mtime_ns == mtime
    assert not os.path.lexists(L.upper / "lo_file")


@pytest.mark.parametrize("kind", FILES)
def test_xattrs(L, impl, kind):
    name = FILES[kind]
    with union_mount(impl, L):
        os.setxattr(L.mnt / name, "user.new", b"value")
        assert os.getxattr(L.mnt / name, "user.new") == b"value"
        assert "user.new" in xattr_names(L.mnt / name)
        if kind == "lower":
            assert os.getxattr(L.mnt / name, "user.test") == b"hello"
            os.removexattr(L.mnt / name, "user.test")
            assert_errno(errno.ENODATA, os.getxattr, L.mnt / name, "user.test")
    assert os.getxattr(L.upper / name, "user.new") == b"value"
    if kind == "lower":
        assert "user.test" not in xattr_names(L.upper / name)


def test_copy_up_preserves_metadata(L, impl):
    """chmod of lower files deep in lower-only dirs: data, owner, mtime, user xattrs kept; parents made."""
    with union_mount(impl, L):
        os.chmod(L.mnt / "lo_file", 0o660)
        os.chmod(L.mnt / "dir_lo/sub/deep", 0o606)
        st = os.stat(L.mnt / "lo_file")
        assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (1234, 2345, T0)
    up, lo = L.upper, L.lower
    st = os.lstat(up / "lo_file")
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (1234, 2345)
    assert st.st_mtime_ns == T0
    assert (up / "lo_file").read_bytes() == b"lower file\n"
    assert os.getxattr(up / "lo_file", "user.test") == b"hello"
    # parents created in upper with the lower's metadata, not opaque, without their other children
    for d in ("dir_lo", "dir_lo/sub"):
        su, sl = os.lstat(up / d), os.lstat(lo / d)
        assert stat.S_ISDIR(su.st_mode)
        assert stat.S_IMODE(su.st_mode) == stat.S_IMODE(sl.st_mode), d
        assert (su.st_uid, su.st_gid) == (sl.st_uid, sl.st_gid), d
        assert OPQ not in xattr_names(up / d), d
        assert "user.overlay.opaque" not in xattr_names(up / d), d
    assert os.getxattr(up / "dir_lo", "user.dirattr") == b"d"
    assert sorted(os.listdir(up / "dir_lo")) == ["sub"]
    assert os.listdir(up / "dir_lo/sub") == ["deep"]
    st = os.lstat(up / "dir_lo/sub/deep")
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (1236, 1236, T0)
    assert (up / "dir_lo/sub/deep").read_bytes() == b"deep\n"


def test_copy_up_on_write_keeps_owner(L, impl):
    with union_mount(impl, L):
        with open(L.mnt / "dir_lo/sub/deep", "ab") as f:
            f.write(b"more\n")
        # the file is still visible through the rest of the merged view
        assert sorted(os.listdir(L.mnt / "dir_lo")) == ["sub", "x"]
    st = os.lstat(L.upper / "dir_lo/sub/deep")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1236, 1236, 0o604)
    assert (L.upper / "dir_lo/sub/deep").read_bytes() == b"deep\nmore\n"


def test_fd_opened_before_copy_up_sees_new_data(L, impl):
    with union_mount(impl, L):
        with open(L.mnt / "lo_file", "rb") as ro:
            with open(L.mnt / "lo_file", "r+b") as rw:
                rw.write(b"LOWER")
                rw.flush()
                os.fsync(rw.fileno())
            assert os.pread(ro.fileno(), 5, 0) == b"LOWER"


# ---------------------------------------------------------------------------------------------------
# Creating and removing
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parent", ["", "dir_up", "dir_lo", "dir_both", "dir_lo/sub"])
def test_create_file(L, impl, parent):
    rel = f"{parent}/new" if parent else "new"
    with union_mount(impl, L):
        fd = os.open(L.mnt / rel, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
        os.write(fd, b"created\n")
        os.close(fd)
        assert (L.mnt / rel).read_bytes() == b"created\n"
        assert stat.S_IMODE(os.stat(L.mnt / rel).st_mode) == 0o640 & ~_umask()
        assert_errno(errno.EEXIST, os.open, L.mnt / rel, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        assert "new" in os.listdir(L.mnt / parent if parent else L.mnt)
    assert (L.upper / rel).read_bytes() == b"created\n"
    if parent in ("dir_lo", "dir_lo/sub"):
        for d in ("dir_lo", "dir_lo/sub")[: parent.count("/") + 1]:
            assert OPQ not in xattr_names(L.upper / d)
            assert stat.S_IMODE(os.lstat(L.upper / d).st_mode) == stat.S_IMODE(os.lstat(L.lower / d).st_mode)


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@pytest.mark.parametrize("parent", ["", "dir_lo", "dir_both"])
def test_mkdir(L, impl, parent):
    rel = f"{parent}/newdir" if parent else "newdir"
    with union_mount(impl, L):
        os.mkdir(L.mnt / rel, 0o750)
        assert os.listdir(L.mnt / rel) == []
        assert_errno(errno.EEXIST, os.mkdir, L.mnt / rel)
        assert_errno(errno.EEXIST, os.mkdir, L.mnt / "dir_lo")
        (L.mnt / rel / "inner").write_bytes(b"i\n")
    assert os.path.isdir(L.upper / rel)
    assert (L.upper / rel / "inner").read_bytes() == b"i\n"
    # a new directory where no lower has the name needs no opaque marker
    assert OPQ not in xattr_names(L.upper / rel)


def test_mkdir_over_whiteout_is_opaque(L, impl):
    with union_mount(impl, L):
        os.mkdir(L.mnt / "whd")
        assert os.listdir(L.mnt / "whd") == []
        assert not os.path.lexists(L.mnt / "whd/old")
    assert os.path.isdir(L.upper / "whd") and not os.path.islink(L.upper / "whd")
    assert os.getxattr(L.upper / "whd", OPQ) == b"y"
    assert os.listdir(L.upper / "whd") == []


def test_rmdir_then_mkdir_hides_old_content(L, impl):
    with union_mount(impl, L):
        os.unlink(L.mnt / "dir_lo/x")
        os.unlink(L.mnt / "dir_lo/sub/deep")
        os.rmdir(L.mnt / "dir_lo/sub")
        os.rmdir(L.mnt / "dir_lo")
        assert "dir_lo" not in os.listdir(L.mnt)
        os.mkdir(L.mnt / "dir_lo")
        assert os.listdir(L.mnt / "dir_lo") == []
    assert os.getxattr(L.upper / "dir_lo", OPQ) == b"y"


def test_create_over_whiteout(L, impl):
    with union_mount(impl, L):
        (L.mnt / "wh_target").write_bytes(b"reborn\n")
        (L.mnt / "dir_both/dwh").write_bytes(b"reborn too\n")
        assert (L.mnt / "wh_target").read_bytes() == b"reborn\n"
        assert "dwh" in os.listdir(L.mnt / "dir_both")
    assert (L.upper / "wh_target").read_bytes() == b"reborn\n"
    assert (L.upper / "dir_both/dwh").read_bytes() == b"reborn too\n"


@pytest.mark.parametrize("kind", FILES)
def test_unlink(L, impl, kind):
    name = FILES[kind]
    with union_mount(impl, L):
        os.unlink(L.mnt / name)
        assert name not in os.listdir(L.mnt)
        assert_errno(errno.ENOENT, os.stat, L.mnt / name)
        assert_errno(errno.ENOENT, os.unlink, L.mnt / name)
    if kind == "upper":
        assert not os.path.lexists(L.upper / name)  # upper-only: simply gone, no whiteout
    else:
        assert is_whiteout(L.upper / name)


def test_unlink_in_lower_dir_and_symlink(L, impl):
    with union_mount(impl, L):
        os.unlink(L.mnt / "dir_lo/sub/deep")
        os.unlink(L.mnt / "link_lo")
        os.unlink(L.mnt / "dir_both/dlo")
        assert os.listdir(L.mnt / "dir_lo/sub") == []
        assert sorted(os.listdir(L.mnt / "dir_both")) == ["dboth", "dup"]
    assert is_whiteout(L.upper / "dir_lo/sub/deep")
    assert is_whiteout(L.upper / "link_lo")
    assert is_whiteout(L.upper / "dir_both/dlo")
    assert OPQ not in xattr_names(L.upper / "dir_lo/sub")


@pytest.mark.parametrize(
    "name,nonempty",
    [
        ("dir_up_empty", False),
        ("dir_lo_empty", False),
        ("dir_gone", False),
        ("dir_up", True),
        ("dir_lo", True),
        ("dir_both", True),
        ("opq", True),
    ],
)
def test_rmdir(L, impl, name, nonempty):
    with union_mount(impl, L):
        if nonempty:
            assert_errno(errno.ENOTEMPTY, os.rmdir, L.mnt / name)
            assert os.path.isdir(L.mnt / name)
        else:
            os.rmdir(L.mnt / name)
            assert name not in os.listdir(L.mnt)
            assert_errno(errno.ENOENT, os.rmdir, L.mnt / name)
        assert_errno(errno.ENOTDIR, os.rmdir, L.mnt / "lo_file")
    if nonempty:
        return
    if name == "dir_up_empty":
        assert not os.path.lexists(L.upper / name)
    else:
        # the name exists in a lower: a whiteout replaces it (and the upper dir's whiteouts are gone)
        assert is_whiteout(L.upper / name)


def test_rmdir_after_emptying_merged_dir(L, impl):
    with union_mount(impl, L):
        for n in os.listdir(L.mnt / "dir_both"):
            os.unlink(L.mnt / "dir_both" / n)
        assert os.listdir(L.mnt / "dir_both") == []
        os.rmdir(L.mnt / "dir_both")
        assert not os.path.lexists(L.mnt / "dir_both")
    assert is_whiteout(L.upper / "dir_both")


@pytest.mark.parametrize("parent", ["", "dir_lo"])
def test_symlink(L, impl, parent):
    rel = f"{parent}/sl" if parent else "sl"
    with union_mount(impl, L):
        assert os.readlink(L.mnt / "link_lo") == "lo_file"
        assert (L.mnt / "link_lo").read_bytes() == b"lower file\n"
        os.symlink("../some/where", L.mnt / rel)
        assert os.readlink(L.mnt / rel) == "../some/where"
        assert stat.S_ISLNK(os.lstat(L.mnt / rel).st_mode)
        os.symlink("up_file", L.mnt / "sl2")
        assert (L.mnt / "sl2").read_bytes() == b"upper file\n"
    assert os.readlink(L.upper / rel) == "../some/where"


def test_mknod_fifo(L, impl):
    with union_mount(impl, L):
        os.mkfifo(L.mnt / "dir_lo/fifo", 0o640)
        assert stat.S_ISFIFO(os.lstat(L.mnt / "dir_lo/fifo").st_mode)
    assert stat.S_ISFIFO(os.lstat(L.upper / "dir_lo/fifo").st_mode)


def test_exec_lower_and_upper_programs(L, impl):
    """exec opens with __FMODE_EXEC among the flags; the daemon once passed it to openat2 (EINVAL)."""
    import shutil

    true_bin = shutil.which("true")
    with open(true_bin, "rb") as f:
        program = f.read()
    (L.lowers[0] / "prog").write_bytes(program)
    os.chmod(L.lowers[0] / "prog", 0o755)
    with union_mount(impl, L):
        assert subprocess.run([str(L.mnt / "prog")], timeout=30).returncode == 0
        (L.mnt / "dir_up/prog2").write_bytes(program)
        os.chmod(L.mnt / "dir_up/prog2", 0o755)
        assert subprocess.run([str(L.mnt / "dir_up/prog2")], timeout=30).returncode == 0


def test_hardlink_lower_file(L, impl):
    with union_mount(impl, L):
        os.link(L.mnt / "lo_file", L.mnt / "dir_up/hl")
        assert (L.mnt / "dir_up/hl").read_bytes() == b"lower file\n"
        assert os.stat(L.mnt / "lo_file").st_nlink == 2
        with open(L.mnt / "dir_up/hl", "ab") as f:
            f.write(b"via link\n")
        assert (L.mnt / "lo_file").read_bytes() == b"lower file\nvia link\n"
    assert os.lstat(L.upper / "lo_file").st_ino == os.lstat(L.upper / "dir_up/hl").st_ino
    assert (L.upper / "lo_file").read_bytes() == b"lower file\nvia link\n"


# ---------------------------------------------------------------------------------------------------
# rename
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FILES)
def test_rename_file(L, impl, kind):
    name = FILES[kind]
    with union_mount(impl, L):
        os.rename(L.mnt / name, L.mnt / "dir_lo/renamed")
        assert (L.mnt / "dir_lo/renamed").read_bytes() == FILE_DATA[kind]
        assert not os.path.lexists(L.mnt / name)
        assert name not in os.listdir(L.mnt)
    assert (L.upper / "dir_lo/renamed").read_bytes() == FILE_DATA[kind]
    if kind == "upper":
        assert not os.path.lexists(L.upper / name)
    else:
        assert is_whiteout(L.upper / name)


def test_rename_over_existing(L, impl):
    with union_mount(impl, L):
        os.rename(L.mnt / "up_file", L.mnt / "lo_file")
        assert (L.mnt / "lo_file").read_bytes() == b"upper file\n"
        assert sorted(os.listdir(L.mnt)).count("lo_file") == 1
    assert (L.upper / "lo_file").read_bytes() == b"upper file\n"
    assert not os.path.lexists(L.upper / "up_file")


@pytest.mark.parametrize("name", ["dir_lo", "dir_both"])
def test_rename_lower_dir_exdev(L, impl, name):
    with union_mount(impl, L):
        assert_errno(errno.EXDEV, os.rename, L.mnt / name, L.mnt / "moved")
        assert os.path.isdir(L.mnt / name)
        assert not os.path.lexists(L.mnt / "moved")


def test_rename_upper_dir(L, impl):
    with union_mount(impl, L):
        os.rename(L.mnt / "dir_up", L.mnt / "dir_lo/moved")
        assert os.listdir(L.mnt / "dir_lo/moved") == ["y"]
        assert not os.path.lexists(L.mnt / "dir_up")
    assert (L.upper / "dir_lo/moved/y").read_bytes() == b"y\n"
    assert not os.path.lexists(L.upper / "dir_up")


@pytest.mark.parametrize("kind", ["upper", "lower"])
def test_rename_to_name_max(L, impl, kind):
    """pjdfstest rename/01.t: a name of NAME_MAX bytes is a rename target like any other (with
    whiteout_files=on the rename also drops a stale `.wh.NAME`, a name too long to exist here; trying to
    unlink it failed with ENAMETOOLONG)."""
    name, long = FILES[kind], "n" * 255
    with union_mount(impl, L):
        os.rename(L.mnt / name, L.mnt / long)
        assert (L.mnt / long).read_bytes() == FILE_DATA[kind]
        os.rename(L.mnt / long, L.mnt / name)
        assert (L.mnt / name).read_bytes() == FILE_DATA[kind]
        assert not os.path.lexists(L.mnt / long)


# ---------------------------------------------------------------------------------------------------
# statfs, fsync
# ---------------------------------------------------------------------------------------------------


def test_statfs(L, impl):
    with union_mount(impl, L):
        sv = os.statvfs(L.mnt)
        su = os.statvfs(L.upper)
        assert sv.f_bsize > 0 and sv.f_namemax > 0
        # the union reports the upper filesystem's size
        assert sv.f_blocks * sv.f_frsize == su.f_blocks * su.f_frsize
        assert sv.f_files == su.f_files


@pytest.mark.parametrize("kind", FILES)
def test_fsync(L, impl, kind):
    name = FILES[kind]
    with union_mount(impl, L):
        fd = os.open(L.mnt / name, os.O_RDWR | os.O_APPEND)
        try:
            os.write(fd, b"sync\n")
            os.fsync(fd)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        dfd = os.open(L.mnt / "dir_both", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    assert (L.upper / name).read_bytes() == FILE_DATA[kind] + b"sync\n"


def test_upper_layer_shape(L, impl):
    """A mixed session; the resulting upper layer's shape (types, modes, data) is what the kernel makes."""
    with union_mount(impl, L):
        (L.mnt / "dir_lo/sub/n").write_bytes(b"n\n")
        os.unlink(L.mnt / "dir_both/dlo")
        os.chmod(L.mnt / "lo_file", 0o600)
        os.mkdir(L.mnt / "whd")
        os.rmdir(L.mnt / "dir_lo_empty")
    snap = tree_snapshot(L.upper, with_xattrs=False)
    shape = {k: (e.type, e.mode, e.uid, e.gid, e.sha256, e.rdev) for k, e in snap.items()}
    assert shape["dir_lo"][:4] == ("d", 0o750, 1234, 2345)
    assert shape["dir_lo/sub"][:4] == ("d", 0o700, 1235, 1235)
    assert shape["dir_lo/sub/n"][0] == "f"
    assert shape["dir_both/dlo"] == ("c", 0, 0, 0, None, (0, 0))
    assert shape["lo_file"][:4] == ("f", 0o600, 1234, 2345)
    assert shape["whd"][0] == "d"
    assert shape["dir_lo_empty"][0] == "c"
    assert "dir_lo/x" not in shape and "dir_lo/sub/deep" not in shape


# ---------------------------------------------------------------------------------------------------
# Bigger data and concurrency
# ---------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_copy_up_large_file(layers, impl):
    data = os.urandom(1 << 20) * 12 + b"tail"  # 12 MiB + 4 bytes
    L = layers({"lower0": {"big": File(data, mode=0o644)}})
    with union_mount(impl, L):
        with open(L.mnt / "big", "r+b") as f:
            f.seek(5 << 20)
            f.write(b"MIDDLE")
        with open(L.mnt / "big", "rb") as f:
            got = f.read()
    want = data[: 5 << 20] + b"MIDDLE" + data[(5 << 20) + 6 :]
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()
    assert (L.upper / "big").read_bytes() == want


@pytest.mark.timeout(120)
def test_concurrent_first_writes_copy_up_once(L, impl):
    """Threads open the same lower file for append at once: one copy-up, every append kept."""
    n = 8
    barrier = threading.Barrier(n)
    errors = []

    def worker(i):
        try:
            barrier.wait(timeout=30)
            fd = os.open(L.mnt / "dir_lo/sub/deep", os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, f"line {i}\n".encode())
            finally:
                os.close(fd)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    with union_mount(impl, L):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        data = (L.mnt / "dir_lo/sub/deep").read_bytes()
    assert data.startswith(b"deep\n") and data.count(b"deep\n") == 1, data
    assert sorted(data.splitlines()[1:]) == sorted(f"line {i}".encode() for i in range(n))
    assert (L.upper / "dir_lo/sub/deep").read_bytes() == data


@pytest.mark.timeout(120)
def test_many_small_operations(layers, impl):
    """A few hundred creates, renames and unlinks in one directory merged from two lowers."""
    L = layers({"lower0": {f"d/a{i}": f"a{i}" for i in range(100)}, "lower1": {f"d/b{i}": f"b{i}" for i in range(100)}})
    d = L.mnt / "d"
    with union_mount(impl, L):
        for i in range(0, 100, 2):
            os.unlink(d / f"a{i}")
            os.rename(d / f"b{i}", d / f"c{i}")
            (d / f"n{i}").write_text(f"n{i}")
        names = os.listdir(d)
        assert len(names) == len(set(names)) == 200
        assert (d / "c10").read_text() == "b10"
    upper = set(os.listdir(L.upper / "d"))
    assert {f"a{i}" for i in range(0, 100, 2)} <= upper  # whiteouts
    assert all(is_whiteout(L.upper / "d" / f"b{i}") for i in range(0, 100, 2))


# ---------------------------------------------------------------------------------------------------
# Private xattrs and open-but-unlinked files
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["trusted", "user"])
def test_opaque_marker_cannot_be_forged(layers, impl, form):
    """Setting the overlay's own opaque xattr through the mount must not make the directory opaque."""
    L = layers({"lower0": {"d": DIR, "d/a": "a\n"}})
    name = f"{form}.overlay.opaque"
    options = ["userxattr"] if form == "user" else []
    with union_mount(impl, L, options):
        try:
            os.setxattr(L.mnt / "d", name, b"y")
        except OSError as exc:
            assert exc.errno in (errno.EPERM, errno.EACCES, errno.ENOTSUP), exc
        assert os.listdir(L.mnt / "d") == ["a"]
    if os.path.isdir(L.upper / "d"):
        assert name not in xattr_names(L.upper / "d"), "a forged opaque marker landed in the upper"
    with union_mount(impl, L, options):  # and after a remount
        assert os.listdir(L.mnt / "d") == ["a"]


@pytest.mark.parametrize("kind", FILES)
def test_unlinked_open_file_stays_usable(L, impl, kind):
    name = FILES[kind]
    with union_mount(impl, L):
        fd = os.open(L.mnt / name, os.O_RDONLY)
        try:
            os.unlink(L.mnt / name)
            assert not os.path.lexists(L.mnt / name)
            assert os.pread(fd, 100, 0) == FILE_DATA[kind]
            assert os.fstat(fd).st_size == len(FILE_DATA[kind])
        finally:
            os.close(fd)
        fd = os.open(L.mnt / "dir_up/y", os.O_RDWR)
        try:
            os.unlink(L.mnt / "dir_up/y")
            os.pwrite(fd, b"Y", 0)
            assert os.pread(fd, 10, 0) == b"Y\n"
            assert os.fstat(fd).st_nlink == 0
        finally:
            os.close(fd)
        assert os.listdir(L.mnt / "dir_up") == []


@pytest.mark.parametrize("kind", FILES)
def test_changes_through_fd_of_unlinked_file(L, impl, kind):
    """fchmod, fchown, ftruncate, futimens and fsetxattr on a file whose name is gone: the changes
    reach the (upper) file, and nothing else, least of all the layer's root, is touched."""
    name = FILES[kind]
    with union_mount(impl, L):
        root_mode = os.stat(L.mnt).st_mode
        fd = os.open(L.mnt / name, os.O_RDWR)
        try:
            os.unlink(L.mnt / name)
            os.fchmod(fd, 0o611)
            os.fchown(fd, 4444, 5555)
            os.ftruncate(fd, 3)
            os.utime(fd, ns=(T0, T0))
            os.setxattr(fd, "user.gone", b"still here")
            st = os.fstat(fd)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns) == (
                0o611,
                4444,
                5555,
                3,
                T0,
            )
            assert os.getxattr(fd, "user.gone") == b"still here"
            assert os.pread(fd, 10, 0) == FILE_DATA[kind][:3]
        finally:
            os.close(fd)
        assert os.stat(L.mnt).st_mode == root_mode
        assert not os.path.lexists(L.mnt / name)
    assert stat.S_IMODE(os.stat(L.upper).st_mode) == stat.S_IMODE(root_mode)


def test_changes_through_fd_of_open_file(layers, impl):
    """fchmod, fchown and futimens on a file open for writing (a tar sets them so, and the kernel sends
    those SETATTRs without the file's handle): the changes reach the upper file the fd writes, and a
    lower hard link of it keeps its own (index=off, as the kernel: the copy-up split the pair)."""
    L = layers({"lower0": {"d/a": "shared\n", "d/h": Hardlink("d/a")}})
    with union_mount(impl, L):
        fd = os.open(L.mnt / "d/a", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"more\n")
            os.fchmod(fd, 0o604)
            os.fchown(fd, 4444, 5555)
            os.utime(fd, ns=(T0, T0))
            st = os.fstat(fd)
        finally:
            os.close(fd)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == (0o604, 4444, 5555, T0)
        seen = os.lstat(L.mnt / "d/a")
        assert (stat.S_IMODE(seen.st_mode), seen.st_uid, seen.st_mtime_ns, seen.st_ino) == (
            0o604,
            4444,
            T0,
            st.st_ino,
        )
        other = os.lstat(L.mnt / "d/h")
        assert (other.st_uid, other.st_mtime_ns) != (4444, T0)
        assert (L.mnt / "d/h").read_bytes() == b"shared\n"
    up = os.lstat(L.upper / "d/a")
    assert (stat.S_IMODE(up.st_mode), up.st_uid, up.st_gid, up.st_mtime_ns) == (0o604, 4444, 5555, T0)
    assert (L.upper / "d/a").read_bytes() == b"shared\nmore\n"
    assert not os.path.lexists(L.upper / "d/h")


def test_lower_hardlinks_separate_after_copy_up(layers, impl):
    """index=off semantics: a lower file's hard links share data until one of them is copied up."""
    L = layers({"lower0": {"a": "shared\n", "h": Hardlink("a"), "d/h2": Hardlink("a")}})
    with union_mount(impl, L):
        assert os.stat(L.mnt / "a").st_nlink == 3
        with open(L.mnt / "a", "ab") as f:
            f.write(b"changed\n")
        assert (L.mnt / "a").read_bytes() == b"shared\nchanged\n"
        assert (L.mnt / "h").read_bytes() == b"shared\n"
        assert (L.mnt / "d/h2").read_bytes() == b"shared\n"
    assert (L.upper / "a").read_bytes() == b"shared\nchanged\n"
    assert not os.path.lexists(L.upper / "h")


def _listing(path):
    """{name: (d_ino, kind from d_type)} as getdents gives them."""
    out = {}
    with os.scandir(path) as it:
        for e in it:
            kind = (
                "l"
                if e.is_symlink()
                else "d"
                if e.is_dir(follow_symlinks=False)
                else "f"
                if e.is_file(follow_symlinks=False)
                else "o"
            )
            out[e.name] = (e.inode(), kind)
    return out


def _kind(st):
    return (
        "l"
        if stat.S_ISLNK(st.st_mode)
        else "d"
        if stat.S_ISDIR(st.st_mode)
        else "f"
        if stat.S_ISREG(st.st_mode)
        else "o"
    )


def test_listings_of_entries_the_kernel_holds(layers, impl):
    """Listed again once the kernel holds every entry (pyunionfs then lists files without attributes,
    see bare_entries.py): the same names, d_ino equal to st_ino, d_type the kind, and what stat, ACLs
    and reads show stays what the changes made, not what an earlier listing said."""
    L = layers(
        {
            "lower0": {
                "lo": "lower\n",
                "both": "lower both\n",
                "d/x": "x\n",
                "ln": Symlink("lo"),
                "fifo": Fifo(),
                "h1": "linked\n",
                "h2": Hardlink("h1"),
                "gone": "gone\n",
                "acl": File("acl\n", mode=0o640),
            },
            "upper": {"up": "upper\n", "both": "upper both\n", "gone": WHITEOUT},
        }
    )
    acl = (
        b"\x02\x00\x00\x00"
        b"\x01\x00\x06\x00\xff\xff\xff\xff"
        b"\x02\x00\x06\x00\xd2\x04\x00\x00"
        b"\x04\x00\x04\x00\xff\xff\xff\xff"
        b"\x10\x00\x06\x00\xff\xff\xff\xff"
        b"\x20\x00\x00\x00\xff\xff\xff\xff"
    )  # user::rw- user:1234:rw- group::r-- mask::rw- other::---
    os.setxattr(L.lowers[0] / "acl", "system.posix_acl_access", acl)
    with union_mount(impl, L):
        first = _listing(L.mnt)
        assert sorted(first) == ["acl", "both", "d", "fifo", "h1", "h2", "ln", "lo", "up"]
        for name in first:  # the kernel now holds every entry
            os.lstat(L.mnt / name)
        assert os.getxattr(L.mnt / "acl", "system.posix_acl_access") == acl
        (L.mnt / "up").write_bytes(b"longer upper data\n")
        os.chmod(L.mnt / "lo", 0o600)
        for _ in range(2):
            again = _listing(L.mnt)
            assert sorted(again) == sorted(first)
            for name, (d_ino, kind) in again.items():
                st = os.lstat(L.mnt / name)
                assert (d_ino, kind) == (st.st_ino, _kind(st)), name
        assert again["h1"][0] == again["h2"][0]
        assert os.lstat(L.mnt / "up").st_size == len(b"longer upper data\n")
        assert stat.S_IMODE(os.lstat(L.mnt / "lo").st_mode) == 0o600
        assert os.getxattr(L.mnt / "acl", "system.posix_acl_access") == acl
        assert (L.mnt / "both").read_bytes() == b"upper both\n"
        assert (L.mnt / "ln").read_bytes() == b"lower\n"
