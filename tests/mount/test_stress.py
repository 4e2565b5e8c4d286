"""Load (issue 6): an fsx-style data-integrity stress test, resource bounds, and latency during copy-up.

test_stress_random_operations: one mount, two rounds; in each, 4 worker processes at once run random
operations (create, pwrite at random offsets, append, truncate, rename of files and directories,
unlink, mkdir, rmdir, link, readdir, read-back, fsync) in their own subtree (which starts with lower
files and directories, so copy-up, whiteouts and EXDEV are exercised) plus their own region of 4 shared
files that all of them write (the first writes race to copy the shared lower files up). Each worker
keeps a model of every file it owns and checks every result (value or errno) and every read against
it. Between the rounds the kernel's caches are dropped (`echo 2 > /proc/sys/vm/drop_caches`) so it
forgets the inodes; the daemon's open fds and VmRSS are measured at the start and after each round.
At the end the models are compared with the upper on disk (after unmount) and through a fresh mount.

Environment:
  STRESS_SECONDS  seconds of load per round (default 12: the whole test takes about 40 s)
  STRESS_SEED     base seed; default fixed (1234) when CI is set, random otherwise (printed)

test_latency_during_big_copy_up: while one process copies up a 500 MiB lower file, the test process
keeps stat-ing, listing and reading small files on the same mount (timeout=0, so every call reaches
the daemon) and records the latency of each call.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.util import DIR, hash_tree, make_layers, mount_pyunionfs
from unionfs.engine.layers import Layer
from unionfs.options import default_backend

REPO = Path(__file__).resolve().parents[2]
WORKERS = 4
ROUNDS = 2
REGION = 64 * 1024
SHARED = [f"s{k}" for k in range(4)]
MiB = 1 << 20


def stress_seconds() -> float:
    return float(os.environ.get("STRESS_SECONDS", "12"))


def base_seed() -> int:
    if os.environ.get("STRESS_SEED"):
        return int(os.environ["STRESS_SEED"])
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        return 1234
    return random.randrange(1 << 30)


# ---------------------------------------------------------------------------------------------------
# The worker (runs in its own process: python -c "from tests.mount.test_stress import worker_main ...")
# ---------------------------------------------------------------------------------------------------


def lower_subtree(root: str) -> dict:
    """What a worker's subtree holds in the lower before the run."""
    spec = {f"{root}/ld{d}/f{k}": f"{root} ld{d} f{k}\n" * (k + 1) for d in range(2) for k in range(4)}
    spec.update({f"{root}/lf{k}": f"{root} lf{k}\n" * 100 for k in range(4)})
    spec[f"{root}/ld0/sub/deep"] = "deep\n"
    spec[f"{root}/emptydir"] = DIR
    return spec


class StressError(AssertionError):
    pass


class Worker:
    def __init__(self, mnt: str, root: str, region: int, seed: int, seconds: float):
        self.mnt, self.root, self.region = mnt, root, region
        self.rng = random.Random(seed)
        self.seed = seed
        self.deadline = time.monotonic() + seconds
        self.inodes = {}  # id -> bytearray
        self.files = {}  # relpath -> inode id
        self.dirs = set()  # relpaths of directories (root included)
        self.lower_dirs = set()
        self.next_ino = 0
        self.ops = 0
        self.counts = {}
        self.shared = {name: bytearray(REGION) for name in SHARED}
        for rel, content in lower_subtree(root).items():
            parts = rel.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                self.dirs.add(d)
                self.lower_dirs.add(d)
            if content is DIR:
                self.dirs.add(rel)
                self.lower_dirs.add(rel)
            else:
                self.files[rel] = self._new_inode(content.encode())
        self.lower_dirs.discard(root)  # the root is never renamed or removed anyway

    def _new_inode(self, data: bytes) -> int:
        self.next_ino += 1
        self.inodes[self.next_ino] = bytearray(data)
        return self.next_ino

    def p(self, rel: str) -> str:
        return os.path.join(self.mnt, rel)

    def children(self, d: str) -> set:
        pre = d + "/"
        return {
            x[len(pre) :] for x in list(self.files) + list(self.dirs) if x.startswith(pre) and "/" not in x[len(pre) :]
        }

    def exists(self, rel: str) -> bool:
        return rel in self.files or rel in self.dirs

    def fresh_name(self, parent: str) -> str:
        for _ in range(50):
            name = f"{parent}/n{self.rng.randrange(60)}"
            if not self.exists(name):
                return name
        return f"{parent}/x{self.rng.randrange(1 << 30)}"

    def rand_file(self):
        return self.rng.choice(sorted(self.files)) if self.files else None

    def rand_dir(self, *, nonroot=False):
        ds = sorted(d for d in self.dirs if not (nonroot and d == self.root))
        return self.rng.choice(ds) if ds else None

    def fail(self, what: str):
        raise StressError(f"worker {self.root} seed {self.seed} op #{self.ops}: {what}")

    def expect_errno(self, code, fn, *args):
        try:
            fn(*args)
        except OSError as exc:
            if exc.errno != code:
                self.fail(
                    f"{fn.__name__}{args}: errno {errno.errorcode.get(exc.errno)}, expected {errno.errorcode[code]}"
                )
            return
        self.fail(f"{fn.__name__}{args}: succeeded, expected {errno.errorcode[code]}")

    def rand_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n) if hasattr(self.rng, "randbytes") else os.urandom(n)

    # --- operations -------------------------------------------------------------------------------

    def op_create(self):
        path = self.fresh_name(self.rand_dir())
        data = self.rand_bytes(self.rng.randrange(0, 20000))
        fd = os.open(self.p(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self.files[path] = self._new_inode(data)

    def op_create_existing(self):
        path = self.rand_file() or self.rand_dir()
        self.expect_errno(errno.EEXIST, os.open, self.p(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)

    def op_write(self):
        path = self.rand_file()
        if path is None:
            return
        buf = self.inodes[self.files[path]]
        off = self.rng.randrange(0, len(buf) + 5000)
        data = self.rand_bytes(self.rng.randrange(1, 16384))
        fd = os.open(self.p(path), os.O_RDWR)
        try:
            if os.pwrite(fd, data, off) != len(data):
                self.fail(f"short pwrite on {path}")
            if self.rng.random() < 0.1:
                os.fsync(fd)
        finally:
            os.close(fd)
        if off > len(buf):
            buf.extend(bytes(off - len(buf)))
        buf[off : off + len(data)] = data

    def op_append(self):
        path = self.rand_file()
        if path is None:
            return
        data = self.rand_bytes(self.rng.randrange(1, 8192))
        fd = os.open(self.p(path), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self.inodes[self.files[path]].extend(data)

    def op_truncate(self):
        path = self.rand_file()
        if path is None:
            return
        buf = self.inodes[self.files[path]]
        size = self.rng.randrange(0, 2 * len(buf) + 100)
        os.truncate(self.p(path), size)
        if size < len(buf):
            del buf[size:]
        else:
            buf.extend(bytes(size - len(buf)))

    def op_rename_file(self):
        src = self.rand_file()
        if src is None:
            return
        if self.rng.random() < 0.3 and len(self.files) > 1:
            dst = self.rand_file()  # replace an existing file
        else:
            dst = self.fresh_name(self.rand_dir())
        os.rename(self.p(src), self.p(dst))
        if src == dst or self.files.get(dst) == self.files[src]:
            if src != dst:
                # Two names of one inode: rename does nothing (POSIX).
                pass
            return
        self.files[dst] = self.files.pop(src)

    def op_rename_dir(self):
        src = self.rand_dir(nonroot=True)
        if src is None:
            return
        candidates = [d for d in self.dirs if d != src and not d.startswith(src + "/")]
        dst = self.fresh_name(self.rng.choice(sorted(candidates)))
        if src in self.lower_dirs:
            self.expect_errno(errno.EXDEV, os.rename, self.p(src), self.p(dst))
            return
        os.rename(self.p(src), self.p(dst))
        pre = src + "/"

        def move(x):
            return dst + x[len(src) :] if x == src or x.startswith(pre) else x

        self.files = {move(k): v for k, v in self.files.items()}
        self.dirs = {move(d) for d in self.dirs}
        self.lower_dirs = {move(d) for d in self.lower_dirs}

    def op_unlink(self):
        path = self.rand_file()
        if path is None:
            return
        os.unlink(self.p(path))
        del self.files[path]

    def op_mkdir(self):
        path = self.fresh_name(self.rand_dir())
        os.mkdir(self.p(path))
        self.dirs.add(path)

    def op_rmdir(self):
        path = self.rand_dir(nonroot=True)
        if path is None:
            return
        if self.children(path):
            self.expect_errno(errno.ENOTEMPTY, os.rmdir, self.p(path))
            return
        os.rmdir(self.p(path))
        self.dirs.discard(path)
        self.lower_dirs.discard(path)

    def op_link(self):
        src = self.rand_file()
        if src is None:
            return
        dst = self.fresh_name(self.rand_dir())
        os.link(self.p(src), self.p(dst))
        self.files[dst] = self.files[src]

    def op_readdir(self):
        d = self.rand_dir()
        got = sorted(os.listdir(self.p(d)))
        want = sorted(self.children(d))
        if got != want:
            self.fail(f"readdir {d}: {got} != model {want}")

    def op_read(self):
        path = self.rand_file()
        if path is None:
            return
        want = bytes(self.inodes[self.files[path]])
        with open(self.p(path), "rb") as f:
            got = f.read()
        if got != want:
            self.fail(
                f"read {path}: {len(got)} bytes, model {len(want)}; first difference at "
                f"{next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))}"
            )
        if os.stat(self.p(path)).st_size != len(want):
            self.fail(f"stat {path}: size differs from model {len(want)}")

    def op_shared(self):
        name = self.rng.choice(SHARED)
        buf = self.shared[name]
        off = self.rng.randrange(0, REGION - 1)
        data = self.rand_bytes(self.rng.randrange(1, min(8192, REGION - off) + 1))
        base = self.region * REGION
        fd = os.open(self.p(name), os.O_RDWR)
        try:
            os.pwrite(fd, data, base + off)
            buf[off : off + len(data)] = data
            got = os.pread(fd, REGION, base)
        finally:
            os.close(fd)
        if got != bytes(buf):
            self.fail(f"shared file {name} region {self.region} differs from model")

    OPS = [
        ("create", 10),
        ("create_existing", 1),
        ("write", 14),
        ("append", 8),
        ("truncate", 5),
        ("rename_file", 6),
        ("rename_dir", 3),
        ("unlink", 5),
        ("mkdir", 4),
        ("rmdir", 3),
        ("link", 3),
        ("readdir", 8),
        ("read", 14),
        ("shared", 8),
    ]

    def run(self):
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        while time.monotonic() < self.deadline:
            op = self.rng.choices(names, weights)[0]
            self.ops += 1
            self.counts[op] = self.counts.get(op, 0) + 1
            try:
                getattr(self, "op_" + op)()
            except StressError:
                raise
            except OSError as exc:
                self.fail(f"{op}: unexpected {exc!r}")
        # Final full check of every file.
        for path in sorted(self.files):
            want = bytes(self.inodes[self.files[path]])
            with open(self.p(path), "rb") as f:
                if f.read() != want:
                    self.fail(f"final read of {path} differs from the model")

    def result(self) -> dict:
        return {
            "ok": True,
            "ops": self.ops,
            "counts": self.counts,
            "seed": self.seed,
            "files": {p: hashlib.sha256(bytes(self.inodes[i])).hexdigest() for p, i in self.files.items()},
            "links": {p: i for p, i in self.files.items()},
            "dirs": sorted(self.dirs),
            "shared": {n: bytes(b).hex() for n, b in self.shared.items()},
        }


def worker_main(argv=None):
    mnt, root, region, seed, seconds, out = (argv or sys.argv[1:])[:6]
    w = Worker(mnt, root, int(region), int(seed), float(seconds))
    try:
        w.run()
        res = w.result()
    except Exception as exc:  # noqa: BLE001 - reported to the test
        res = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "seed": int(seed), "ops": w.ops}
    with open(out, "w") as f:
        json.dump(res, f)


# ---------------------------------------------------------------------------------------------------
# helpers for the test process
# ---------------------------------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        return True
    except OSError:
        return False


def run_round(mnt: Path, tmp: Path, roots: list, regions: list, seed: int, seconds: float) -> list:
    procs = []
    for root, region in zip(roots, regions):
        out = tmp / f"result-{root}.json"
        code = "import sys; from tests.mount.test_stress import worker_main; worker_main()"
        args = [str(mnt), root, str(region), str(seed + region), str(seconds), str(out)]
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-c", code, *args],
                    cwd=REPO,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                ),
                out,
            )
        )
    results = []
    for proc, out in procs:
        try:
            output, _ = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"a stress worker hung (seed {seed})")
        if not out.exists():
            raise AssertionError(f"worker wrote no result (exit {proc.returncode}): {output.decode()}")
        results.append(json.loads(out.read_text()))
    bad = [r for r in results if not r["ok"]]
    assert not bad, "stress workers failed:\n" + "\n".join(r["error"] for r in bad)
    return results


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def whiteout_or_opaque_hides(upper: Path, rel: str) -> bool:
    """Whether the upper hides the lower's `rel` (a whiteout or a non-directory on the path, or an
    opaque directory above it)."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        p = upper.joinpath(*parts[:i])
        if not os.path.lexists(p):
            return False
        if not p.is_dir() or p.is_symlink():
            return True
        if i < len(parts):
            for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
                try:
                    if os.getxattr(p, name, follow_symlinks=False) == b"y":
                        return True
                except OSError:
                    pass
    return False


def check_models_on_disk(L, results) -> None:
    """The upper after unmount holds what every model says (falling through to the lower where the
    upper has nothing for a path)."""
    problems = []
    for r in results:
        for rel, h in r["files"].items():
            up = L.upper / rel
            if os.path.lexists(up):
                if not up.is_file() or up.is_symlink():
                    problems.append(f"{rel}: not a regular file in the upper")
                elif sha(up) != h:
                    problems.append(f"{rel}: upper content differs from the model")
            elif whiteout_or_opaque_hides(L.upper, rel) or not (L.lower / rel).is_file():
                problems.append(f"{rel}: in the model, neither in the upper nor visible in the lower")
            elif sha(L.lower / rel) != h:
                problems.append(f"{rel}: not copied up, and the lower differs from the model")
        # Names of one inode in the model are one inode in the upper (where both were copied up).
        by_ino = {}
        for rel, ino in r["links"].items():
            if (L.upper / rel).is_file():
                by_ino.setdefault(ino, set()).add(os.stat(L.upper / rel).st_ino)
        problems += [f"hard link split: model inode {i} is {s} in the upper" for i, s in by_ino.items() if len(s) > 1]
    assert not problems, "\n".join(problems[:20])


def check_models_through_mount(mnt: Path, roots: list, results) -> None:
    problems = []
    for root, r in zip(roots, results):
        seen_files, seen_dirs = {}, set()
        for dirpath, _dirnames, filenames in os.walk(mnt / root):
            rel = os.path.relpath(dirpath, mnt)
            seen_dirs.add(rel)
            for n in filenames:
                seen_files[f"{rel}/{n}"] = sha(os.path.join(dirpath, n))
        if seen_files != r["files"]:
            diff = sorted(set(seen_files.items()) ^ set(r["files"].items()))
            problems.append(f"{root}: files differ from the model: {diff[:10]}")
        if seen_dirs != set(r["dirs"]):
            problems.append(f"{root}: dirs differ: {sorted(seen_dirs ^ set(r['dirs']))}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_stress_random_operations(tmp_path):
    seconds = stress_seconds()
    seed = base_seed()
    roots = [[f"r{rnd}w{k}" for k in range(WORKERS)] for rnd in range(ROUNDS)]
    spec = {}
    for rr in roots:
        for root in rr:
            spec.update(lower_subtree(root))
    spec.update({name: bytes(WORKERS * ROUNDS * REGION) for name in SHARED})
    L = make_layers(tmp_path / "u", {"lower0": spec})
    lower_hashes = [hash_tree(l) for l in L.lowers]
    figures = {"seed": seed, "seconds per round": seconds}
    all_results = []
    with mount_pyunionfs(*L.mount_args(), watchdog=seconds * ROUNDS + 300) as d:
        pid = d.proc.pid
        os.listdir(L.mnt)
        figures["fds at start"] = fd_count(pid)
        figures["rss KiB at start"] = vm_rss_kib(pid)
        rss = []
        fds = []
        for rnd in range(ROUNDS):
            res = run_round(L.mnt, tmp_path, roots[rnd], [rnd * WORKERS + k for k in range(WORKERS)], seed, seconds)
            all_results += res
            figures[f"round {rnd + 1} ops"] = sum(r["ops"] for r in res)
            figures[f"round {rnd + 1} fds right after"] = fd_count(pid)
            dropped = drop_caches()
            time.sleep(1.0)  # let the kernel's FORGETs reach the daemon
            fds.append(fd_count(pid))
            rss.append(vm_rss_kib(pid))
            figures[f"round {rnd + 1} fds after forget"] = fds[-1]
            figures[f"round {rnd + 1} rss KiB after forget"] = rss[-1]
            figures["drop_caches"] = dropped
        print("\nstress figures: " + json.dumps(figures))
        print(
            "op counts: "
            + json.dumps({k: sum(r["counts"].get(k, 0) for r in all_results) for k in all_results[0]["counts"]})
        )
        # The shared files through the mount: every region as its worker's model says.
        for name in SHARED:
            data = (L.mnt / name).read_bytes()
            want = b"".join(bytes.fromhex(r["shared"][name]) for r in all_results)
            assert data == want, f"shared file {name} differs from the workers' models"
        # each lower layer keeps the fds of the directories it last looked in, Layer.DIR_FDS at most
        kept_dirs = Layer.DIR_FDS * len(L.lowers)
        assert fds[-1] <= figures["fds at start"] + 8 + kept_dirs, f"daemon fds leak: {figures}"
        if figures["drop_caches"]:
            growth = rss[-1] - rss[0]
            assert growth < max(16 * 1024, rss[0] // 5), f"daemon memory keeps growing: {figures}"
    check_models_on_disk(L, all_results)
    assert [hash_tree(l) for l in L.lowers] == lower_hashes, "a lower changed"
    with mount_pyunionfs(*L.mount_args()):
        check_models_through_mount(L.mnt, [r for rr in roots for r in rr], all_results)


def _trigger_copy_up(path: Path) -> subprocess.Popen:
    code = (
        "import os, sys, time\n"
        "t = time.monotonic()\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)\n"
        "print(time.monotonic() - t, flush=True)\n"
        "os.write(fd, b'x'); os.close(fd)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )


def _probe(mnt: Path, n_small: int, stop) -> list:
    lat = []
    i = 0
    while not stop():
        name = mnt / "small" / f"f{i % n_small}"
        for fn in (lambda: os.stat(name), lambda: os.listdir(mnt / "small"), lambda: name.read_bytes()):  # noqa: B023 (called at once)
            t = time.perf_counter()
            fn()
            lat.append(time.perf_counter() - t)
        i += 1
    return lat


@pytest.mark.timeout(240)
def test_latency_during_big_copy_up(tmp_path):
    size = 500 * MiB
    n_small = 50
    L = make_layers(tmp_path / "u", {"lower0": {f"small/f{i}": f"small {i}\n" for i in range(n_small)}})
    block = os.urandom(MiB)
    with open(L.lower / "big", "wb") as f:
        for i in range(size // MiB):
            f.write(i.to_bytes(8, "little") + block[8:])
    # The native backend loads its event loop at the first request that must wait, or once the device
    # is idle; what is measured here is a copy-up on a running loop, not that one-time import (~80 ms).
    env = dict(os.environ, PYUNIONFS_LOOP_IDLE="0.05")
    with mount_pyunionfs(*L.mount_args(), ["timeout=0"], extra_args=["-d"], env=env) as daemon:
        if default_backend() == "native":
            deadline = time.monotonic() + 20
            while "event loop started" not in daemon.log_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "event loop started: the device was idle" in daemon.log_text()
        t0 = time.monotonic()
        baseline = _probe(L.mnt, n_small, lambda: time.monotonic() - t0 > 1.0)
        proc = _trigger_copy_up(L.mnt / "big")
        start = time.monotonic()
        during = _probe(L.mnt, n_small, lambda: proc.poll() is not None)
        out, _ = proc.communicate(timeout=120)
        copy_time = float(out.split()[0])
        wall = time.monotonic() - start
        assert proc.returncode == 0
    figures = {
        "copy-up seconds": round(copy_time, 3),
        "probe ops during copy-up": len(during),
        "max latency during (ms)": round(max(during) * 1000, 2),
        "p99 latency during (ms)": round(sorted(during)[int(len(during) * 0.99)] * 1000, 2),
        "median latency during (ms)": round(statistics.median(during) * 1000, 3),
        "max latency before (ms)": round(max(baseline) * 1000, 2),
        "median latency before (ms)": round(statistics.median(baseline) * 1000, 3),
        "wall seconds": round(wall, 3),
    }
    print("\nlatency figures: " + json.dumps(figures))
    assert (L.upper / "big").stat().st_size == size + 1
    assert len(during) >= 30, f"too few probe operations during the copy-up: {figures}"
    assert max(during) < copy_time / 3, f"other requests stalled during the copy-up: {figures}"


def test_one_reader_again_after_copy_ups_in_threads(tmp_path):
    """The pyfuse3 backend (this is its loop's test, whatever the default backend): each big copy-up
    starts a spare request reader (fuse/loop.py) that ends once the copy is done; after many of them
    the daemon is back to one reader: pyfuse3 never starts a worker of its own (its debug log would say
    "starting another worker"), and everything reads back right."""
    L = make_layers(tmp_path / "u", {"lower0": {"small": "small\n"}})
    for i in range(4):
        (L.lower / f"big{i}").write_bytes(bytes([65 + i]) * (2 * MiB))
    with mount_pyunionfs(*L.mount_args(), ["backend=pyfuse3"], extra_args=["-d"]) as daemon:
        for i in range(4):
            with open(L.mnt / f"big{i}", "ab") as f:
                f.write(b"!")
            for _ in range(20):
                os.stat(L.mnt / "small")
                assert (L.mnt / "small").read_bytes() == b"small\n"
        for i in range(4):
            data = (L.mnt / f"big{i}").read_bytes()
            assert data == bytes([65 + i]) * (2 * MiB) + b"!"
        log = daemon.log_text()
    assert "starting another worker" not in log, [l for l in log.splitlines() if "worker" in l][:5]
