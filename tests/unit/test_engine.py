"""Fast tests of the union engine on plain directories: no FUSE, no mount."""

import errno
import os
import stat

import pytest

from unionfs.engine import Caller, UnionEngine

ROOT = Caller(0, 0)


def write(path, data=b"", mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)


def whiteout(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mknod(path, stat.S_IFCHR, 0)


@pytest.fixture
def stack(tmp_path):
    """lower0 (top) .. lower2 (bottom), upper, work; returns a function that opens the union."""
    dirs = {name: tmp_path / name for name in ("lower0", "lower1", "lower2", "upper", "work")}
    for d in dirs.values():
        d.mkdir()
    opened = []

    def open_union(readonly=False, **kw):
        lowers = [str(dirs["lower0"]), str(dirs["lower1"]), str(dirs["lower2"])]
        if readonly:
            u = UnionEngine(lowers, **kw)
        else:
            u = UnionEngine(lowers, str(dirs["upper"]), str(dirs["work"]), **kw)
        opened.append(u)
        return u

    open_union.dirs = {k: str(v) for k, v in dirs.items()}
    yield open_union
    for u in opened:
        u.close()


def by_path(u, path: bytes):
    """The node of a merged path (b"a/b"), through the engine."""
    node = u.root
    for part in path.split(b"/"):
        node = u.child(node, part)
    return node


def walk(u, node, path=b""):
    """{path: (kind, content-or-None)} of the merged view, through the engine."""
    out = {}
    for name in sorted(u.listdir(node)):
        child, st = u.lookup(node, name)
        rel = path + b"/" + name if path else name
        if stat.S_ISDIR(st.st_mode):
            out[rel] = ("d", None)
            out.update(walk(u, child, rel))
        elif stat.S_ISLNK(st.st_mode):
            out[rel] = ("l", u.readlink(child))
        else:
            h = u.open(child, os.O_RDONLY)
            out[rel] = ("f", u.read(h, 0, 1 << 20))
            u.release(h)
    return out


def test_precedence_whiteouts_and_opaque(stack):
    d = stack.dirs
    write(f"{d['lower2']}/a", b"bottom")
    write(f"{d['lower1']}/a", b"middle")
    write(f"{d['lower2']}/gone", b"x")
    whiteout(f"{d['lower1']}/gone")
    write(f"{d['lower2']}/dir/deep", b"deep")
    write(f"{d['lower1']}/dir/mid", b"mid")
    write(f"{d['lower2']}/op/hidden", b"h")
    write(f"{d['lower1']}/op/shown", b"s")
    os.setxattr(f"{d['lower1']}/op", "trusted.overlay.opaque", b"y")
    write(f"{d['lower2']}/uop/hidden", b"h")
    write(f"{d['lower0']}/uop/shown", b"s")
    os.setxattr(f"{d['lower0']}/uop", "user.overlay.opaque", b"y")
    write(f"{d['upper']}/a", b"upper")
    u = stack()
    assert walk(u, u.root) == {
        b"a": ("f", b"upper"),
        b"dir": ("d", None),
        b"dir/deep": ("f", b"deep"),
        b"dir/mid": ("f", b"mid"),
        b"op": ("d", None),
        b"op/shown": ("f", b"s"),
        b"uop": ("d", None),
        b"uop/shown": ("f", b"s"),
    }


def test_non_directory_stops_merge(stack):
    d = stack.dirs
    write(f"{d['lower2']}/x/inner", b"i")
    write(f"{d['lower1']}/x", b"file in the middle")
    os.makedirs(f"{d['lower0']}/x")
    u = stack()
    node, st = u.lookup(u.root, b"x")
    assert stat.S_ISDIR(st.st_mode)
    assert u.listdir(node) == []
    assert node.merge == (1,)


def test_copy_up_keeps_metadata_and_makes_parents(stack):
    d = stack.dirs
    write(f"{d['lower1']}/p/q/f", b"data", mode=0o4751)
    os.chown(f"{d['lower1']}/p/q/f", 1234, 4321)
    os.chmod(f"{d['lower1']}/p/q/f", 0o4751)
    os.chmod(f"{d['lower1']}/p/q", 0o710)
    os.setxattr(f"{d['lower1']}/p/q/f", "user.tag", b"v")
    os.utime(f"{d['lower1']}/p/q/f", ns=(1_000_000_000, 2_000_000_123))
    os.utime(f"{d['lower1']}/p/q", ns=(3_000_000_000, 4_000_000_000))
    u = stack()
    p, _ = u.lookup(u.root, b"p")
    q, _ = u.lookup(p, b"q")
    f, _ = u.lookup(q, b"f")
    h = u.open(f, os.O_WRONLY)
    u.write(h, 4, b"+more")
    u.release(h)
    st = os.lstat(f"{d['upper']}/p/q/f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4751, 1234, 4321)
    assert os.getxattr(f"{d['upper']}/p/q/f", "user.tag") == b"v"
    assert open(f"{d['upper']}/p/q/f", "rb").read() == b"data+more"
    assert open(f"{d['lower1']}/p/q/f", "rb").read() == b"data"
    qst = os.lstat(f"{d['upper']}/p/q")
    assert stat.S_IMODE(qst.st_mode) == 0o710
    assert qst.st_mtime_ns == 4_000_000_000  # copy-up of the child left the parent's times alone
    assert not os.listxattr(f"{d['upper']}/p/q")  # parents are not opaque
    assert os.listdir(f"{d['work']}/work") == []


def test_copy_up_times_preserved_and_sparse(stack):
    d = stack.dirs
    path = f"{d['lower0']}/sparse"
    with open(path, "wb") as fh:
        fh.truncate(64 << 20)
        fh.seek(32 << 20)
        fh.write(b"middle")
    os.utime(path, ns=(5, 7_000_000_000))
    u = stack()
    node, _ = u.lookup(u.root, b"sparse")
    u.setattr(node, mode=0o600)
    st = os.lstat(f"{d['upper']}/sparse")
    assert st.st_size == 64 << 20 and st.st_mtime_ns == 7_000_000_000
    assert st.st_blocks * 512 < 1 << 20  # holes stayed holes
    with open(f"{d['upper']}/sparse", "rb") as fh:
        fh.seek(32 << 20)
        assert fh.read(6) == b"middle"


def test_unlink_and_rmdir_leave_whiteouts(stack):
    d = stack.dirs
    write(f"{d['lower0']}/f", b"lower")
    write(f"{d['upper']}/f", b"upper")
    write(f"{d['upper']}/only", b"u")
    write(f"{d['lower1']}/dir/x", b"x")
    u = stack()
    u.unlink(u.root, b"f")
    st = os.lstat(f"{d['upper']}/f")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    u.unlink(u.root, b"only")
    assert not os.path.lexists(f"{d['upper']}/only")
    dirnode, _ = u.lookup(u.root, b"dir")
    with pytest.raises(OSError) as exc:
        u.rmdir(u.root, b"dir")
    assert exc.value.errno == errno.ENOTEMPTY
    u.unlink(dirnode, b"x")
    u.rmdir(u.root, b"dir")
    st = os.lstat(f"{d['upper']}/dir")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert sorted(u.listdir(u.root)) == []
    with pytest.raises(FileNotFoundError):
        u.lookup(u.root, b"dir")
    assert os.listdir(f"{d['work']}/work") == []


def test_mkdir_over_whiteout_is_opaque(stack):
    d = stack.dirs
    write(f"{d['lower0']}/d/old", b"o")
    u = stack()
    dnode, _ = u.lookup(u.root, b"d")
    u.unlink(dnode, b"old")
    u.rmdir(u.root, b"d")
    node, _ = u.mkdir(u.root, b"d", 0o755, ROOT)
    assert os.getxattr(f"{d['upper']}/d", "trusted.overlay.opaque") == b"y"
    assert u.listdir(node) == []
    # The marker is the overlay's own: invisible through the engine.
    assert u.listxattr(node) == []


def test_create_owner_and_setgid_inheritance(stack):
    d = stack.dirs
    os.makedirs(f"{d['lower0']}/sg")
    os.chown(f"{d['lower0']}/sg", 0, 777)
    os.chmod(f"{d['lower0']}/sg", 0o2775)
    u = stack()
    sg, _ = u.lookup(u.root, b"sg")
    node, h, st = u.create(sg, b"new", 0o640, os.O_WRONLY, Caller(1000, 1000))
    u.release(h)
    sub, st2 = u.mkdir(sg, b"sub", 0o755, Caller(1000, 1000))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 777, 0o640)
    assert (st2.st_uid, st2.st_gid, stat.S_IMODE(st2.st_mode)) == (1000, 777, 0o2755)
    with pytest.raises(FileExistsError):
        u.create(sg, b"new", 0o640, os.O_WRONLY, ROOT)


def test_rename_rules(stack):
    d = stack.dirs
    write(f"{d['lower0']}/lowerfile", b"L")
    write(f"{d['lower0']}/lowerdir/x", b"x")
    u = stack()
    target, _ = u.mkdir(u.root, b"newdir", 0o755, ROOT)
    u.rename(u.root, b"lowerfile", target, b"moved")
    assert stat.S_ISCHR(os.lstat(f"{d['upper']}/lowerfile").st_mode)
    assert open(f"{d['upper']}/newdir/moved", "rb").read() == b"L"
    with pytest.raises(OSError) as exc:
        u.rename(u.root, b"lowerdir", u.root, b"elsewhere")
    assert exc.value.errno == errno.EXDEV
    u.rename(u.root, b"newdir", u.root, b"renamed")  # upper-only directories move
    assert sorted(u.listdir(u.root)) == [b"lowerdir", b"renamed"]
    node, _ = u.lookup(u.root, b"renamed")
    assert u.listdir(node) == [b"moved"]


def test_readonly_union_refuses_changes(stack):
    write(f"{stack.dirs['lower0']}/f", b"x")
    u = stack(readonly=True)
    node, _ = u.lookup(u.root, b"f")
    for call in (
        lambda: u.open(node, os.O_WRONLY),
        lambda: u.unlink(u.root, b"f"),
        lambda: u.mkdir(u.root, b"d", 0o755, ROOT),
        lambda: u.setattr(node, mode=0o600),
        lambda: u.setxattr(node, b"user.x", b"1"),
    ):
        with pytest.raises(OSError) as exc:
            call()
        assert exc.value.errno == errno.EROFS


def test_lower_hard_links_share_a_node_until_copy_up(stack):
    d = stack.dirs
    write(f"{d['lower0']}/a", b"same")
    os.link(f"{d['lower0']}/a", f"{d['lower0']}/b")
    u = stack()
    a, sta = u.lookup(u.root, b"a")
    b, stb = u.lookup(u.root, b"b")
    assert a is b and sta.st_nlink == 2
    u.lookup(u.root, b"a")  # the most recently looked-up name is the one changed
    h = u.open(a, os.O_WRONLY | os.O_TRUNC)
    u.write(h, 0, b"changed")
    u.release(h)
    b2, _ = u.lookup(u.root, b"b")
    assert b2 is not a and b2.ino != a.ino  # split, as the kernel with index=off
    h = u.open(b2, os.O_RDONLY)
    assert u.read(h, 0, 100) == b"same"
    u.release(h)
    assert open(f"{d['upper']}/a", "rb").read() == b"changed"


def test_xattr_names_of_lower_entries_with_and_without_listxattrat(stack, monkeypatch):
    # A lower entry's names are listed through its parent's kept fd: listxattrat where the kernel has
    # it, else os.listxattr of a /proc path. Both give the same names, and neither follows a symlink.
    from unionfs.engine import _sys

    write(f"{stack.dirs['lower1']}/d/f", b"x")
    os.setxattr(f"{stack.dirs['lower1']}/d/f", "user.one", b"1")
    os.setxattr(f"{stack.dirs['lower1']}/d/f", "user.two", b"2")
    write(f"{stack.dirs['lower1']}/d/plain", b"")
    os.symlink("f", f"{stack.dirs['lower1']}/d/link")
    seen = []
    for have in (_sys._have_listxattrat, False):
        monkeypatch.setattr(_sys, "_have_listxattrat", have)
        u = stack(readonly=True)
        d = u.child(u.root, b"d")
        seen.append(
            [sorted(u.listxattr(u.child(d, name))) for name in (b"f", b"plain", b"link")]
            + [u.find_xattr(u.child(d, b"f"), b"user.two"), u.find_xattr(u.child(d, b"f"), b"security.capability")]
        )
    assert seen[0] == seen[1] == [[b"user.one", b"user.two"], [], [], b"2", None]


def test_private_xattrs_are_escaped(stack):
    write(f"{stack.dirs['lower0']}/d/x", b"")
    write(f"{stack.dirs['lower1']}/d/y", b"")
    u = stack()
    node, _ = u.lookup(u.root, b"d")
    u.setxattr(node, b"user.overlay.opaque", b"y")
    u.setxattr(node, b"trusted.overlay.opaque", b"y")
    assert sorted(u.listxattr(node)) == [b"trusted.overlay.opaque", b"user.overlay.opaque"]
    assert u.getxattr(node, b"user.overlay.opaque") == b"y"
    u.close()
    u2 = stack()
    node2, _ = u2.lookup(u2.root, b"d")
    assert sorted(u2.listdir(node2)) == [b"x", b"y"]  # nobody forged an opaque marker
    # the stack's own namespace is escaped; the other one is stored as it is, and no marker in the upper
    stored = set(os.listxattr(f"{stack.dirs['upper']}/d"))
    own = u2.stack.marker_prefix.decode()
    other = "user.overlay." if own == "trusted.overlay." else "trusted.overlay."
    assert {own + "overlay.opaque", other + "opaque"} <= stored, stored


def test_symlinked_directories_inside_layers_are_not_followed(stack, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    d = stack.dirs
    os.symlink(str(outside), f"{d['lower0']}/link")
    os.makedirs(f"{d['lower1']}/link")
    write(f"{d['lower1']}/link/inner", b"i")
    u = stack()
    node, st = u.lookup(u.root, b"link")
    assert stat.S_ISLNK(st.st_mode)
    with pytest.raises(OSError):
        u.child(node, b"secret")
    # Swap the upper's directory for a symlink behind the engine's back: writes must not escape.
    os.makedirs(f"{d['upper']}/sub")
    sub, _ = u.lookup(u.root, b"sub")
    os.rmdir(f"{d['upper']}/sub")
    os.symlink(str(outside), f"{d['upper']}/sub")
    with pytest.raises(OSError):
        u.create(sub, b"escape", 0o644, os.O_WRONLY, ROOT)
    assert sorted(os.listdir(outside)) == ["secret"]


def test_nodes_nobody_holds_go_away(stack):
    # The engine counts no lookups: a node lives while a caller, a child or an open handle holds it.
    for i in range(50):
        write(f"{stack.dirs['lower0']}/dir/f{i}", b"")
    u = stack()
    d, _ = u.lookup(u.root, b"dir")
    nodes = [u.lookup(d, b"f%d" % i)[0] for i in range(50)]
    assert len(u.nodes) == 52
    handle = u.open(nodes[7], os.O_RDONLY)
    del nodes
    assert len(u.nodes) == 3  # the root, dir (held by its open child and this test) and f7
    # Every map that held a dead node weakly lost its entry (the node dropped them as it died).
    assert len(u.nodes.by_key) == 3 and list(d.children.data) == [b"f7"]
    u.release(handle)
    del handle
    assert len(u.nodes) == 2 and len(u.nodes.by_key) == 2 and not d.children.data
    del d
    assert len(u.nodes) == 1 and len(u.nodes.by_key) == 1 and not u.root.children.data


def test_st_ino_is_the_same_when_a_node_is_made_again(stack):
    write(f"{stack.dirs['lower0']}/f", b"")
    u = stack()
    n, st = u.lookup(u.root, b"f")
    first = n.ino
    del n
    assert len(u.nodes) == 1
    n2, _ = u.lookup(u.root, b"f")
    assert n2.ino == first == os.lstat(f"{stack.dirs['lower0']}/f").st_ino


def test_work_dir_leftovers_are_cleaned(stack):
    os.makedirs(f"{stack.dirs['work']}/work/#1/deep")
    write(f"{stack.dirs['work']}/work/#2", b"half a copy")
    stack()
    assert os.listdir(f"{stack.dirs['work']}/work") == []


def test_names_too_long(stack):
    u = stack()
    with pytest.raises(OSError) as exc:
        u.create(u.root, b"x" * 256, 0o644, os.O_WRONLY, ROOT)
    assert exc.value.errno == errno.ENAMETOOLONG
    node, h, _ = u.create(u.root, b"y" * 255, 0o644, os.O_WRONLY, ROOT)
    u.release(h)


def test_scan_resolves_like_lookup(stack):
    """readdirplus resolves names from one pass over the layers; it must agree with lookup."""
    d = stack.dirs
    write(f"{d['lower2']}/dir/deep", b"deep")
    write(f"{d['lower1']}/dir/mid", b"mid")
    os.makedirs(f"{d['lower0']}/dir")
    write(f"{d['lower2']}/op/hidden", b"h")
    os.makedirs(f"{d['lower1']}/op")
    os.setxattr(f"{d['lower1']}/op", "user.overlay.opaque", b"y")
    os.makedirs(f"{d['lower0']}/op")
    write(f"{d['lower2']}/x/inner", b"i")
    write(f"{d['lower1']}/x", b"file in the middle")
    os.makedirs(f"{d['upper']}/x")
    write(f"{d['lower2']}/gone", b"g")
    whiteout(f"{d['lower1']}/gone")
    os.makedirs(f"{d['lower2']}/wdir")
    whiteout(f"{d['lower1']}/wdir")
    os.makedirs(f"{d['upper']}/wdir")
    write(f"{d['lower0']}/f", b"top")
    write(f"{d['lower2']}/f", b"bottom")
    u = stack()
    scanned = {entry[0]: entry for entry in u.scan(u.root)}
    assert sorted(scanned) == sorted(u.listdir(u.root)) == [b"dir", b"f", b"op", b"wdir", b"x"]
    for name, (_, index, st, merge, lpaths, redirect) in scanned.items():
        node, lst = u.lookup(u.root, name)
        assert (node.layer, node.merge, st.st_ino, node.lpaths, node.redirect) == (
            index,
            merge,
            lst.st_ino,
            lpaths,
            redirect,
        ), name


def test_upper_and_work_are_locked_while_in_use(stack, tmp_path):
    from unionfs.engine import LayerInUse

    first = stack()
    with pytest.raises(LayerInUse) as exc:
        stack()
    assert exc.value.errno == errno.EBUSY and "upperdir" in str(exc.value)
    other_upper = tmp_path / "upper2"
    other_upper.mkdir()
    with pytest.raises(LayerInUse, match="workdir"):
        UnionEngine([stack.dirs["lower0"]], str(other_upper), stack.dirs["work"])
    first.close()
    stack().close()  # free again once the first is gone


def oci_layers(d):
    """An OCI-style stack: .wh.NAME files and .wh..wh..opq markers instead of the kernel's."""
    write(f"{d['lower1']}/gone", b"g")
    write(f"{d['lower0']}/.wh.gone", b"")
    write(f"{d['lower1']}/keep", b"k")
    write(f"{d['lower1']}/op/hidden", b"h")
    write(f"{d['lower0']}/op/.wh..wh..opq", b"")
    write(f"{d['lower0']}/op/shown", b"s")
    write(f"{d['lower1']}/d/inner", b"i")
    write(f"{d['lower0']}/d/.wh.inner", b"")
    write(f"{d['lower0']}/d/mine", b"m")


def test_wh_markers_are_read_by_default_as_fuse_overlayfs(stack):
    oci_layers(stack.dirs)
    u = stack()
    assert walk(u, u.root) == {
        b"keep": ("f", b"k"),
        b"op": ("d", None),
        b"op/shown": ("f", b"s"),
        b"d": ("d", None),
        b"d/mine": ("f", b"m"),
    }
    scanned = {entry[0]: entry for entry in u.scan(u.root)}
    assert sorted(scanned) == [b"d", b"keep", b"op"]
    with pytest.raises(FileNotFoundError):
        u.lookup(u.root, b".wh.gone")
    with pytest.raises(OSError) as exc:
        u.create(u.root, b".wh.keep", 0o644, os.O_WRONLY, ROOT)
    assert exc.value.errno == errno.EINVAL
    node, h, _ = u.create(u.root, b"gone", 0o644, os.O_WRONLY, ROOT)  # over a lower .wh. marker
    u.release(h)
    assert sorted(u.listdir(u.root)) == [b"d", b"gone", b"keep", b"op"]


def test_no_wh_marker_is_looked_for_where_no_layer_follows(stack, monkeypatch):
    # A .wh. marker only hides what lies in the layers below it: in the last layer a directory merges,
    # a marker and nothing end the search alike, so a negative lookup does not look for one there.
    from unionfs.engine import layers

    d = stack.dirs
    write(f"{d['lower0']}/m/.wh.hidden", b"")
    write(f"{d['lower1']}/m/hidden", b"h")
    write(f"{d['lower1']}/m/.wh.stale", b"")  # the bottom of m: hides nothing
    write(f"{d['upper']}/solo/.wh.x", b"")  # a stale marker in a directory only the upper has
    u = stack()
    m, solo = u.child(u.root, b"m"), u.child(u.root, b"solo")
    probed = []
    real = layers.Layer.lstat
    monkeypatch.setattr(layers.Layer, "lstat", lambda self, rel: probed.append((self.index, rel)) or real(self, rel))
    for parent, name in ((m, b"hidden"), (m, b"stale"), (m, b"nothing"), (solo, b"x"), (solo, b"y")):
        with pytest.raises(FileNotFoundError):
            u.lookup(parent, name)
    assert probed == [
        (1, b"m/hidden"),
        (1, b"m/.wh.hidden"),  # found: the search ends
        (1, b"m/stale"),
        (1, b"m/.wh.stale"),
        (2, b"m/stale"),  # the bottom: no marker looked for
        (1, b"m/nothing"),
        (1, b"m/.wh.nothing"),
        (2, b"m/nothing"),
        (0, b"solo/x"),
        (0, b"solo/y"),
    ]
    monkeypatch.undo()
    # A name made over the stale marker takes the marker away, as over any .wh. whiteout.
    node, h, _ = u.create(solo, b"x", 0o644, os.O_WRONLY, ROOT)
    u.release(h)
    assert sorted(os.listdir(f"{d['upper']}/solo")) == ["x"]
    assert u.listdir(m) == []


def test_kernel_exact_mode_shows_wh_names_as_plain_names(stack):
    oci_layers(stack.dirs)
    u = stack(whiteout_files=False)
    assert sorted(u.listdir(u.root)) == [b".wh.gone", b"d", b"gone", b"keep", b"op"]
    node, h, _ = u.create(u.root, b".wh.new", 0o644, os.O_WRONLY, ROOT)  # an ordinary name here
    u.release(h)
    assert os.path.isfile(os.path.join(stack.dirs["upper"], ".wh.new"))


def test_wh_files_are_written_where_mknod_is_refused(stack, monkeypatch):
    import unionfs.engine.stack as stack_module

    monkeypatch.setattr(stack_module, "_can_make_whiteouts", lambda fd: False)
    d = stack.dirs
    write(f"{d['lower0']}/f", b"lower")
    write(f"{d['lower0']}/dir/x", b"x")
    write(f"{d['lower0']}/mv", b"mv")
    u = stack()
    assert u.write_wh_files and u.read_wh_files
    u.unlink(u.root, b"f")
    dirnode, _ = u.lookup(u.root, b"dir")
    u.unlink(dirnode, b"x")
    u.rmdir(u.root, b"dir")
    u.rename(u.root, b"mv", u.root, b"moved")
    assert sorted(os.listdir(d["upper"])) == [".wh.dir", ".wh.f", ".wh.mv", "moved"]
    assert sorted(u.listdir(u.root)) == [b"moved"]
    node, _ = u.mkdir(u.root, b"dir", 0o755, ROOT)  # over a .wh. whiteout: opaque, marker gone
    assert u.listdir(node) == []
    assert sorted(os.listdir(d["upper"])) == [".wh.f", ".wh.mv", "dir", "moved"]
    u.close()
    u2 = stack()  # a later mount reads what the first one wrote
    assert sorted(u2.listdir(u2.root)) == [b"dir", b"moved"]


def test_paths_longer_than_path_max(stack):
    """pjdfstest rename/02 from a subdirectory: a union path of 4096+ bytes still resolves."""
    u = stack()
    node = u.root
    long_name = b"d" * 250
    for _ in range(20):  # 5,020 bytes deep
        node, _ = u.mkdir(node, long_name, 0o755, ROOT)
    f, h, _ = u.create(node, b"a", 0o644, os.O_WRONLY, ROOT)
    u.release(h)
    u.rename(node, b"a", node, b"b" * 100)
    assert u.listdir(node) == [b"b" * 100]
    with pytest.raises(FileNotFoundError):
        u.lookup(node, b"missing")


@pytest.mark.skipif(os.geteuid() != 0, reason="owners other than the daemon's need root")
def test_create_in_place_or_through_the_work_dir(stack, monkeypatch):
    """A file the daemon's own ids own is made straight in the upper (as the kernel's ovl_create_upper);
    another owner, setuid bits or a whiteout at the name take the work dir.
    Either way the owner, group and mode are the ones asked for, and the work dir is left empty."""
    d = stack.dirs
    os.makedirs(f"{d['lower0']}/sg")
    os.chown(f"{d['lower0']}/sg", 0, 777)
    os.chmod(f"{d['lower0']}/sg", 0o2775)
    write(f"{d['lower0']}/gone", b"x")
    whiteout(f"{d['upper']}/gone")
    u = stack()
    renames = []
    real = u.namespace._finish_create
    monkeypatch.setattr(u.namespace, "_finish_create", lambda *a: renames.append(a[2]) or real(*a))
    sg = u.child(u.root, b"sg")
    cases = [
        (u.root, b"mine", 0o640, ROOT, (0, 0, 0o640), False),
        (u.root, b"theirs", 0o600, Caller(1000, 1001), (1000, 1001, 0o600), True),
        (u.root, b"suid", 0o4755, ROOT, (0, 0, 0o4755), True),
        (sg, b"in_sg", 0o644, ROOT, (0, 777, 0o644), False),  # the group the upper gives it
        (u.root, b"gone", 0o644, ROOT, (0, 0, 0o644), True),
    ]
    for parent, name, mode, caller, want, via_work in cases:
        node, h, st = u.create(parent, name, mode, os.O_WRONLY, caller)
        u.release(h)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == want, name
        upper_st = os.lstat(os.path.join(d["upper"], u.resolution.rel(node, 0).decode()))
        assert (upper_st.st_uid, upper_st.st_gid, stat.S_IMODE(upper_st.st_mode)) == want, name
        assert (name in renames) == via_work, name
    assert os.listdir(os.path.join(d["work"], "work")) == []


def test_absent_names_are_remembered_until_made(stack):
    """A name no layer holds is remembered as absent in its directory (the kernel's create asks again
    right after its negative lookup); every way a name appears there clears it."""
    d = stack.dirs
    write(f"{d['lower0']}/dir/file", b"f")
    u = stack()
    dirnode = u.child(u.root, b"dir")
    for name in (b"new", b"moved", b"swapped", b"linked", b"made"):
        with pytest.raises(FileNotFoundError):
            u.child(dirnode, name)
    assert dirnode.absent == {b"new", b"moved", b"swapped", b"linked", b"made"}
    node, h, _ = u.create(dirnode, b"new", 0o644, os.O_WRONLY, ROOT)
    u.release(h)
    assert u.child(dirnode, b"new") is node
    other, h, _ = u.create(u.root, b"other", 0o644, os.O_WRONLY, ROOT)
    u.release(h)
    u.rename(u.root, b"other", dirnode, b"moved", 0)
    assert u.child(dirnode, b"moved") is other
    third, h, _ = u.create(u.root, b"third", 0o644, os.O_WRONLY, ROOT)
    u.release(h)
    u.link(third, dirnode, b"linked")
    assert u.child(dirnode, b"linked") is third
    u.mkdir(dirnode, b"made", 0o755, ROOT)
    assert u.child(dirnode, b"made").is_dir
    assert dirnode.absent == {b"swapped"}
    # bounded: past ABSENT_MAX names the set starts again
    from unionfs.engine.resolution import ABSENT_MAX

    for i in range(ABSENT_MAX + 5):
        with pytest.raises(FileNotFoundError):
            u.child(dirnode, b"n%d" % i)
    assert len(dirnode.absent) <= ABSENT_MAX


def test_listings_are_kept_until_the_directory_changes(stack):
    """list_entries answers from the last listing while the directory cannot have changed (no upper
    part, or an upper part whose mtime and ctime have settled), and reads the layers again after any
    change through the union."""
    import time

    from unionfs.engine.listings import LISTING_SETTLE_NS

    d = stack.dirs
    write(f"{d['lower0']}/lo/a", b"a")
    write(f"{d['lower1']}/lo/b", b"b")
    ahead = [0]  # how far the union's clock runs ahead of the files' times
    u = stack(clock=lambda: time.time_ns() + ahead[0])
    lo = u.child(u.root, b"lo")

    def names(node):
        entries = u.list_entries(node)
        return sorted((n, t) for n, t, _ in entries), all(e is None for _, _, e in entries)

    first, cached = names(lo)
    assert first == [(b"a", stat.S_IFREG), (b"b", stat.S_IFREG)] and not cached
    assert names(lo) == (first, True)  # lower only: kept
    node, h, _ = u.create(lo, b"c", 0o644, os.O_WRONLY, ROOT)  # the directory is copied up
    u.release(h)
    listed, cached = names(lo)
    assert listed == first + [(b"c", stat.S_IFREG)] and not cached
    assert names(lo) == (listed, False)  # just changed: read again
    ahead[0] += LISTING_SETTLE_NS
    assert names(lo) == (listed, False)  # settled: this one is kept
    assert names(lo) == (listed, True)
    u.unlink(lo, b"a")  # a whiteout
    u.mkdir(lo, b"sub", 0o755, ROOT)
    assert names(lo) == ([(b"b", stat.S_IFREG), (b"c", stat.S_IFREG), (b"sub", stat.S_IFDIR)], False)
    ahead[0] += LISTING_SETTLE_NS
    names(lo)
    assert names(lo)[1]
    u.rename(lo, b"b", lo, b"b2", 0)
    assert names(lo) == ([(b"b2", stat.S_IFREG), (b"c", stat.S_IFREG), (b"sub", stat.S_IFDIR)], False)


def test_listings_of_a_read_only_union_are_kept(stack):
    d = stack.dirs
    write(f"{d['lower0']}/f", b"f")
    u = stack(readonly=True)
    first = u.list_entries(u.root)
    assert [(n, t) for n, t, e in first] == [(b"f", stat.S_IFREG)] and first[0][2] is not None
    assert u.list_entries(u.root) == [(b"f", stat.S_IFREG, None)]


def test_a_create_in_place_opens_its_parent_once(stack, monkeypatch):
    # A file made straight in its upper parent (an untar's every file) takes the parent's attributes
    # (a setgid parent's group) from the descriptor it is made under, and its own from the fstat its
    # node is made with: one openat2 of the parent and no lstat of it (it was three syscalls more).
    from unionfs.engine import _sys, layers

    u = stack()
    d = u.mkdir(u.root, b"d", 0o755, ROOT)[0]
    os.chown(f"{stack.dirs['upper']}/d", 0, 4242)
    os.chmod(f"{stack.dirs['upper']}/d", 0o2775)
    resolved, probed = [], []
    real_open, real_lstat = _sys.openat2, layers.Layer.lstat
    monkeypatch.setattr(_sys, "openat2", lambda *a, **k: resolved.append(a[1]) or real_open(*a, **k))
    monkeypatch.setattr(layers.Layer, "lstat", lambda self, rel: probed.append(rel) or real_lstat(self, rel))
    node, handle, st = u.create(d, b"f", 0o640, os.O_WRONLY, Caller(0, 0))
    monkeypatch.undo()
    u.release(handle)
    assert probed == [b"d/f"]  # the name, free in the upper
    assert resolved == [b"d/f", b"d"]
    on_disk = os.lstat(f"{stack.dirs['upper']}/d/f")
    assert (st.st_ino, st.st_mode, st.st_gid) == (on_disk.st_ino, on_disk.st_mode, 4242)
    assert stat.S_IMODE(on_disk.st_mode) == 0o640 and on_disk.st_gid == 4242


def test_setattr_of_an_open_file_goes_through_its_descriptor(stack, monkeypatch):
    # A tar sets owner, mode and times while the file it wrote is open (and the kernel sends no handle
    # with those SETATTRs): they go through the open handle's descriptor, with no path resolved, and
    # land on the file even after its directory was renamed. A lower file opened read-only has no upper
    # descriptor: its setattr copies up by the path, as before.
    from unionfs.engine import _sys, layers

    write(f"{stack.dirs['lower1']}/low", b"lower data", mode=0o644)
    u = stack()
    d = u.mkdir(u.root, b"d", 0o755, ROOT)[0]
    node, handle, _ = u.create(d, b"f", 0o600, os.O_WRONLY, ROOT)
    u.write(handle, 0, b"data")
    resolved = []
    real = _sys.openat2
    monkeypatch.setattr(_sys, "openat2", lambda *a, **k: resolved.append(a[1]) or real(*a, **k))
    monkeypatch.setattr(layers.Layer, "lstat", lambda *a: pytest.fail("a path was resolved"))
    st = u.setattr(node, mode=0o640)
    st = u.setattr(node, uid=1234, gid=4321)
    assert resolved == []
    monkeypatch.undo()
    u.rename(u.root, b"d", u.root, b"e")
    st = u.setattr(node, atime_ns=1_000_000_000, mtime_ns=2_000_000_000)
    u.release(handle)
    on_disk = os.lstat(f"{stack.dirs['upper']}/e/f")
    assert (stat.S_IMODE(on_disk.st_mode), on_disk.st_uid, on_disk.st_gid) == (0o640, 1234, 4321)
    assert (on_disk.st_atime_ns, on_disk.st_mtime_ns) == (1_000_000_000, 2_000_000_000)
    assert (st.st_ino, st.st_mtime_ns) == (on_disk.st_ino, 2_000_000_000)
    # the lower file, open read-only: copied up by its path, then changed there
    low = u.child(u.root, b"low")
    ro = u.open(low, os.O_RDONLY)
    u.setattr(low, mode=0o600)
    u.release(ro)
    assert stat.S_IMODE(os.lstat(f"{stack.dirs['upper']}/low").st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(f"{stack.dirs['lower1']}/low").st_mode) == 0o644
