"""Hostile layers through a real pyunionfs mount: whatever the layers hold, the daemon reads and writes
only inside the layer directories.

- Symlinks planted before mounting, in lowers and in the upper: absolute to a canary directory outside the
  layers, `..`-relative to it, self loops and two-link loops, a directory in one layer that is a symlink
  in another (both ways round, lower/lower and upper/lower). Every operation that reaches the daemon is run
  on each of them (the test itself never follows a symlink: it uses lstat, O_NOFOLLOW, *_nofollow calls, so
  that only the daemon could reach the canary).
- Upper directories the daemon has already resolved are swapped for symlinks behind the live mount, and
  the operations run again inside them.
- A canary tree outside the layers must stay byte-identical (hash_tree), nothing new may appear next to
  it or next to the layers, and the lowers must not change.
- Names `.wh.x`, `.wh..wh..opq` and the xattrs `user.overlay.opaque` / `trusted.overlay.opaque` set through
  the mount neither hide nor reveal anything, also after a remount.
- A full upper filesystem: the writer gets ENOSPC, a copy-up that does not fit fails with ENOSPC and
  leaves nothing in the upper or in work/work, and the mount keeps working.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from tests.util import WHITEOUT, Opaque, Symlink, diff_snapshots, hash_tree, make_layers, mount_pyunionfs, tree_snapshot

pytestmark = pytest.mark.timeout(120)


def _try(fn, *args, **kw):
    """Run an operation; return 'ok' or the errno name (the safety check comes afterwards)."""
    try:
        fn(*args, **kw)
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def _write_nofollow(path, data=b"data", flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    fd = os.open(path, flags | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _chmod_nofollow(path, mode):
    # Linux has no lchmod: chmod through an O_PATH fd reaches the entry itself (a symlink: EOPNOTSUPP).
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    try:
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


class Canary:
    """A tree outside the layers that nothing may touch, and a record of its surroundings."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.outside = tmp_path / "outside"
        self.dir = self.outside / "canary"
        (self.dir / "sub").mkdir(parents=True)
        (self.dir / "file").write_bytes(b"precious")
        (self.dir / "sub" / "deep").write_bytes(b"deep")
        (self.dir / "ro").write_bytes(b"read-only")
        os.chmod(self.dir / "ro", 0o444)
        os.setxattr(self.dir / "file", "user.keep", b"1")

    def record(self, *also):
        self.hash = hash_tree(self.outside)
        self.snap = tree_snapshot(self.outside)
        self.listings = {d: sorted(os.listdir(d)) for d in (self.tmp, self.outside, *also)}

    def check(self):
        now = tree_snapshot(self.outside)
        assert hash_tree(self.outside) == self.hash, "canary changed:\n" + "\n".join(diff_snapshots(self.snap, now))
        for d, names in self.listings.items():
            assert sorted(os.listdir(d)) == names, f"new entries next to the layers/canary in {d}"


def hostile_spec(canary: Canary):
    c = str(canary.dir)
    return {
        "lower0": {
            "file": "lower file",
            "abs": Symlink(c),
            "absfile": Symlink(c + "/file"),
            "rel": Symlink("../../outside/canary"),
            "relfile": Symlink("../../outside/canary/file"),
            "loop": Symlink("loop"),
            "loopa": Symlink("loopb"),
            "loopb": Symlink("loopa"),
            "d1/inner": "d1 inner",  # a directory here, a symlink in lower1
            "d2": Symlink(c),  # a symlink here, a directory in lower1
            "d5": Symlink("../../outside/canary"),  # the same, relative
            "d3/z": "hidden by the upper symlink",  # a directory here, a symlink in the upper
            "d4": Symlink(c),  # a symlink here, a directory in the upper
            "real/f": "real f",
            "real/esc": Symlink("../../../outside/canary"),
            "deep/a/b/f": "deep f",
            "cu/f1": "cu 1",
            "cu/f2": "cu 2",
            "cu/sub/f3": "cu 3",
        },
        "lower1": {
            "d1": Symlink(c),
            "d2/x": "d2 x",
            "d5/y": "d5 y",
            "real/g": "real g",
            "real/lesc": Symlink("../../../outside/canary/sub"),
        },
        "upper": {
            "uabs": Symlink(c),
            "urel": Symlink("../../outside/canary"),
            "uloop": Symlink("uloop"),
            "d3": Symlink(c),
            "d4/w": "upper w",
            "real/uesc": Symlink("../../../outside/canary"),
        },
    }


SYMLINKS = [
    "abs",
    "absfile",
    "rel",
    "relfile",
    "loop",
    "loopa",
    "d2",
    "d5",
    "uabs",
    "urel",
    "uloop",
    "d3",
    "real/esc",
    "real/lesc",
    "real/uesc",
]
DIRS = {"d1": "inner", "d4": "w", "real": "f", "deep/a/b": "f", "cu": "f1"}


def symlink_battery(mnt, name, canary: Canary):
    """Everything the daemon can be asked about a symlink entry, without the caller following it."""
    p = os.path.join(mnt, name)
    r = {}
    r["lstat"] = _try(os.lstat, p)
    r["readlink"] = _try(os.readlink, p)
    r["create-at"] = _try(_write_nofollow, p)  # ELOOP from the kernel
    r["create-excl"] = _try(_write_nofollow, p, flags=os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    r["mkdir-at"] = _try(os.mkdir, p)
    r["utime"] = _try(os.utime, p, ns=(1, 1), follow_symlinks=False)  # copy-up of the symlink
    r["lchown"] = _try(os.chown, p, 0, 0, follow_symlinks=False)
    r["chmod"] = _try(_chmod_nofollow, p, 0o777)
    r["setxattr"] = _try(os.setxattr, p, "trusted.hostile", b"v", follow_symlinks=False)
    r["link"] = _try(os.link, p, p + ".hl", follow_symlinks=False)
    r["rename"] = _try(os.rename, p, p + ".mv")
    if r["rename"] == "ok":
        r["rename-back"] = _try(os.rename, p + ".mv", p)
    r["unlink-hl"] = _try(os.unlink, p + ".hl")
    r["unlink"] = _try(os.unlink, p)
    r["recreate"] = _try(os.symlink, str(canary.dir), p)  # a fresh hostile symlink in the upper
    r["readdir"] = _try(os.listdir, os.path.dirname(p))
    return r


def _at(dfd, name, flags=os.O_PATH):
    return os.open(name, flags | os.O_NOFOLLOW, 0o644, dir_fd=dfd)


def _write_at(dfd, name, data=b"data", flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    fd = _at(dfd, name, flags)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _listdir_at(dfd, name):
    fd = _at(dfd, name, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def _on_entry(dfd, name, fn, *args):
    fd = _at(dfd, name)
    try:
        fn(f"/proc/self/fd/{fd}", *args)
    finally:
        os.close(fd)


def dir_battery(dfd, existing, only=None):
    """Create, mkdir, copy-up, unlink, rename, link, chmod, setxattr and readdir inside a directory.

    Everything goes through `dfd`, a descriptor of the merged directory opened before any swap, so the
    calling process never walks a path through a symlink: whatever reaches outside, the daemon did.
    """
    r = {}
    if only is not None:
        ops = {
            "readdir": lambda: os.listdir(dfd),
            "create": lambda: _write_at(dfd, "new"),
            "mkdir": lambda: os.mkdir("nd", dir_fd=dfd),
            "copy-up": lambda: _write_at(dfd, existing, b"changed", flags=os.O_WRONLY | os.O_APPEND),
            "chmod-dir": lambda: os.chmod(dfd, 0o750),
            "setxattr-dir": lambda: os.setxattr(dfd, "user.h", b"1"),
            "link": lambda: os.link(existing, "hl", src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False),
            "rename": lambda: os.rename(existing, "new2", src_dir_fd=dfd, dst_dir_fd=dfd),
            "unlink": lambda: os.unlink(existing, dir_fd=dfd),
            "symlink": lambda: os.symlink("../../outside/canary", "esc2", dir_fd=dfd),
            "rmdir": lambda: os.rmdir("sub", dir_fd=dfd),
            "copy-up-deeper": lambda: _write_at(dfd, "sub/f3", b"y", flags=os.O_WRONLY | os.O_APPEND),
        }
        return {only: _try(ops[only])}
    r["readdir"] = _try(os.listdir, dfd)
    r["create"] = _try(_write_at, dfd, "new")
    r["mkdir"] = _try(os.mkdir, "nd", dir_fd=dfd)
    r["copy-up"] = _try(_write_at, dfd, existing, b"changed", flags=os.O_WRONLY | os.O_APPEND)
    r["chmod-file"] = _try(_on_entry, dfd, "new", os.chmod, 0o600)
    r["chmod-dir"] = _try(os.chmod, dfd, 0o750)
    r["setxattr-dir"] = _try(os.setxattr, dfd, "user.h", b"1")
    r["setxattr-file"] = _try(_on_entry, dfd, existing, os.setxattr, "user.h", b"1")
    r["link"] = _try(os.link, existing, "hl", src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
    r["rename"] = _try(os.rename, "new", "new2", src_dir_fd=dfd, dst_dir_fd=dfd)
    r["unlink"] = _try(os.unlink, existing, dir_fd=dfd)
    r["symlink"] = _try(os.symlink, "../../outside/canary", "esc2", dir_fd=dfd)
    r["rmdir"] = _try(os.rmdir, "nd", dir_fd=dfd)
    r["readdir-sub"] = _try(_listdir_at, dfd, "sub")
    r["copy-up-deeper"] = _try(_write_at, dfd, "sub/f3", b"y", flags=os.O_WRONLY | os.O_APPEND)
    r["rmdir-sub"] = _try(os.rmdir, "sub", dir_fd=dfd)
    r["readdir-after"] = _try(os.listdir, dfd)
    return r


def open_dirs(mnt, names):
    return {d: os.open(os.path.join(mnt, d), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW) for d in names}


@pytest.fixture
def canary(tmp_path):
    return Canary(tmp_path)


def test_planted_symlinks(tmp_path, canary):
    L = make_layers(tmp_path / "u", hostile_spec(canary))
    canary.record(L.root)
    lowers_before = L.lower_snapshots()
    results = {}
    with mount_pyunionfs(*L.mount_args()):
        mnt = str(L.mnt)
        results["readdir /"] = sorted(os.listdir(mnt))
        # a directory over a symlink: merged with nothing below; a symlink over a directory: a symlink
        assert sorted(os.listdir(os.path.join(mnt, "d1"))) == ["inner"]
        assert os.path.islink(os.path.join(mnt, "d2")) and os.path.islink(os.path.join(mnt, "d3"))
        assert sorted(os.listdir(os.path.join(mnt, "d4"))) == ["w"]
        assert sorted(os.listdir(os.path.join(mnt, "real"))) == ["esc", "f", "g", "lesc", "uesc"]
        fds = open_dirs(mnt, DIRS)
        try:
            for d, existing in DIRS.items():
                results[d] = dir_battery(fds[d], existing)
        finally:
            for fd in fds.values():
                os.close(fd)
        for name in SYMLINKS:
            results[name] = symlink_battery(mnt, name, canary)
        results["readdir / after"] = sorted(os.listdir(mnt))
        # the operations did happen (this is not a test of errors only)
        assert results["d1"]["create"] == results["d1"]["copy-up"] == "ok"
        assert results["deep/a/b"]["copy-up"] == "ok"
        assert results["abs"]["utime"] == results["abs"]["unlink"] == "ok"
        assert results["loop"]["create-at"] == "ELOOP"
    canary.check()
    assert L.lower_snapshots() == lowers_before
    # what the daemon wrote is inside the upper: copied-up and re-created symlinks still point outside
    assert os.readlink(L.upper / "abs") == str(canary.dir)
    assert (L.upper / "d1" / "new2").is_file() and not (canary.dir / "new2").exists()


BATTERY_OPS = [
    "readdir",
    "create",
    "mkdir",
    "copy-up",
    "chmod-dir",
    "setxattr-dir",
    "link",
    "rename",
    "unlink",
    "symlink",
    "rmdir",
    "copy-up-deeper",
]


def test_upper_dirs_swapped_for_symlinks_behind_the_mount(tmp_path, canary):
    """Upper directories the daemon resolved are swapped for symlinks to the canary behind the mount.

    The kernel keeps the merged directory's inode and sends requests for it; the daemon must find the
    symlink and refuse, never write through it. Two ways:
    - the directory itself is swapped: the kernel marks the inode bad (EIO) as soon as it sees the new
      type, so each operation gets its own freshly swapped directory and runs first in it;
    - a grandparent is swapped: the kernel's inode of the directory stays valid and every operation
      reaches the daemon.
    """
    L = make_layers(tmp_path / "u", hostile_spec(canary))
    results = {}
    with mount_pyunionfs(*L.mount_args(), options=["timeout=300"]):
        mnt = str(L.mnt)
        # upper-only directories, one per operation, each with a file, a subdirectory and sub/f3
        direct = {}
        for i, op in enumerate(BATTERY_OPS):
            d = f"sw{i}"
            os.mkdir(os.path.join(mnt, d))
            os.mkdir(os.path.join(mnt, d, "sub"))
            _write_nofollow(os.path.join(mnt, d, "a"))
            _write_nofollow(os.path.join(mnt, d, "sub", "f3"))
            direct[d] = op
        # grandparents: an upper-only tree and a lower tree copied up by a copy-up in it
        os.makedirs(os.path.join(mnt, "gp", "in", "sub"))
        _write_nofollow(os.path.join(mnt, "gp", "in", "a"))
        _write_nofollow(os.path.join(mnt, "gp", "in", "sub", "f3"))
        os.mkdir(os.path.join(mnt, "cu", "in"))
        _write_nofollow(os.path.join(mnt, "cu", "in", "a"))
        os.mkdir(os.path.join(mnt, "cu", "in", "sub"))
        _write_nofollow(os.path.join(mnt, "cu", "in", "sub", "f3"))
        _write_nofollow(os.path.join(mnt, "deep", "a", "b", "f"), b"x", flags=os.O_WRONLY | os.O_APPEND)
        grand = {"gp/in": "a", "cu/in": "a", "deep/a/b": "f"}
        for d in list(direct) + list(grand):
            os.listdir(os.path.join(mnt, d))
        fds = open_dirs(mnt, list(direct) + list(grand))
        try:
            # Swap behind the daemon's back: absolute and relative symlinks; the canary has a `sub` too.
            swaps = {d: (str(canary.dir) if i % 2 else "../../outside/canary") for i, d in enumerate(direct)}
            swaps.update({"gp": str(canary.dir), "cu": "../../outside/canary", "deep/a": "../../../outside/canary"})
            for d, target in swaps.items():
                os.rename(L.upper / d, L.upper / (d + ".moved"))
                os.symlink(target, L.upper / d)
            canary.record(L.root)
            for d, op in direct.items():
                results[d] = (op, dir_battery(fds[d], "a", only=op)[op])
            for d, existing in grand.items():
                results[d] = dir_battery(fds[d], existing)
        finally:
            for fd in fds.values():
                os.close(fd)
        for d in list(swaps) + ["gp/in", "cu/in"]:
            results[d + " rename"] = _try(os.rename, os.path.join(mnt, d), os.path.join(mnt, d + "-r"))
        # the mount is still alive and serving
        assert "file" in os.listdir(mnt)
        assert open(os.path.join(mnt, "file"), "rb").read() == b"lower file"
    canary.check()
    # the requests did reach the daemon and were refused (ELOOP: the daemon met the symlink)
    assert any(r == "ELOOP" for d in grand for r in results[d].values()), results
    for d in swaps:
        assert os.path.islink(L.upper / d) or not os.path.lexists(L.upper / d), (d, results)


def test_whiteout_names_and_opaque_xattrs_through_the_mount(tmp_path):
    L = make_layers(
        tmp_path / "u",
        {
            "lower0": {"x": "x", "dir/a": "a", "op": Opaque(), "op/shown": "s", "hid": WHITEOUT, "keep/k": "k"},
            "lower1": {
                "dir/b": "b",
                "op/secret": "hidden below opaque",
                "hid": "hidden by whiteout",
                "keep/below": "below",
            },
            "upper": {},
        },
    )

    def view(mnt):
        out = {}
        for root, dirs, files in os.walk(mnt):
            rel = os.path.relpath(root, mnt)
            out[rel] = sorted(dirs + files)
        return out

    expected_before = None
    # In the kernel-exact mode `.wh.` names are ordinary and must stay so (by default they are refused
    # with EINVAL: test_whiteout_files.py).
    with mount_pyunionfs(*L.mount_args(), options=["whiteout_files=off"]):
        m = str(L.mnt)
        expected_before = view(m)
        for name in (
            ".wh.x",
            ".wh..wh..opq",
            ".wh.dir",
            ".wh.hid",
            "dir/.wh.a",
            "dir/.wh..wh..opq",
            "op/.wh.shown",
            "keep/.wh.below",
        ):
            _write_nofollow(os.path.join(m, name), b"not a whiteout")
        os.mkdir(os.path.join(m, "keep", ".wh..wh..opq"))
        for d in ("dir", "keep"):
            for ns in ("user", "trusted"):
                os.setxattr(os.path.join(m, d), f"{ns}.overlay.opaque", b"y")
                assert os.getxattr(os.path.join(m, d), f"{ns}.overlay.opaque") == b"y"
        os.setxattr(os.path.join(m, "x"), "trusted.overlay.whiteout", b"y")
        # the real marker on op is not visible, so it cannot be removed or changed into revealing
        for ns in ("trusted", "user"):
            with pytest.raises(OSError) as e:
                os.removexattr(os.path.join(m, "op"), f"{ns}.overlay.opaque")
            assert e.value.errno == errno.ENODATA
        os.setxattr(os.path.join(m, "op"), "trusted.overlay.opaque", b"n")
        after = view(m)
    for rel, names in expected_before.items():
        extra = {
            ".": {".wh.x", ".wh..wh..opq", ".wh.dir", ".wh.hid"},
            "dir": {".wh.a", ".wh..wh..opq"},
            "op": {".wh.shown"},
            "keep": {".wh.below", ".wh..wh..opq"},
        }.get(rel, set())
        assert set(after[rel]) == set(names) | extra, rel
    assert "secret" not in after["op"] and "hid" not in after["."]
    # the mount's own namespace is stored escaped; user.overlay.* is an ordinary one without userxattr
    # (as on the kernel), which neither pyunionfs nor the kernel reads as a marker in the upper
    for d in ("dir", "keep"):
        names = set(os.listxattr(L.upper / d))
        assert "trusted.overlay.opaque" not in names and "trusted.overlay.overlay.opaque" in names, names
    # after a remount the view is the same
    with mount_pyunionfs(*L.mount_args(), options=["whiteout_files=off"]):
        again = view(str(L.mnt))
        assert os.getxattr(L.mnt / "dir", "user.overlay.opaque") == b"y"
        assert (L.mnt / "dir" / "b").read_bytes() == b"b"
    assert again == after


def _free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the upper needs root")
    d = tmp_path / "small"
    d.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "i4-enospc", str(d)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield d
    finally:
        if subprocess.run(["umount", str(d)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=30)


def test_enospc_upper(tmp_path, small_fs):
    lower = tmp_path / "lower"
    lower.mkdir()
    big = os.urandom(5 << 20)
    (lower / "big").write_bytes(big)
    (lower / "small").write_bytes(b"small lower")
    (lower / "dir").mkdir()
    (lower / "dir" / "f").write_bytes(b"f")
    upper, work, mnt = small_fs / "upper", small_fs / "work", tmp_path / "mnt"
    for d in (upper, work, mnt):
        d.mkdir()
    with mount_pyunionfs(mnt, [lower], upper, work):
        # 1. fill the upper through the mount: the writer gets ENOSPC
        chunk = b"\xa5" * (256 << 10)
        written = 0
        with pytest.raises(OSError) as e:
            with open(mnt / "fill", "wb", buffering=0) as f:
                for _ in range(100):
                    written += f.write(chunk)
        assert e.value.errno == errno.ENOSPC
        assert written > (4 << 20)
        # 2. leave ~2.5 MiB free: copy-up of the 5 MiB lower file fails with ENOSPC, leaving nothing
        os.truncate(mnt / "fill", written - (5 << 19))
        assert (1 << 20) < _free(upper) < (5 << 20)
        with pytest.raises(OSError) as e:
            open(mnt / "big", "r+b").close()
        assert e.value.errno == errno.ENOSPC
        assert not os.path.lexists(upper / "big")
        assert os.listdir(work / "work") == []
        assert (mnt / "big").read_bytes() == big  # still the lower file
        # a copy-up into a directory that must be copied up first fails cleanly too
        os.truncate(mnt / "fill", written + _free(upper) - 4096)
        r = _try(_write_nofollow, mnt / "dir" / "f", b"x" * (64 << 10), flags=os.O_WRONLY | os.O_APPEND)
        assert r in ("ok", "ENOSPC")
        assert os.listdir(work / "work") == []
        # 3. the mount keeps working: reads; after freeing space, small writes and a big copy-up
        assert (mnt / "small").read_bytes() == b"small lower"
        os.unlink(mnt / "fill")
        (mnt / "note").write_bytes(b"fits now")
        with open(mnt / "big", "r+b") as f:
            f.write(b"HEAD")
        assert (mnt / "big").read_bytes() == b"HEAD" + big[4:]
        assert (upper / "big").read_bytes()[:4] == b"HEAD"
        assert sorted(os.listdir(mnt)) == ["big", "dir", "note", "small"]
    assert os.listdir(work / "work") == []
    assert (lower / "big").read_bytes() == big
