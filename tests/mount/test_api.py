"""The embedded Python API: unionfs.mount / UnionMount / MountError, on real mounts."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import time

import pytest

import unionfs
from tests.util import is_mountpoint, mounts_under, unmount
from unionfs import DaemonDied, MountError, UnionMount
from unionfs.embed.api import mount

pytestmark = pytest.mark.timeout(60)


def _layers(tmp_path):
    low, up, work, mnt = (tmp_path / n for n in ("lower", "upper", "work", "mnt"))
    for d in (low, up, work, mnt):
        d.mkdir()
    (low / "f1").write_text("lower f1")
    (low / "f2").write_text("lower f2")
    return low, up, work, mnt


def _no_daemon(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie would still answer; Popen.wait reaped it, so a live pid is a real process
    return False


def test_mount_success_and_unmount(tmp_path):
    low, up, work, mnt = _layers(tmp_path)
    with mount([low], up, work, mountpoint=mnt) as m:
        assert m.alive and is_mountpoint(mnt)
        assert m.mountpoint == mnt
        assert sorted(os.listdir(mnt)) == ["f1", "f2"]
        (mnt / "f1").write_text("new")
        os.unlink(mnt / "f2")
        pid = m.pid
    assert not is_mountpoint(mnt)
    assert not m.alive and m.returncode == 0
    assert _no_daemon(pid)
    assert (up / "f1").read_text() == "new" and (low / "f1").read_text() == "lower f1"
    st = os.lstat(up / "f2")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_start_stop_long_lived_and_temp_mountpoint(tmp_path):
    low, up, work, _ = _layers(tmp_path)
    m = UnionMount(str(low), str(up), str(work), options=["timeout=0"])
    assert not m.alive and m.stop() is None
    m.start()
    try:
        mnt = m.mountpoint
        assert m.alive and (mnt / "f1").read_text() == "lower f1"
        with pytest.raises(RuntimeError):
            m.start()
    finally:
        rc = m.stop()
    assert rc == 0 and m.stop() == 0  # idempotent
    assert not os.path.exists(mnt), "the temporary mount point is removed"


def test_body_raises_still_unmounts(tmp_path):
    low, up, work, mnt = _layers(tmp_path)
    with pytest.raises(ZeroDivisionError):
        with mount(low, up, work, mountpoint=mnt) as m:
            assert m.alive
            1 / 0  # noqa: B018 (raises inside the with block)
    assert not is_mountpoint(mnt)
    assert m.returncode == 0


def test_daemon_killed_mid_body(tmp_path):
    low, up, work, mnt = _layers(tmp_path)
    with pytest.raises(DaemonDied) as info:
        with mount(low, up, work, mountpoint=mnt) as m:
            os.kill(m.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while m.alive and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not m.alive
            with pytest.raises(OSError) as err:
                os.listdir(mnt)
            assert err.value.errno == errno.ENOTCONN
    assert info.value.returncode == -signal.SIGKILL
    assert isinstance(info.value, MountError)
    assert not is_mountpoint(mnt), "the dead mount is removed"
    os.listdir(mnt)  # an ordinary empty directory again


def test_daemon_killed_and_body_raises_keeps_body_error(tmp_path):
    low, up, work, mnt = _layers(tmp_path)
    with pytest.raises(OSError) as info:
        with mount(low, up, work, mountpoint=mnt) as m:
            os.kill(m.pid, signal.SIGKILL)
            m._proc.wait(10)
            os.listdir(mnt)
    assert info.value.errno == errno.ENOTCONN
    assert not is_mountpoint(mnt)


@pytest.mark.parametrize(
    "case", ["missing-lower", "workdir-not-empty", "upper-without-work", "bad-option", "already-mounted"]
)
def test_refused_mount_raises_mount_error(tmp_path, case):
    low, up, work, mnt = _layers(tmp_path)
    args = dict(lowers=[low], upper=up, work=work, mountpoint=mnt)
    expect = None
    if case == "missing-lower":
        args["lowers"] = [tmp_path / "nope"]
        expect = f"lowerdir {tmp_path / 'nope'} does not exist"
    elif case == "workdir-not-empty":
        (work / "junk").write_text("x")
        expect = f"workdir {work} is not empty (holds junk)"
    elif case == "upper-without-work":
        args["work"] = None
        expect = "upperdir and workdir must be given together"
    elif case == "bad-option":
        args["options"] = ["frobnicate=1"]
        expect = "unknown option: frobnicate=1"
    outer = None
    if case == "already-mounted":
        outer = mount([low], mountpoint=mnt)  # read-only, same mount point
        expect = f"mountpoint {mnt} is already a mount point"
    try:
        before = {m.mountpoint for m in mounts_under(tmp_path)}
        with pytest.raises(MountError) as info:
            with mount(**args):
                pytest.fail("the body must not run")
        err = info.value
        assert err.message == expect and str(err) == expect
        assert err.returncode == 1
        assert f"pyunionfs: {expect}" in err.log
        assert {m.mountpoint for m in mounts_under(tmp_path)} == before, "nothing new mounted"
        if outer is not None:
            assert outer.alive, "the other mount at that place is left alone"
    finally:
        if outer is not None:
            outer.stop()
    assert not mounts_under(tmp_path)
    assert os.listdir(work) in ([], ["junk"])  # nothing written


def test_mount_timeout_kills_daemon(tmp_path, monkeypatch):
    # A "daemon" that never mounts: start() gives up after `timeout` and leaves nothing running.
    low, up, work, mnt = _layers(tmp_path)
    m = UnionMount(low, up, work, mnt, timeout=0.5)
    monkeypatch.setattr(m, "argv", lambda: ["sleep", "30"])
    with pytest.raises(MountError) as info:
        m.start()
    assert info.value.returncode is None and "not mounted after" in info.value.message
    assert m._proc.poll() is not None and not is_mountpoint(mnt)


def test_busy_mount_is_unmounted_lazily(tmp_path):
    low, up, work, mnt = _layers(tmp_path)
    with mount(low, up, work, mountpoint=mnt, stop_timeout=0.5) as m:
        f = open(mnt / "f1")  # keeps the mount busy: fusermount3 -u fails, -uz detaches it
    try:
        assert not is_mountpoint(mnt)
        assert m.returncode == 0  # SIGTERM after stop_timeout: a clean exit
    finally:
        try:
            f.close()  # the connection is gone; close may or may not say so (no FLUSH is sent)
        except OSError:
            pass


def test_package_exports():
    assert unionfs.UnionMount is UnionMount and unionfs.MountError is MountError
    assert issubclass(MountError, RuntimeError) and not issubclass(MountError, OSError)
    assert issubclass(DaemonDied, MountError)


def test_unionfs_mount_stays_the_api_function():
    """The daemon module is unionfs.fuse.daemon, so importing it (cli.py does) cannot shadow unionfs.mount."""
    import subprocess
    import sys

    code = (
        "import unionfs, unionfs.cli, unionfs.fuse.daemon, unionfs.embed.api; "
        "assert unionfs.mount is unionfs.embed.api.mount, unionfs.mount"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="a bind mount over the mount point needs root")
def test_stop_leaves_a_filesystem_mounted_over_the_union_alone(tmp_path):
    """An unmount by the path takes the top mount there: with another filesystem mounted over the union
    (here a bind mount), stop() unmounts nothing, ends the daemon, and says why; the other filesystem
    stays, and the union under it is dead until unmounted."""
    low, up, work, mnt = _layers(tmp_path)
    cover = tmp_path / "cover"
    cover.mkdir()
    (cover / "mine").write_text("mine")
    m = UnionMount(str(low), str(up), str(work), mountpoint=str(mnt))
    m.start()
    pid = m.pid
    try:
        assert (mnt / "f1").read_text() == "lower f1"
        subprocess.run(["mount", "--bind", str(cover), str(mnt)], check=True, capture_output=True, timeout=30)
        try:
            started = time.monotonic()
            with pytest.raises(MountError, match="another filesystem is mounted over it"):
                m.stop()
            assert time.monotonic() - started < m.stop_timeout  # not waited for: it was not unmounted
            assert (mnt / "mine").read_text() == "mine"
            assert not m.alive and _no_daemon(pid)
        finally:
            if os.stat(mnt).st_dev == os.stat(cover).st_dev:
                subprocess.run(["umount", str(mnt)], check=True, capture_output=True, timeout=30)
    finally:
        m.stop()
        if is_mountpoint(mnt):
            unmount(mnt)
    assert not is_mountpoint(mnt)
