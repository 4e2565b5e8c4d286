"""Round trips through unionfs.protocol's session: µs per getxattr and per stat on a trivial filesystem,
and the time from exec of the server to the first answered stat.

    sudo .venv/bin/python benchmarks/protocol_roundtrip.py [--calls 20000] [--rounds 5] [--backends ...]

Each backend serves a one-directory filesystem in its own process (mounted with mount(2) in a temporary
directory); this process calls os.getxattr (never cached by the kernel: one request a call) and os.stat
of the mount root (attribute timeout 0: one GETATTR a call) in a loop and prints the median µs per call
over the rounds. "cpu µs" is the server's own CPU time (user + system) per call, which the latency of
waking processes across CPUs does not enter. "start ms" is from spawning the server (a fresh
interpreter) to the first stat of the mount root answered by it. Backends:

  protocol        unionfs.protocol.Session as it is (handlers run on the reader task)
  protocol-spawn  the same, but every request handled in a task of its own (what it would cost)
  pyfuse3         a pyfuse3 filesystem with pyfuse3.main(), for comparison (libfuse underneath)
"""

import errno
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XATTR = b"user.bench"
VALUE = b"v" * 16


# ---------------------------------------------------------------- servers (run in the child process)


def serve_protocol(mnt, spawn=False):
    import stat

    from unionfs.protocol.mount import mount

    fd = mount(mnt, fsname="bench", subtype="bench")  # cheap imports first: the kernel queues requests
    import trio

    from unionfs.protocol.operations import Entry, Operations
    from unionfs.protocol.session import Session

    now = time.time_ns()
    root = Entry(1, mode=stat.S_IFDIR | 0o755, nlink=2, atime_ns=now, mtime_ns=now, ctime_ns=now)

    class Trivial(Operations):
        async def getattr(self, node, fh, ctx):
            return root

        async def getxattr(self, node, name, ctx):
            if name == XATTR:
                return VALUE
            raise OSError(errno.ENODATA, "no attribute")

    class SpawningSession(Session):
        async def _handle(self, view, n):
            data = memoryview(bytes(view[:n]))
            self._nursery.start_soon(Session._handle, self, data, n)

    print("ready", flush=True)
    session = (SpawningSession if spawn else Session)(Trivial(), fd)
    cpu = _cpu()
    trio.run(session.run)
    print(f"requests {session.requests} cpu {_cpu() - cpu}", flush=True)


def serve_pyfuse3(mnt):
    import stat

    import pyfuse3
    import trio

    class Trivial(pyfuse3.Operations):
        async def getattr(self, inode, ctx=None):
            e = pyfuse3.EntryAttributes()
            e.st_ino = inode
            e.st_mode = stat.S_IFDIR | 0o755
            e.st_nlink = 2
            e.attr_timeout = 0
            e.entry_timeout = 0
            return e

        async def getxattr(self, inode, name, ctx):
            if name == XATTR:
                return VALUE
            raise pyfuse3.FUSEError(errno.ENODATA)

    pyfuse3.init(Trivial(), mnt, {"fsname=bench", "subtype=bench"})
    print("ready", flush=True)
    cpu = _cpu()
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
    print(f"requests 0 cpu {_cpu() - cpu}", flush=True)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


# ---------------------------------------------------------------- the client


def measure(fn, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def run_backend(name, calls, rounds):
    """{"getxattr": [µs per call, a round each], "stat": [...], "start_ms": ..., "requests_per_call": ...}"""
    import subprocess
    import tempfile

    tmp = tempfile.mkdtemp(prefix="protocol-bench-")
    mnt = os.path.join(tmp, "mnt")
    os.mkdir(mnt)
    here = os.stat(tmp).st_dev
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", name, mnt],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    out = {}
    try:
        while os.stat(mnt).st_dev == here:  # not mounted yet; once it is, stat waits for INIT and the answer
            if proc.poll() is not None:
                raise RuntimeError(f"{name}: the server did not start")
            time.sleep(0.0002)
        out["start_ms"] = (time.perf_counter() - t0) * 1000
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"{name}: the server did not start")
        for label, fn in (
            ("getxattr", lambda: os.getxattr(mnt, XATTR)),
            ("stat", lambda: os.stat(mnt)),
        ):
            measure(fn, calls // 10)  # warm up
            out[label] = [measure(fn, calls) for _ in range(rounds)]
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.rmdir(mnt)
        os.rmdir(tmp)
    line = proc.stdout.read().decode().split()
    made = 2 * (calls // 10 + rounds * calls) + 1
    out["requests_per_call"] = out["cpu_us"] = None
    if line[:1] == ["requests"]:
        out["requests_per_call"] = int(line[1]) / made or None
        out["cpu_us"] = float(line[3]) / made * 1e6
    return out


def main():
    if sys.argv[1:2] == ["--serve"]:  # the server: no argparse, nothing the client needs
        backend, mnt = sys.argv[2:4]
        if backend == "pyfuse3":
            serve_pyfuse3(mnt)
        else:
            serve_protocol(mnt, spawn=backend == "protocol-spawn")
        return 0
    import argparse
    import statistics

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--backends", default="protocol,protocol-spawn,pyfuse3")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("protocol_roundtrip: needs root (it mounts with mount(2))", file=sys.stderr)
        return 1
    head = f"{'backend':16} {'getxattr µs':>12} {'stat µs':>10} {'cpu µs':>7} {'start ms':>9}"
    print(f"{head}   (median of {args.rounds} x {args.calls} calls)")
    for name in args.backends.split(","):
        res = run_backend(name, args.calls, args.rounds)
        rpc = res["requests_per_call"]
        per = f"   ({rpc:.2f} requests a call)" if rpc else ""
        gx, st = statistics.median(res["getxattr"]), statistics.median(res["stat"])
        cpu = f"{res['cpu_us']:7.1f}" if res["cpu_us"] is not None else f"{'?':>7}"
        print(f"{name:16} {gx:12.1f} {st:10.1f} {cpu} {res['start_ms']:9.1f}{per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
