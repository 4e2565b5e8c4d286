"""Bad input that tests/mount/test_cli.py does not cover yet (issue 6, "Bad input").

Each case must give exactly one stderr line starting `pyunionfs: `, a non-zero exit status, nothing
mounted and nothing written: the layer directories, the mountpoint and every other path the case
touches hash the same before and after. Run in the background and in the foreground (`-f`), as in
test_cli.py, with the helpers both share (tests/helpers/cli.py).

Cases that need an unprivileged caller (an unreadable layer, an unwritable upper: root passes every
access check) run the CLI as `nobody` through setpriv(1) on layers under a world-traversable directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.cli import PYTHON_M, SPEC, hash_paths, opts
from tests.util import make_layers, mount_pyunionfs, mounts_under, unmount

pytestmark = pytest.mark.usefixtures("no_stray_daemons")


@pytest.fixture
def L(layers):
    return layers(SPEC)


BAD = {}
XFAIL = {}


def bad(name, xfail=None):
    def deco(fn):
        BAD[name] = fn
        if xfail:
            XFAIL[name] = xfail
        return fn

    return deco


# --- layers overlapping each other ------------------------------------------------------------------


@bad("upperdir inside workdir")
def _(L, tmp, extra):
    (L.work / "up").mkdir()
    return ["-o", opts(L, upperdir=L.work / "up"), L.mnt]


@bad("upperdir equals workdir")
def _(L, tmp, extra):
    return ["-o", opts(L, workdir=L.upper), L.mnt]


@bad("lowerdir inside upperdir")
def _(L, tmp, extra):
    return ["-o", opts(L, lowerdir=f"{L.lowers[0]}:{L.upper / 'usub'}"), L.mnt]


@bad("lowerdir inside workdir")
def _(L, tmp, extra):
    (L.work / "work").mkdir()  # an earlier mount's staging dir: allowed in a workdir, not as a lower
    return ["-o", opts(L, lowerdir=f"{L.lowers[0]}:{L.work / 'work'}"), L.mnt]


@bad("upperdir is the parent of a lower")
def _(L, tmp, extra):
    return ["-o", opts(L, upperdir=L.root), L.mnt]


# --- the mountpoint inside a layer -------------------------------------------------------------------


@bad("mountpoint inside a lower")
def _(L, tmp, extra):
    return ["-o", opts(L), L.lowers[0] / "sub"]


@bad("mountpoint is a lower")
def _(L, tmp, extra):
    return ["-o", opts(L), L.lowers[1]]


@bad("mountpoint inside upperdir")
def _(L, tmp, extra):
    return ["-o", opts(L), L.upper / "usub"]


@bad("mountpoint inside workdir")
def _(L, tmp, extra):
    (L.work / "work").mkdir()
    return ["-o", opts(L), L.work / "work"]


@bad("mountpoint is workdir")
def _(L, tmp, extra):
    return ["-o", opts(L), L.work]


# --- non-directory and odd layer paths ----------------------------------------------------------------


@bad("lowerdir is a dangling symlink")
def _(L, tmp, extra):
    (tmp / "dangling").symlink_to(tmp / "nowhere")
    extra.append(tmp / "dangling")
    return ["-o", opts(L, lowerdir=f"{L.lowers[0]}:{tmp / 'dangling'}"), L.mnt]


@bad("lowerdir is a device")
def _(L, tmp, extra):
    return ["-o", opts(L, lowerdir="/dev/null"), L.mnt]


@bad("workdir is a file")
def _(L, tmp, extra):
    (tmp / "wfile").write_text("x")
    extra.append(tmp / "wfile")
    return ["-o", opts(L, workdir=tmp / "wfile"), L.mnt]


@bad("workdir/work is a file")
def _(L, tmp, extra):
    (L.work / "work").write_text("not a dir\n")
    return ["-o", opts(L), L.mnt]


@bad("workdir/work is a symlink")
def _(L, tmp, extra):
    (L.work / "work").symlink_to(L.upper)
    return ["-o", opts(L), L.mnt]


# --- malformed option strings -------------------------------------------------------------------------


@bad("lowerdir with a trailing unbalanced escape")
def _(L, tmp, extra):
    return ["-o", f"lowerdir={L.lowers[0]}:{L.lowers[1]}\\", L.mnt]


@bad("upperdir with a trailing unbalanced escape")
def _(L, tmp, extra):
    return ["-o", opts(L, upperdir=None, workdir=None) + f",workdir={L.work},upperdir={L.upper}\\", L.mnt]


@bad("lowerdir with a trailing colon")
def _(L, tmp, extra):
    return ["-o", opts(L, lowerdir=f"{L.lowers[0]}:"), L.mnt]


@bad("lowerdir with a leading colon")
def _(L, tmp, extra):
    return ["-o", opts(L, lowerdir=f":{L.lowers[0]}"), L.mnt]


@bad("lowerdir as a flag without value")
def _(L, tmp, extra):
    return ["-o", opts(L, lowerdir=True), L.mnt]


@bad("upperdir with an empty value")
def _(L, tmp, extra):
    return ["-o", opts(L, upperdir=""), L.mnt]


@bad("workdir as a flag without value")
def _(L, tmp, extra):
    return ["-o", opts(L, workdir=True), L.mnt]


@bad("-o without an argument")
def _(L, tmp, extra):
    return [L.mnt, "-o"]


@bad("timeout not a number")
def _(L, tmp, extra):
    return ["-o", opts(L) + ",timeout=abc", L.mnt]


@bad("timeout negative")
def _(L, tmp, extra):
    return ["-o", opts(L) + ",timeout=-1", L.mnt]


@bad("readahead not a number")
def _(L, tmp, extra):
    return ["-o", opts(L) + ",readahead=lots", L.mnt]


@bad("readahead negative")
def _(L, tmp, extra):
    return ["-o", opts(L) + ",readahead=-1", L.mnt]


@bad("readahead above 1 GiB")
def _(L, tmp, extra):
    return ["-o", opts(L) + ",readahead=2000000", L.mnt]


@bad("spin not a number")
def _(L, tmp, extra):
    return ["-o", opts(L) + ",spin=fast", L.mnt]


@bad("spin above 10 ms")
def _(L, tmp, extra):
    return ["-o", opts(L) + ",spin=20000", L.mnt]


@bad("redirect_dir=sideways")
def _(L, tmp, extra):
    return ["-o", opts(L) + ",redirect_dir=sideways", L.mnt]


@bad("index=maybe")
def _(L, tmp, extra):
    return ["-o", opts(L) + ",index=maybe", L.mnt]


@bad("index=on over other lowers than the upper was indexed over")
def _(L, tmp, extra):
    # The index's check is the engine's, which the native mount program otherwise makes only after the
    # mount: with index=on it is made (and this refused) before.
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, options=["index=on"]):
        pass
    return ["-o", opts(L, lowerdir=str(L.lowers[0])) + ",index=on", L.mnt]


# --- duplicate options ----------------------------------------------------------------------------------


@bad("lowerdir given twice with different values")
def _(L, tmp, extra):
    return ["-o", opts(L), "-o", f"lowerdir={L.lowers[1]}", L.mnt]


@bad("upperdir given twice with different values")
def _(L, tmp, extra):
    other = tmp / "other-upper"
    other.mkdir()
    extra.append(other)
    return ["-o", opts(L) + f",upperdir={other}", L.mnt]


@bad("workdir given twice with different values")
def _(L, tmp, extra):
    other = tmp / "other-work"
    other.mkdir()
    extra.append(other)
    return ["-o", f"workdir={other}," + opts(L), L.mnt]


# --- too many lowers ------------------------------------------------------------------------------------


def _many_lowers(tmp: Path, n: int) -> list:
    base = tmp / "many"
    base.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        d = base / f"{i:03d}"
        d.mkdir(exist_ok=True)
        out.append(d)
    (out[-1] / "bottom").write_text("bottom\n")
    return out


@bad("501 lowers (the kernel's limit is 500)")
def _(L, tmp, extra):
    lowers = _many_lowers(tmp, 501)
    extra.append(tmp / "many")
    return ["-o", opts(L, lowerdir=":".join(map(str, lowers))), L.mnt]


def _run_watching(args, root, timeout=30):
    """run_cli, but a daemon that mounts after all (a foreground one would stay) is unmounted at once:
    -> (CompletedProcess, mounts seen under root)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*PYTHON_M, *map(str, args)], stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        seen = []
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                now = mounts_under(root, ("fuse",))
                if now:
                    seen += now
                    for m in now:
                        unmount(m.mountpoint)
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        seen += mounts_under(root, ("fuse",))
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace")
        ), seen


def _cases():
    out = []
    for name in BAD:
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[name])] if name in XFAIL else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def _check_refused(res, before, after, mounted_after, case):
    lines = res.stderr.splitlines()
    assert res.returncode in (1, 2), f"{case}: exit {res.returncode}; stderr: {res.stderr!r}"
    assert len(lines) == 1 and lines[0].startswith("pyunionfs: "), (
        f"{case}: stderr must be one 'pyunionfs: ' line: {res.stderr!r}"
    )
    assert not mounted_after, f"{case}: something got mounted: {mounted_after}"
    assert after == before, f"{case}: files changed: " + ", ".join(k for k in before if before[k] != after[k])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", _cases())
@pytest.mark.parametrize("foreground", [False, True], ids=["bg", "fg"])
def test_bad_input_more(L, tmp_path, case, foreground):
    extra = []
    args = BAD[case](L, tmp_path, extra)
    watched = [*L.dirs(), L.mnt, L.root, *extra]
    try:
        before = hash_paths(watched)
        res, mounted_after = _run_watching((["-f"] if foreground else []) + args, tmp_path)
        after = hash_paths(watched)
    finally:
        for m in mounts_under(tmp_path, ("fuse",)):
            unmount(m.mountpoint)
    _check_refused(res, before, after, mounted_after, case)


@pytest.mark.timeout(90)
def test_500_lowers_accepted(L, tmp_path):
    """The limit is exactly the kernel's: 500 lowers mount, and the bottom one is reached."""
    lowers = _many_lowers(tmp_path, 500)
    with mount_pyunionfs(L.mnt, lowers, L.upper, L.work):
        assert (L.mnt / "bottom").read_text() == "bottom\n"
        (L.mnt / "bottom").write_text("changed\n")
    assert (L.upper / "bottom").read_text() == "changed\n"
    assert (lowers[-1] / "bottom").read_text() == "bottom\n"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("foreground", [False, True], ids=["bg", "fg"])
def test_500_lowers_mount_under_a_256_descriptor_soft_limit(L, tmp_path, foreground):
    """500 lowers hold ~510 descriptors before the mount: the mount program raises its soft limit
    before it opens them (a shell's `ulimit -n 256`), not only once the mount is made."""
    import resource

    lowers = _many_lowers(tmp_path, 500)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"the hard descriptor limit ({hard}) leaves nothing to raise to")
    o = opts(L, lowerdir=":".join(str(p) for p in lowers))
    args = [*PYTHON_M, *(["-f"] if foreground else []), "-o", o, str(L.mnt)]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )
    try:
        deadline = time.monotonic() + 30
        while not mounts_under(tmp_path, ("fuse",)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not foreground:
            assert proc.wait(timeout=30) == 0, proc.stderr.read().decode(errors="replace")
        assert (L.mnt / "bottom").read_text() == "bottom\n"
    finally:
        for m in mounts_under(tmp_path, ("fuse",)):
            unmount(m.mountpoint)
        try:
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()


# --- as an unprivileged user ------------------------------------------------------------------------------

NOBODY = 65534


def _nobody_layers(tmp_path):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv(1) to run the CLI as nobody")
    base = Path(tempfile.mkdtemp(prefix="unionfs-nobody.", dir="/tmp"))
    os.chmod(base, 0o755)
    L = make_layers(base / "u", SPEC)
    for p in [base / "u", *L.dirs(), L.mnt]:
        os.chown(p, NOBODY, NOBODY)
    return base, L


def _run_as_nobody(args):
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *PYTHON_M, *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            timeout=30,
            env=env,
            cwd="/",
        )
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace")
        )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["unreadable lower", "untraversable lower", "unreadable upper", "unwritable upper"])
def test_bad_permissions_as_nobody(tmp_path, case):
    base, L = _nobody_layers(tmp_path)
    try:
        if case == "unreadable lower":
            os.chmod(L.lowers[1], 0o311)
        elif case == "untraversable lower":
            os.chmod(L.lowers[1], 0o644)
        elif case == "unreadable upper":
            os.chmod(L.upper, 0o311)
        elif case == "unwritable upper":
            os.chown(L.upper, 0, 0)
            os.chmod(L.upper, 0o755)
        watched = [*L.dirs(), L.mnt]
        before = hash_paths(watched)
        res = _run_as_nobody(["-f", "-o", opts(L), L.mnt])
        after = hash_paths(watched)
        mounted_after = mounts_under(base, ("fuse",))
    finally:
        for m in mounts_under(base, ("fuse",)):
            unmount(m.mountpoint)
        for d in L.dirs():
            os.chmod(d, 0o755)
        shutil.rmtree(base, ignore_errors=True)
    _check_refused(res, before, after, mounted_after, case)
    assert "readable" in res.stderr or "writable" in res.stderr, res.stderr
