"""A union without upperdir (or with -o ro) is read-only: reads work, every change fails with EROFS."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests.util import DIR, KERNEL_BOOKKEEPING_XATTRS, WHITEOUT, File, Symlink, hash_tree

from .conftest import union_mount

SPEC = {
    "lower0": {
        "f": File("top\n", mode=0o644, xattrs={"user.k": b"v"}),
        "d": DIR,
        "d/a": "a0\n",
        "gone": WHITEOUT,
        "link": Symlink("f"),
        "empty": DIR,
    },
    "lower1": {"f": "bottom\n", "d": DIR, "d/b": "b1\n", "gone": "gone\n", "g": "g1\n"},
}

# name -> callable(mnt) performing one change
CHANGES = {
    "create": lambda m: os.open(m / "new", os.O_CREAT | os.O_WRONLY, 0o644),
    "create_in_dir": lambda m: os.open(m / "d/new", os.O_CREAT | os.O_WRONLY, 0o644),
    "open_wronly": lambda m: os.open(m / "f", os.O_WRONLY),
    "open_rdwr": lambda m: os.open(m / "g", os.O_RDWR),
    "open_trunc": lambda m: os.open(m / "f", os.O_RDONLY | os.O_TRUNC),
    "truncate": lambda m: os.truncate(m / "f", 0),
    "chmod": lambda m: os.chmod(m / "f", 0o600),
    "chmod_dir": lambda m: os.chmod(m / "d", 0o700),
    "chown": lambda m: os.chown(m / "f", 1000, 1000),
    "utime": lambda m: os.utime(m / "f", ns=(1, 1)),
    "utime_now": lambda m: os.utime(m / "f"),
    "mkdir": lambda m: os.mkdir(m / "nd"),
    "unlink": lambda m: os.unlink(m / "f"),
    "unlink_symlink": lambda m: os.unlink(m / "link"),
    "rmdir": lambda m: os.rmdir(m / "empty"),
    "symlink": lambda m: os.symlink("f", m / "sl"),
    "link": lambda m: os.link(m / "f", m / "hl"),
    "rename": lambda m: os.rename(m / "f", m / "f2"),
    "rename_dir": lambda m: os.rename(m / "d", m / "d2"),
    "mkfifo": lambda m: os.mkfifo(m / "fifo"),
    "setxattr": lambda m: os.setxattr(m / "f", "user.new", b"x"),
    "removexattr": lambda m: os.removexattr(m / "f", "user.k"),
}


@pytest.fixture
def ro_layers(layers):
    return layers(SPEC, readonly=True)


def check_reads(m):
    assert sorted(os.listdir(m)) == ["d", "empty", "f", "g", "link"]
    assert sorted(os.listdir(m / "d")) == ["a", "b"]
    assert (m / "f").read_bytes() == b"top\n"
    assert (m / "d/b").read_bytes() == b"b1\n"
    assert os.readlink(m / "link") == "f"
    assert (m / "link").read_bytes() == b"top\n"
    assert os.getxattr(m / "f", "user.k") == b"v"
    assert not os.path.lexists(m / "gone")
    assert stat.S_ISDIR(os.stat(m / "d").st_mode)
    os.statvfs(m)


def test_readonly_reads(ro_layers, impl):
    L = ro_layers
    with union_mount(impl, L):
        check_reads(L.mnt)


def test_readonly_changes_fail_erofs(ro_layers, impl):
    L = ro_layers
    hashes = [hash_tree(l) for l in L.lowers]
    failures = []
    with union_mount(impl, L):
        for name, change in CHANGES.items():
            try:
                r = change(L.mnt)
            except OSError as exc:
                if exc.errno != errno.EROFS:
                    failures.append(f"{name}: {errno.errorcode.get(exc.errno, exc.errno)} instead of EROFS")
            else:
                if isinstance(r, int):
                    os.close(r)
                failures.append(f"{name}: succeeded")
        check_reads(L.mnt)
    assert not failures, "\n".join(failures)
    assert [hash_tree(l) for l in L.lowers] == hashes


def test_ro_option_with_upper(layers, impl):
    """`-o ro` makes a union read-only even with an upper: nothing lands in upper or work."""
    L = layers(dict(SPEC, upper={"u": "upper file\n"}))
    ign = dict(ignore_xattrs=KERNEL_BOOKKEEPING_XATTRS)  # the kernel stamps its uuid on the upper root
    before = [hash_tree(d, **ign) for d in [*L.lowers, L.upper]]
    failures = []
    with union_mount(impl, L, ["ro"]):
        assert (L.mnt / "u").read_bytes() == b"upper file\n"
        for name in ("create", "open_wronly", "chmod", "unlink", "mkdir", "setxattr", "rename"):
            try:
                r = CHANGES[name](L.mnt)
            except OSError as exc:
                if exc.errno != errno.EROFS:
                    failures.append(f"{name}: {errno.errorcode.get(exc.errno, exc.errno)} instead of EROFS")
            else:
                if isinstance(r, int):
                    os.close(r)
                failures.append(f"{name}: succeeded")
    assert not failures, "\n".join(failures)
    assert [hash_tree(d, **ign) for d in [*L.lowers, L.upper]] == before
