"""pyunionfs-layer end to end: an upper written through a real pyunionfs mount is exported, read back by
Python's tarfile, GNU tar and (where installed) umoci, imported into a fresh directory, and that directory
mounted as a lower gives the same merged view."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.util import FUSE_SKIP_REASON, Dir, File, Hardlink, Symlink, diff_snapshots, mount_pyunionfs, tree_snapshot
from unionfs.engine.xattrs import to_visible

pytestmark = [
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (whiteouts, trusted.* xattrs, owners)"),
]

LAYER = [sys.executable, "-m", "unionfs.layertools"]
T0 = 1_500_000_000_000_000_000

LOWER = {
    "etc/motd": "welcome\n",
    "etc/environment": "PATH=/bin\n",
    "etc/hosts": File("127.0.0.1 localhost\n", mtime_ns=T0),
    "var/cache/a": "a",
    "var/cache/b": "b",
    "var/cache/sub/c": "c",
    "bin/tool": File("#!/bin/sh\necho tool\n", mode=0o755),
    "bin/tool2": Hardlink("bin/tool"),
    "srv": Dir(mode=0o750, uid=33, gid=33),
    "srv/data": File("data", uid=33, gid=33),
    "lib/libc.so": Symlink("libc.so.6"),
    "lib/libc.so.6": "elf",
}


def layer(*args, **kw):
    return subprocess.run([*LAYER, *map(str, args)], capture_output=True, timeout=60, **kw)


def write_through_mount(m: Path) -> None:
    (m / "etc" / "motd").write_text("changed motd\n")  # copy-up
    os.unlink(m / "etc" / "environment")  # whiteout
    shutil.rmtree(m / "var" / "cache")  # whiteout of a dir...
    os.mkdir(m / "var" / "cache")  # ...then mkdir over it: opaque
    (m / "var" / "cache" / "new").write_text("fresh")
    (m / "root").mkdir(mode=0o700)
    (m / "root" / "newfile.txt").write_text("NEW FILE\n")
    os.setxattr(m / "root" / "newfile.txt", "user.origin", b"container")
    os.setxattr(m / "root" / "newfile.txt", "trusted.overlay.fake", b"not a marker")
    (m / "usr" / "bin").mkdir(parents=True)
    (m / "usr" / "bin" / "su").write_text("suid")
    os.chmod(m / "usr" / "bin" / "su", 0o4755)
    os.chmod(m / "srv", 0o2770)  # dir copy-up keeps its owner
    os.link(m / "usr" / "bin" / "su", m / "usr" / "bin" / "su-link")
    os.symlink("../etc/motd", m / "usr" / "motd-link")
    os.mkfifo(m / "usr" / "pipe", 0o600)
    os.chown(m / "bin" / "tool", 1000, 1000)
    os.utime(m / "etc" / "hosts", ns=(T0 + 123456789, T0 + 123456789))
    os.mknod(m / "usr" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))


def merged_view(tmp_path: Path, name: str, lowers, options=()) -> dict:
    mnt = tmp_path / name
    mnt.mkdir()
    with mount_pyunionfs(mnt, lowers, options=list(options)):
        return tree_snapshot(mnt)


def test_export_import_end_to_end(layers, tmp_path):
    L = layers({"lower0": LOWER})
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work):
        write_through_mount(L.mnt)
    # Origin records are the mount's copy-up bookkeeping, never part of a layer (export leaves them out).
    upper_snap = tree_snapshot(L.upper, ignore_xattrs=("trusted.overlay.pyunionfs.origin",))
    assert stat.S_ISCHR(os.lstat(L.upper / "etc" / "environment").st_mode)
    view = merged_view(tmp_path, "view", [L.upper, L.lower])

    # diff, the docker way
    res = layer("diff", L.upper, L.lower)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().splitlines() == [
        "C /bin",
        "C /bin/tool",
        "C /etc",
        "D /etc/environment",
        "C /etc/hosts",
        "C /etc/motd",
        "A /root",
        "A /root/newfile.txt",
        "C /srv",
        "A /usr",
        "A /usr/bin",
        "A /usr/bin/su",
        "A /usr/bin/su-link",
        "A /usr/motd-link",
        "A /usr/null",
        "A /usr/pipe",
        "C /var",
        "C /var/cache",
        "D /var/cache/a",
        "D /var/cache/b",
        "A /var/cache/new",
        "D /var/cache/sub",
    ]
    res = layer("diff", "--json", L.upper, L.lower)
    assert {"path": "/var/cache/sub", "change": "D", "kind": 2} in json.loads(res.stdout)

    # export; Python's tarfile
    tar = tmp_path / "layer.tar"
    res = layer("export", L.upper, tar)
    assert res.returncode == 0 and res.stderr == b"", res.stderr
    with tarfile.open(tar) as tf:
        by = {m.name: m for m in tf.getmembers()}
    assert by["etc/.wh.environment"].isreg() and by["etc/.wh.environment"].size == 0
    assert by["var/cache/.wh..wh..opq"].isreg()
    assert by["usr/bin/su"].mode == 0o4755 and by["usr/bin/su-link"].islnk()
    assert by["srv"].mode == 0o2770 and (by["srv"].uid, by["srv"].gid) == (33, 33)
    assert (by["bin/tool"].uid, by["bin/tool"].gid) == (1000, 1000)
    assert by["etc/hosts"].pax_headers["mtime"] == "1500000000.123456789"
    nf = by["root/newfile.txt"].pax_headers
    assert nf["SCHILY.xattr.user.origin"] == "container"
    assert nf["SCHILY.xattr.trusted.overlay.fake"] == "not a marker"
    assert not [
        n
        for n, m in by.items()
        for k in m.pax_headers
        if k.startswith(("SCHILY.xattr.trusted.overlay.opaque", "SCHILY.xattr.user.overlay."))
    ]

    # GNU tar lists it and extracts it with xattrs
    res = subprocess.run(["tar", "-tvf", str(tar)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    listing = res.stdout
    assert "etc/.wh.environment" in listing and "var/cache/.wh..wh..opq" in listing
    assert "-rwsr-xr-x 0/0" in listing and "usr/bin/su-link link to usr/bin/su" in listing
    assert "1000/1000" in listing and "33/33" in listing
    gx = tmp_path / "gnutar"
    gx.mkdir()
    res = subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(tar), "-C", str(gx)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr
    g = tree_snapshot(gx)
    for rel, e in upper_snap.items():
        if e.type == "c" and e.rdev == (0, 0):
            head, _, name = rel.rpartition("/")
            wh = (head + "/" if head else "") + ".wh." + name
            assert g[wh].type == "f" and g[wh].size == 0, rel
            continue
        ge = g[rel]
        # GNU tar stores the xattrs as the mount shows them: markers gone, escaped names unescaped
        want = e._replace(
            xattrs=tuple(
                sorted(
                    (os.fsdecode(to_visible(os.fsencode(k))), v)
                    for k, v in e.xattrs
                    if to_visible(os.fsencode(k)) is not None
                )
            )
        )
        got = ge
        assert got == want, (rel, got, want)
    assert g["var/cache/.wh..wh..opq"].type == "f"

    # import into a fresh directory: the same upper, byte for byte
    imported = tmp_path / "imported"
    res = layer("import", tar, imported)
    assert res.returncode == 0 and res.stderr == b"", res.stderr
    assert tree_snapshot(imported) == upper_snap, diff_snapshots(upper_snap, tree_snapshot(imported))

    # ...and mounted as a lower it gives the same merged view
    view2 = merged_view(tmp_path, "view2", [imported, L.lower])
    assert view2 == view, diff_snapshots(view, view2)

    # gzip through a pipe, imported with user xattrs
    res = layer("export", "--gzip", L.upper, "-")
    assert res.returncode == 0
    res2 = layer("import", "--userxattr", "-", tmp_path / "imported-user", input=res.stdout)
    assert res2.returncode == 0, res2.stderr
    assert os.getxattr(tmp_path / "imported-user" / "var" / "cache", "user.overlay.opaque") == b"y"
    # user.overlay.* markers are the mount's own (hidden) with userxattr; without it they show, as on
    # the kernel. The import escapes trusted.overlay.* too (it cannot know the mode of the mount that
    # will read the layer, and no tarball may forge a marker), which a userxattr mount, for which
    # that namespace is an ordinary one, shows as stored.
    view3 = merged_view(tmp_path, "view3", [tmp_path / "imported-user", L.lower], ["userxattr"])
    f3 = view3["root/newfile.txt"]
    assert ("trusted.overlay.overlay.fake", b"not a marker") in f3.xattrs
    view3["root/newfile.txt"] = f3._replace(
        xattrs=tuple(sorted((n.replace("overlay.overlay.", "overlay."), v) for n, v in f3.xattrs))
    )
    assert view3 == view, diff_snapshots(view, view3)


UMOCI = shutil.which("umoci")


@pytest.mark.skipif(UMOCI is None, reason="umoci not installed (Debian: apt-get install umoci)")
def test_umoci_reads_the_layers(layers, tmp_path):
    """umoci (an OCI image tool) stacks our exported lower and upper and unpacks the same tree that the
    union shows; a layer umoci generates imports back as an upper with the same meaning."""
    L = layers({"lower0": LOWER})
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work):
        write_through_mount(L.mnt)
    view = merged_view(tmp_path, "view", [L.upper, L.lower])
    base, top = tmp_path / "base.tar", tmp_path / "top.tar"
    assert layer("export", L.lower, base).returncode == 0
    assert layer("export", L.upper, top).returncode == 0

    def umoci(*args):
        res = subprocess.run([UMOCI, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert res.returncode == 0, f"umoci {args}: {res.stderr}"
        return res

    umoci("init", "--layout", "img")
    umoci("new", "--image", "img:t")
    umoci("raw", "add-layer", "--image", "img:t", base)
    umoci("raw", "add-layer", "--image", "img:t", top)
    umoci("unpack", "--image", "img:t", "bundle")
    rootfs = tmp_path / "bundle" / "rootfs"
    got = tree_snapshot(rootfs)
    got.pop("."), view.pop(".")
    assert got == view, diff_snapshots(view, got)

    # umoci writes a layer of its own (repack); import it over an empty dir and use it as an upper
    (rootfs / "etc" / "hosts").unlink()
    shutil.rmtree(rootfs / "bin")
    (rootfs / "opt").mkdir()
    (rootfs / "opt" / "app").write_text("app\n")
    umoci("repack", "--image", "img:t2", "bundle")
    manifest_layers = _layers_of(tmp_path / "img", "t2")
    blob = tmp_path / "img" / "blobs" / "sha256" / manifest_layers[-1].split(":", 1)[1]
    up = tmp_path / "umoci-upper"
    res = layer("import", blob, up)
    assert res.returncode == 0, res.stderr
    res = layer("diff", up, L.upper, L.lower)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode().splitlines()
    assert {"D /bin", "D /etc/hosts", "A /opt", "A /opt/app"} <= set(out), out


def _layers_of(layout: Path, tag: str) -> list:
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            digest = m["digest"].split(":", 1)[1]
            manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
            return [l["digest"] for l in manifest["layers"]]
    raise AssertionError(f"tag {tag} not in {index}")
