"""unionfs.embed.lifecycle without FUSE: the wait for a mount ends when the mount appears, when the
process exits, or at the timeout, and unmount/reap clean up (a tmpfs stands in for a daemon's mount)."""

import os
import subprocess
import sys
import time

import pytest

from unionfs.embed import lifecycle


def _start(script: str) -> subprocess.Popen:
    return lifecycle.start_daemon([sys.executable, "-c", script], subprocess.DEVNULL)


def test_the_wait_ends_when_the_process_exits_without_mounting(tmp_path):
    mnt = lifecycle.real_mountpoint(tmp_path)
    proc = _start("import time, sys; time.sleep(0.2); sys.exit(3)")
    t0 = time.monotonic()
    assert lifecycle.wait_for_mount(mnt, proc, 30) is None
    assert time.monotonic() - t0 < 5  # woken by the exit, not by the 30 s timeout
    assert proc.poll() == 3


def test_the_wait_ends_at_the_timeout_while_the_process_lives(tmp_path):
    proc = _start("import time; time.sleep(60)")
    try:
        t0 = time.monotonic()
        assert lifecycle.wait_for_mount(lifecycle.real_mountpoint(tmp_path), proc, 0.3) is None
        assert 0.25 < time.monotonic() - t0 < 5
        assert proc.poll() is None
    finally:
        assert lifecycle.reap(proc, 0.1) is not None  # it had to be ended
    assert proc.returncode is not None


def test_reap_of_a_process_that_exits_by_itself_says_nothing():
    proc = _start("pass")
    assert lifecycle.reap(proc, 10) is None and proc.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_the_wait_sees_a_new_mount_and_unmount_removes_it(tmp_path):
    point = tmp_path / "mnt"
    point.mkdir()
    mnt = lifecycle.real_mountpoint(point)
    before = lifecycle.mounts_at(mnt)
    assert before == {}
    script = (
        "import subprocess, sys, time; time.sleep(0.3); "
        f"subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'lifecycle-test', {mnt!r}], check=True); "
        "time.sleep(60)"
    )
    proc = _start(script)
    try:
        t0 = time.monotonic()
        found = lifecycle.wait_for_mount(mnt, proc, 30, before=before, fstype_prefix="tmpfs")
        assert found is not None, "the tmpfs mount was not seen"
        assert time.monotonic() - t0 < 10
        assert lifecycle.mounts_at(mnt) == {found: "tmpfs"}
        # a FUSE type is asked for: the tmpfs does not count
        assert lifecycle.wait_for_mount(mnt, proc, 0.1, before=before) is None
    finally:
        gone = lifecycle.unmount(mnt, fuse=False)
        lifecycle.reap(proc, 0.1)
    assert gone and lifecycle.mounts_at(mnt) == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_unmount_by_mount_id_runs_nothing_while_another_mount_covers_it(tmp_path):
    """Every unmount command works on the path, so on the top mount there: while another mount sits on
    the one asked for, unmount() leaves both and says False; once uncovered, it unmounts that one."""
    point = tmp_path / "mnt"
    point.mkdir()
    mnt = lifecycle.real_mountpoint(point)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "lifecycle-under", mnt], check=True)
    try:
        (under,) = lifecycle.mounts_at(mnt)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "lifecycle-over", mnt], check=True)
        try:
            assert lifecycle.covered(mnt, under)
            assert lifecycle.unmount(mnt, mount_id=under, fuse=False) is False
            assert len(lifecycle.mounts_at(mnt)) == 2
        finally:
            subprocess.run(["umount", mnt], check=True)  # the top one
        assert not lifecycle.covered(mnt, under)
    finally:
        gone = lifecycle.unmount(mnt, mount_id=under, fuse=False)
    assert gone and lifecycle.mounts_at(mnt) == {}
