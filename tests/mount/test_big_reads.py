"""Big reads of lower files (native backend): the mount's readahead and the spliced READ answers.

As root the daemon raises the mount's readahead from the kernel's 128 KiB to `readahead=` (1020 KiB by
default), so a sequential read comes as READs of up to 255 pages, and answers READs of 64 KiB and more
by splicing the backing file to the device (unionfs.protocol.splice). What a user sees must not change:
every byte as in the layer, short reads only at the end of the file, O_DIRECT reads at any offset.
What changed is seen from outside: the mount's read_ahead_kb in sysfs and the READ requests the kernel
sends (`fuse:fuse_request_send`).
"""

import contextlib
import ctypes
import os
import random
import shutil
import subprocess
import time

import pytest

from tests.helpers.cli import PYTHON_M
from tests.helpers.fuserequests import requests_counted
from tests.helpers.mounting import overlay_options
from tests.helpers.processes import daemons_under, kill_daemons_under
from tests.util import FUSE_SKIP_REASON, is_mountpoint, mount_pyunionfs, unmount
from unionfs.options import default_backend
from unionfs.protocol import abi

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(120),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
    pytest.mark.skipif(default_backend() != "native", reason="readahead and splicing are the native backend's"),
]

KiB, MiB = 1 << 10, 1 << 20
SIZES = {"big": 8 * MiB, "odd": 3 * MiB + 4095, "small": 70 * KiB + 1, "page": 64 * KiB, "empty": 0}


def _layers(root):
    lower, upper, work, mnt = root / "lower", root / "upper", root / "work", root / "mnt"
    for d in (lower, upper, work, mnt):
        d.mkdir(parents=True)
    rng = random.Random(23)
    for name, size in SIZES.items():
        (lower / name).write_bytes(rng.randbytes(size))
    return lower, upper, work, mnt


def _read_all(path, bufsize: int, flags: int = 0) -> bytes:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        out = bytearray()
        while chunk := os.read(fd, bufsize):
            out += chunk
        return bytes(out)
    finally:
        os.close(fd)


def _read_ahead_kb(mnt) -> int:
    st = os.stat(mnt)
    return _bdi_read_ahead_kb(os.major(st.st_dev), os.minor(st.st_dev))


def test_every_byte_as_in_the_layer_whatever_the_read_size(tmp_path):
    lower, upper, work, mnt = _layers(tmp_path)
    with mount_pyunionfs(mnt, [lower], upper, work):
        for name in SIZES:
            want = (lower / name).read_bytes()
            for bufsize in (MiB, 200 * KiB + 3, 64 * KiB, 4 * KiB):
                assert _read_all(mnt / name, bufsize) == want, (name, bufsize)
        # pread at offsets that are not page-aligned, across the end of the file
        want = (lower / "odd").read_bytes()
        fd = os.open(mnt / "odd", os.O_RDONLY)
        try:
            for offset, size in ((1, MiB), (12345, 300 * KiB), (len(want) - 1000, MiB), (len(want) + 1, MiB)):
                assert os.pread(fd, size, offset) == want[offset : offset + size], (offset, size)
        finally:
            os.close(fd)


def _pipes(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
        except FileNotFoundError:
            pass
    return n


def test_the_daemon_splices_big_reads(tmp_path):
    """Seen from outside: the first READ of 64 KiB or more makes the daemon's two pipes (splice.py);
    small reads make none. (The event loop, which could open descriptors of its own meanwhile, is kept
    from starting by a long idle time.)"""
    lower, upper, work, mnt = _layers(tmp_path)
    env = dict(os.environ, PYUNIONFS_LOOP_IDLE="600")
    with mount_pyunionfs(mnt, [lower], upper, work, env=env) as daemon:
        pid = daemon.proc.pid
        want = (lower / "odd").read_bytes()
        fd = os.open(mnt / "odd", os.O_RDONLY)
        try:
            before = _pipes(pid)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead: each READ is as asked
            assert os.pread(fd, 4096, 0) == want[:4096]
            assert os.pread(fd, 8192, 2 * MiB) == want[2 * MiB : 2 * MiB + 8192]
            small_only = _pipes(pid)
        finally:
            os.close(fd)
        assert _read_all(mnt / "big", MiB) == (lower / "big").read_bytes()
        after = _pipes(pid)
    assert small_only == before and after == before + 4, (before, small_only, after)


def test_o_direct_reads_at_any_offset(tmp_path):
    """O_DIRECT: the kernel sends the READs as asked (no page cache): ranges that are not page-aligned
    come to the daemon, some too big for the pipe (answered from memory), all of them right."""
    lower, upper, work, mnt = _layers(tmp_path)
    want = (lower / "big").read_bytes()
    with mount_pyunionfs(mnt, [lower], upper, work):
        try:
            fd = os.open(mnt / "big", os.O_RDONLY | os.O_DIRECT)
        except OSError as exc:
            pytest.skip(f"O_DIRECT open refused: {exc}")
        try:
            for offset, size in ((0, MiB), (100, MiB), (4097, 70 * KiB), (len(want) - 5000, 100 * KiB)):
                assert os.pread(fd, size, offset) == want[offset : offset + size], (offset, size)
        finally:
            os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="the mount's readahead is set through sysfs, as root")
def test_the_mount_reads_ahead_1020_kib_or_as_asked(tmp_path):
    counts = {}
    for mode, options in (("default", []), ("kernel", ["readahead=128"])):
        lower, upper, work, mnt = _layers(tmp_path / mode)
        with mount_pyunionfs(mnt, [lower], upper, work, options):
            os.stat(mnt / "big")  # INIT answered: the readahead is set right after it
            counts[mode, "read_ahead_kb"] = _read_ahead_kb(mnt)
            with requests_counted(tmp_path / mode, mnt, (abi.READ,)) as counter:
                assert _read_all(mnt / "big", MiB) == (lower / "big").read_bytes()
                counts[mode, "READ"] = counter.count()
    assert counts["default", "read_ahead_kb"] == 1020 and counts["kernel", "read_ahead_kb"] == 128, counts
    # 8 MiB: 64 READs of 128 KiB with the kernel's readahead; about 8 of 1020 KiB with the default
    assert counts["kernel", "READ"] >= 60, counts
    assert counts["default", "READ"] <= 16, counts


def _bdi_read_ahead_kb(major: int, minor: int) -> int:
    with open(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb") as f:
        return int(f.read())


@contextlib.contextmanager
def _loop_filesystem(root):
    """A small ext4 on a loop device of this test's own, mounted at root/fs: (its mount, device number)."""
    for tool in ("mkfs.ext4", "losetup"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    image, fs = root / "image", root / "fs"
    fs.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True, timeout=60)
    made = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        pytest.skip(f"no loop device: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        subprocess.run(["mount", device, str(fs)], check=True, capture_output=True, timeout=30)
        try:
            yield fs, os.stat(device).st_rdev
        finally:
            unmount(fs, fuse=False)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, timeout=30)


def _fuse_device_at(mnt) -> tuple:
    """(major, minor) of the FUSE mount at *mnt*, from the mount table (a stat could wait for INIT)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fields[4] == str(mnt) and fstype.startswith("fuse"):
                major, minor = fields[2].split(":")
                return int(major), int(minor)
    raise AssertionError(f"no FUSE mount at {mnt}")


@pytest.mark.skipif(os.geteuid() != 0, reason="the mount's readahead is set through sysfs, as root")
def test_the_readahead_raised_is_the_mounts_own_whatever_the_path_shows_by_then(tmp_path):
    """The readahead is raised after INIT's answer, which comes after the mount program has returned.
    A filesystem mounted over the mount point before that (here a bind mount from a loop device's ext4,
    made the moment the program returns and kept until a readahead changed) keeps its readahead, and
    the union gets 1020 KiB. (The daemon used to look the device up by the path at INIT's answer, and
    raised the readahead of whatever disk the path showed.)"""
    lower, upper, work, mnt = _layers(tmp_path / "layers")
    libc = ctypes.CDLL(None, use_errno=True)
    with _loop_filesystem(tmp_path) as (fs, rdev):
        disk = os.major(rdev), os.minor(rdev)
        before = _bdi_read_ahead_kb(*disk)
        assert before != 1020, before
        argv = [*PYTHON_M, "-o", overlay_options([lower], upper, work, []), str(mnt)]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            assert done.returncode == 0, done.stderr
            union = _fuse_device_at(mnt)
            # over the mount at once: the daemon it left behind is still importing its session
            if libc.mount(os.fsencode(fs), os.fsencode(mnt), None, 4096, None) != 0:  # MS_BIND
                pytest.fail(f"bind mount over {mnt}: {os.strerror(ctypes.get_errno())}")
            try:
                assert os.stat(mnt).st_dev == os.stat(fs).st_dev
                deadline = time.monotonic() + 20
                while _bdi_read_ahead_kb(*union) != 1020 and _bdi_read_ahead_kb(*disk) == before:
                    assert time.monotonic() < deadline, "no readahead raised 20 s after the mount"
                    time.sleep(0.005)
                raised = {"disk": _bdi_read_ahead_kb(*disk), "union": _bdi_read_ahead_kb(*union)}
            finally:
                assert libc.umount2(os.fsencode(mnt), 0) == 0, os.strerror(ctypes.get_errno())
            assert raised == {"disk": before, "union": 1020}, raised
            assert (mnt / "big").stat().st_size == SIZES["big"]
        finally:
            daemons = daemons_under(tmp_path)
            if is_mountpoint(mnt):
                unmount(mnt)
            assert not kill_daemons_under(tmp_path), f"daemons {sorted(daemons)} outlived their unmount"
