"""pyunionfs-layer on plain directories (no FUSE): diff, export, import, round trips, hostile tarballs."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import subprocess
import sys
import tarfile

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
    diff_snapshots,
    make_layers,
    tree_snapshot,
)
from unionfs.layertools import cli as layertools
from unionfs.layertools.cli import layer_diff, main
from unionfs.layertools.ocilayer import Progress

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (char 0/0 whiteouts, trusted.* xattrs, chown)")
T0 = 1_600_000_000_123_456_789


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def lines(changes):
    return [f"{c} /{os.fsdecode(p)}" for c, p in changes]


# --------------------------------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------------------------------


@needs_root
def test_diff_against_lowers(tmp_path):
    L = make_layers(
        tmp_path,
        {
            "lower1": {
                "f1": "a",
                "f2": "b",
                "d/x": "x",
                "d/sub/y": "y",
                "o/z": "z",
                "o/keep": "k",
                "deep/a/b": "b",
                "gone": DIR,
                "gone/in": "i",
            },
            "lower0": {"d/x": "x2", "l0only": "l", "wh": "w", "f3": ".wh.-hidden", ".wh.gone": ""},
            "upper": {
                "f1": "changed",
                "f2": WHITEOUT,
                "new": "n",
                "d/q": "q",
                "o": Opaque(),
                "o/keep": "again",
                "o/added": "a",
                "ou": Opaque(user=True),
                "l0only": WHITEOUT,
                ".wh.wh": "",  # OCI-style whiteout file in the upper
                "deep": DIR,
                "deep/.wh..wh..opq": "",
                "deep/a": DIR,
            },
        },
    )
    changes = lines(layer_diff(str(L.upper), [str(l) for l in L.lowers]))
    assert changes == [
        "C /d",
        "A /d/q",
        "C /deep",
        "C /deep/a",
        "D /deep/a/b",  # opaque via .wh..wh..opq: what's below a is hidden too
        "C /f1",
        "D /f2",
        "D /l0only",
        "A /new",
        "C /o",
        "A /o/added",
        "C /o/keep",
        "D /o/z",
        "A /ou",
        "D /wh",
    ]


@needs_root
def test_diff_lower_markers_and_stack(tmp_path):
    """Whiteouts and opaque dirs inside the lowers decide what the old view had."""
    L = make_layers(
        tmp_path,
        {
            "lower1": {"a": "a", "b": "b", "od/x": "x"},
            "lower0": {"a": WHITEOUT, ".wh.b": "", "od": Opaque(), "od/y": "y"},
            "upper": {"a": "again", "b": "again", "od": DIR, "od/x": "new", ".wh.b": ""},
        },
    )
    changes = lines(layer_diff(str(L.upper), [str(l) for l in L.lowers]))
    # a and b were deleted in lower0, so the upper adds them; od/x is hidden by lower0's opaque od.
    assert changes == ["A /a", "A /b", "C /od", "A /od/x"]


@needs_root
def test_diff_without_lowers(tmp_path, capsys):
    L = make_layers(
        tmp_path,
        {
            "upper": {
                "f": "x",
                "w": WHITEOUT,
                "d/f": "y",
                "o": Opaque(),
                "c": File("c", xattrs={"trusted.overlay.origin": b"\x00fh"}),
            }
        },
    )
    rc, out, err = run(capsys, "diff", L.upper)
    assert rc == 0 and err == ""
    assert out.splitlines() == ["C /c", "C /d", "A /d/f", "A /f", "C /o", "D /w"]
    rc, out, _ = run(capsys, "diff", "--json", L.upper)
    doc = json.loads(out)
    assert {"path": "/w", "change": "D", "kind": 2} in doc
    assert {"path": "/f", "change": "A", "kind": 1} in doc


def test_diff_bad_args(tmp_path, capsys):
    rc, out, err = run(capsys, "diff", tmp_path / "missing")
    assert rc == 1 and len(err.splitlines()) == 1 and "not a directory" in err
    with pytest.raises(SystemExit) as e:
        main(["diff"])
    assert e.value.code == 2


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------


def rich_upper_spec():
    return {
        "f1": File(
            "new f1\n",
            mode=0o4755,
            uid=1234,
            gid=5678,
            mtime_ns=T0,
            xattrs={"user.comment": b"hi", "trusted.overlay.overlay.x": b"escaped", "security.blob": b"\x00\x01\xff"},
        ),
        "sgid": File("s", mode=0o2750, mtime_ns=T0),
        "f2": WHITEOUT,
        "d": Dir(mode=0o1777, uid=7, gid=8, mtime_ns=T0 - 10**9),
        "d/inner": File(b"\x00" * 5000 + b"end", mtime_ns=T0),
        "o": Opaque(mtime_ns=T0),
        "o/kept": "k",
        "link": Symlink("/etc/passwd"),
        "rel": Symlink("d/inner"),
        "fifo": Fifo(0o640),
        "hard1": File("shared", mode=0o600),
        "sub/hard2": Hardlink("hard1"),
        "empty": Dir(mode=0o700),
    }


def build_upper(tmp_path, spec=None):
    spec = spec or rich_upper_spec()
    L = make_layers(tmp_path, {"upper": spec})
    os.mknod(L.upper / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(L.upper / "null", 0o666)
    os.utime(L.upper / "null", ns=(T0, T0))
    return L.upper


@needs_root
def test_export_contents(tmp_path, capsys):
    upper = build_upper(tmp_path)
    out = tmp_path / "layer.tar"
    rc, o, err = run(capsys, "export", upper, out)
    assert rc == 0 and o == "" and err == ""
    with tarfile.open(out) as tf:
        members = tf.getmembers()
        names = [m.name for m in members]
        by = {m.name: m for m in members}
    assert names[0] == "."
    assert ".wh.f2" in names and "f2" not in names
    assert names.index("o/.wh..wh..opq") == names.index("o") + 1
    assert by[".wh.f2"].isreg() and by[".wh.f2"].size == 0
    f1 = by["f1"]
    assert f1.mode == 0o4755 and (f1.uid, f1.gid) == (1234, 5678) and f1.uname == "" and f1.gname == ""
    assert f1.pax_headers["mtime"] == "1600000000.123456789"
    assert f1.pax_headers["SCHILY.xattr.user.comment"] == "hi"
    assert f1.pax_headers["SCHILY.xattr.trusted.overlay.x"] == "escaped"
    assert f1.pax_headers["SCHILY.xattr.security.blob"].encode("utf-8", "surrogateescape") == b"\x00\x01\xff"
    assert by["sgid"].mode == 0o2750
    assert by["d"].isdir() and by["d"].mode == 0o1777 and (by["d"].uid, by["d"].gid) == (7, 8)
    for m in members:  # never the overlay's own markers
        assert not any(
            k.startswith(("SCHILY.xattr.trusted.overlay.opaque", "SCHILY.xattr.user.overlay.")) for k in m.pax_headers
        ), m.name
        assert "atime" not in m.pax_headers and "ctime" not in m.pax_headers
    assert by["link"].issym() and by["link"].linkname == "/etc/passwd"
    assert by["fifo"].isfifo() and by["fifo"].mode == 0o640
    assert by["null"].ischr() and (by["null"].devmajor, by["null"].devminor) == (1, 3)
    assert by["hard1"].isreg() and by["sub/hard2"].islnk() and by["sub/hard2"].linkname == "hard1"
    assert names.index("d") < names.index("d/inner") < names.index("empty")


@needs_root
def test_export_reproducible_and_gzip(tmp_path, capsys):
    upper = build_upper(tmp_path)
    a, b, gz1, gz2 = (tmp_path / n for n in ("a.tar", "b.tar", "a.tar.gz", "b.tgz"))
    for out in (a, b, gz1):
        assert run(capsys, "export", upper, out)[0] == 0
    assert run(capsys, "export", "--gzip", upper, gz2)[0] == 0
    assert a.read_bytes() == b.read_bytes()
    assert gz1.read_bytes() == gz2.read_bytes()
    raw = gz1.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip mtime 0
    assert gzip.decompress(raw) == a.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_export_refuses_inside_layer_and_missing(tmp_path, capsys):
    (tmp_path / "up").mkdir()
    rc, _, err = run(capsys, "export", tmp_path / "up", tmp_path / "up" / "x.tar")
    assert rc == 1 and "inside the layer" in err
    rc, _, err = run(capsys, "export", tmp_path / "nope", tmp_path / "x.tar")
    assert rc == 1 and len(err.splitlines()) == 1
    assert not (tmp_path / "x.tar").exists()


def test_export_skips_socket_with_warning(tmp_path, capsys):
    import socket

    up = tmp_path / "up"
    up.mkdir()
    (up / "f").write_text("x")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(up / "sock"))
        rc, _, err = run(capsys, "export", up, tmp_path / "o.tar")
    finally:
        s.close()
    assert rc == 0 and "sock" in err and "socket" in err
    with tarfile.open(tmp_path / "o.tar") as tf:
        assert tf.getnames() == [".", "f"]


# --------------------------------------------------------------------------------------------------
# import and round trips
# --------------------------------------------------------------------------------------------------


def mtimes(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in [".", *dirnames, *filenames]:
            p = os.path.normpath(os.path.join(dirpath, n))
            out[os.path.relpath(p, root)] = os.lstat(p).st_mtime_ns
    return out


def inode_groups(root):
    groups = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                groups.setdefault(st.st_ino, []).append(os.path.relpath(p, root))
    return sorted(sorted(g) for g in groups.values())


@needs_root
@pytest.mark.parametrize("name", ["layer.tar", "layer.tar.gz"])
def test_round_trip_identical(tmp_path, capsys, name):
    upper = build_upper(tmp_path)
    tar = tmp_path / name
    assert run(capsys, "export", upper, tar)[0] == 0
    dest = tmp_path / "imported"
    rc, out, err = run(capsys, "import", tar, dest)
    assert rc == 0 and out == "" and err == "", err
    a, b = tree_snapshot(upper), tree_snapshot(dest)
    assert a == b, diff_snapshots(a, b)
    assert mtimes(upper) == mtimes(dest)
    assert inode_groups(upper) == inode_groups(dest) == [["hard1", "sub/hard2"]]
    assert os.getxattr(dest / "o", "trusted.overlay.opaque") == b"y"
    st = os.lstat(dest / "f2")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and stat.S_IMODE(st.st_mode) == 0
    # and the re-export is byte-identical
    tar2 = tmp_path / ("again-" + name)
    assert run(capsys, "export", dest, tar2)[0] == 0
    assert tar.read_bytes() == tar2.read_bytes()


@needs_root
def test_round_trip_through_pipes(tmp_path):
    upper = build_upper(tmp_path)
    exe = [sys.executable, "-m", "unionfs.layertools"]
    exp = subprocess.run(exe + ["export", "-z", str(upper), "-"], capture_output=True, timeout=60)
    assert exp.returncode == 0 and exp.stderr == b"", exp.stderr  # not a tty: no progress
    imp = subprocess.run(exe + ["import", "-", str(tmp_path / "in")], input=exp.stdout, capture_output=True, timeout=60)
    assert imp.returncode == 0 and imp.stderr == b"", imp.stderr
    assert tree_snapshot(upper) == tree_snapshot(tmp_path / "in")


@needs_root
def test_import_userxattr_and_oci_tar(tmp_path, capsys):
    """A tarball as other tools write it: ./ prefixes, .wh. files with mode 0600, dirs after contents."""
    tar = tmp_path / "oci.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf:

        def add(name, type_=tarfile.REGTYPE, data=b"", **kw):
            ti = tarfile.TarInfo(name)
            ti.type = type_
            ti.size = len(data)
            ti.mode = kw.get("mode", 0o644)
            for k, v in kw.items():
                setattr(ti, k, v)
            tf.addfile(ti, io.BytesIO(data) if data else None)

        add("./etc/.wh.motd", mode=0o600)
        add("./etc/hostname", data=b"box\n")
        add("./var/lib/.wh..wh..opq")
        add("./var/lib/pkg/db", data=b"db")
        add("./etc/", tarfile.DIRTYPE, mode=0o755)
        add("./.wh..wh.plnk", mode=0o600)
        add("./usr/bin/evil-trusted", data=b"x", pax_headers={"SCHILY.xattr.trusted.overlay.opaque": "y"})
    dest = tmp_path / "layer"
    rc, _, err = run(capsys, "import", "--userxattr", tar, dest)
    assert rc == 0, err
    st = os.lstat(dest / "etc" / "motd")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert (dest / "etc" / "hostname").read_bytes() == b"box\n"
    assert os.getxattr(dest / "var" / "lib", "user.overlay.opaque") == b"y"
    with pytest.raises(OSError):
        os.getxattr(dest / "var" / "lib", "trusted.overlay.opaque")
    assert sorted(os.listdir(dest)) == ["etc", "usr", "var"]
    # a raw overlay xattr in a tarball is stored escaped, never as a marker
    names = os.listxattr(dest / "usr" / "bin" / "evil-trusted")
    assert "trusted.overlay.overlay.opaque" in names and "trusted.overlay.opaque" not in names
    assert run(capsys, "diff", dest)[1].splitlines() == [
        "C /etc",
        "A /etc/hostname",
        "D /etc/motd",
        "C /usr",
        "C /usr/bin",
        "A /usr/bin/evil-trusted",
        "C /var",
        "C /var/lib",
        "C /var/lib/pkg",
        "A /var/lib/pkg/db",
    ]


# --------------------------------------------------------------------------------------------------
# hostile and broken input
# --------------------------------------------------------------------------------------------------


def make_tar(path, entries, *, compress=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, arg in entries:
            ti = tarfile.TarInfo(name)
            if kind == "f":
                ti.size = len(arg)
                tf.addfile(ti, io.BytesIO(arg))
                continue
            ti.type = {"l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE, "d": tarfile.DIRTYPE}[kind]
            if arg is not None:
                ti.linkname = arg
            tf.addfile(ti)
    data = buf.getvalue()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


HOSTILE = {
    "dotdot": [("ok", "f", b"x"), ("../outside/pwned", "f", b"p")],
    "dotdot-deep": [("a/b/../../../outside/pwned", "f", b"p")],
    "absolute": [("OUTSIDE/pwned", "f", b"p")],
    "symlink-dir": [("ok", "f", b"x"), ("evil", "l", "OUTSIDE"), ("evil/pwned", "f", b"p")],
    "symlink-relative": [("evil", "l", "../outside"), ("evil/pwned", "f", b"p")],
    "symlink-nested": [("d", "d", None), ("d/evil", "l", "../../outside"), ("d/evil/sub/pwned", "f", b"p")],
    "symlink-whiteout": [("evil", "l", "OUTSIDE"), ("evil/.wh.secret", "f", b"")],
    "symlink-opaque": [("evil", "l", "OUTSIDE"), ("evil/.wh..wh..opq", "f", b"")],
    "hardlink-dotdot": [("hl", "h", "../outside/secret")],
    "hardlink-absolute": [("hl", "h", "OUTSIDE/secret")],
    "hardlink-through-symlink": [("evil", "l", "OUTSIDE"), ("hl", "h", "evil/secret")],
    "whiteout-as-dir": [(".wh.x/y", "f", b"p")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_import_hostile(tmp_path, capsys, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret\n")
    before = tree_snapshot(outside)
    entries = [
        (n.replace("OUTSIDE", str(outside)), k, a.replace("OUTSIDE", str(outside)) if isinstance(a, str) else a)
        for n, k, a in HOSTILE[case]
    ]
    tar = make_tar(tmp_path / "evil.tar", entries)
    dest = tmp_path / "layer"
    rc, out, err = run(capsys, "import", tar, dest)
    assert rc == 1, (out, err)
    assert len(err.splitlines()) == 1 and err.startswith("pyunionfs-layer: import: "), err
    assert tree_snapshot(outside) == before
    assert sorted(os.listdir(tmp_path)) == ["evil.tar", "outside"]  # the new LAYERDIR is gone again
    assert os.stat(outside / "secret").st_nlink == 1


def test_import_never_follows_existing_symlink(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "layer"
    dest.mkdir()
    os.symlink(outside, dest / "pre")
    (dest / "keep").write_text("mine")
    tar = make_tar(tmp_path / "t.tar", [("pre/pwned", "f", b"p")])
    rc, _, err = run(capsys, "import", tar, dest)
    assert rc == 1 and "symlink" in err
    assert os.listdir(outside) == []
    assert sorted(os.listdir(dest)) == ["keep", "pre"]  # a non-empty LAYERDIR is left as it was
    # an entry *named* like the symlink replaces the symlink itself, and writes nothing through it
    tar = make_tar(tmp_path / "t2.tar", [("pre", "f", b"file now")])
    assert run(capsys, "import", tar, dest)[0] == 0
    assert (dest / "pre").read_bytes() == b"file now" and os.listdir(outside) == []


@pytest.mark.parametrize("content", [b"", b"not a tarball at all", "truncated-gz", "truncated-tar"])
def test_import_bad_input(tmp_path, capsys, content):
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w") as tf:
        ti = tarfile.TarInfo("big")
        ti.size = 100_000
        tf.addfile(ti, io.BytesIO(b"x" * 100_000))
    if content == "truncated-gz":
        gz = gzip.compress(good.getvalue())
        content = gz[: len(gz) - 6]  # the CRC and size trailer cut off
    elif content == "truncated-tar":
        content = good.getvalue()[:20_000]
    bad = tmp_path / "bad.tar"
    bad.write_bytes(content)
    dest = tmp_path / "layer"
    dest.mkdir()
    rc, _, err = run(capsys, "import", bad, dest)
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert os.listdir(dest) == []  # emptied again
    rc, _, err = run(capsys, "import", tmp_path / "missing.tar", tmp_path / "l2")
    assert rc == 1 and "missing.tar" in err and not (tmp_path / "l2").exists()


# --------------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------------


def test_progress_only_on_a_terminal():
    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    quiet = io.StringIO()
    p = Progress("export", stream=quiet)
    p.add(5, 1 << 20)
    p.done()
    assert quiet.getvalue() == ""
    tty = FakeTTY()
    p = Progress("export", stream=tty)
    p.add(5, 3 << 20)
    p.done()
    assert "export: 5 entries, 3.0 MiB" in tty.getvalue() and tty.getvalue().endswith("\n")
    tty = FakeTTY()
    p = Progress("import", enabled=False, stream=tty)  # -q
    p.add(1)
    p.done()
    assert tty.getvalue() == ""


def test_help_reads_like_a_manual(capsys):
    for cmd in ("diff", "export", "import"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "usage: pyunionfs-layer " + cmd in out
    assert "whiteout" in layertools.IMPORT_HELP and "symlink" in layertools.IMPORT_HELP
