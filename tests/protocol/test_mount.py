"""unionfs.protocol on the real kernel: tests/protocol/memfs.py served by a Session in a subprocess
(tests/protocol/serve_memfs.py), mounted with mount(2) under tmp_path, or through fusermount3 by an
ordinary user; every mount is unmounted in a finally and its server reaped by pid."""

import contextlib
import errno
import json
import os
import pathlib
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from tests.util import FUSE_SKIP_REASON, is_mountpoint, mount_entry, mounts_under
from unionfs.protocol.mount import MountError, mount, parse_options, unmount

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]
needs_fuse = pytest.mark.skipif(bool(FUSE_SKIP_REASON), reason=FUSE_SKIP_REASON or "")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts with mount(2): needs root")


def _wait_unmounted(mnt, timeout=10):
    deadline = time.monotonic() + timeout
    while is_mountpoint(mnt) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not is_mountpoint(mnt)


@contextlib.contextmanager
def served(mnt, *args, user=None):
    """Run serve_memfs on *mnt* (as *user*, a setpriv prefix, when given); yield the Popen once mounted.
    Afterwards: unmount *mnt* if still mounted, reap the server (killed by pid if it does not end)."""
    cmd = (user or []) + [sys.executable, "-m", "tests.protocol.serve_memfs", os.fspath(mnt), *args]
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, env=dict(os.environ, PYTHONPATH=ROOT))

    def stderr_text():
        errors.seek(0)
        return errors.read().decode(errors="replace")

    proc.stderr_text = stderr_text
    try:
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            proc.wait(timeout=10)
            raise AssertionError(f"server did not mount: {stderr_text()}")
        yield proc
    finally:
        try:
            if is_mountpoint(mnt):
                unmount(mnt, method="syscall") if os.geteuid() == 0 else unmount(mnt)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            proc.stdout.close()


# ------------------------------------------------------------------ mounting errors (no mount made)


def test_parse_options():
    flags, data, passed, names = parse_options(
        ["ro", "noatime", "allow_other", "max_read=4096", "dev", "nosymfollow", "fsname=a,b", "subtype=x"]
    )
    assert flags == 1 | 1024 | 2 | 256  # ro, noatime, nosuid (libfuse's default), nosymfollow; dev cleared nodev
    assert data == ["allow_other", "max_read=4096"]
    assert "dev" in passed and names == {"fsname": "a,b", "subtype": "x"}
    with pytest.raises(MountError, match="unknown or malformed mount option 'bogus'"):
        parse_options(["bogus"])
    with pytest.raises(MountError, match="max_read=x"):
        parse_options(["max_read=x"])
    with pytest.raises(MountError, match="allow_root"):
        parse_options(["allow_root"])


@needs_fuse
def test_mount_errors_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(MountError, match=r"is not a directory$"):
        mount(tmp_path / "file", fsname="memfs", subtype="memfs")
    with pytest.raises(MountError, match=r"mountpoint .*missing: No such file or directory$"):
        mount(tmp_path / "missing", fsname="memfs", subtype="memfs")
    with pytest.raises(MountError, match=r"^unmount .*: Invalid argument$"):
        unmount(tmp_path, method="syscall")  # not a mount point


@needs_fuse
@needs_root
def test_a_dead_mount_is_refused_in_one_line(tmp_path):
    """A mount whose server is gone (the device fd closed unanswered) answers ENOTCONN; mounting over it
    fails with that line, and unmount clears it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fd = mount(mnt, fsname="dead", subtype="dead")
    try:
        assert mount_entry(mnt).fstype == "fuse.dead"
        os.close(fd)
        with pytest.raises(OSError) as exc:
            os.stat(mnt)
        assert exc.value.errno == errno.ENOTCONN
        with pytest.raises(MountError, match=r"^mountpoint .*: Transport endpoint is not connected$"):
            mount(mnt, fsname="dead", subtype="dead")
    finally:
        unmount(mnt)
    assert not is_mountpoint(mnt)


# ------------------------------------------------------------------ served by root with mount(2)


@needs_fuse
@needs_root
def test_files_directories_links_xattrs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with served(mnt) as proc:
        m = mount_entry(mnt)
        assert m is not None and m.fstype == "fuse.memfs"
        st = os.stat(mnt)
        assert stat.S_ISDIR(st.st_mode) and st.st_ino == 1
        # files: create, write, read at offsets, append, truncate
        p = mnt / "f"
        data = os.urandom(3 * 1024 * 1024 + 17)
        p.write_bytes(data)
        assert p.read_bytes() == data
        with open(p, "r+b") as f:
            assert os.pread(f.fileno(), 10, 1_000_000) == data[1_000_000:1_000_010]
            os.pwrite(f.fileno(), b"HELLO", 5)
            os.fsync(f.fileno())
        with open(p, "ab") as f:
            f.write(b"tail")
        got = p.read_bytes()
        assert got[:5] == data[:5] and got[5:10] == b"HELLO" and got.endswith(b"tail")
        os.truncate(p, 100)
        assert os.stat(p).st_size == 100
        with open(p, "wb") as f:  # O_TRUNC
            f.write(b"new")
        assert p.read_bytes() == b"new"
        # metadata
        os.chmod(p, 0o640)
        os.chown(p, 123, 456)
        os.utime(p, ns=(1_000_000_000_123, 2_000_000_000_456))
        st = os.stat(p)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 123, 456)
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000_123, 2_000_000_000_456)
        # directories: many entries, listed in several readdir requests
        d = mnt / "dir"
        d.mkdir(mode=0o750)
        names = {f"entry-{i:04d}-" + "x" * 60 for i in range(400)}
        for name in names:
            (d / name).write_bytes(b"")
        assert set(os.listdir(d)) == names
        with os.scandir(d) as it:
            assert {e.name for e in it if e.is_file()} == names
        assert os.stat(d).st_nlink == 2
        # names: rename, rename over, hard link, symlink, fifo, unlink, rmdir
        os.rename(p, d / "moved")
        assert not p.exists() and (d / "moved").read_bytes() == b"new"
        (mnt / "other").write_bytes(b"other")
        os.rename(mnt / "other", d / "moved")
        assert (d / "moved").read_bytes() == b"other"
        os.link(d / "moved", mnt / "hard")
        assert os.stat(mnt / "hard").st_nlink == 2 and os.stat(mnt / "hard").st_ino == os.stat(d / "moved").st_ino
        os.symlink("dir/moved", mnt / "sym")
        assert os.readlink(mnt / "sym") == "dir/moved" and (mnt / "sym").read_bytes() == b"other"
        os.mkfifo(mnt / "fifo")
        assert stat.S_ISFIFO(os.lstat(mnt / "fifo").st_mode)
        with pytest.raises(FileExistsError):
            os.mkdir(d)
        with pytest.raises(OSError) as exc:
            os.rmdir(d)
        assert exc.value.errno == errno.ENOTEMPTY
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "missing")
        for name in names:
            os.unlink(d / name)
        os.unlink(d / "moved")
        os.rmdir(d)
        assert sorted(os.listdir(mnt)) == ["fifo", "hard", "sym"]
        # xattrs
        h = mnt / "hard"
        os.setxattr(h, "user.one", b"1")
        os.setxattr(h, "user.big", b"B" * 10000)
        assert os.getxattr(h, "user.one") == b"1" and os.getxattr(h, "user.big") == b"B" * 10000
        assert sorted(os.listxattr(h)) == ["user.big", "user.one"]
        with pytest.raises(FileExistsError):
            os.setxattr(h, "user.one", b"2", os.XATTR_CREATE)
        os.removexattr(h, "user.one")
        with pytest.raises(OSError) as exc:
            os.getxattr(h, "user.one")
        assert exc.value.errno == errno.ENODATA
        # statfs
        vfs = os.statvfs(mnt)
        assert (vfs.f_bsize, vfs.f_blocks, vfs.f_bfree, vfs.f_namemax) == (4096, 1000, 900, 255)
    assert proc.returncode == 0
    assert not is_mountpoint(mnt)
    err = proc.stderr_text()
    assert "ERROR" not in err and "Traceback" not in err, err


@needs_fuse
@needs_root
def test_parallel_callers_and_a_waiting_handler(tmp_path):
    """Threads hammer the mount while handlers wait (spare readers on the real device): every call is
    answered, the quick ones while the slow ones wait, and the server logs nothing."""
    import concurrent.futures

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with served(mnt) as proc:

        def slow():
            t0 = time.monotonic()
            assert os.getxattr(mnt, "user.slow") == b"slow"
            return time.monotonic() - t0

        def busy(i):
            d = mnt / f"t{i}"
            d.mkdir()
            for j in range(200):
                p = d / f"f{j}"
                p.write_bytes(b"%d" % j)
                assert p.read_bytes() == b"%d" % j
                os.unlink(p)
            os.rmdir(d)
            return i

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            slows = [pool.submit(slow) for _ in range(3)]
            time.sleep(0.05)
            t0 = time.monotonic()
            os.stat(mnt / ".")
            os.listdir(mnt)
            quick = time.monotonic() - t0
            busies = [pool.submit(busy, i) for i in range(4)]
            assert sorted(f.result(timeout=60) for f in busies) == [0, 1, 2, 3]
            waits = [f.result(timeout=60) for f in slows]
        assert quick < 0.4, f"a quick call waited {quick:.2f} s behind the slow ones"
        assert all(0.45 < w < 5 for w in waits), waits
    assert proc.returncode == 0
    err = proc.stderr_text()
    assert "ERROR" not in err and "Traceback" not in err, err


@needs_fuse
@needs_root
def test_notifications_reach_the_kernel(tmp_path):
    """Changes behind the kernel's caches (entries and attributes kept 1 s, data kept by an open file)
    show at once after notify_inval_entry / notify_inval_inode."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with served(mnt) as proc:
        ctl = mnt / "ctl"
        ctl.write_bytes(b"")
        (mnt / "a").write_bytes(b"A")
        (mnt / "f").write_bytes(b"x" * 4096)
        assert os.path.exists(mnt / "a")  # the name is cached now
        os.setxattr(ctl, "user.rename-behind", b"a\0b")
        assert not os.path.exists(mnt / "a") and (mnt / "b").read_bytes() == b"A"
        with open(mnt / "f", "rb", buffering=0) as f:
            assert os.pread(f.fileno(), 4096, 0) == b"x" * 4096  # the pages are cached now
            assert os.fstat(f.fileno()).st_size == 4096  # and the attributes, for a second
            os.setxattr(ctl, "user.write-behind", b"f\0" + b"y" * 5000)
            assert os.fstat(f.fileno()).st_size == 5000
            assert os.pread(f.fileno(), 8192, 0) == b"y" * 5000
    assert proc.returncode == 0
    err = proc.stderr_text()
    assert "ERROR" not in err and "Traceback" not in err, err


@needs_fuse
@needs_root
def test_negotiated_with_the_running_kernel(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with served(mnt) as proc:
        os.stat(mnt)
        unmount(mnt, method="syscall")
        assert proc.wait(timeout=15) == 0  # the device reports ENODEV: the loop ends cleanly
        err = proc.stderr_text()
    assert "ERROR" not in err and "Traceback" not in err
    # serve_memfs prints the agreed Conn: 7.x of at least 7.31 on any kernel this project runs on
    line = [x for x in err.splitlines() if x.startswith("served ")][0]
    assert "proto=7." in line and "MAX_PAGES" in line and "DO_READDIRPLUS" in line


@needs_fuse
@needs_root
def test_sigterm_unmounts_and_exits(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with served(mnt) as proc:
        (mnt / "f").write_bytes(b"x")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert _wait_unmounted(mnt)


@pytest.fixture
def open_tmp():
    """A directory every user can reach (pytest's tmp_path is under root's 0700 directory)."""
    base = tempfile.mkdtemp(prefix="protocol-mount-")
    os.chmod(base, 0o755)
    try:
        yield pathlib.Path(base)
    finally:
        for m in mounts_under(base):
            unmount(m.mountpoint, method="syscall")
        shutil.rmtree(base, ignore_errors=True)


@needs_fuse
@needs_root
def test_allow_other_and_default_permissions(open_tmp):
    mnt = open_tmp / "mnt"
    mnt.mkdir()
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not installed")
    with served(mnt, "-o", "allow_other", "-o", "default_permissions"):
        (mnt / "private").write_bytes(b"secret")
        os.chmod(mnt / "private", 0o600)
        (mnt / "public").write_bytes(b"hello")
        os.chmod(mnt / "public", 0o644)
        code = (
            "import sys\n"
            "print(open(sys.argv[1] + '/public').read())\n"
            "try:\n    open(sys.argv[1] + '/private').read()\nexcept PermissionError:\n    print('denied')\n"
        )
        out = subprocess.run(
            nobody + [sys.executable, "-c", code, str(mnt)], capture_output=True, text=True, timeout=30
        )
        assert out.stdout.split() == ["hello", "denied"], out.stderr


# ------------------------------------------------------------------ an ordinary user, through fusermount3


def _fusermount_user_skip_reason():
    if FUSE_SKIP_REASON:
        return FUSE_SKIP_REASON
    if os.geteuid() != 0:
        return "needs root to become another user (setpriv)"
    if shutil.which("setpriv") is None:
        return "setpriv not installed"
    fm = shutil.which("fusermount3")
    if not os.stat(fm).st_mode & stat.S_ISUID:
        return "fusermount3 is not setuid root"
    try:
        pwd.getpwuid(65534)
    except KeyError:
        return "no user 65534"
    return None


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]


def _closed_ancestors(path) -> list:
    """Directories on the way to *path* that other users cannot enter (here: /root, mode 0700)."""
    out, cur = [], "/"
    for part in os.path.realpath(path).strip("/").split("/")[:-1]:
        cur = os.path.join(cur, part)
        if not os.stat(cur).st_mode & 0o001:
            out.append(cur)
    return out


def _reopen_script(ns) -> str:
    """Shell lines (run in a private mount namespace) that let other users reach this interpreter: the
    closed directory is covered by a 0755 tmpfs holding a bind mount of just the subtree on the way."""
    closed = _closed_ancestors(sys.executable)
    if not closed:
        return ""
    if len(closed) > 1:
        pytest.skip(f"this interpreter lies below several closed directories: {closed}")
    top = closed[0]
    sub = os.path.relpath(os.path.realpath(sys.executable), top).split("/")[0]
    return (
        f'mkdir "{ns}/keep" && mount --bind "{top}/{sub}" "{ns}/keep"\n'
        f'mount -t tmpfs -o size=16k,mode=755 protocol-cover "{top}"\n'
        f'mkdir "{top}/{sub}" && mount --bind "{ns}/keep" "{top}/{sub}"\n'
    )


def _as_nobody_in_namespace(base, argv, fuse_node=True, userns=False):
    """Run *argv* (after this interpreter) as user 65534 in a private mount namespace, where this
    interpreter is reachable and, with *fuse_node*, /dev/fuse is covered by a 0666 node. With *userns*,
    the user runs it as root of a user namespace of its own (and a mount namespace that one owns)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not found")
    ns = base / "ns"
    ns.mkdir()
    script = f"set -e\nmount -t tmpfs -o size=16k,mode=755 protocol-ns \"{ns}\"\n"
    if fuse_node:
        script += f'mknod "{ns}/fuse" c 10 229 && chmod 666 "{ns}/fuse" && mount --bind "{ns}/fuse" /dev/fuse\n'
    become = " ".join(NOBODY) + (" unshare --user --map-root-user --mount" if userns else "")
    script += _reopen_script(ns) + f'exec {become} "$0" "$@"\n'
    run = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    if run.returncode != 0 and run.stderr.startswith("unshare"):
        pytest.skip(f"cannot make a private mount namespace: {run.stderr.strip()}")
    return run


@pytest.mark.skipif(bool(_fusermount_user_skip_reason()), reason=_fusermount_user_skip_reason() or "")
def test_ordinary_user_mounts_through_fusermount3(open_tmp):
    """As user 65534: fusermount3 mounts and passes the device fd back; the user serves, uses and
    unmounts it. fusermount3 opens /dev/fuse with the user's rights (distributions make it 0666); where
    the host's is 0600, a private mount namespace covers it with a 0666 node, as tests/mount/test_rootless
    does, and everything runs in there."""
    mnt = open_tmp / "mnt"
    mnt.mkdir()
    os.chown(mnt, 65534, 65534)
    run = _as_nobody_in_namespace(open_tmp, ["-m", "tests.protocol.user_inner", str(mnt), "fusermount"])
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout)
    assert res["uid"] == 65534 and res["ready"] == "ready", res
    (line,) = res["mountinfo"]
    assert " fuse.memfs mem,fs " in line  # the comma went through fusermount3's option string escaped
    assert "user_id=65534" in line and "nosuid" in line and "nodev" in line
    assert res["data"] == "by the user" and res["owner"] == [65534, 65534] and res["xattr"] == "v"
    assert res["listing"] == ["f"]
    # SIGTERM: the server unmounted as the user (fusermount3 -u -z) and ended cleanly
    assert res["exit"] == 0 and res["mounted_after"] is False, res["stderr"]
    assert "ERROR" not in res["stderr"] and "Traceback" not in res["stderr"], res["stderr"]
    assert not is_mountpoint(mnt)  # nothing reached the host's namespace


@pytest.mark.skipif(bool(_fusermount_user_skip_reason()), reason=_fusermount_user_skip_reason() or "")
def test_root_of_a_user_namespace_mounts_with_mount2(open_tmp):
    """User 65534 as root of its own user namespace: mount(2) and umount2(2) directly, no fusermount3."""
    mnt = open_tmp / "mnt"
    mnt.mkdir()
    os.chown(mnt, 65534, 65534)
    probe = subprocess.run(NOBODY + ["unshare", "--user", "--map-root-user", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are not available: {probe.stderr.strip()}")
    run = _as_nobody_in_namespace(open_tmp, ["-m", "tests.protocol.user_inner", str(mnt), "syscall"], userns=True)
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout)
    assert res["uid"] == 0 and res["ready"] == "ready", res  # root in there, 65534 outside
    (line,) = res["mountinfo"]
    assert " fuse.memfs mem,fs " in line and "user_id=0" in line
    assert res["data"] == "by the user" and res["owner"] == [0, 0] and res["xattr"] == "v"
    assert res["exit"] == 0 and res["mounted_after"] is False, res["stderr"]
    assert "ERROR" not in res["stderr"] and "Traceback" not in res["stderr"], res["stderr"]
    assert not is_mountpoint(mnt)


@pytest.mark.skipif(bool(_fusermount_user_skip_reason()), reason=_fusermount_user_skip_reason() or "")
def test_fusermount3_failure_is_one_line(open_tmp):
    """With /dev/fuse not open to the user, the MountError is fusermount3's own one line."""
    if stat.S_IMODE(os.stat("/dev/fuse").st_mode) & 0o006:
        pytest.skip("/dev/fuse is open to every user here")
    mnt = open_tmp / "mnt"
    mnt.mkdir()
    os.chown(mnt, 65534, 65534)
    code = (
        "import sys\n"
        "from unionfs.protocol.mount import MountError, mount\n"
        "try:\n    mount(sys.argv[1], fsname='memfs', subtype='memfs')\n"
        "except MountError as exc:\n    print(exc)\n"
    )
    run = _as_nobody_in_namespace(open_tmp, ["-c", code, str(mnt)], fuse_node=False)
    assert run.returncode == 0, run.stderr
    (line,) = run.stdout.splitlines()
    assert line.startswith("fusermount3: ") and "/dev/fuse" in line, line
    assert not is_mountpoint(mnt)
