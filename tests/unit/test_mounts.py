"""The mount table that lets listings stat with fstatat: parsing, which names it covers, and that a mount
made inside a layer behind a live UnionEngine is seen at the next listing (its name takes openat2, which refuses
to step into it)."""

import os
import stat
import subprocess

import pytest

from tests.unit.test_engine import stack, write  # noqa: F401  (fixture)
from unionfs.engine import layermounts as mounts


def test_parse_mountinfo_unescapes_mount_points():
    text = (
        b"22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        b"97 22 0:50 / /srv/lower\\040one/a\\134b rw shared:1 - tmpfs tmpfs rw\n"
    )
    assert list(mounts.parse_mountinfo(text)) == [(22, 1, b"/proc"), (97, 22, b"/srv/lower one/a\\b")]


def test_child_mounts_are_the_lines_of_the_parents_asked_for():
    text = (
        b"22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        b"97 22 0:50 / /srv/lower\\040one/a\\134b rw shared:1 - tmpfs tmpfs rw\n"
        b"98 30 0:51 / /srv/l/m rw - tmpfs tmpfs rw\n"
        b"short line\n"
        b"x 30 0:52 / /bad rw - tmpfs tmpfs rw\n"
        b"99 30 0:53 / /srv/l/n rw - tmpfs tmpfs rw\n"
    )
    assert mounts.child_mounts(text, {22, 30}) == [
        (97, 22, b"/srv/lower one/a\\b"),
        (98, 30, b"/srv/l/m"),
        (99, 30, b"/srv/l/n"),
    ]
    assert mounts.child_mounts(text, set()) == []
    # what the full parser gives for those parents, in the same order
    full = [e for e in mounts.parse_mountinfo(text.replace(b"x 30", b"0 99")) if e[1] in (22, 30)]
    assert mounts.child_mounts(text, {22, 30}) == full


def test_covered_names_are_children_of_the_layer_mount_under_its_path():
    table = [
        (30, 1, b"/srv/l"),  # the layer's own mount point: not a name in it
        (31, 30, b"/srv/l/a/m"),  # inside the layer, on its mount
        (32, 30, b"/srv/l/top"),
        (33, 30, b"/srv/other/x"),  # on the layer's mount, outside its path
        (34, 31, b"/srv/l/a/m/deeper"),  # below another mount: never reached
        (35, 2, b"/srv/l/b"),
    ]  # another mount's child at a path that looks inside
    assert mounts.covered_names(table, 30, b"/srv/l") == {b"a": {b"m"}, b"": {b"top"}}
    assert mounts.covered_names(table, 30, b"/srv/l/") == {b"a": {b"m"}, b"": {b"top"}}


def test_mount_id_of_a_real_fd():
    fd = os.open("/", os.O_PATH)
    try:
        assert isinstance(mounts.mount_id_of(fd), int)
    finally:
        os.close(fd)


def _mount_tmpfs(point: str) -> None:
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "i5-mounts", point], capture_output=True, text=True, timeout=30
    )
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs: " + res.stderr.strip())


def test_layers_know_their_mounts(stack):  # noqa: F811
    u = stack()
    assert all(layer.mounts_known for layer in u.layers)
    assert all(layer.covered == {} for layer in u.layers)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs inside a layer needs root")
def test_a_mount_made_inside_a_layer_behind_the_union_is_not_entered(stack):  # noqa: F811
    u = stack()
    lower = stack.dirs["lower1"]
    write(lower + "/d/file", b"x")
    os.mkdir(lower + "/d/mnt")
    names = sorted(e[0] for e in u.scan(u.child(u.root, b"d")))
    assert names == [b"file", b"mnt"]
    point = lower + "/d/mnt"
    _mount_tmpfs(point)
    try:
        write(point + "/inside", b"y")  # in the tmpfs
        assert u.layers[2].covered == {}  # not looked at again until a listing
        node = u.child(u.root, b"d")
        names = sorted(e[0] for e in u.scan(node))
        assert u.layers[2].covered == {b"d": {b"mnt"}}
        # The mount point stays out of the listing, as lookups of it (openat2 refuses to cross it).
        assert names == [b"file"]
        with pytest.raises(FileNotFoundError):
            u.child(node, b"mnt")
    finally:
        subprocess.run(["umount", point], capture_output=True, timeout=30)
    names = sorted(e[0] for e in u.scan(u.child(u.root, b"d")))
    assert u.layers[2].covered == {}
    assert names == [b"file", b"mnt"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs inside a layer needs root")
def test_a_lookup_does_not_enter_a_mount_made_after_its_directory_was_looked_in(stack):  # noqa: F811
    """A lower layer stats names with fstatat beneath the directories it keeps open (layers.py): a
    lookup reads the mount table again first, so a mount point made since is refused, as openat2 does."""
    u = stack()
    lower = stack.dirs["lower1"]
    write(lower + "/d/file", b"x")
    os.mkdir(lower + "/d/mnt")
    node = u.child(u.root, b"d")
    u.child(node, b"file")  # the layer keeps d open from here
    assert b"d" in u.layers[2]._dir_fds
    point = lower + "/d/mnt"
    _mount_tmpfs(point)
    try:
        with pytest.raises(FileNotFoundError):
            u.child(node, b"mnt")
        assert u.layers[2].covered == {b"d": {b"mnt"}}
    finally:
        subprocess.run(["umount", point], capture_output=True, timeout=30)
    assert stat.S_ISDIR(u.layers[2].lstat(b"d/mnt").st_mode)


def test_mountinfo_entries_give_type_source_and_options():
    text = (
        b"22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        b"97 22 0:50 / /srv/m\\040x rw,nodev shared:1 master:2 - fuse.pyunionfs /srv/l\\054ow rw,user_id=0\n"
    )
    proc, fuse = mounts.mountinfo_entries(text)
    assert proc == mounts.MountInfo(22, 1, b"/proc", b"proc", b"proc", b"rw,nosuid,rw")
    assert fuse.mountpoint == b"/srv/m x" and fuse.fstype == b"fuse.pyunionfs"
    assert fuse.source == b"/srv/l,ow" and fuse.options == b"rw,nodev,rw,user_id=0"


def test_read_mountinfo_has_the_root():
    assert any(e.mountpoint == b"/" for e in mounts.read_mountinfo())
