"""index=on: lower hard links stay one file across copy-up, st_ino stays across copy-up and remount."""

import errno
import os
import stat

import pytest

from tests.unit import test_engine
from tests.unit.test_engine import by_path, write

stack = test_engine.stack


def hardlinks(d):
    write(f"{d['lower1']}/a", b"data")
    os.link(f"{d['lower1']}/a", f"{d['lower1']}/b")
    os.makedirs(f"{d['lower1']}/sub")
    os.link(f"{d['lower1']}/a", f"{d['lower1']}/sub/c")
    write(f"{d['lower1']}/single", b"one")
    return os.stat(f"{d['lower1']}/a").st_ino


def append(u, path: bytes, data: bytes):
    node = by_path(u, path)
    u.nodes.prefer_name(node, *node.names[[n for _, n in node.names].index(path.rpartition(b"/")[2])])
    fh = u.open(node, os.O_WRONLY)
    size = u.getattr(node).st_size
    u.write(fh, size, data)
    u.release(fh)


def read(u, path: bytes) -> bytes:
    node, _ = u.lookup(*_parent_and_name(u, path))
    fh = u.open(node, os.O_RDONLY)
    try:
        return u.read(fh, 0, 100)
    finally:
        u.release(fh)


def _parent_and_name(u, path: bytes):
    parent, _, name = path.rpartition(b"/")
    return (by_path(u, parent) if parent else u.root), name


def test_hard_links_stay_whole_across_copy_up(stack):
    d = stack.dirs
    ino = hardlinks(d)
    u = stack(index=True)
    a = by_path(u, b"a")
    assert by_path(u, b"b") is a and by_path(u, b"sub/c") is a and a.ino == ino
    append(u, b"a", b"+a")
    assert os.path.exists(f"{d['work']}/pyunionfs-index/2-{ino:x}")
    for name in (b"a", b"b", b"sub/c"):
        assert read(u, name) == b"data+a", name
        st = u.getattr(by_path(u, name))
        assert st.st_nlink == 3
    assert by_path(u, b"b").ino == ino
    assert sorted(os.listdir(d["upper"])) == ["a"]  # b and sub/c reach the index; not linked up yet
    append(u, b"b", b"+b")  # a change through b links b up (as the kernel)
    assert sorted(os.listdir(d["upper"])) == ["a", "b"]
    assert os.stat(f"{d['upper']}/a").st_ino == os.stat(f"{d['upper']}/b").st_ino
    assert read(u, b"sub/c") == b"data+a+b"
    with open(f"{d['lower1']}/a", "rb") as f:
        assert f.read() == b"data"
    # removing a name counts down; a new link counts up and is the same file
    u.unlink(by_path(u, b"sub"), b"c")
    assert u.getattr(by_path(u, b"a")).st_nlink == 2
    node, st = u.link(by_path(u, b"a"), u.root, b"d")
    assert node is by_path(u, b"a") and st.st_nlink == 3
    u.close()
    # after a remount: the same st_ino, the same data, one file
    again = stack(index=True)
    a = by_path(again, b"a")
    assert a.ino == ino and by_path(again, b"b") is a and by_path(again, b"d") is a
    assert again.getattr(a).st_nlink == 3 and read(again, b"b") == b"data+a+b"
    with pytest.raises(FileNotFoundError):
        by_path(again, b"sub/c")


def test_st_ino_kept_across_copy_up_and_remount(stack):
    d = stack.dirs
    hardlinks(d)
    ino = os.stat(f"{d['lower1']}/single").st_ino
    u = stack(index=True)
    append(u, b"single", b"!")
    assert by_path(u, b"single").ino == ino
    assert os.listdir(f"{d['work']}/pyunionfs-index") == [".lowers"]  # a single name: no index entry
    u.close()
    again = stack(index=True)
    assert by_path(again, b"single").ino == ino
    scanned = {e[0]: e for e in again.scan(again.root)}
    node, st = again.attach_scanned(again.root, scanned[b"single"])
    assert node.ino == ino and st.st_size == 4


def test_without_index_copy_up_splits(stack):
    d = stack.dirs
    hardlinks(d)
    u = stack()
    append(u, b"a", b"+")
    assert read(u, b"b") == b"data"
    assert not os.path.exists(f"{d['work']}/pyunionfs-index")


def test_index_over_other_lowers_is_refused(stack, tmp_path):
    hardlinks(stack.dirs)
    stack(index=True).close()
    other = tmp_path / "other"
    other.mkdir()
    from unionfs.engine import UnionEngine

    with pytest.raises(OSError) as exc:
        UnionEngine([str(other)], stack.dirs["upper"], stack.dirs["work"], index=True)
    assert exc.value.errno == errno.ESTALE
    assert stat.S_ISDIR(os.stat(f"{stack.dirs['work']}/pyunionfs-index").st_mode)
