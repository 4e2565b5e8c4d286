"""Real clients of the union, on pyunionfs and on a kernel overlay: Python's tools, git, SQLite, rsync,
a service's Unix sockets.

- pip works in a virtual environment kept in a lower layer. It installs a wheel (package data and a
  console script included), uninstalls a package of the lower (setuptools: hundreds of lower files and
  directories to hide) and reinstalls over its own install.
- pytest runs a suite kept in a lower layer. It writes its rewritten bytecode and its cache through
  the mount, reruns the last failures from that cache, then clears it.
- git works in a repository kept in a lower layer: status (which rewrites the index, its recorded
  inode numbers being the lower's), a commit that changes, deletes and adds files, a `git mv` of a
  directory, a gc that packs the lower's loose objects (deleting them), fsck, log and a checkout.
- SQLite works on a database kept in a lower layer: a rollback-journal transaction, WAL mode with a
  reader's snapshot and the shared-memory file, a checkpoint, VACUUM.
- rsync -aHAX --delete updates a tree kept in a lower layer, a checksumming pass finds it in sync, and
  what it reads back out of the mount is what it sent.
- A service binds a Unix socket in a directory of a lower layer, and a client talks to it; a stale
  socket file of the lower must be unlinked before its name is bound again.

Each sequence runs twice, on a kernel overlay and on pyunionfs, at the same mount point with fresh
upper layers, over one shared lower layer. Each side must give the same results (exit codes and
output), the same merged tree, and the same upper layer, entry by entry (types, modes, contents,
whiteouts, opaque markers; the kernel's bookkeeping xattrs aside). The lower must be left untouched.
SOURCE_DATE_EPOCH makes pip's bytecode hash-based, so the two sides' bytecode is byte for byte alike.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.mounting import on_kernel_and_pyunionfs
from tests.helpers.snapshots import KERNEL_BOOKKEEPING_XATTRS
from tests.util import diff_snapshots, tree_snapshot

IGNORE_XATTRS = (*KERNEL_BOOKKEEPING_XATTRS, "trusted.overlay.pyunionfs.origin")
STEP_TIMEOUT = 120


def _env(root: Path) -> dict:
    """A clean environment for the clients: nothing of the outer test run's PYTHON*/PYTEST* settings,
    a home and a temporary directory of their own outside the layers."""
    (root / "home").mkdir(exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root / "home"),
        "TMPDIR": str(root / "tmp"),
        "LANG": "C.UTF-8",
        "SOURCE_DATE_EPOCH": "1700000000",
    }


def _tree(root: Path, files: dict) -> None:
    """Text files at the relative paths of *files* under *root*."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(where: Path) -> Path:
    """A small pure-Python wheel, made by hand (no build backend, no network): a package with data
    and a console script."""
    files = {
        "demo_pkg/__init__.py": b"VALUE = 'demo 1.0'\n\n\ndef main():\n    print('demo-tool says', VALUE)\n",
        "demo_pkg/data/table.txt": b"a 1\nb 2\n",
        "demo_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
        "demo_pkg-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: unionfs-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        "demo_pkg-1.0.dist-info/entry_points.txt": b"[console_scripts]\ndemo-tool = demo_pkg:main\n",
    }
    record = [_record_line(p, d) for p, d in files.items()] + ["demo_pkg-1.0.dist-info/RECORD,,"]
    files["demo_pkg-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = where / "demo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return wheel


def _run(argv, env, cwd, extra_env=None) -> tuple:
    """(exit code, stdout, stderr) of a client, its timing lines cut ("in 0.12s")."""
    p = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        env={**env, **(extra_env or {})},
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
    )
    untimed = [re.sub(r" in [0-9.]+s", "", s) for s in (p.stdout, p.stderr)]
    return (p.returncode, *untimed)


def on_both(root: Path, lower: Path, steps, options=()) -> dict:
    """Run `steps(mnt)` over *lower* on a kernel overlay and on pyunionfs (both with *options*), each with
    a fresh upper, both mounted at root/mnt: {side: (steps' results, merged tree, upper tree)}."""
    before = tree_snapshot(lower)

    def layers(d):
        (d / "upper").mkdir(parents=True)
        (d / "work").mkdir()
        return lower, d / "upper", d / "work"

    def steps_and_tree(mnt, upper):
        return steps(mnt), tree_snapshot(mnt, ignore_xattrs=IGNORE_XATTRS)

    runs = on_kernel_and_pyunionfs(
        root, layers, steps_and_tree, options, kernel_options=options, mountpoint=root / "mnt"
    )
    assert not diff_snapshots(before, tree_snapshot(lower)), "the lower layer changed"
    return {
        side: (results, merged, tree_snapshot(upper, ignore_xattrs=IGNORE_XATTRS))
        for side, ((results, merged), upper) in runs.items()
    }


def script_on_both(root: Path, lower: Path, script: str, *paths: str) -> tuple:
    """`on_both` with one step: the Python *script*, its arguments *paths* taken in the mount. Returns
    pyunionfs's (exit code, stdout, stderr) and on_both's result."""
    env = _env(root)

    def steps(mnt):
        return [_run([sys.executable, "-c", script, *(mnt / p for p in paths)], env, mnt)]

    out = on_both(root, lower, steps)
    return out["pyunionfs"][0][0], out


def assert_alike(out: dict, contents_differ: tuple = ()) -> None:
    """The two sides' results, merged trees and upper layers are equal. *contents_differ*: paths whose
    contents legitimately differ between two mounts (git's index records inode and device numbers):
    their type and mode still count."""

    def comparable(snap):
        return {p: e._replace(size=None, sha256=None) if p in contents_differ else e for p, e in snap.items()}

    (k_results, k_merged, k_upper), (p_results, p_merged, p_upper) = out["kernel"], out["pyunionfs"]
    assert len(p_results) == len(k_results), (p_results, k_results)
    for i, (k, p) in enumerate(zip(k_results, p_results)):
        assert p == k, f"step {i}: pyunionfs {p} != kernel {k}"
    for what, k_snap, p_snap in (("merged trees", k_merged, p_merged), ("upper layers", k_upper, p_upper)):
        diffs = diff_snapshots(comparable(k_snap), comparable(p_snap))
        assert not diffs, f"{what} differ (kernel -> pyunionfs):\n" + "\n".join(diffs[:40])


@pytest.fixture(scope="module")
def venv_lower(tmp_path_factory):
    """A lower layer holding a virtual environment with pip and setuptools (made once: the tests only
    read their lower)."""
    root = tmp_path_factory.mktemp("venv-lower")
    lower = root / "lower"
    lower.mkdir()
    python = getattr(sys, "_base_executable", None) or sys.executable
    made = subprocess.run(
        [python, "-m", "venv", str(lower / "venv")], capture_output=True, text=True, timeout=300, env=_env(root)
    )
    if made.returncode != 0 and "ensurepip" in made.stdout + made.stderr:
        pytest.skip(f"this interpreter cannot make a venv with pip: {made.stdout.strip()[-200:]}")
    assert made.returncode == 0, made.stderr
    return lower


@pytest.mark.timeout(300)
@pytest.mark.parametrize("redirect_dir", [False, True], ids=["plain", "redirect_dir"])
def test_pip_in_a_venv_of_a_lower_layer(tmp_path, venv_lower, redirect_dir):
    """With redirect_dir=on, pip's uninstall moves the lower's package directories aside by rename
    before it deletes them."""
    lower = venv_lower
    env = _env(tmp_path)
    wheel = make_wheel(tmp_path)
    quiet = ["--disable-pip-version-check", "--no-cache-dir", "-q"]

    def steps(mnt):
        py = mnt / "venv" / "bin" / "python"
        return [
            _run([py, "-m", "pip", "install", "--no-index", *quiet, wheel], env, mnt),
            _run([py, "-m", "pip", "uninstall", "-y", *quiet, "setuptools"], env, mnt),
            _run([py, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"], env, mnt),
            _run([mnt / "venv" / "bin" / "demo-tool"], env, mnt),
            _run(
                [
                    py,
                    "-c",
                    "import demo_pkg, importlib.resources as r; "
                    "print(demo_pkg.VALUE, r.files('demo_pkg').joinpath('data/table.txt').read_text())",
                ],
                env,
                mnt,
            ),
            _run([py, "-m", "pip", "install", "--no-index", "--force-reinstall", *quiet, wheel], env, mnt),
            _run([py, "-c", "import setuptools"], env, mnt),
        ]

    out = on_both(tmp_path, lower, steps, ["redirect_dir=on"] if redirect_dir else [])
    results = out["pyunionfs"][0]
    assert [r[0] for r in results[:6]] == [0] * 6, results
    assert "demo-pkg==1.0" in results[2][1] and "setuptools" not in results[2][1], results[2]
    assert results[3][1] == "demo-tool says demo 1.0\n" and "a 1\nb 2" in results[4][1], results
    assert results[6][0] != 0 and "No module named 'setuptools'" in results[6][2], results[6]
    upper = out["pyunionfs"][2]
    site = next(p for p in upper if p.endswith("/site-packages"))
    assert upper[f"{site}/setuptools"].type == "c" and upper[f"{site}/setuptools"].rdev == (0, 0), (
        "the lower's setuptools is hidden by a whiteout"
    )
    assert upper[f"{site}/demo_pkg/data/table.txt"].type == "f"
    assert_alike(out)


SUITE = {
    "proj/pytest.ini": "[pytest]\ntestpaths = tests\n",
    "proj/tests/conftest.py": "import pytest\n\n\n@pytest.fixture\ndef pair():\n    return [1, 2]\n",
    "proj/tests/test_demo.py": (
        "import os\n\nimport pytest\n\n\n"
        "def test_rewritten_assert(pair):\n    assert pair == [1, 2]\n\n\n"
        "def test_fails_until_fixed():\n    assert os.environ.get('DEMO_FIXED') == '1', 'not fixed yet'\n\n\n"
        "@pytest.mark.parametrize('n', range(4))\ndef test_many(n):\n    assert n < 4\n"
    ),
    "proj/tests/sub/__init__.py": "",
    "proj/tests/sub/test_pkg.py": "from . import helper\n\n\ndef test_helper():\n    assert helper.TWO == 2\n",
    "proj/tests/sub/helper.py": "TWO = 2\n",
}


@pytest.mark.timeout(300)
def test_pytest_runs_a_suite_of_a_lower_layer(tmp_path):
    lower = tmp_path / "lower"
    _tree(lower, SUITE)
    env = _env(tmp_path)
    fixed = {"DEMO_FIXED": "1"}

    def steps(mnt):
        proj = mnt / "proj"
        pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly"]
        return [
            _run(pytest_cmd, env, proj),  # one failure; bytecode and cache written
            _run([*pytest_cmd, "--lf"], env, proj, fixed),  # the failure alone, from the cache
            _run(pytest_cmd, env, proj, fixed),  # all, with the bytecode written before
            _run([*pytest_cmd, "--cache-clear"], env, proj, fixed),  # the cache removed and made again
        ]

    out = on_both(tmp_path, lower, steps)
    results = out["pyunionfs"][0]
    assert results[0][0] == 1 and "1 failed, 6 passed" in results[0][1], results[0]
    assert results[1][0] == 0 and results[1][1].splitlines()[-1] == "1 passed", results[1]  # the failure alone
    assert results[2][0] == 0 and "7 passed" in results[2][1], results[2]
    assert results[3][0] == 0 and "7 passed" in results[3][1], results[3]
    upper = out["pyunionfs"][2]
    assert any(p.startswith("proj/tests/__pycache__/test_demo.") and p.endswith(".pyc") for p in upper), sorted(upper)
    assert "proj/.pytest_cache/v/cache/nodeids" in upper, sorted(upper)
    assert_alike(out)


GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_AUTHOR_DATE": "1700000000 +0000",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_DATE": "1700000000 +0000",
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("redirect_dir", [False, True], ids=["plain", "redirect_dir"])
def test_git_in_a_repository_of_a_lower_layer(tmp_path, redirect_dir):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    env = {**_env(tmp_path), **GIT_ENV}
    # one pack thread and no automatic gc: the packs both sides write are alike, byte for byte
    (Path(env["HOME"]) / ".gitconfig").write_text(
        "[pack]\n\tthreads = 1\n[gc]\n\tauto = 0\n[init]\n\tdefaultBranch = main\n"
    )
    lower = tmp_path / "lower"
    repo = lower / "repo"
    for i in range(12):
        f = repo / f"d{i % 3}" / f"f{i}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"file {i}\n" * (i + 1))
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "one"]):
        subprocess.run([git, *argv], cwd=repo, env=env, check=True, timeout=60, capture_output=True)
    (repo / "d0" / "f0.txt").write_text("changed in the second commit\n")
    for argv in (["add", "-A"], ["commit", "-q", "-m", "two"]):
        subprocess.run([git, *argv], cwd=repo, env=env, check=True, timeout=60, capture_output=True)

    def steps(mnt):
        r = mnt / "repo"
        (r / "d1" / "f1.txt").write_text("changed through the mount\n")
        (r / "d2" / "f2.txt").unlink()
        (r / "d0" / "new.txt").write_text("new\n")
        out = [
            ("status", _run([git, "status", "--porcelain"], env, r)),
            ("add", _run([git, "add", "-A"], env, r)),
            ("commit three", _run([git, "commit", "-q", "-m", "three"], env, r)),
            # a lower directory: without redirect_dir rename(2) says EXDEV, as on the kernel, and git
            # gives up, so it is moved file by file; with redirect_dir the rename is made
            ("mv dir", _run([git, "mv", "d2", "moved"], env, r)),
        ]
        if not redirect_dir:
            out += [
                ("mkdir", _run(["mkdir", "moved"], env, r)),
                ("mv files", _run([git, "mv", "d2/f5.txt", "d2/f8.txt", "d2/f11.txt", "moved/"], env, r)),
                ("rmdir", _run(["rmdir", "d2"], env, r)),
            ]
        out += [
            ("commit four", _run([git, "commit", "-q", "-m", "four"], env, r)),
            ("gc", _run([git, "gc", "-q", "--prune=now"], env, r)),
            ("fsck", _run([git, "fsck", "--full", "--strict"], env, r)),
            ("log", _run([git, "log", "--format=%H %s", "--stat"], env, r)),
            ("checkout", _run([git, "checkout", "-q", "-b", "topic", "HEAD~2"], env, r)),
            ("status topic", _run([git, "status", "--porcelain", "--branch"], env, r)),
            ("objects", (0, "\n".join(sorted(os.listdir(r / ".git" / "objects"))), "")),
        ]
        return out

    out = on_both(tmp_path, lower, steps, ["redirect_dir=on"] if redirect_dir else [])
    results = dict(out["pyunionfs"][0])
    failed = {name: res for name, res in results.items() if res[0] != 0}
    if redirect_dir:
        assert not failed, failed
    else:
        assert list(failed) == ["mv dir"] and "Invalid cross-device link" in failed["mv dir"][2], failed
    log = results["log"][1]
    assert "four" in log and "three" in log and "{d2 => moved}/f5.txt" in log, log
    assert results["status topic"][1].startswith("## topic"), results["status topic"]
    upper = out["pyunionfs"][2]
    # d2, removed once its files were moved, comes back with the checkout of HEAD~2: opaque
    assert ("trusted.overlay.opaque", b"y") in upper["repo/d2"].xattrs, upper["repo/d2"]
    assert any(p.startswith("repo/.git/objects/pack/pack-") for p in upper), sorted(upper)
    loose = [p for p, e in upper.items() if re.fullmatch(r"repo/\.git/objects/[0-9a-f]{2}", p)]
    assert loose and all(upper[p].type == "c" for p in loose), "the lower's loose objects are whited out"
    assert_alike(out, contents_differ=("repo/.git/index",))


SQLITE_STEPS = r"""
import sqlite3, sys
db = sys.argv[1]
out = []
con = sqlite3.connect(db, isolation_level=None)
con.execute("BEGIN")
con.execute("UPDATE t SET v = v || '!' WHERE id % 7 = 0")
con.execute("DELETE FROM t WHERE id % 11 = 0")
con.executemany("INSERT INTO t (id, v) VALUES (?, ?)", [(i, "new %d" % i) for i in range(1000, 1200)])
con.execute("COMMIT")
out.append(con.execute("PRAGMA integrity_check").fetchone()[0])
out.append(con.execute("PRAGMA journal_mode=WAL").fetchone()[0])
reader = sqlite3.connect(db, isolation_level=None)
reader.execute("BEGIN")
before = reader.execute("SELECT count(*) FROM t").fetchone()[0]  # a snapshot the writer must not disturb
con.execute("BEGIN")
con.executemany("INSERT INTO t (id, v) VALUES (?, ?)", [(i, "wal %d" % i) for i in range(2000, 2300)])
con.execute("COMMIT")
out.append((before, reader.execute("SELECT count(*) FROM t").fetchone()[0]))
reader.execute("COMMIT")
out.append(reader.execute("SELECT count(*) FROM t").fetchone()[0])
reader.close()
out.append(con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
out.append(con.execute("PRAGMA journal_mode=DELETE").fetchone()[0])
con.execute("VACUUM")
out.append(con.execute("PRAGMA integrity_check").fetchone()[0])
out.append(con.execute("SELECT count(*), sum(length(v)) FROM t").fetchone())
con.close()
print(out)
"""


@pytest.mark.timeout(300)
def test_sqlite_database_of_a_lower_layer(tmp_path):
    """SQLite on a database kept in a lower layer: a rollback-journal transaction (the copy-up), WAL mode
    with a reader holding a snapshot while a writer commits (the -shm file is shared memory, mapped by
    both connections), a checkpoint, VACUUM. Compared with the kernel overlay, byte for byte."""
    lower = tmp_path / "lower"
    lower.mkdir()
    con = sqlite3.connect(lower / "data.db")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, "row %d " % i * 5) for i in range(1000)])
    con.commit()
    con.close()
    (code, stdout, stderr), out = script_on_both(tmp_path, lower, SQLITE_STEPS, "data.db")
    assert code == 0, stderr
    assert stdout.startswith("['ok', 'wal', (1109, 1109), 1409,") and "'delete', 'ok'" in stdout, stdout
    assert sorted(out["pyunionfs"][2]) == [".", "data.db"], "no journal, WAL or -shm file is left behind"
    assert_alike(out)


@pytest.mark.timeout(300)
def test_rsync_onto_a_tree_of_a_lower_layer(tmp_path):
    """rsync -aHAX --delete onto a tree kept in a lower layer (files changed in place of temporaries,
    deleted, made; modes, times, hard links, xattrs), checked in sync by a second, checksumming pass,
    then read back out of the mount. Compared with the kernel overlay."""
    rsync = shutil.which("rsync")
    if rsync is None:
        pytest.skip("rsync is not installed")
    lower, src = tmp_path / "lower", tmp_path / "src"
    old = {f"site/d{i % 4}/f{i}.txt": f"old {i}\n" * (i + 1) for i in range(24)}
    old.update({"site/gone/a": "a\n", "site/gone/deep/b": "b\n", "site/keep.txt": "keep\n"})
    _tree(lower, old)
    os.link(lower / "site/d0/f0.txt", lower / "site/d0/f0.link")
    os.symlink("d1/f1.txt", lower / "site/link")
    new = {k: v for k, v in old.items() if not k.startswith("site/gone/") and k != "site/d2/f2.txt"}
    new.update({f"site/d{i % 4}/f{i}.txt": f"new {i}\n" for i in range(0, 24, 3)})  # other sizes
    new.update({"site/d1/f5.txt": "new 5\n" * 6, "site/fresh/x": "x\n"})  # same size as before
    _tree(src, new)
    os.link(src / "site/fresh/x", src / "site/fresh/x.link")
    os.symlink("d3/f3.txt", src / "site/link")
    os.chmod(src / "site/keep.txt", 0o600)
    os.setxattr(src / "site/d3/f7.txt", "user.tag", b"rsynced")
    for p in sorted(src.rglob("*")):  # every time set, so the second pass has nothing to do
        os.utime(p, (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    env = _env(tmp_path)
    back = tmp_path / "back"

    def steps(mnt):
        shutil.rmtree(back, ignore_errors=True)
        return [
            _run([rsync, "-aHAX", "--delete", "-i", f"{src}/site/", "site/"], env, mnt),
            _run([rsync, "-aHAX", "--delete", "--checksum", "-n", "-i", f"{src}/site/", "site/"], env, mnt),
            _run([rsync, "-aHAX", "site/", f"{back}/"], env, mnt),
            (0, "\n".join(diff_snapshots(tree_snapshot(src / "site"), tree_snapshot(back))), ""),
        ]

    out = on_both(tmp_path, lower, steps)
    results = out["pyunionfs"][0]
    assert [r[0] for r in results] == [0, 0, 0, 0], results
    assert "*deleting   gone/" in results[0][1] and ">f+++++++++ fresh/x" in results[0][1], results[0]
    assert results[1][1] == "", "the second pass finds everything in sync"
    assert results[3][1] == "", "what is read back is what was sent"
    upper = out["pyunionfs"][2]
    assert upper["site/gone"].type == "c" and upper["site/d2/f2.txt"].type == "c", sorted(upper)
    assert ("user.tag", b"rsynced") in upper["site/d3/f7.txt"].xattrs
    assert os.stat(tmp_path / "pyunionfs" / "upper" / "site/fresh/x").st_nlink == 2
    assert_alike(out)


UNIX_SOCKET_STEPS = r"""
import os, socket, sys, threading
run = sys.argv[1]
out = []
srv = socket.socket(socket.AF_UNIX)
srv.bind(run + "/app.sock")
srv.listen(1)
def serve():
    c, _ = srv.accept()
    c.sendall(c.recv(100).upper())
    c.close()
t = threading.Thread(target=serve)
t.start()
cl = socket.socket(socket.AF_UNIX)
cl.connect(run + "/app.sock")
cl.sendall(b"hello")
out.append(cl.recv(100))
cl.close()
t.join()
stale = run + "/stale.sock"
try:
    socket.socket(socket.AF_UNIX).bind(stale)
except OSError as exc:
    out.append(exc.errno)
os.unlink(stale)
again = socket.socket(socket.AF_UNIX)
again.bind(stale)
again.listen(1)
c = socket.socket(socket.AF_UNIX)
c.connect(stale)
out.append("rebound")
print(out)
"""


@pytest.mark.timeout(120)
def test_a_service_binds_unix_sockets_in_the_union(tmp_path):
    """A service binds a Unix socket in a directory of a lower layer and a client talks to it; a stale
    socket file of the lower refuses a bind (EADDRINUSE) until it is unlinked. Compared with the kernel
    overlay."""
    lower = tmp_path / "lower"
    (lower / "run").mkdir(parents=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(lower / "run" / "stale.sock"))
    s.close()
    (code, stdout, stderr), out = script_on_both(tmp_path, lower, UNIX_SOCKET_STEPS, "run")
    assert code == 0 and stdout == "[b'HELLO', 98, 'rebound']\n", (code, stdout, stderr)
    upper = out["pyunionfs"][2]
    assert upper["run/app.sock"].type == "s" and upper["run/stale.sock"].type == "s", sorted(upper)
    assert_alike(out)
