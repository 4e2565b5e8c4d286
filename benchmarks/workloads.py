"""The file-system workloads (find, walk, reads, writes, copy-ups, untar, rm -rf, renames, imports), their
run on one mount, cold then warm, in a forked child; and the start-up workload's name and modes."""

import json
import os
import random
import signal
import stat
import subprocess
import threading
import time
import traceback
from pathlib import Path

from benchutil import BenchError, MiB, drop_caches, proc_status
from layers import run_import_script
from reqcount import daemon_cpu

# ---------------------------------------------------------------------------------------------------------
# Workloads. A read-only workload runs twice on one mount: cold (caches dropped), then warm (timed again
# right after). A mutating workload has two targets on one mount: target 0 cold, target 1 warm (warm-up:
# an untimed pass that reads or stats what the timed pass will change).
# ---------------------------------------------------------------------------------------------------------


class Ctx:
    def __init__(self, root, meta, layers, prof, pid, scratch, counter=None):
        self.root, self.meta, self.layers, self.prof, self.pid = Path(root), meta, Path(layers), prof, pid
        self.scratch = Path(scratch)
        self.counter = counter  # a reqcount.RequestCounter watching this mount's connection, or None

    def daemon_usage(self):
        """(daemon CPU seconds, FUSE requests sent so far), each None when unknown (no daemon)."""
        if not self.pid:
            return None, None
        return daemon_cpu(self.pid), self.counter.count() if self.counter else None

    def rss(self):
        s = proc_status(self.pid) if self.pid else None
        return s["VmRSS"] if s else None


def read_files(root, rels, bufsize=MiB):
    buf = bytearray(bufsize)
    mv = memoryview(buf)
    total = 0
    for rel in rels:
        fd = os.open(os.path.join(root, rel), os.O_RDONLY)
        try:
            while True:
                n = os.readv(fd, [mv])
                if not n:
                    break
                total += n
        finally:
            os.close(fd)
    return total


def walk_lstat(root):
    n, size = 1, 0
    for dp, dns, fns in os.walk(root):
        for name in dns + fns:
            st = os.lstat(os.path.join(dp, name))
            n += 1
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
    return n, size


def sh(cmd, timeout, **kw):
    p = subprocess.run(cmd, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if p.returncode != 0:
        err = (p.stderr or b"").decode(errors="replace").strip() if isinstance(p.stderr, bytes) else ""
        raise BenchError(f"{cmd[0]} exited {p.returncode}: {err[:300]}")
    return p


class Workload:
    name = ""
    desc = ""
    modes = ("cold", "warm")
    mutating = False
    plain_private = ()

    def prepare(self, ctx):  # untimed, once per mount
        pass

    def warmup(self, ctx, target):  # untimed, before the warm run of a mutating workload
        pass

    def run(self, ctx, target):  # timed; returns a signature compared across contenders
        raise NotImplementedError

    def check(self, ctx, target, sig):  # untimed; returns the signature (or raises)
        return sig


class Find(Workload):
    name, desc = "find", "find MNT (readdir + lookups of the whole tree)"

    def run(self, ctx, target):
        p = sh(["find", str(ctx.root)], ctx.prof["timeout"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return p.stdout.count(b"\n")


class Walk(Workload):
    name, desc = "walk", "os.walk + lstat of every entry"

    def run(self, ctx, target):
        return list(walk_lstat(ctx.root))


class LsLR(Workload):
    name, desc = "ls-lR", "ls -lR MNT"

    def run(self, ctx, target):
        p = sh(
            ["ls", "-lR", str(ctx.root)],
            ctx.prof["timeout"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, LC_ALL="C"),
        )
        return p.stdout.count(b"\n")


class ReadAll(Workload):
    name, desc = "read-small", "read every small file (one process)"

    def run(self, ctx, target):
        return read_files(ctx.root, ctx.meta["small_files"])


class Parallel4(Workload):
    name, desc = "read-par4", "4 processes, each reading a quarter of the small files"

    def run(self, ctx, target):
        files = ctx.meta["small_files"]
        kids = []
        for i in range(4):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(r)
                    n = read_files(ctx.root, files[i::4])
                    os.write(w, str(n).encode())
                    code = 0
                finally:
                    os._exit(code)
            os.close(w)
            kids.append((pid, r))
        total = 0
        for pid, r in kids:
            data = b""
            while chunk := os.read(r, 64):
                data += chunk
            os.close(r)
            _, status = os.waitpid(pid, 0)
            if status != 0 or not data:
                raise BenchError(f"reader {pid} failed (status {status})")
            total += int(data)
        return total


class SeqRead(Workload):
    name, desc = "seq-read", "sequential read of the big file, 1 MiB blocks"

    def run(self, ctx, target):
        return read_files(ctx.root, ["big/seq.bin"])


class SeqWrite(Workload):
    name, desc = "seq-write", "write a new big file in 1 MiB blocks, fsync"
    modes = ("cold",)
    mutating = True

    def run(self, ctx, target):
        buf = random.Random(7).randbytes(MiB)
        fd = os.open(ctx.root / "new.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for _ in range(ctx.prof["write_size"] // MiB):
                os.write(fd, buf)
            os.fsync(fd)
        finally:
            os.close(fd)
        return None

    def check(self, ctx, target, sig):
        return os.stat(ctx.root / "new.bin").st_size


class StallProbe(threading.Thread):
    """lstat of names not looked up yet, every 2 ms, while a copy-up runs: the worst wait is a stall."""

    def __init__(self, ctx, names):
        super().__init__(daemon=True)
        self.ctx, self.names, self.stop, self.lat = ctx, names, threading.Event(), []

    def run(self):
        for rel in self.names:
            if self.stop.is_set():
                break
            t = time.perf_counter()
            try:
                os.lstat(self.ctx.root / rel)
            except OSError:
                pass
            self.lat.append(time.perf_counter() - t)
            time.sleep(0.002)


class CopyUpBase(Workload):
    mutating = True
    files = ()

    @property
    def plain_private(self):
        return [f"big/{f}" for f in self.files]

    def warmup(self, ctx, target):
        read_files(ctx.root, [f"big/{self.files[target]}"])

    def probe_names(self, ctx, target):
        files = [f for f in ctx.meta["small_files"] if f.startswith(("py/", "vendor/"))]
        return files[target::7]

    def timed_op(self, ctx, path):
        raise NotImplementedError

    def run(self, ctx, target):
        probe = StallProbe(ctx, self.probe_names(ctx, target))
        probe.start()
        try:
            self.timed_op(ctx, ctx.root / "big" / self.files[target])
        finally:
            probe.stop.set()
            probe.join()
        ctx.extra["stall_max_ms"] = max(probe.lat) * 1000 if probe.lat else None
        ctx.extra["stall_probes"] = len(probe.lat)
        return None


class CopyUpAppend(CopyUpBase):
    name, desc = "copyup-append", "append one byte to a lower big file (data copy-up)"
    files = ("cu0.bin", "cu1.bin")

    def timed_op(self, ctx, path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)

    def check(self, ctx, target, sig):
        return os.stat(ctx.root / "big" / self.files[target]).st_size - ctx.prof["cu_size"]


class CopyUpChmod(CopyUpBase):
    name, desc = "copyup-chmod", "chmod a lower big file (copy-up from the metadata path)"
    files = ("cu2.bin", "cu3.bin")

    def timed_op(self, ctx, path):
        os.chmod(path, 0o600)

    def check(self, ctx, target, sig):
        st = os.stat(ctx.root / "big" / self.files[target])
        return [oct(stat.S_IMODE(st.st_mode)), st.st_size]


class Untar(Workload):
    name, desc = "untar", "tar -xf of a stdlib tarball into a new dir"
    mutating = True

    def prepare(self, ctx):
        for t in (0, 1):
            os.mkdir(ctx.root / f"untar{t}")

    def warmup(self, ctx, target):
        read_files("/", [str(ctx.layers / "untar.tar")])
        os.stat(ctx.root / f"untar{target}")

    def run(self, ctx, target):
        sh(
            ["tar", "-xf", str(ctx.layers / "untar.tar"), "-C", str(ctx.root / f"untar{target}")],
            ctx.prof["timeout"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return None

    def check(self, ctx, target, sig):
        return list(walk_lstat(ctx.root / f"untar{target}"))


class RmRf(Workload):
    name, desc = "rm-rf", "rm -rf of a lower subtree (leaves whiteouts)"
    mutating = True

    def warmup(self, ctx, target):
        walk_lstat(ctx.root / f"rm{target}")

    def run(self, ctx, target):
        sh(
            ["rm", "-rf", str(ctx.root / f"rm{target}")],
            ctx.prof["timeout"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return None

    def check(self, ctx, target, sig):
        gone = not os.path.lexists(ctx.root / f"rm{target}")
        listed = f"rm{target}" in os.listdir(ctx.root)
        if not gone or listed:
            raise BenchError(f"rm{target} still there after rm -rf (lexists={not gone}, listed={listed})")
        return "gone"


class Rename(Workload):
    name, desc = "rename", "rename every file of a lower dir, within the dir"
    mutating = True

    def warmup(self, ctx, target):
        d = ctx.root / f"ren{target}"
        for n in os.listdir(d):
            os.lstat(d / n)

    def run(self, ctx, target):
        d = str(ctx.root / f"ren{target}")
        for i in range(ctx.prof["renames"]):
            os.rename(f"{d}/f{i:05d}.txt", f"{d}/g{i:05d}.txt")
        return None

    def check(self, ctx, target, sig):
        names = os.listdir(ctx.root / f"ren{target}")
        return [sum(n.startswith("g") for n in names), sum(n.startswith("f") for n in names)]


class Import(Workload):
    name, desc = "import", "python -I -S: import many stdlib modules from the mount"

    def run(self, ctx, target):
        mods = ctx.meta["modules"]
        cap = ctx.prof["import_cap"]
        if cap and len(mods) > cap:
            mods = mods[:: -(-len(mods) // cap)]
        out = ctx.scratch / f"import-{os.getpid()}-{target}.txt"
        res = run_import_script(ctx.root / "py", mods, out, ctx.prof["timeout"])
        out.unlink()
        if res["failed"] or res["elsewhere"]:
            bad = res["failed"][:3] + res["elsewhere"][:3]
            raise BenchError(
                f"{len(res['failed'])} imports failed, {len(res['elsewhere'])} not from the "
                f"mount, of {len(mods)}: {bad}"
            )
        return len(res["mount"])


WORKLOADS = [
    Find(),
    Walk(),
    LsLR(),
    ReadAll(),
    Parallel4(),
    SeqRead(),
    SeqWrite(),
    CopyUpAppend(),
    CopyUpChmod(),
    Untar(),
    RmRf(),
    Rename(),
    Import(),
]


def mount_sequence(ctx, wl):
    """Everything done on one mount, in a worker process. Returns {mode: {...}} plus memory."""
    out = {}
    wl.prepare(ctx)
    for target, mode in enumerate(wl.modes):
        ctx.extra = {}
        if mode == "cold":
            drop_caches()
        elif wl.mutating:
            wl.warmup(ctx, target)
        rss0 = ctx.rss()
        cpu0, req0 = ctx.daemon_usage()
        t = time.perf_counter()
        sig = wl.run(ctx, target)
        dt = time.perf_counter() - t
        cpu1, req1 = ctx.daemon_usage()
        rss1 = ctx.rss()
        if cpu0 is not None and cpu1 is not None:
            ctx.extra["daemon_cpu"] = cpu1 - cpu0
        if req0 is not None and req1 is not None:
            ctx.extra["requests"] = req1 - req0
        sig = wl.check(ctx, target, sig)
        if wl.name == "find" and mode == "cold" and rss0 and rss1:
            ctx.extra["bytes_per_entry"] = (rss1 - rss0) / max(sig, 1)
        out[mode] = {"seconds": dt, "sig": sig, "extra": ctx.extra}
    mem = proc_status(ctx.pid) if ctx.pid else None
    return {"modes": out, "mem": mem}


def run_in_child(fn, timeout, result_file):
    """fn() in a forked process, bounded by timeout; its JSON result comes back through result_file."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                res = {"ok": fn()}
                code = 0
            except BaseException as e:
                res = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=4)}
            with open(result_file, "w") as f:
                json.dump(res, f)
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"error": f"timed out after {timeout} s (worker killed)"}
            time.sleep(0.01)
    except BaseException:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        raise
    try:
        with open(result_file) as f:
            res = json.load(f)
        os.unlink(result_file)
        return res
    except (OSError, ValueError):
        return {"error": f"worker died (status {status}) without a result"}


# ---------------------------------------------------------------------------------------------------------
# Start-up: benchmarks/startup.py (exec -> live mount, exec -> first answered stat), when it exists
# ---------------------------------------------------------------------------------------------------------


class StartupWorkload:
    name, desc, group = (
        "startup",
        "exec -> live mount and exec -> first answered stat (benchmarks/startup.py)",
        "startup",
    )
    modes = ("exec->mount", "exec->stat")
