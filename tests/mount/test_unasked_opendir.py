"""Directories opened by the kernel without an OPENDIR (zero-message opendir, native backend).

Where the kernel offers FUSE_NO_OPENDIR_SUPPORT, the native backend answers the first OPENDIR ENOSYS:
from then on the kernel opens directories itself, with handle 0 and its cache of the listing kept, and
sends no OPENDIR or RELEASEDIR (native_operations.py). Seen from outside: the requests the kernel sends
(`fuse:fuse_request_send`), and what listings show. A listing read in pieces by two readers at once,
with names made and removed between the pieces, gives each reader every name that was there all along
exactly once (each reader goes on in its own snapshot: fuse/directories.py); changes made through the
mount show in the next listing; with allow_root the daemon still hears of every open of a directory.
"""

import os

import pytest

from tests.helpers.fuserequests import requests_counted
from tests.util import FUSE_SKIP_REASON, mount_pyunionfs
from unionfs.options import default_backend
from unionfs.protocol import abi

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(120),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
    pytest.mark.skipif(default_backend() != "native", reason="pyfuse3 always answers opendir"),
]

NAMES = 600  # several replies' worth of a readdir, as getdents reads them


def _layers(root, names=NAMES):
    lower, upper, work, mnt = root / "lower", root / "upper", root / "work", root / "mnt"
    for d in (lower / "d" / "sub", upper, work, mnt):
        d.mkdir(parents=True)
    for i in range(names):
        (lower / "d" / f"f{i:04d}").write_bytes(b"x")
    return lower, upper, work, mnt


def _walk(mnt):
    for _root, dirs, files in os.walk(mnt):
        for name in files + dirs:
            os.lstat(os.path.join(_root, name))


def test_a_warm_walk_sends_no_opendir_and_no_listing(tmp_path):
    lower, upper, work, mnt = _layers(tmp_path)
    with mount_pyunionfs(mnt, [lower], upper, work):
        _walk(mnt)  # the first OPENDIR is answered ENOSYS; the listings fill the kernel's cache
        opcodes = (abi.OPENDIR, abi.RELEASEDIR, abi.READDIR, abi.READDIRPLUS)
        with requests_counted(tmp_path, mnt, opcodes) as counter:
            for _ in range(3):
                _walk(mnt)
            warm = counter.count()
        with requests_counted(tmp_path, mnt, (abi.OPENDIR, abi.RELEASEDIR)) as counter:
            (mnt / "d" / "new").write_bytes(b"new")
            os.unlink(mnt / "d" / "f0000")
            names = os.listdir(mnt / "d")
            opens = counter.count()
        assert "new" in names and "f0000" not in names and len(names) == NAMES + 1
        assert sorted(os.listdir(upper / "d")) == ["f0000", "new"]  # a whiteout and the new file
    assert warm == 0, warm
    assert opens == 0, opens


def test_two_readers_in_pieces_each_see_every_name_once(tmp_path):
    long = "x" * 120  # ~250 names a getdents buffer: each reader reads the directory in several pieces
    lower, upper, work, mnt = _layers(tmp_path, names=0)
    for i in range(NAMES):
        (lower / "d" / f"f{i:04d}{long}").write_bytes(b"x")
    old = {f"f{i:04d}{long}" for i in range(NAMES)} | {"sub"}
    made, removed = set(), set()
    with mount_pyunionfs(mnt, [lower], upper, work):
        d = mnt / "d"
        # Each change drops the kernel's cache of the listing, so both readers go on reading from the
        # daemon, a getdents buffer at a time, while names come and go between their reads.
        a, b = os.scandir(d), os.scandir(d)
        seen_a, seen_b = [], []
        for step in range(NAMES + 10):
            for it, seen in ((a, seen_a), (b, seen_b)):
                entry = next(it, None)
                if entry is not None:
                    seen.append(entry.name)
            if step % 97 == 5:
                made.add(f"made{step}")
                (d / f"made{step}").write_bytes(b"m")
            if step % 89 == 7:
                gone = f"f{NAMES - 1 - step // 89:04d}{long}"
                removed.add(gone)
                os.unlink(d / gone)
        a.close()
        b.close()
        final = set(os.listdir(d))
    for seen in (seen_a, seen_b):
        assert len(seen) == len(set(seen)), "a name listed twice"
        assert old - removed <= set(seen), sorted(old - removed - set(seen))[:3]
        assert set(seen) <= old | made
    assert final == (old - removed) | made


def test_rewinddir_lists_again(tmp_path):
    lower, upper, work, mnt = _layers(tmp_path, names=300)
    with mount_pyunionfs(mnt, [lower], upper, work):
        fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
        try:
            first = os.listdir(fd)
            os.lseek(fd, 0, os.SEEK_SET)  # rewinddir
            (mnt / "d" / "later").write_bytes(b"l")
            again = os.listdir(fd)
        finally:
            os.close(fd)
    assert len(first) == 301 and len(set(first)) == 301  # and "sub"
    assert set(again) == set(first) | {"later"}


def test_allow_root_still_hears_of_every_open(tmp_path):
    lower, upper, work, mnt = _layers(tmp_path, names=3)
    with mount_pyunionfs(mnt, [lower], upper, work, ["allow_root"]):
        os.listdir(mnt / "d")
        with requests_counted(tmp_path, mnt, (abi.OPENDIR,)) as counter:
            for _ in range(3):
                os.listdir(mnt / "d")
            opens = counter.count()
    assert opens == 3, opens
