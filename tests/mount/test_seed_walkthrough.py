"""The seed walkthrough (shared/seeds/000, 001, 003) on a real mount, and examples/seed_walkthrough.sh."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.util import FUSE_SKIP_REASON, hash_tree, mounts_under

from .conftest import union_mount

REPO = Path(__file__).resolve().parents[2]

SEED = {
    "lower0": {
        "f1": "Fichero 1 en la capa lower\n",
        "f2": "Fichero 2 en la capa lower\n",
        "f3": "Fichero 3 en la capa lower\n",
    },
    "upper": {
        "f3": "Fichero 3 en la capa upper\n",
        "f4": "Fichero 4 en la capa upper\n",
    },
}


def test_seed_walkthrough(layers, impl):
    L = layers(SEED)
    lower_hash = hash_tree(L.lower)
    m = L.mnt
    with union_mount(impl, L):
        # 1. the union: f1..f4, f3 from upper
        assert sorted(os.listdir(m)) == ["f1", "f2", "f3", "f4"]
        assert (m / "f1").read_text() == "Fichero 1 en la capa lower\n"
        assert (m / "f2").read_text() == "Fichero 2 en la capa lower\n"
        assert (m / "f3").read_text() == "Fichero 3 en la capa upper\n"
        assert (m / "f4").read_text() == "Fichero 4 en la capa upper\n"
        for name in ("f1", "f2", "f3", "f4"):
            st = os.stat(m / name)
            assert stat.S_ISREG(st.st_mode) and st.st_size == 27, name

        # 2. a new file goes to upper
        with open(m / "f5", "w") as f:
            f.write("Fichero 5 en merged\n")
        assert sorted(os.listdir(m)) == ["f1", "f2", "f3", "f4", "f5"]
        assert (L.upper / "f5").read_text() == "Fichero 5 en merged\n"
        assert os.stat(m / "f5").st_size == 20

        # 3. removing a lower file leaves a whiteout in upper
        os.unlink(m / "f2")
        assert sorted(os.listdir(m)) == ["f1", "f3", "f4", "f5"]
        assert not os.path.lexists(m / "f2")
        with pytest.raises(FileNotFoundError):
            open(m / "f2")

        # 4. modifying a lower file copies it up
        with open(m / "f1", "w") as f:
            f.write("Modifico fichero 1\n")
        assert (m / "f1").read_text() == "Modifico fichero 1\n"
        assert (L.upper / "f1").read_text() == "Modifico fichero 1\n"
        assert (L.lower / "f1").read_text() == "Fichero 1 en la capa lower\n"

    assert sorted(os.listdir(L.upper)) == ["f1", "f2", "f3", "f4", "f5"]
    st = os.lstat(L.upper / "f2")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0), "f2 must be a 0/0 whiteout"
    assert (L.upper / "f1").read_text() == "Modifico fichero 1\n"
    assert (L.upper / "f3").read_text() == "Fichero 3 en la capa upper\n"
    assert (L.upper / "f4").read_text() == "Fichero 4 en la capa upper\n"
    assert (L.upper / "f5").read_text() == "Fichero 5 en merged\n"
    assert sorted(os.listdir(L.lower)) == ["f1", "f2", "f3"]
    assert hash_tree(L.lower) == lower_hash


def _pyunionfs_command(tmp_path: Path) -> str:
    """The console script next to the running interpreter, else a wrapper around `python -m unionfs`."""
    script = Path(sys.executable).parent / "pyunionfs"
    if script.exists():
        return str(script)
    wrapper = tmp_path / "pyunionfs"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m unionfs "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or "")
@pytest.mark.timeout(90)
def test_seed_walkthrough_script(tmp_path):
    env = dict(os.environ, PYUNIONFS=_pyunionfs_command(tmp_path), TMPDIR=str(tmp_path))
    res = subprocess.run(
        ["bash", str(REPO / "examples" / "seed_walkthrough.sh")],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert re.search(r"^c---------.*\s0,\s+0\s.*\bf2$", res.stdout, re.M), out
    assert "Modifico fichero 1" in res.stdout
    assert "Fichero 1 en la capa lower" in res.stdout
    assert not mounts_under(tmp_path), "walkthrough left a mount behind"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("unionfs-seed.")], "temp dir left behind"
