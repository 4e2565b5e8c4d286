"""The issue-7 examples (examples/shared_lower.sh, docker_overlay2.sh, build_layers.sh) run as scripts:
exit status, key output lines, no mount or temp dir left behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.util import FUSE_SKIP_REASON, mount_pyunionfs, mounts_under

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
    pytest.mark.skipif(os.geteuid() != 0, reason="the examples run as root"),
]


def _tool(tmp_path: Path, script: str, module: str) -> str:
    exe = Path(sys.executable).parent / script
    if exe.exists():
        return str(exe)
    wrapper = tmp_path / script
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def run_example(tmp_path: Path, name: str, timeout: int = 90, **env):
    e = dict(
        os.environ,
        TMPDIR=str(tmp_path),
        PYUNIONFS=_tool(tmp_path, "pyunionfs", "unionfs"),
        PYUNIONFS_LAYER=_tool(tmp_path, "pyunionfs-layer", "unionfs.layertools"),
        **env,
    )
    res = subprocess.run(
        ["bash", str(REPO / "examples" / name)],
        env=e,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert not mounts_under(tmp_path), f"{name} left a mount behind"
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith("unionfs-")]
    assert not left, f"{name} left temp dirs behind: {left}"
    return res


@pytest.mark.timeout(120)
def test_shared_lower(tmp_path):
    res = run_example(tmp_path, "shared_lower.sh")
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert out.count("$ grep -c") == 1 and re.search(r"^3$", out, re.M)  # three mounts
    # client 1 sees its changes, client 2 the base data
    assert "File 1 changed by client 1" in out and "File 1 (base data)" in out
    assert re.search(r"^c---------.*\s0,\s+0\s.*\bfile2$", out, re.M), out
    assert re.search(r"diff client_1/upperdir lowerdir\nC /file1\nD /file2\nA /file4\n", out), out
    assert re.search(r"diff client_2/upperdir lowerdir\n\n", out), out  # no changes
    assert "diff client_3/upperdir lowerdir\nC /big-dataset\n" in out
    assert "lowerdir unchanged:" in out and out.rstrip().endswith("shared lower: OK")


@pytest.mark.timeout(120)
def test_docker_overlay2(tmp_path):
    res = run_example(tmp_path, "docker_overlay2.sh")
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    for key in ("LowerDir", "UpperDir", "MergedDir", "WorkDir"):
        assert f'"{key}": "' in out
    lower = re.search(r'"LowerDir": "([^"]+)"', out).group(1).split(":")
    assert len(lower) == 4 and lower[0].endswith("-init/diff")
    upper = re.search(r'"UpperDir": "([^"]+)"', out).group(1)
    assert upper.endswith("/diff") and "this is an update to the hello.txt" in out
    assert re.search(r"^c---------.*\s0,\s+0\s.*\benvironment$", out, re.M)
    assert (
        "diff UpperDir LowerDir...\nC /etc\nD /etc/environment\nA /hello-world.txt\nC /root\n"
        "A /root/newfile.txt\n" in out
    ), out
    assert out.rstrip().endswith("docker overlay2: OK")


@pytest.mark.timeout(60)
def test_a_program_on_a_mount_runs(tmp_path):
    """exec of a file on a pyunionfs mount (build_layers.sh runs its container's programs so): the kernel
    passes __FMODE_EXEC in the FUSE open flags, which openat2 refuses with EINVAL
    unless the engine passes on only open(2)'s own flags."""
    lower, mnt = tmp_path / "probe-lower", tmp_path / "probe-mnt"
    lower.mkdir()
    mnt.mkdir()
    shutil.copy2(shutil.which("true"), lower / "true")
    with mount_pyunionfs(mnt, [lower]):
        res = subprocess.run([str(mnt / "true")], timeout=30)
    assert res.returncode == 0


@pytest.mark.timeout(180)
def test_build_layers(tmp_path):
    env = {}
    if os.environ.get("BUSYBOX_DEB"):
        env["BUSYBOX_DEB"] = os.environ["BUSYBOX_DEB"]
    res = run_example(tmp_path, "build_layers.sh", timeout=150, **env)
    out = res.stdout
    if res.returncode == 77:
        pytest.skip(res.stderr.strip() or "busybox-static could not be downloaded")
    assert res.returncode == 0, out + res.stderr
    assert re.search(r"^LAYER1: \d+ entries", out, re.M)
    # LAYER2 holds what the install command changed, whiteouts included
    assert re.search(r"^c---------.*\s0,\s+0\s.*\bping$", out, re.M), out
    assert (
        "diff layer2/diff layer1/diff\nC /bin\nD /bin/ping\nD /bin/ping6\nC /etc\nA /etc/hello\n"
        "A /etc/hello/version\nC /etc/passwd\n"
    ) in out, out
    assert "bin/.wh.ping" in out and "usr/local/bin/hello" in out  # tar -tvzf of the export
    # the container reads what LAYER2 added
    assert out.count("hello from LAYER2") >= 1 and "hello 1.0 installed" in out
    assert "ls: /bin/ping: No such file or directory" in out
    assert "diff container/diff layer2/diff layer1/diff\nC /tmp\nA /tmp/mark\n" in out, out
    assert out.rstrip().endswith("build layers: OK")
