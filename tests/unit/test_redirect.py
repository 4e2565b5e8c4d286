"""redirect_dir: renaming lower and merged directories by recording a redirect, and following the
redirects a layer holds (the kernel's format; tests/differential compares with the kernel itself)."""

import errno
import os

import pytest

from tests.unit import test_engine
from tests.unit.test_engine import by_path, walk, whiteout, write
from unionfs.engine.whiteout import valid_redirect

REDIRECT = "trusted.overlay.redirect"
stack = test_engine.stack  # the layer fixture: lower0..lower2, upper, work


def tree(d):
    write(f"{d['lower1']}/a/x/f", b"f")
    write(f"{d['lower1']}/a/x/deep/g", b"g")
    write(f"{d['lower0']}/a/x/top", b"top")
    os.makedirs(f"{d['lower1']}/b")


def test_lower_directories_rename_with_redirects(stack):
    d = stack.dirs
    tree(d)
    u = stack(redirect_dir="on")
    u.rename(by_path(u, b"a"), b"x", by_path(u, b"a"), b"y")  # same parent: "x"
    u.rename(by_path(u, b"a"), b"y", by_path(u, b"b"), b"z")  # elsewhere: "/a/x"
    u.rename(u.root, b"a", u.root, b"c")  # merged root child: "a"
    expected = {
        b"b": ("d", None),
        b"b/z": ("d", None),
        b"b/z/f": ("f", b"f"),
        b"b/z/top": ("f", b"top"),
        b"b/z/deep": ("d", None),
        b"b/z/deep/g": ("f", b"g"),
        b"c": ("d", None),
    }
    assert walk(u, u.root) == expected
    assert os.getxattr(f"{d['upper']}/b/z", REDIRECT) == b"/a/x"
    assert os.getxattr(f"{d['upper']}/c", REDIRECT) == b"a"
    assert os.path.exists(f"{d['upper']}/c/x")  # whiteout at the old name, below the moved parent
    u.close()
    # Remounted with the kernel's default (off: redirects followed) the tree is the same; with
    # nofollow the moved directories merge nothing below.
    for mode, want in (
        ("off", expected),
        ("follow", expected),
        ("nofollow", {b"b": ("d", None), b"b/z": ("d", None), b"c": ("d", None)}),
    ):
        again = stack(redirect_dir=mode)
        assert walk(again, again.root) == want, mode
        again.close()


def test_without_redirect_dir_lower_directories_are_exdev(stack):
    tree(stack.dirs)
    u = stack()
    with pytest.raises(OSError) as exc:
        u.rename(u.root, b"a", u.root, b"c")
    assert exc.value.errno == errno.EXDEV


def test_into_itself_is_still_einval(stack):
    tree(stack.dirs)
    u = stack(redirect_dir="on")
    with pytest.raises(OSError) as exc:
        u.rename(u.root, b"a", by_path(u, b"a/x"), b"a")
    assert exc.value.errno == errno.EINVAL


def test_children_keep_their_lower_paths_after_the_parent_moves(stack):
    d = stack.dirs
    tree(d)
    u = stack(redirect_dir="on")
    deep = by_path(u, b"a/x/deep")  # held by the node table across the moves
    g = u.child(deep, b"g")
    u.rename(u.root, b"a", by_path(u, b"b"), b"moved")
    assert u.read(u.open(g, os.O_RDONLY), 0, 10) == b"g"
    u.rename(by_path(u, b"b/moved"), b"x", u.root, b"x2")
    assert sorted(u.listdir(deep)) == [b"g"]
    fh = u.open(g, os.O_WRONLY)  # copy-up below two moved directories lands at the new place
    u.write(fh, 0, b"G")
    u.release(fh)
    with open(f"{d['upper']}/x2/deep/g", "rb") as f:
        assert f.read() == b"G"
    assert walk(u, u.root)[b"x2/deep/g"] == ("f", b"G")


def test_scan_answers_as_lookup_for_redirected_entries(stack):
    d = stack.dirs
    tree(d)
    u = stack(redirect_dir="on")
    u.rename(u.root, b"a", u.root, b"c")
    u.close()
    u = stack(redirect_dir="on")
    scanned = {entry[0]: entry[1:] for entry in u.scan(u.root)}
    for name, (index, st, merge, lpaths, redirect) in scanned.items():
        node, lst = u.lookup(u.root, name)
        assert (node.layer, node.merge, node.lpaths, node.redirect, st.st_ino) == (
            index,
            merge,
            lpaths,
            redirect,
            lst.st_ino,
        )
    assert scanned[b"c"][4] == b"a" and scanned[b"c"][3] == {1: b"a", 2: b"a"}


def test_redirects_in_lower_layers_are_followed(stack):
    # A lower that was once an upper: its directory "here" merges "/there" of the layers below.
    d = stack.dirs
    os.makedirs(f"{d['lower0']}/p/here")
    os.setxattr(f"{d['lower0']}/p/here", REDIRECT, b"/there")
    write(f"{d['lower1']}/there/t", b"t")
    write(f"{d['lower1']}/p/here/not", b"n")
    u = stack()
    assert walk(u, u.root) == {
        b"p": ("d", None),
        b"p/here": ("d", None),
        b"p/here/t": ("f", b"t"),
        b"there": ("d", None),
        b"there/t": ("f", b"t"),
    }


@pytest.mark.parametrize("value", [b"/", b"//x", b"/a/../../etc", b"../up", b"a/b", b"/a\0b", b".", b""])
def test_hostile_redirects_are_ignored(stack, value):
    d = stack.dirs
    os.makedirs(f"{d['upper']}/evil")
    write(f"{d['lower0']}/evil/own", b"o")
    write(f"{d['lower0']}/a/b", b"secret")
    if value:
        os.setxattr(f"{d['upper']}/evil", REDIRECT, value)
    assert valid_redirect(value) is None
    u = stack(redirect_dir="on")
    assert sorted(u.listdir(by_path(u, b"evil"))) == [b"own"]


def test_redirect_too_long_is_exdev(stack):
    d = stack.dirs
    deep = "/".join(["d" * 60] * 5)
    write(f"{d['lower0']}/{deep}/f", b"f")
    u = stack(redirect_dir="on")
    parent = by_path(u, os.fsencode(deep).rpartition(b"/")[0])
    with pytest.raises(OSError) as exc:
        u.rename(parent, b"d" * 60, u.root, b"short")
    assert exc.value.errno == errno.EXDEV
    u.rename(parent, b"d" * 60, parent, b"e")  # in place the redirect is the short old name


def test_user_xattr_redirects_are_followed_only_when_asked(stack):
    # The kernel's userxattr mode implies redirect_dir=nofollow (anyone may write user.* xattrs);
    # pyunionfs writes user.overlay.redirect with redirect_dir=on and follows it when told to.
    d = stack.dirs
    tree(d)
    u = stack(userxattr=True, redirect_dir="on")
    u.rename(u.root, b"a", u.root, b"c")
    assert os.getxattr(f"{d['upper']}/c", "user.overlay.redirect") == b"a"
    u.close()
    for mode, merged in (("off", False), ("nofollow", False), ("follow", True), ("on", True)):
        again = stack(userxattr=True, redirect_dir=mode)
        assert (b"c/x/f" in walk(again, again.root)) == merged, mode
        again.close()


def test_redirect_chain_back_to_the_same_name(stack):
    # unionmount-testsuite --ov=3 found this: renamed away and back across remounts, the layers'
    # redirects lead from "d" to "moved" and back to "d"; the merge must use each layer's path.
    d = stack.dirs
    os.makedirs(f"{d['upper']}/d")
    os.setxattr(f"{d['upper']}/d", REDIRECT, b"moved")
    write(f"{d['lower0']}/moved/a", b"a")
    os.setxattr(f"{d['lower0']}/moved", REDIRECT, b"d")
    whiteout(f"{d['lower0']}/d")
    os.makedirs(f"{d['lower1']}/d")
    write(f"{d['lower1']}/d/below", b"b")
    os.makedirs(f"{d['lower2']}/d")
    write(f"{d['lower2']}/d/hidden", b"h")
    os.setxattr(f"{d['lower1']}/d", "trusted.overlay.opaque", b"y")
    whiteout(f"{d['upper']}/moved")
    u = stack(redirect_dir="on")
    assert walk(u, u.root) == {b"d": ("d", None), b"d/a": ("f", b"a"), b"d/below": ("f", b"b")}
    node = by_path(u, b"d")
    assert node.lpaths == {1: b"moved", 2: b"d"}
