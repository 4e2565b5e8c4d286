"""Self-tests of tests/util.py: the layer builder, copies and snapshots that the mount tests rely on."""

from __future__ import annotations

import os
import stat

import pytest

from tests.util import (
    DIR,
    WHITEOUT,
    Dir,
    Fifo,
    File,
    Hardlink,
    Opaque,
    Symlink,
    copy_layers,
    escape_layer_path,
    hash_tree,
    make_layers,
    mount_table,
    overlay_options,
    tree_snapshot,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, trusted.* xattrs, mknod)")


@needs_root
def test_make_layers_and_copy(tmp_path):
    spec = {
        "lower0": {
            "a": "A",
            "d": Opaque(),
            "d/x": b"x",
            "wh": WHITEOUT,
            "s": Symlink("a"),
            "p": Fifo(mode=0o600),
            "h": Hardlink("a"),
            "f": File("f", mode=0o640, uid=1000, gid=1001, xattrs={"user.k": "v"}, mtime_ns=123),
            "e": Dir(mode=0o700, mtime_ns=5_000_000_000),
            "e/inner": DIR,
            "u": Opaque(user=True),
        },
        "lower1": {"b": "B"},
        "upper": {"c": "C"},
    }
    L = make_layers(tmp_path / "one", spec)
    assert [p.name for p in L.lowers] == ["lower0", "lower1"]
    assert L.upper.name == "upper" and L.work.is_dir() and L.mnt.is_dir()
    assert os.listdir(L.work) == [] and os.listdir(L.mnt) == []
    l0 = L.lowers[0]
    st = os.lstat(l0 / "wh")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and stat.S_IMODE(st.st_mode) == 0
    assert os.getxattr(l0 / "d", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(l0 / "u", "user.overlay.opaque") == b"y"
    assert os.readlink(l0 / "s") == "a"
    assert stat.S_ISFIFO(os.lstat(l0 / "p").st_mode)
    assert os.lstat(l0 / "h").st_ino == os.lstat(l0 / "a").st_ino
    st = os.lstat(l0 / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == (0o640, 1000, 1001, 123)
    assert os.lstat(l0 / "e").st_mtime_ns == 5_000_000_000  # set after its child was made
    assert os.getxattr(l0 / "f", "user.k") == b"v"

    snap = tree_snapshot(l0)
    assert snap["wh"].type == "c" and snap["wh"].rdev == (0, 0)
    assert ("trusted.overlay.opaque", b"y") in snap["d"].xattrs
    assert snap["s"].target == "a" and snap["f"].size == 1 and snap["f"].sha256

    C = copy_layers(L, tmp_path / "two")
    for a, b in zip(L.dirs(), C.dirs()):
        assert tree_snapshot(a) == tree_snapshot(b)
        assert hash_tree(a) == hash_tree(b)
    assert os.lstat(C.lowers[0] / "h").st_ino == os.lstat(C.lowers[0] / "a").st_ino
    assert C.mnt.is_dir() and C.mnt != L.mnt

    before = hash_tree(l0)
    os.chmod(l0 / "a", 0o600)
    assert hash_tree(l0) != before
    before = hash_tree(l0)
    os.setxattr(l0 / "d", "trusted.overlay.impure", b"y")
    assert hash_tree(l0) != before
    assert hash_tree(l0, ignore_xattrs=("trusted.overlay.impure",)) == before
    assert hash_tree(l0, ignore_xattrs=("trusted.overlay.",)) != before  # a prefix drops opaque too


def test_readonly_layers(tmp_path):
    L = make_layers(tmp_path, {"lower0": {"a": "a"}, "upper": None})
    assert L.upper is None and L.work is None
    L2 = make_layers(tmp_path / "x", {"lower0": {"a": "a"}}, readonly=True)
    assert L2.upper is None


def test_bad_layer_name(tmp_path):
    with pytest.raises(ValueError):
        make_layers(tmp_path, {"lowerA": {}})


def test_escaping():
    assert escape_layer_path("/a:b,c") == "/a\\:b\\,c"
    assert (
        overlay_options(["/l1", "/l:2"], "/u", "/w", ["noatime"])
        == "lowerdir=/l1:/l\\:2,upperdir=/u,workdir=/w,noatime"
    )


def test_mount_table_has_root():
    assert any(m.mountpoint == "/" for m in mount_table())


def test_daemon_command_lines_and_their_mount_points():
    from tests.helpers.processes import daemon_args, mountpoint_arg

    m = daemon_args([b"/usr/bin/python3", b"-m", b"unionfs", b"-f", b"-o", b"lowerdir=/a,upperdir=/u", b"/m"])
    assert mountpoint_arg(m) == b"/m"
    # mount.fuse3 runs the console script as `pyunionfs SOURCE MOUNTPOINT -o OPTIONS`
    script = daemon_args([b"/usr/bin/python3", b"/venv/bin/pyunionfs", b"overlay", b"/m2", b"-o", b"lowerdir=/a"])
    assert mountpoint_arg(script) == b"/m2"
    assert daemon_args([b"/usr/bin/vim", b"unionfs"]) is None
    assert daemon_args([b"python3", b"-m", b"pytest", b"/tmp/unionfs"]) is None
