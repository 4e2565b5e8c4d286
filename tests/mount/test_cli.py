"""The command line contract: bad input, background mounts, signals, mount helpers, generic options."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.cli import PYTHON_M, SPEC, hash_paths, opts
from tests.helpers.processes import daemons_under, wait_pids_gone
from tests.util import (
    hash_tree,
    is_mountpoint,
    kernel_overlay_skip_reason,
    mount_entry,
    mount_kernel_overlay,
    mount_pyunionfs,
    mounts_under,
    unmount,
)
from unionfs.options import default_backend

pytestmark = pytest.mark.usefixtures("no_stray_daemons")


@pytest.fixture
def L(layers):
    return layers(SPEC)


def run_cli(args, *, cwd=None, timeout=30, env=None):
    """Run the CLI with stdout/stderr in files (a daemon that keeps them open can't hang us)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(
            [*PYTHON_M, *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            timeout=timeout,
            env=env,
        )
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace")
        )


# ---------------------------------------------------------------------------------------------------
# Bad input: one `pyunionfs: ` line on stderr, non-zero exit, nothing written, nothing mounted
# ---------------------------------------------------------------------------------------------------


def _other_fs_dir(tmp_path: Path) -> Path:
    for base in ("/dev/shm", "/run"):
        if os.path.isdir(base) and os.stat(base).st_dev != os.stat(tmp_path).st_dev:
            return Path(tempfile.mkdtemp(prefix="unionfs-otherfs.", dir=base))
    pytest.skip("no directory on another filesystem (/dev/shm, /run) to test a cross-filesystem workdir")


BAD = {}


def bad(name):
    def deco(fn):
        BAD[name] = fn
        return fn

    return deco


@bad("missing lowerdir")
def _(L, tmp, extra):
    return ["-o", opts(L, lowerdir=None), L.mnt]


@bad("lowerdir does not exist")
def _(L, tmp, extra):
    return ["-o", opts(L, lowerdir=tmp / "nope"), L.mnt]


@bad("one of several lowers does not exist")
def _(L, tmp, extra):
    return ["-o", opts(L, lowerdir=f"{L.lowers[0]}:{tmp / 'nope'}:{L.lowers[1]}"), L.mnt]


@bad("lowerdir is a file")
def _(L, tmp, extra):
    return ["-o", opts(L, lowerdir=L.lowers[0] / "file"), L.mnt]


@bad("upperdir does not exist")
def _(L, tmp, extra):
    return ["-o", opts(L, upperdir=tmp / "nope"), L.mnt]


@bad("upperdir is a file")
def _(L, tmp, extra):
    (tmp / "ufile").write_text("x")
    extra.append(tmp / "ufile")
    return ["-o", opts(L, upperdir=tmp / "ufile"), L.mnt]


@bad("workdir does not exist")
def _(L, tmp, extra):
    return ["-o", opts(L, workdir=tmp / "nope"), L.mnt]


@bad("upperdir without workdir")
def _(L, tmp, extra):
    return ["-o", opts(L, workdir=None), L.mnt]


@bad("workdir without upperdir")
def _(L, tmp, extra):
    return ["-o", opts(L, upperdir=None), L.mnt]


@bad("workdir not empty")
def _(L, tmp, extra):
    (L.work / "junk").write_text("junk\n")
    return ["-o", opts(L), L.mnt]


@bad("workdir on another filesystem")
def _(L, tmp, extra):
    w = _other_fs_dir(tmp)
    extra.append(w)
    return ["-o", opts(L, workdir=w), L.mnt]


@bad("upperdir inside a lower")
def _(L, tmp, extra):
    return ["-o", opts(L, upperdir=L.lowers[0] / "sub"), L.mnt]


@bad("upperdir equals a lower")
def _(L, tmp, extra):
    return ["-o", opts(L, upperdir=L.lowers[1]), L.mnt]


@bad("workdir inside upperdir")
def _(L, tmp, extra):
    return ["-o", opts(L, workdir=L.upper / "usub"), L.mnt]


@bad("workdir inside a lower")
def _(L, tmp, extra):
    return ["-o", opts(L, workdir=L.lowers[0] / "wdir"), L.mnt]


@bad("mountpoint does not exist")
def _(L, tmp, extra):
    return ["-o", opts(L), tmp / "nomnt"]


@bad("mountpoint is a file")
def _(L, tmp, extra):
    (tmp / "mfile").write_text("x")
    extra.append(tmp / "mfile")
    return ["-o", opts(L), tmp / "mfile"]


@bad("mountpoint already mounted")
def _(L, tmp, extra):
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(L.mnt)], check=True, timeout=30)
    return ["-o", opts(L), L.mnt]


@bad("unknown option")
def _(L, tmp, extra):
    return ["-o", opts(L) + ",no_such_option_xyz", L.mnt]


@bad("unknown option with value")
def _(L, tmp, extra):
    return ["-o", opts(L) + ",no_such_option_xyz=3", L.mnt]


@bad("empty lowerdir component")
def _(L, tmp, extra):
    return ["-o", opts(L, lowerdir=f"{L.lowers[0]}::{L.lowers[1]}"), L.mnt]


@bad("empty lowerdir")
def _(L, tmp, extra):
    return ["-o", opts(L, lowerdir=""), L.mnt]


@bad("no mountpoint")
def _(L, tmp, extra):
    return ["-o", opts(L)]


@bad("too many arguments")
def _(L, tmp, extra):
    return ["-o", opts(L), "overlay", L.mnt, tmp / "third"]


@bad("unknown flag")
def _(L, tmp, extra):
    return ["--no-such-flag", "-o", opts(L), L.mnt]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("foreground", [False, True], ids=["bg", "fg"])
def test_bad_input(L, tmp_path, case, foreground):
    extra = []
    args = BAD[case](L, tmp_path, extra)
    watched = [*L.dirs(), L.mnt, tmp_path / "nope", tmp_path / "nomnt", *extra]
    premounted = is_mountpoint(L.mnt)
    try:
        before = hash_paths(watched)
        res = run_cli((["-f"] if foreground else []) + args)
        after = hash_paths(watched)
        mounted_after = mounts_under(tmp_path, ("fuse",))
    finally:
        unmount(L.mnt, fuse=False) if premounted else unmount(L.mnt)
        for e in extra:
            if str(e).startswith(("/dev/shm/", "/run/")):
                shutil.rmtree(e, ignore_errors=True)
    lines = res.stderr.splitlines()
    assert res.returncode in (1, 2), f"exit {res.returncode}; stderr: {res.stderr!r}"
    assert len(lines) == 1 and lines[0].startswith("pyunionfs: "), (
        f"stderr must be one 'pyunionfs: ' line: {res.stderr!r}"
    )
    assert not mounted_after, f"something got mounted: {mounted_after}"
    assert after == before, f"{case}: files changed: " + ", ".join(k for k in before if before[k] != after[k])


def test_usage_errors_exit_2(L, tmp_path):
    for args in (["--no-such-flag", "-o", opts(L), L.mnt], ["-o", opts(L)]):
        res = run_cli(args)
        assert res.returncode == 2, (args, res.returncode, res.stderr)


def test_console_script_name(L, tmp_path):
    script = Path(sys.executable).parent / "pyunionfs"
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    res = subprocess.run(
        [str(script), "-o", opts(L, lowerdir=tmp_path / "nope"), str(L.mnt)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 1
    assert res.stderr.startswith("pyunionfs: ") and res.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------------
# Successful mounts
# ---------------------------------------------------------------------------------------------------


def _check_live(L):
    m = L.mnt
    assert is_mountpoint(m)
    e = mount_entry(m)
    assert e.fstype == "fuse.pyunionfs", e
    assert sorted(os.listdir(m)) == ["f", "file", "g", "sub", "u", "usub", "wdir"]
    assert (m / "g").read_bytes() == b"lower g\n"
    (m / "new").write_bytes(b"new\n")
    assert (L.upper / "new").read_bytes() == b"new\n"


@pytest.mark.timeout(60)
def test_background_mount(L):
    res = run_cli(["-o", opts(L), L.mnt])
    try:
        assert res.returncode == 0, res.stderr
        assert is_mountpoint(L.mnt), "mount must be live when the command returns"
        _check_live(L)
        e = mount_entry(L.mnt)
        assert e.source == "overlay"
        if os.geteuid() == 0:
            assert "allow_other" in e.options.split(","), e.options
        daemons = daemons_under(L.root)
        assert daemons, "no daemon process found"
    finally:
        r = subprocess.run(["fusermount3", "-u", str(L.mnt)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert not is_mountpoint(L.mnt)
    assert not wait_pids_gone(daemons), "daemon still running after fusermount3 -u"


@pytest.mark.timeout(60)
def test_native_mount_program_returns_before_the_engine_is_imported(L):
    """The native backend's mount program mounts with the layers opened and checked (engine.stack) and
    leaves the rest of the engine, the request layer and the session to the daemon it leaves behind:
    the modules the parent imported (-X importtime; the daemon's later imports go to /dev/null) hold
    none of them, and the mount still answers from the daemon."""
    cmd = [sys.executable, "-X", "importtime", "-m", "unionfs", "-o", opts(L, backend="native"), str(L.mnt)]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, timeout=30)
        err.seek(0)
        imported = {line.rsplit("|", 1)[-1].strip() for line in err.read().decode().splitlines() if "|" in line}
    try:
        assert proc.returncode == 0
        assert "unionfs.engine.stack" in imported and "unionfs.protocol.mount" in imported, sorted(imported)
        late = {"unionfs.engine.union", "unionfs.engine.copyup", "unionfs.fuse.requests", "unionfs.protocol.session"}
        assert not late & imported, sorted(late & imported)
        assert "ctypes" not in imported  # mount(2) through unionfs.libc, ctypes's C core alone
        _check_live(L)
        (L.mnt / "sub/late").write_bytes(b"late\n")
        assert (L.upper / "sub/late").read_bytes() == b"late\n"
    finally:
        unmount(L.mnt)


@pytest.mark.timeout(60)
def test_background_mount_detaches_stdio(L):
    """`out=$(pyunionfs ...)` must not hang: the background daemon lets go of the caller's pipes."""
    try:
        res = subprocess.run(
            [*PYTHON_M, "-o", opts(L), str(L.mnt)], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20
        )
        assert res.returncode == 0, res.stderr
        assert is_mountpoint(L.mnt)
    except subprocess.TimeoutExpired:
        pytest.fail("command with captured stdout/stderr did not return: the daemon keeps the pipes open")
    finally:
        unmount(L.mnt)


@pytest.mark.timeout(60)
def test_background_relative_paths(L):
    """Relative layer paths and mountpoint are resolved before the daemon leaves the caller's cwd."""
    rel = lambda p: os.path.relpath(p, L.root)  # noqa: E731
    o = f"lowerdir={rel(L.lowers[0])}:{rel(L.lowers[1])},upperdir={rel(L.upper)},workdir={rel(L.work)}"
    res = run_cli(["-o", o, "mnt"], cwd=L.root)
    try:
        assert res.returncode == 0, res.stderr
        _check_live(L)
        # found although its mount point argument is relative and it left for /: by its open layers
        assert daemons_under(L.root), "the daemon is not found as this test's"
        assert not daemons_under(L.root / "nowhere"), "a daemon of this test found under another directory"
        (L.mnt / "sub/y").write_bytes(b"y\n")
        assert (L.upper / "sub/y").read_bytes() == b"y\n"
    finally:
        unmount(L.mnt)
    assert not wait_pids_gone(daemons_under(L.root))


@pytest.mark.timeout(60)
def test_umount_command_stops_daemon(L):
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work) as d:
        _check_live(L)
        r = subprocess.run(["umount", str(L.mnt)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert d.proc.wait(timeout=15) == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_unmounts_foreground_daemon(L, sig):
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work) as d:
        _check_live(L)
        os.kill(d.proc.pid, sig)
        rc = d.proc.wait(timeout=15)
        assert rc == 0, f"exit status {rc} after {sig.name}"
        assert not is_mountpoint(L.mnt), f"still mounted after {sig.name}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_right_after_the_mount_unmounts(L, sig):
    """A signal the moment the mount appears (the native backend is then still loading its event loop
    and answering from its warm-up) unmounts and ends the daemon with status 0, as a later one does."""
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work) as d:
        os.kill(d.proc.pid, sig)
        rc = d.proc.wait(timeout=15)
        assert rc == 0, f"exit status {rc} after {sig.name}"
        assert not is_mountpoint(L.mnt), f"still mounted after {sig.name}"


GENERIC = [
    "rw",
    "dev",
    "suid",
    "exec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "lazytime",
    "nolazytime",
    "async",
    "dirsync",
    "auto",
    "noauto",
    "nouser",
    "_netdev",
    "nofail",
    "defaults",
    "allow_other",
    "default_permissions",
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "group",
    [
        ["rw", "noatime", "lazytime", "dev", "suid"],
        GENERIC,
        ["nodev", "nosuid", "noexec", "sync", "users", "user", "allow_root"],
    ],
    ids=["brief", "all", "restrictive"],
)
def test_generic_options_accepted(L, group):
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, group):
        _check_live(L)


@pytest.mark.timeout(60)
def test_fsname_option(L):
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, ["fsname=mylayers"]):
        assert mount_entry(L.mnt).source == "mylayers"


@pytest.mark.timeout(60)
def test_several_o_options_merged(L):
    args = [
        "-o",
        f"lowerdir={L.lowers[0]}:{L.lowers[1]}",
        "-o",
        f"upperdir={L.upper}",
        "-o",
        f"workdir={L.work},noatime",
    ]
    res = run_cli(args + [L.mnt])
    try:
        assert res.returncode == 0, res.stderr
        _check_live(L)
    finally:
        unmount(L.mnt)
    assert not wait_pids_gone(daemons_under(L.root))


@pytest.mark.timeout(60)
def test_source_argument_accepted(L):
    res = run_cli(["-o", opts(L), "overlay", L.mnt])
    try:
        assert res.returncode == 0, res.stderr
        _check_live(L)
    finally:
        unmount(L.mnt)
    assert not wait_pids_gone(daemons_under(L.root))


@pytest.mark.timeout(60)
def test_paths_with_colon_and_comma(layers):
    L = layers({"lower0": {"a": "a\n"}, "lower1": {"b": "b\n"}})
    # rename the layer dirs to names that need escaping
    new_lowers = []
    for l, n in zip(L.lowers, ["lo:w,0", "lo,w:1"]):
        l.rename(l.with_name(n))
        new_lowers.append(l.with_name(n))
    up, wk = L.upper.with_name("up,per"), L.work.with_name("wo:rk")
    L.upper.rename(up)
    L.work.rename(wk)
    with mount_pyunionfs(L.mnt, new_lowers, up, wk):
        assert sorted(os.listdir(L.mnt)) == ["a", "b"]
        (L.mnt / "c").write_bytes(b"c\n")
    assert (up / "c").read_bytes() == b"c\n"


@pytest.mark.timeout(60)
def test_workdir_left_by_kernel_is_accepted(L):
    """A workdir that kernel overlayfs used before (it leaves work/ and maybe index/) is fine."""
    if kernel_overlay_skip_reason():
        os.mkdir(L.work / "work")
    else:
        with mount_kernel_overlay(L.mnt, L.lowers, L.upper, L.work):
            os.listdir(L.mnt)
    assert os.listdir(L.work)
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work):
        _check_live(L)
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work):  # and one left by ourselves
        assert (L.mnt / "new").read_bytes() == b"new\n"


def _path_with_pyunionfs(tmp_path: Path) -> str:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = Path(sys.executable).parent / "pyunionfs"
    if script.exists():
        (bindir / "pyunionfs").symlink_to(script)
    else:
        (bindir / "pyunionfs").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m unionfs "$@"\n')
        (bindir / "pyunionfs").chmod(0o755)
    return f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"


@pytest.mark.timeout(60)
def test_mount_fuse3_helper(L, tmp_path):
    helper = shutil.which("mount.fuse3") or next(
        (p for p in ("/sbin/mount.fuse3", "/usr/sbin/mount.fuse3") if os.path.exists(p)), None
    )
    if helper is None:
        pytest.skip("mount.fuse3 not installed")
    env = dict(os.environ, PATH=_path_with_pyunionfs(tmp_path))
    try:
        res = subprocess.run(
            [helper, "overlay", str(L.mnt), "-t", "pyunionfs", "-o", opts(L)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        _check_live(L)
    finally:
        unmount(L.mnt)
    assert not wait_pids_gone(daemons_under(L.root))


SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.mark.timeout(60)
def test_mount_t_fuse_pyunionfs(L, tmp_path):
    """mount(8) -t fuse.pyunionfs runs mount.fuse3, which runs `pyunionfs` from a fixed system PATH.

    So the console script must be on that PATH: where it is not, the test links it into
    /usr/local/bin for its own duration (what `pip install` outside a venv would do).
    """
    if not shutil.which("mount") or not (shutil.which("mount.fuse") or os.path.exists("/sbin/mount.fuse")):
        pytest.skip("mount(8) or mount.fuse not installed")
    link = None
    if shutil.which("pyunionfs", path=SYSTEM_PATH) is None:
        if os.geteuid() != 0:
            pytest.skip("pyunionfs is not on the system PATH and only root may link it there")
        script = Path(sys.executable).parent / "pyunionfs"
        link = Path("/usr/local/bin/pyunionfs")
        link.symlink_to(script)
    try:
        res = subprocess.run(
            ["mount", "-t", "fuse.pyunionfs", "overlay", str(L.mnt), "-o", opts(L)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        _check_live(L)
    finally:
        unmount(L.mnt)
        if link is not None:
            link.unlink()
    assert not wait_pids_gone(daemons_under(L.root))


@pytest.mark.timeout(90)
def test_second_mount_on_same_upper_refused_until_first_is_gone(L, tmp_path):
    """A live mount holds its upper and work dirs; a crashed one (SIGKILL) frees them."""
    other_mnt = tmp_path / "mnt2"
    other_mnt.mkdir()
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, check_exit=False) as d:
        _check_live(L)
        layers_before = {p: hash_tree(p) for p in [*L.lowers, L.upper]}
        res = run_cli(["-f", "-o", opts(L), other_mnt])
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pyunionfs: ") and "in use" in lines[0], res.stderr
        assert not is_mountpoint(other_mnt)
        assert {p: hash_tree(p) for p in [*L.lowers, L.upper]} == layers_before
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(timeout=15)
        subprocess.run(["fusermount3", "-uz", str(L.mnt)], capture_output=True, timeout=30)
    with mount_pyunionfs(other_mnt, L.lowers, L.upper, L.work):
        assert (other_mnt / "new").read_bytes() == b"new\n"  # written through the crashed mount
        assert (other_mnt / "g").read_bytes() == b"lower g\n"
        (other_mnt / "after-crash").write_bytes(b"ok\n")
    assert (L.upper / "after-crash").read_bytes() == b"ok\n"


@pytest.mark.timeout(60)
def test_logfile_option(L, tmp_path):
    """A background daemon logs where -o logfile= says; an unwritable one is refused before mounting."""
    log = tmp_path / "daemon.log"
    res = run_cli(["-o", opts(L) + f",logfile={log}", L.mnt])
    try:
        assert res.returncode == 0, res.stderr
        _check_live(L)
    finally:
        unmount(L.mnt)
    deadline = time.time() + 10
    while "unmounted" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
        time.sleep(0.1)
    # the lines kept without logging loaded are written as the daemon leaves (cli._leave)
    assert " mounted " in log.read_text() and " unmounted " in log.read_text(), log.read_text()
    before = hash_tree(L.root)
    res = run_cli(["-o", opts(L) + ",logfile=/nonexistent-dir/x.log", L.mnt])
    assert res.returncode == 1 and res.stderr.startswith("pyunionfs: cannot write the log file")
    assert hash_tree(L.root) == before and not is_mountpoint(L.mnt)


def _lower_file(L, size):
    """A file of *size* bytes in the bottom lower, not in the upper (made before mounting)."""
    name = f"lower-{size}.bin"
    (L.lowers[-1] / name).write_bytes(os.urandom(size))
    return name


@pytest.mark.timeout(60)
def test_native_backend_answers_small_changes_without_its_event_loop(L):
    """Lookups, listings, reads, new names, removals and copy-ups small enough to be done in place are
    answered before trio is imported: `podman run` and `podman diff` are over before a loop would be."""
    if default_backend() != "native":
        pytest.skip("the native backend's start")
    small = _lower_file(L, 4096)
    env = dict(os.environ, PYUNIONFS_LOOP_IDLE="60")
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, extra_args=["-d"], env=env) as d:
        for _ in range(3):
            os.listdir(L.mnt)
            for p in L.mnt.iterdir():
                if p.is_file():
                    p.read_bytes()
        os.mkdir(L.mnt / "made")
        (L.mnt / "made" / "new").write_bytes(b"new")
        os.unlink(L.mnt / "made" / "new")
        os.chmod(L.mnt / small, 0o600)
        with open(L.mnt / small, "ab") as f:
            f.write(b"x")
        os.rename(L.mnt / small, L.mnt / "made" / "moved")
        assert (L.upper / "made").is_dir() and not (L.upper / "made" / "new").exists()
        moved = L.upper / "made" / "moved"
        assert moved.stat().st_mode & 0o777 == 0o600 and moved.stat().st_size == 4097
        assert (L.lowers[-1] / small).stat().st_size == 4096
        time.sleep(0.2)
        assert "event loop started" not in d.log_text()


@pytest.mark.timeout(60)
def test_native_backend_copies_a_big_file_up_in_a_thread_before_its_event_loop(L):
    """A copy-up big enough for a worker thread runs in a thread of the daemon's own before trio is
    loaded (the request waits, the others are answered meanwhile); four at once, all right, and
    nothing is left in the work dir."""
    if default_backend() != "native":
        pytest.skip("the native backend's start")
    bigs = [_lower_file(L, (3 << 20) + i) for i in range(4)]
    data = {big: (L.lowers[-1] / big).read_bytes() for big in bigs}
    env = dict(os.environ, PYUNIONFS_LOOP_IDLE="60")
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, extra_args=["-d"], env=env) as d:
        errors = []

        def change(big):
            try:
                os.chmod(L.mnt / big, 0o640)
            except OSError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=change, args=(big,)) for big in bigs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        for big in bigs:
            assert (L.upper / big).read_bytes() == data[big] and (L.upper / big).stat().st_mode & 0o777 == 0o640
            assert (L.mnt / big).stat().st_mode & 0o777 == 0o640
        assert os.listdir(L.work / "work") == []
        time.sleep(0.2)
        assert "event loop started" not in d.log_text()


@pytest.mark.timeout(60)
def test_native_backend_starts_its_event_loop_when_idle(L):
    """A mount that lives on loads the loop once the device has been idle, and goes on answering."""
    if default_backend() != "native":
        pytest.skip("the native backend's start")
    big = _lower_file(L, 2 << 20)
    env = dict(os.environ, PYUNIONFS_LOOP_IDLE="0.3")
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, extra_args=["-d"], env=env) as d:
        os.listdir(L.mnt)
        deadline = time.monotonic() + 10
        while "event loop started" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "event loop started: the device was idle" in d.log_text()
        with open(L.mnt / big, "r+b") as f:  # a copy-up in a worker thread, on the loop
            f.write(b"changed")
        assert (L.upper / big).read_bytes()[:7] == b"changed"
        assert "event loop started for" not in d.log_text()


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["before the loop", "on the loop"])
def test_an_idle_daemon_takes_no_cpu(L, where):
    """After a burst of requests (the reader spins between them, session.SPIN_DEFAULT) an idle daemon
    sleeps: over a second of nothing it takes at most a tick or two of CPU, before its event loop and
    on it."""
    if default_backend() != "native":
        pytest.skip("the native backend's reader")
    env = dict(os.environ, PYUNIONFS_LOOP_IDLE="60" if where == "before the loop" else "0.1")
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, extra_args=["-d"], env=env) as d:
        if where == "on the loop":
            deadline = time.monotonic() + 10
            while "event loop started" not in d.log_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "event loop started" in d.log_text()
        for _ in range(300):
            os.stat(L.mnt)
            os.listdir(L.mnt)
        time.sleep(0.3)
        before = _cpu_ticks(d.proc.pid)
        time.sleep(1.0)
        used = _cpu_ticks(d.proc.pid) - before
        assert used <= 2, f"{used} ticks of CPU in an idle second"
        if where == "before the loop":
            assert "event loop started" not in d.log_text()
