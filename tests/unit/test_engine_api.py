"""The no-FUSE engine API as a public interface: `unionfs.UnionEngine` (nodes) and `unionfs.UnionFS` (paths).

One scripted operation sequence runs three times over identical copies of the same layers: through
`UnionEngine` directly, through `UnionFS`, and through a real pyunionfs mount with plain `os` calls. Every
result (value or errno), the merged tree at the end, and the upper and work trees left on disk must be
the same: the engine API gives library users exactly what a mount gives processes.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests.util import (
    DIR,
    FUSE_SKIP_REASON,
    WHITEOUT,
    Opaque,
    Symlink,
    copy_layers,
    diff_snapshots,
    make_layers,
    mount_pyunionfs,
    tree_snapshot,
)
from unionfs import Caller, UnionEngine, UnionFS

SPEC = {
    "lower0": {
        "f1": "one",
        "f2": "two",
        "d/x": "x",
        "d/y": "y",
        "ld/sub/z": "z",
        "link": Symlink("f1"),
        "e": DIR,
        "gone": "g",
        "op": Opaque(),
        "op/top": "t",
        "big": "B" * 70000,
    },
    "lower1": {"f1": "bottom", "d/w": "w", "gone": "hidden", "op/below": "b", "only1/q": "q"},
    "upper": {"f3": "up", "d/u": "du", "f4": "four", "gone": WHITEOUT},
}
UMASK = 0o022
pytestmark = pytest.mark.timeout(60)


def _kind(mode):
    return {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c"}.get(stat.S_IFMT(mode), "?")


class OsExec:
    """The mount, through ordinary system calls (symlinks never followed, as the others)."""

    def __init__(self, root):
        self.root = str(root)

    def p(self, path):
        return os.path.join(self.root, path) if path != "." else self.root

    def write(self, path, data):
        fd = os.open(self.p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
        try:
            return os.write(fd, data)
        finally:
            os.close(fd)

    def write_at(self, path, offset, data):
        fd = os.open(self.p(path), os.O_RDWR | os.O_NOFOLLOW)
        try:
            return os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def read(self, path):
        fd = os.open(self.p(path), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            return os.pread(fd, 1 << 20, 0)
        finally:
            os.close(fd)

    def listdir(self, path):
        return sorted(os.listdir(self.p(path)))

    def stat(self, path):
        st = os.lstat(self.p(path))
        return (
            _kind(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_size if stat.S_ISREG(st.st_mode) else None,
            st.st_nlink,
        )

    def remove(self, path):
        os.unlink(self.p(path))

    def rename(self, a, b):
        os.rename(self.p(a), self.p(b))

    def mkdir(self, path, mode):
        os.mkdir(self.p(path), mode)

    def rmdir(self, path):
        os.rmdir(self.p(path))

    def chmod(self, path, mode):
        os.chmod(self.p(path), mode, follow_symlinks=False)

    def symlink(self, target, path):
        os.symlink(target, self.p(path))

    def readlink(self, path):
        return os.readlink(self.p(path))

    def link(self, a, b):
        os.link(self.p(a), self.p(b), follow_symlinks=False)

    def truncate(self, path, size):
        os.truncate(self.p(path), size)

    def setxattr(self, path, name, value):
        os.setxattr(self.p(path), name, value, follow_symlinks=False)

    def getxattr(self, path, name):
        return os.getxattr(self.p(path), name, follow_symlinks=False)


class FsExec:
    """unionfs.UnionFS: the path-string wrapper."""

    def __init__(self, fs: UnionFS):
        self.fs = fs

    def write(self, path, data):
        return self.fs.write_bytes(path, data)

    def write_at(self, path, offset, data):
        with self.fs.open(path, "r+b", buffering=0) as f:
            f.seek(offset)
            return f.write(data)

    def read(self, path):
        return self.fs.read_bytes(path)

    def listdir(self, path):
        return self.fs.listdir(path)

    def stat(self, path):
        st = self.fs.stat(path)
        return (
            _kind(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_size if stat.S_ISREG(st.st_mode) else None,
            st.st_nlink,
        )

    def remove(self, path):
        self.fs.remove(path)

    def rename(self, a, b):
        self.fs.rename(a, b)

    def mkdir(self, path, mode):
        self.fs.mkdir(path, mode)

    def rmdir(self, path):
        self.fs.rmdir(path)

    def chmod(self, path, mode):
        self.fs.chmod(path, mode)

    def symlink(self, target, path):
        self.fs.symlink(target, path)

    def readlink(self, path):
        return self.fs.readlink(path)

    def link(self, a, b):
        self.fs.link(a, b)

    def truncate(self, path, size):
        self.fs.truncate(path, size)

    def setxattr(self, path, name, value):
        self.fs.setxattr(path, name, value)

    def getxattr(self, path, name):
        return self.fs.getxattr(path, name)


class EngineExec:
    """unionfs.UnionEngine directly: nodes, handles and names as bytes (what the request layer does for the kernel)."""

    def __init__(self, u: UnionEngine):
        self.u = u
        self.caller = Caller(os.geteuid(), os.getegid())

    def node(self, path):
        node = self.u.root
        for part in path.encode().split(b"/"):
            if part and part != b".":
                node = self.u.child(node, part)
        return node

    def parent(self, path):
        head, _, name = path.encode().rpartition(b"/")
        return self.node(head.decode()), name

    def write(self, path, data):
        parent, name = self.parent(path)
        try:
            node = self.u.child(parent, name)
        except FileNotFoundError:
            node, h, _ = self.u.create(parent, name, 0o666 & ~UMASK, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.caller)
        else:
            h = self.u.open(node, os.O_WRONLY | os.O_TRUNC)
        try:
            return self.u.write(h, 0, data)
        finally:
            self.u.release(h)

    def write_at(self, path, offset, data):
        h = self.u.open(self.node(path), os.O_RDWR)
        try:
            return self.u.write(h, offset, data)
        finally:
            self.u.release(h)

    def read(self, path):
        h = self.u.open(self.node(path), os.O_RDONLY)
        try:
            return self.u.read(h, 0, 1 << 20)
        finally:
            self.u.release(h)

    def listdir(self, path):
        return sorted(n.decode() for n in self.u.listdir(self.node(path)))

    def stat(self, path):
        node = self.node(path)
        st = self.u.getattr(node)
        return (
            _kind(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_size if stat.S_ISREG(st.st_mode) else None,
            self.u.reported_nlink(node, st),
        )

    def remove(self, path):
        self.u.unlink(*self.parent(path))

    def rename(self, a, b):
        self.u.rename(*self.parent(a), *self.parent(b))

    def mkdir(self, path, mode):
        self.u.mkdir(*self.parent(path), mode & ~UMASK, self.caller)

    def rmdir(self, path):
        self.u.rmdir(*self.parent(path))

    def chmod(self, path, mode):
        self.u.setattr(self.node(path), mode=mode)

    def symlink(self, target, path):
        self.u.symlink(*self.parent(path), target.encode(), self.caller)

    def readlink(self, path):
        return self.u.readlink(self.node(path)).decode()

    def link(self, a, b):
        self.u.link(self.node(a), *self.parent(b))

    def truncate(self, path, size):
        self.u.setattr(self.node(path), size=size)

    def setxattr(self, path, name, value):
        self.u.setxattr(self.node(path), name.encode(), value)

    def getxattr(self, path, name):
        return self.u.getxattr(self.node(path), name.encode())


SCRIPT = [
    ("listdir", "."),
    ("listdir", "d"),
    ("listdir", "op"),
    ("write", "new", b"hello"),  # create
    ("write", "f1", b"ONE"),  # copy-up without data (O_TRUNC), then write
    ("write_at", "f2", 1, b"W"),  # copy-up with data
    ("write_at", "big", 65536, b"tail"),  # copy-up of a larger file
    ("read", "f1"),
    ("read", "f2"),
    ("read", "f3"),
    ("read", "new"),
    ("read", "only1/q"),
    ("read", "gone"),
    ("stat", "f1"),
    ("stat", "d"),
    ("stat", "link"),
    ("stat", "new"),
    ("stat", "e"),
    ("stat", "nope"),
    ("remove", "f2"),  # lower: whiteout
    ("remove", "f3"),  # upper only: gone
    ("remove", "d/x"),
    ("remove", "nope"),
    ("remove", "d"),
    ("rename", "f1", "g1"),  # upper copy moves; whiteout at f1? (f1 is in lower0+1)
    ("rename", "new", "d/new"),
    ("rename", "d", "dd"),  # merged directory: EXDEV
    ("rename", "g1", "f4"),  # replaces an upper file
    ("rename", "only1/q", "q2"),  # copy-up from the bottom lower, parent copied up
    ("mkdir", "f2", 0o755),  # over a whiteout: opaque
    ("mkdir", "d/sub", 0o750),
    ("mkdir", "f4", 0o755),
    ("mkdir", "nodir/x", 0o755),
    ("rename", "d/sub", "d/sub2"),  # upper-only directory renames
    ("rmdir", "d"),
    ("rmdir", "e"),
    ("rmdir", "d/sub2"),
    ("rmdir", "ld/sub"),
    ("chmod", "f4", 0o600),
    ("chmod", "ld/sub/z", 0o640),
    ("chmod", "d", 0o700),
    ("symlink", "f4", "s1"),
    ("symlink", "x", "s1"),
    ("readlink", "s1"),
    ("readlink", "link"),
    ("readlink", "f4"),
    ("link", "d/y", "hard"),
    ("read", "hard"),
    ("stat", "hard"),
    ("truncate", "d/w", 0),
    ("truncate", "d/u", 1),
    ("setxattr", "d/y", "user.note", b"v"),
    ("getxattr", "d/y", "user.note"),
    ("setxattr", "op/top", "user.overlay.opaque", b"y"),
    ("getxattr", "op/top", "user.overlay.opaque"),
    ("remove", "gone"),
    ("remove", "link"),
    ("listdir", "."),
    ("listdir", "d"),
    ("listdir", "f2"),
    ("listdir", "op"),
    ("listdir", "ld/sub"),
]


def run_script(ex):
    results = []
    for op, *args in SCRIPT:
        try:
            value = getattr(ex, op)(*args)
            results.append((op, args, "ok", value))
        except OSError as exc:
            results.append((op, args, "err", errno.errorcode.get(exc.errno, exc.errno)))
    return results


def merged_tree(ex, path="."):
    out = {}
    for name in ex.listdir(path):
        rel = name if path == "." else f"{path}/{name}"
        kind, mode, size, nlink = ex.stat(rel)
        if kind == "d":
            out[rel] = (kind, mode)
            out.update(merged_tree(ex, rel))
        elif kind == "l":
            out[rel] = (kind, ex.readlink(rel))
        else:
            out[rel] = (kind, mode, ex.read(rel))
    return out


@pytest.fixture
def three_copies(tmp_path):
    old = os.umask(UMASK)
    try:
        base = make_layers(tmp_path / "base", SPEC)
        yield {name: copy_layers(base, tmp_path / name) for name in ("engine", "paths", "mount")}
    finally:
        os.umask(old)


def _check_work_clean(L):
    left = [n for n in os.listdir(L.work / "work") if not (stat.S_ISCHR(os.lstat(L.work / "work" / n).st_mode))]
    assert not left, f"staging leftovers in {L.work}/work: {left}"


def _origins_by_path(L, snap):
    """The upper's origin records name a lower file by layer and inode number, which differ between
    copies of the layers: name it by its path in that lower instead (and check it names one)."""
    out = {}
    for rel, e in snap.items():
        xattrs = []
        for name, value in e.xattrs:
            if name.endswith(".overlay.pyunionfs.origin"):
                layer, ino = value.split(b"-")
                lower = L.lowers[int(layer) - 1]
                found = [p for p, st in _walk_lstat(lower) if st.st_ino == int(ino, 16)]
                assert len(found) == 1, (rel, value, found)
                value = b"%s:%s" % (layer, os.fsencode(os.path.relpath(found[0], lower)))
            xattrs.append((name, value))
        out[rel] = e._replace(xattrs=tuple(xattrs))
    return out


def _walk_lstat(root):
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            yield p, os.lstat(p)


def test_same_results_and_same_upper_as_a_mount(three_copies):
    if FUSE_SKIP_REASON:
        pytest.skip(FUSE_SKIP_REASON)
    E, P, M = three_copies["engine"], three_copies["paths"], three_copies["mount"]

    u = UnionEngine([str(l) for l in E.lowers], str(E.upper), str(E.work))
    try:
        ex = EngineExec(u)
        res_engine, tree_engine = run_script(ex), merged_tree(ex)
    finally:
        u.close()

    with UnionFS(P.lowers, P.upper, P.work) as fs:
        assert fs.umask == UMASK
        ex = FsExec(fs)
        res_paths, tree_paths = run_script(ex), merged_tree(ex)

    with mount_pyunionfs(*M.mount_args()):
        ex = OsExec(M.mnt)
        res_mount, tree_mount = run_script(ex), merged_tree(ex)

    for a, b, c in zip(res_mount, res_engine, res_paths):
        assert a == b == c, f"mount {a} / UnionEngine {b} / UnionFS {c}"
    assert tree_mount == tree_engine == tree_paths
    # a few spot checks that the script did what it says
    results = {(op, tuple(args)): (kind, value) for op, args, kind, value in res_mount}
    assert results[("rename", ("d", "dd"))] == ("err", "EXDEV")
    assert results[("rmdir", ("d",))] == ("err", "ENOTEMPTY")
    assert results[("listdir", ("f2",))] == ("ok", [])

    up_m, up_e, up_p = (_origins_by_path(L, tree_snapshot(L.upper)) for L in (M, E, P))
    assert up_m == up_e, diff_snapshots(up_m, up_e)
    assert up_m == up_p, diff_snapshots(up_m, up_p)
    assert stat.S_ISCHR(os.lstat(M.upper / "gone").st_mode)
    for L in (M, E, P):
        _check_work_clean(L)
        assert [tree_snapshot(l) for l in L.lowers] == [tree_snapshot(l) for l in three_copies["mount"].lowers]


def test_unionfs_without_fuse(tmp_path):
    """UnionFS alone (what machines without /dev/fuse use): files, text, append, errors, read-only."""
    L = make_layers(tmp_path / "u", {"lower0": {"a/b": "ab", "c": "c"}, "upper": {}})
    with UnionFS(L.lowers, L.upper, L.work) as fs:
        with fs.open("a/b", "a") as f:
            f.write("+1")
        with fs.open("a/b", "r+") as f:
            assert f.read() == "ab+1"
            f.seek(0)
            f.write("AB")
        assert fs.read_text("a/b") == "AB+1"
        with pytest.raises(FileExistsError):
            fs.open("c", "x")
        with fs.open("c", "rb") as f:
            assert f.read(1) == b"c"
        with pytest.raises(FileNotFoundError) as e:
            fs.read_bytes("a/nope")
        assert e.value.filename == "a/nope"
        with pytest.raises(IsADirectoryError):
            fs.open("a")
        fs.makedirs("x/y/z")
        fs.mkdir("x/y", exist_ok=True)
        assert fs.isdir("x/y/z") and not fs.exists("x/q")
        fs.symlink("/etc/passwd", "evil")
        with pytest.raises(OSError) as e:
            fs.read_bytes("evil")  # never followed
        assert e.value.errno == errno.ELOOP
        with pytest.raises(NotADirectoryError):
            fs.listdir("evil")
        assert fs.listdir(b"a") == [b"b"]
        assert fs.listdir("/a/../a/./") == ["b"]
        assert list(fs.walk()) == [
            (".", ["a", "x"], ["c", "evil"]),
            ("./a", [], ["b"]),
            ("./x", ["y"], []),
            ("./x/y", ["z"], []),
            ("./x/y/z", [], []),
        ]  # as os.walk(".")
        fs.remove("c")
        assert stat.S_ISCHR(os.lstat(L.upper / "c").st_mode)
        assert (L.lower / "c").read_text() == "c"
    with UnionFS(L.lowers) as ro:
        assert ro.read_bytes("a/b") == b"ab"
        with pytest.raises(OSError) as e:
            ro.write_bytes("a/b", b"x")
        assert e.value.errno == errno.EROFS


def test_unionfs_holds_no_nodes_between_calls(tmp_path):
    """The path API needs no bookkeeping: the engine keeps only what a caller, a child or an open file
    holds, so after each call only the root is left (and what open files hold)."""
    L = make_layers(tmp_path / "u", {"lower0": {"d/a": "a", "d/e/f": "f", "c": "c"}, "upper": {"u": "u"}})
    with UnionFS(L.lowers, L.upper, L.work) as fs:
        nodes = fs.union.nodes
        fs.write_bytes("d/a", b"changed")
        fs.mkdir("d/new")
        fs.symlink("c", "d/new/s")
        fs.link("c", "d/c2")
        fs.rename("d/c2", "d/c3")
        assert sorted(fs.listdir("d")) == ["a", "c3", "e", "new"]
        fs.stat("d/e/f")
        assert len(nodes) == 1
        with fs.open("d/e/f", "rb") as f:
            assert len(nodes) == 4  # d/e/f, held by the open file, holds d/e and d
            assert f.read() == b"f"
        del f  # a closed file object still names its handle
        assert len(nodes) == 1
        # st_ino as a mount shows it: the backing file's, a copied-up file's lower one
        assert fs.stat("d/e/f").st_ino == os.lstat(L.lowers[0] / "d/e/f").st_ino
        assert fs.stat("u").st_ino == os.lstat(L.upper / "u").st_ino
        assert fs.stat("d/a").st_ino == os.lstat(L.lowers[0] / "d/a").st_ino != os.lstat(L.upper / "d/a").st_ino
    with UnionFS(L.lowers, L.upper, L.work) as fs:
        assert fs.stat("d/a").st_ino == os.lstat(L.lowers[0] / "d/a").st_ino


def test_unionfs_changes_the_name_of_a_lower_hard_link_it_is_given(tmp_path):
    L = make_layers(tmp_path / "u", {"lower0": {"h1": "same"}, "upper": {}})
    os.link(L.lowers[0] / "h1", L.lowers[0] / "h2")
    with UnionFS(L.lowers, L.upper, L.work) as fs:
        with fs.open("h1", "rb"):  # holds the file's node: both names below reach it
            h1 = fs.stat("h1")
            fs.stat("h2")  # looked up last
            fs.chmod("h1", 0o600)  # but the change comes through h1
        assert sorted(os.listdir(L.upper)) == ["h1"]
        assert fs.stat("h1").st_mode & 0o777 == 0o600 and fs.stat("h2").st_mode == h1.st_mode
        assert fs.read_bytes("h2") == b"same"


def test_unionfs_a_file_opened_through_a_name_split_off_keeps_its_data(tmp_path):
    # As the kernel (index=off): names of a lower hard link are separate files once one is copied up.
    L = make_layers(tmp_path / "u", {"lower0": {"h1": "same"}, "upper": {}})
    os.link(L.lowers[0] / "h1", L.lowers[0] / "h2")
    with UnionFS(L.lowers, L.upper, L.work) as fs:
        with fs.open("h1", "rb") as one, fs.open("h2", "rb") as two:
            fs.write_bytes("h2", b"mine")
            assert one.read() == b"same"  # h1 stays the lower file
            assert two.read() == b"mine"  # opened through the name copied up: reads the copy, as the kernel
        assert fs.read_bytes("h1") == b"same"
