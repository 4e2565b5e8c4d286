"""The pytest plugin (entry point pytest11: unionfs), run in fresh pytest processes through `pytester`."""

from __future__ import annotations

import os
import shutil
from importlib.metadata import entry_points

import pytest

from tests.util import mounts_under

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(90)

INNER = r'''
import errno, os, stat
import pytest
from unionfs.embed.pytest_plugin import DIR, WHITEOUT, OPAQUE, File, Symlink

def test_factory(union_mount):
    u = union_mount({"lower0": {"etc/app.conf": "default", "bin/": DIR, "gone": "x",
                                "link": Symlink("etc/app.conf"), "run.sh": File("#!", mode=0o755)},
                     "lower1": {"etc/old": "old", "gone": "bottom", "op/hidden": "h"},
                     "upper": {"etc/app.conf": "mine", "op": OPAQUE, "op/shown": "s"}})
    assert os.path.ismount(u.path)
    assert sorted(os.listdir(u.path)) == ["bin", "etc", "gone", "link", "op", "run.sh"]
    assert (u / "etc/app.conf").read_text() == "mine"
    assert sorted(os.listdir(u / "etc")) == ["app.conf", "old"]
    assert os.listdir(u / "op") == ["shown"]
    assert os.readlink(u / "link") == "etc/app.conf"
    assert stat.S_IMODE(os.stat(u / "run.sh").st_mode) == 0o755
    os.unlink(u / "gone")
    st = os.lstat(u.upper / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert [p.name for p in u.lowers] == ["lower0", "lower1"] and u.work.is_dir()
    assert u.mount.alive
    pytest.mounted_paths.append(str(u.path))

def test_two_mounts_and_whiteout_in_spec(union_mount):
    a = union_mount({"lower": {"f": "a"}})
    b = union_mount({"lower": {"f": "b", "g": "g"}, "upper": {"g": WHITEOUT}}, options=["ro"])
    assert (a / "f").read_text() == "a" and os.listdir(b.path) == ["f"]
    with pytest.raises(OSError) as e:
        (b / "new").write_text("x")
    assert e.value.errno == errno.EROFS
    pytest.mounted_paths += [str(a.path), str(b.path)]

@pytest.mark.union_layers({"lower0": {"a": "top"}, "lower1": {"a": "bottom", "b": "b"}}, readonly=True)
def test_marker(union):
    assert (union / "a").read_text() == "top" and sorted(os.listdir(union.path)) == ["a", "b"]
    assert union.upper is None

@pytest.mark.parametrize("union", [{"lower": {"x": "1"}}, ({"lower": {"y": "2"}}, {"options": ["timeout=0"]})],
                         indirect=True)
def test_indirect(union):
    assert len(os.listdir(union.path)) == 1

def test_fails_inside(union_mount):
    u = union_mount({"lower": {"f": "x"}})
    pytest.mounted_paths.append(str(u.path))
    assert False, "deliberate"

def test_engine(union_engine):
    u = union_engine({"lower": {"d/f": "lower"}, "upper": {}})
    u.fs.write_bytes("d/f", b"upper")
    u.fs.remove("d/f")
    assert u.fs.listdir("d") == [] and (u.lowers[0] / "d/f").read_text() == "lower"
    assert stat.S_ISCHR(os.lstat(u.upper / "d/f").st_mode)

def test_bad_spec(union_mount):
    with pytest.raises(ValueError):
        union_mount({"middle": {}})
'''

CONFTEST = '''
import os, pytest
pytest.mounted_paths = []

def pytest_sessionfinish(session):
    with open(os.environ["INNER_REPORT"], "w") as f:
        f.write("\\n".join(pytest.mounted_paths))
'''


def test_entry_point_registered():
    eps = [e for e in entry_points(group="pytest11") if e.name == "unionfs"]
    assert eps and eps[0].value == "unionfs.embed.pytest_plugin"


def test_plugin_in_fresh_pytest(pytester, tmp_path, monkeypatch):
    report = tmp_path / "report"
    monkeypatch.setenv("INNER_REPORT", str(report))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=INNER)
    # No conftest imports the plugin and no -p: only the entry point can have loaded it.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=80)
    result.assert_outcomes(passed=7, failed=1)
    result.stdout.fnmatch_lines(["*test_fails_inside*deliberate*"])
    mounted = [p for p in report.read_text().splitlines() if p]
    assert len(mounted) == 4
    for p in mounted:
        assert not os.path.ismount(p), f"{p} left mounted"
    assert not mounts_under(pytester.path)


def test_skips_without_fuse(pytester, tmp_path, monkeypatch):
    # A PATH without fusermount3: the mount fixtures skip, saying why; union_engine still works.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    assert shutil.which("fusermount3") is None
    pytester.makepyfile(
        test_skip='''
def test_needs_fuse(union_mount):
    raise AssertionError("must have been skipped")

def test_engine_needs_nothing(union_engine):
    u = union_engine({"lower": {"a": "1"}})
    assert u.fs.read_bytes("a") == b"1"
'''
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", timeout=60)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*FUSE unavailable: fusermount3 not found on PATH*"])
