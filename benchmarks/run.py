#!/usr/bin/env python3
"""Benchmark pyunionfs against fuse-overlayfs, the kernel overlay and a plain directory.

    python benchmarks/run.py [--quick] [--repeat N] [--only WORKLOAD,...]
                             [--contenders plain,kernel,fuse-overlayfs,pyunionfs] [--json OUT]

Needs root (mounts, drop_caches). See benchmarks/README.md for what it measures and how to read it.
"""

import argparse
import json
import os
import random
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import threading
import time
import traceback
import zlib
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's unionfs
from unionfs.embed import lifecycle  # noqa: E402

LAYER_VERSION = 5  # bump whenever the layer layout below changes
MiB = 1 << 20
SMALL_FILE_CAP = 2 * MiB  # stdlib files larger than this (libpython.a, pip wheel) stay out of the tree
CONTENDERS = ["plain", "kernel", "fuse-overlayfs", "pyunionfs"]

PROFILES = {
    "quick": dict(
        repeat=2,
        with_test=False,
        slim=True,
        vendor=0,
        seq_size=128 * MiB,
        cu_size=64 * MiB,
        write_size=128 * MiB,
        renames=300,
        untar_files=500,
        import_cap=150,
        timeout=180,
        rm_pkgs=["email", "json", "http", "logging", "urllib"],
    ),
    "full": dict(
        repeat=5,
        with_test=True,
        slim=False,
        vendor=2,
        seq_size=1024 * MiB,
        cu_size=256 * MiB,
        write_size=1024 * MiB,
        renames=2000,
        untar_files=5000,
        import_cap=None,
        timeout=1200,
        rm_pkgs=[
            "email",
            "json",
            "asyncio",
            "xml",
            "unittest",
            "concurrent",
            "http",
            "logging",
            "urllib",
            "xmlrpc",
            "multiprocessing",
            "importlib",
        ],
    ),
}

# Modules never imported by the import workload: side effects at import, GUIs, tests, entry points.
IMPORT_EXCLUDE = {
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "turtle",
    "__main__",
    "antigravity",
    "this",
    "__hello__",
    "__phello__",
    "site-packages",
    "lib-dynload",
    "__pycache__",
}

# Run inside the mount by `python -I -S -B -W ignore -c IMPORT_SCRIPT ROOT OUTFILE MOD...`. It imports nothing
# before replacing sys.path, so every module it lists comes from ROOT (checked with __file__).
IMPORT_SCRIPT = r"""
import sys
root, out, mods = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[:] = [root, root + '/lib-dynload']
sys.path_importer_cache.clear()
pref = root.rstrip('/') + '/'
lines = []
for m in mods:
    try:
        __import__(m)
    except BaseException as e:
        lines.append('failed\t%s\t%s' % (m, repr(e).replace('\t', ' ').replace('\n', ' ')[:200]))
        continue
    f = getattr(sys.modules.get(m), '__file__', None) or ''
    lines.append('%s\t%s\t%s' % ('mount' if f.startswith(pref) else 'elsewhere', m, f))
with open(out, 'w') as fh:
    fh.write('\n'.join(lines) + '\n')
"""


class BenchError(Exception):
    pass


def log(*a):
    print(*a, flush=True)


def run_cmd(cmd, timeout=120, check=True, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    p = subprocess.run(cmd, timeout=timeout, **kw)
    if check and p.returncode != 0:
        err = (p.stderr or b"").decode(errors="replace").strip()
        raise BenchError(f"{' '.join(map(str, cmd))} failed ({p.returncode}): {err[:400]}")
    return p


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def proc_status(pid):
    """VmHWM and VmRSS (bytes) of a process, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            out = {}
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
            return out
    except OSError:
        return None


def stable_hash(s):
    return zlib.crc32(s.encode()) % 100


# ---------------------------------------------------------------------------------------------------------
# Layers: built once per profile, reused while the stamp matches
# ---------------------------------------------------------------------------------------------------------


def stdlib_dir():
    return Path(sysconfig.get_paths()["stdlib"])


def copy_stdlib(src, dst, with_test, slim=False):
    """Copy the stdlib minus site-packages and files over SMALL_FILE_CAP; without test/ unless with_test;
    slim (quick mode) also leaves out idlelib, tkinter, lib2to3, distutils and the .opt-N.pyc files."""

    def ignore(d, names):
        out = set()
        top = Path(d) == src
        for n in names:
            p = os.path.join(d, n)
            if n == "site-packages" or (n == "test" and not with_test and top):
                out.add(n)
            elif slim and ((top and n in ("idlelib", "tkinter", "lib2to3", "distutils")) or ".opt-" in n):
                out.add(n)
            elif os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) > SMALL_FILE_CAP:
                out.add(n)
        return out

    shutil.copytree(src, dst, symlinks=True, ignore=ignore, copy_function=shutil.copy2)


def write_big(path, size, seed):
    block = bytearray(random.Random(seed).randbytes(MiB))
    with open(path, "wb") as f:
        for i in range(size // MiB):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def is_whiteout(st):
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path):
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return False


def materialize(layers, dst):
    """Write the merged view of `layers` (topmost first) into dst, by the overlay rules."""

    def merge(srcdirs, d):
        os.mkdir(d)
        names = []
        seen = set()
        for sd in srcdirs:
            for n in sorted(os.listdir(sd)):
                if n not in seen:
                    seen.add(n)
                    names.append(n)
        for n in names:
            dirs = []
            for sd in srcdirs:
                p = os.path.join(sd, n)
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                if is_whiteout(st):
                    break
                if stat.S_ISDIR(st.st_mode):
                    dirs.append(p)
                    if is_opaque(p):
                        break
                    continue
                if not dirs:  # a non-directory on top is the answer
                    out = os.path.join(d, n)
                    if stat.S_ISLNK(st.st_mode):
                        os.symlink(os.readlink(p), out)
                    else:
                        shutil.copy2(p, out)
                break  # a non-directory below a directory ends the merge
            if dirs:
                merge(dirs, os.path.join(d, n))
        shutil.copystat(srcdirs[0], d)

    merge([str(x) for x in layers], str(dst))


def tree_listing(root):
    out = []
    root = str(root)
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            fmt = stat.S_IFMT(st.st_mode)
            out.append(
                (
                    rel,
                    fmt,
                    stat.S_IMODE(st.st_mode),
                    st.st_size if fmt == stat.S_IFREG else 0,
                    int(st.st_mtime) if fmt == stat.S_IFREG else 0,
                )
            )
    return sorted(out)


def candidate_modules(pyroot):
    mods = []
    for dp, dns, fns in os.walk(pyroot):
        rel = os.path.relpath(dp, pyroot)
        parts = [] if rel == "." else rel.split(os.sep)
        if any(p in IMPORT_EXCLUDE or p.startswith("config-") for p in parts):
            dns[:] = []
            continue
        if parts and "__init__.py" not in fns:
            dns[:] = []
            continue
        for f in fns:
            if not f.endswith(".py"):
                continue
            stem = f[:-3]
            if stem in IMPORT_EXCLUDE or "-" in stem:
                continue
            mods.append(".".join(parts) if stem == "__init__" else ".".join(parts + [stem]))
    return sorted(m for m in mods if m)


def run_import_script(pyroot, mods, outfile, timeout):
    cmd = [sys.executable, "-I", "-S", "-B", "-W", "ignore", "-c", IMPORT_SCRIPT, str(pyroot), str(outfile)] + mods
    run_cmd(
        cmd,
        timeout=timeout,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        cwd="/",
    )
    res = {"mount": [], "elsewhere": [], "failed": []}
    try:
        with open(outfile) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2:
                    res.setdefault(parts[0], []).append(parts[1:])
    except FileNotFoundError:
        raise BenchError("the import script wrote no result (crashed or timed out)")
    return res


def kernel_overlay_works(scratch):
    d = Path(scratch) / "kprobe"
    shutil.rmtree(d, ignore_errors=True)
    for s in ("l", "u", "w", "m"):
        (d / s).mkdir(parents=True)
    p = run_cmd(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={d}/l,upperdir={d}/u,workdir={d}/w", str(d / "m")],
        check=False,
        timeout=30,
    )
    if p.returncode == 0:
        run_cmd(["umount", str(d / "m")], check=False, timeout=30)
        shutil.rmtree(d, ignore_errors=True)
        return True, ""
    shutil.rmtree(d, ignore_errors=True)
    return False, p.stderr.decode(errors="replace").strip()


def build_layers(root, profile_name, prof):
    """Build (or reuse) the layers for a profile under root. Returns the meta dict."""
    root = Path(root)
    stamp = {
        "version": LAYER_VERSION,
        "profile": profile_name,
        "stdlib": str(stdlib_dir()),
        "python": sys.version,
        "params": {k: v for k, v in prof.items() if k not in ("repeat", "timeout")},
    }
    stamp_file = root / "stamp.json"
    if stamp_file.exists():
        try:
            if json.loads(stamp_file.read_text()) == stamp:
                meta = json.loads((root / "meta.json").read_text())
                log(f"layers: reusing {root} ({meta['entries']} entries in the merged tree)")
                return meta
        except (OSError, ValueError):
            pass
        log(f"layers: {root} is stale (stamp differs), rebuilding")
    elif root.exists() and any(root.iterdir()):
        raise BenchError(f"{root} exists, is not empty and has no stamp.json: refusing to delete it")
    if root.exists():
        shutil.rmtree(root)
    build = root.with_name(root.name + ".building")
    if build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True)
    t0 = time.monotonic()
    log(f"layers: building {root} (profile {profile_name}), once ...")
    src = stdlib_dir()
    l1, l2 = build / "lower1", build / "lower2"
    l1.mkdir()
    l2.mkdir()

    # lower2: the base
    copy_stdlib(src, l2 / "py", prof["with_test"], prof["slim"])
    if prof["vendor"]:
        (l2 / "vendor").mkdir()
        copy_stdlib(src, l2 / "vendor" / "v1", False)
    for k in (0, 1):
        for pkg in prof["rm_pkgs"]:
            shutil.copytree(
                src / pkg,
                l2 / f"rm{k}" / pkg,
                copy_function=shutil.copy2,
                ignore=shutil.ignore_patterns("*.opt-*.pyc") if prof["slim"] else None,
            )
        rd = l2 / f"ren{k}"
        rd.mkdir()
        for i in range(prof["renames"]):
            (rd / f"f{i:05d}.txt").write_bytes((f"file {i} of ren{k}\n" * (1 + i % 40)).encode())
    (l2 / "big").mkdir()
    write_big(l2 / "big" / "seq.bin", prof["seq_size"], 1)
    for k in range(4):
        write_big(l2 / "big" / f"cu{k}.bin", prof["cu_size"], 10 + k)

    # lower1: byte-identical overrides (pyc files stay valid), a lower1-only subtree, whiteouts, an opaque dir
    special = ("py/xmlrpc", "py/turtledemo")
    wh_areas = ("rm0/", "rm1/", "vendor/v1/", "py/test/")
    overrides = whiteouts = 0
    for dp, dns, fns in os.walk(l2):
        dns.sort()
        rel_d = os.path.relpath(dp, l2)
        if rel_d == "big" or rel_d.startswith(special):
            dns[:] = []
            continue
        for f in sorted(fns):
            rel = os.path.normpath(os.path.join(rel_d, f))
            h = stable_hash(rel)
            if h < 16:
                (l1 / rel_d).mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.join(dp, f), l1 / rel)
                overrides += 1
            elif h < 19 and rel.startswith(wh_areas):
                (l1 / rel_d).mkdir(parents=True, exist_ok=True)
                os.mknod(l1 / rel, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                whiteouts += 1
    if prof["vendor"] >= 2:
        copy_stdlib(src, l1 / "vendor" / "v2", False)  # lower1-only subtree
    # whiteout of a whole lower2 directory
    os.mknod(l1 / "py" / "turtledemo", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    # opaque directory: a full identical copy in lower1 hides an extra file in lower2
    shutil.copytree(l2 / "py" / "xmlrpc", l1 / "py" / "xmlrpc", copy_function=shutil.copy2)
    (l2 / "py" / "xmlrpc" / "hidden_by_opaque.py").write_text("raise ImportError('opaque dir leaked')\n")
    os.setxattr(l1 / "py" / "xmlrpc", "trusted.overlay.opaque", b"y")
    # lower1 directories carry lower2's metadata
    for dp, _dns, _fns in os.walk(l1, topdown=False):
        rel = os.path.relpath(dp, l1)
        if (l2 / rel).is_dir():
            shutil.copystat(l2 / rel, dp)

    # plain: the merged tree materialized
    materialize([l1, l2], build / "plain")
    ok, why = kernel_overlay_works(build)
    if ok:
        m = build / "verify-mnt"
        m.mkdir()
        run_cmd(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={l1}:{l2}", str(m)], timeout=60)
        try:
            a, b = tree_listing(m), tree_listing(build / "plain")
        finally:
            run_cmd(["umount", str(m)], timeout=60)
        m.rmdir()
        if a != b:
            diff = sorted(set(a) ^ set(b))[:5]
            raise BenchError(f"materialized plain tree differs from a kernel overlay of the layers: {diff}")
        log("layers: plain tree checked against a read-only kernel overlay of the lowers: identical")
    else:
        log(f"layers: (kernel overlay unavailable, plain tree not cross-checked: {why})")

    # the tarball: the first N files of the real stdlib, as a tar of their own
    files = []
    for dp, dns, fns in os.walk(src):
        dns.sort()
        if Path(dp) == src and "site-packages" in dns:
            dns.remove("site-packages")
        for f in sorted(fns):
            p = os.path.join(dp, f)
            if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) <= SMALL_FILE_CAP:
                files.append(p)
        if len(files) >= prof["untar_files"]:
            break
    files = files[: prof["untar_files"]]
    added = set()
    with tarfile.open(build / "untar.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for p in files:
            rel = os.path.relpath(p, src)
            parts = rel.split(os.sep)
            for i in range(1, len(parts)):
                d = os.sep.join(parts[:i])
                if d not in added:
                    added.add(d)
                    tf.add(src / d, arcname="src/" + d, recursive=False)
            tf.add(p, arcname="src/" + rel, recursive=False)

    # lists used by the workloads
    plain = build / "plain"
    small, entries = [], 1
    for dp, dns, fns in os.walk(plain):
        dns.sort()
        rel_d = os.path.relpath(dp, plain)
        entries += len(dns) + len(fns)
        if rel_d == "big":
            continue
        for f in sorted(fns):
            if os.path.isfile(os.path.join(dp, f)):
                small.append(os.path.normpath(os.path.join(rel_d, f)))
    cands = candidate_modules(plain / "py")
    log(f"layers: probing {len(cands)} candidate modules for the import workload ...")
    res = run_import_script(plain / "py", cands, build / "probe.txt", timeout=600)
    mods = [m[0] for m in res["mount"]]
    (build / "probe.txt").unlink()
    meta = {
        "entries": entries,
        "small_files": small,
        "modules": mods,
        "untar_files": len(files),
        "tree_bytes": sum(os.path.getsize(plain / f) for f in small),
        "overrides": overrides,
        "whiteouts": whiteouts + 1,
        "opaque_dirs": 1,
    }
    (build / "meta.json").write_text(json.dumps(meta))
    (build / "stamp.json").write_text(json.dumps(stamp))
    os.sync()
    build.rename(root)
    log(
        f"layers: built in {time.monotonic() - t0:.0f} s: {entries} entries, {len(small)} small files "
        f"({meta['tree_bytes'] / MiB:.0f} MiB), {overrides} overrides and {whiteouts + 1} whiteouts in lower1, "
        f"{len(mods)} importable modules"
    )
    return meta


# ---------------------------------------------------------------------------------------------------------
# Contenders: each mount is fresh (empty upper and work), unmounted in finally
# ---------------------------------------------------------------------------------------------------------

LIVE = {}  # mountpoint -> Mount, for the emergency cleanup


class Mount:
    def __init__(self, contender, slot, root, proc=None, log_path=None, is_mount=True, fuse=False):
        self.contender, self.slot, self.root = contender, Path(slot), Path(root)
        self.proc, self.log_path = proc, log_path
        self.pid = proc.pid if proc else None
        self.is_mount, self.fuse = is_mount, fuse
        self.dev = os.stat(root).st_dev if is_mount else None

    def unmount(self):
        errors = []
        mnt = str(self.root)
        real = lifecycle.real_mountpoint(mnt)
        if self.is_mount:
            # A mount a workload just used may be busy for a moment: try the plain unmount a few times.
            if not lifecycle.unmount(real, fuse=self.fuse, lazy=False, attempts=5):
                errors.append("unmount failed 5 times (busy?); forcing")
                if self.fuse and self.dev is not None:
                    try:
                        with open(f"/sys/fs/fuse/connections/{os.minor(self.dev)}/abort", "w") as f:
                            f.write("1")
                    except OSError:
                        pass
                lifecycle.unmount(real, fuse=self.fuse)
        if self.proc:
            try:
                rc = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                errors.append(f"daemon {self.pid} still alive 15 s after unmount; killed")
                self.proc.kill()
                rc = self.proc.wait()
            errors += self.daemon_log_errors(rc)
        LIVE.pop(mnt, None)
        if not self.is_mount or not lifecycle.mounts_at(real):
            shutil.rmtree(self.slot, ignore_errors=True)
        else:
            errors.append(f"{mnt} is still mounted; left {self.slot} in place")
        return errors

    def daemon_log_errors(self, rc):
        """Errors from the daemon's exit status and its log (pyunionfs logs ERROR lines with tracebacks)."""
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            text = ""
        bad = [ln for ln in text.splitlines() if "ERROR" in ln or "Traceback" in ln]
        if rc == 0 and not bad:
            return []
        keep = Path("/tmp/bench-logs")
        keep.mkdir(exist_ok=True)
        dst = keep / f"{os.getpid()}-{self.slot.name}.log"
        dst.write_text(text)
        tail = " | ".join(text.strip().splitlines()[-6:])
        return [
            f"{self.contender} daemon exit status {rc}, {len(bad)} ERROR/Traceback lines; "
            f"log kept in {dst}; last lines: {tail[-600:]}"
        ]


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


class Contender:
    def __init__(self, name, layers, pyunionfs_cmd):
        self.name, self.layers, self.pyunionfs_cmd = name, Path(layers), pyunionfs_cmd

    def available(self, scratch):
        if self.name == "plain":
            return True, ""
        if self.name == "kernel":
            return kernel_overlay_works(scratch)
        if not os.path.exists("/dev/fuse"):
            return False, "/dev/fuse missing"
        if not shutil.which("fusermount3"):
            return False, "fusermount3 not found"
        if self.name == "fuse-overlayfs":
            return (True, "") if shutil.which("fuse-overlayfs") else (False, "fuse-overlayfs not installed")
        if self.name == "pyunionfs":
            c = self.pyunionfs_cmd
            if c and os.access(c, os.X_OK):
                return True, ""
            alt = shutil.which("pyunionfs")
            hint = f" (one is on PATH: {alt})" if alt else ""
            return False, f"{c} not found or not executable; pass --pyunionfs or set PYUNIONFS{hint}"
        return False, "unknown contender"

    def mount(self, slot, workload):
        slot = Path(slot)
        slot.mkdir(parents=True)
        l1, l2 = self.layers / "lower1", self.layers / "lower2"
        if self.name == "plain":
            if not workload.mutating:
                return Mount(self.name, slot, self.layers / "plain", is_mount=False)
            farm = slot / "farm"  # hard-link farm of the plain tree: renames and removals stay private
            run_cmd(["cp", "-al", str(self.layers / "plain"), str(farm)], timeout=600)
            for rel in workload.plain_private:  # files whose data or mode the workload changes: real copies
                p = farm / rel
                tmp = p.with_name(p.name + ".tmp")
                shutil.copy2(p, tmp)
                os.replace(tmp, p)
            return Mount(self.name, slot, farm, is_mount=False)
        upper, work, mnt = slot / "upper", slot / "work", slot / "mnt"
        for d in (upper, work, mnt):
            d.mkdir()
        opts = f"lowerdir={l1}:{l2},upperdir={upper},workdir={work}"
        if self.name == "kernel":
            run_cmd(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], timeout=60)
            m = Mount(self.name, slot, mnt)
            LIVE[str(mnt)] = m
            return m
        # The daemon runs in the foreground (-f) as our child, in its own session (Ctrl-C does not reach
        # it): its pid, exit status and log are ours. Without /dev/log a daemonized pyunionfs logs nowhere.
        cmd = [self.pyunionfs_cmd] if self.name == "pyunionfs" else ["fuse-overlayfs"]
        log_path = slot / "daemon.log"
        real = lifecycle.real_mountpoint(mnt)
        before = lifecycle.mounts_at(real)
        with open(log_path, "wb") as logf:
            proc = lifecycle.start_daemon(cmd + ["-f", "-o", opts, str(mnt)], logf)
        if lifecycle.wait_for_mount(real, proc, 30, before=before) is None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            why = log_path.read_text(errors="replace").strip()[-400:]
            shutil.rmtree(slot, ignore_errors=True)
            raise BenchError(f"{self.name} did not mount within 30 s (exit {proc.returncode}): {why}")
        m = Mount(self.name, slot, mnt, proc=proc, log_path=log_path, fuse=True)
        LIVE[str(mnt)] = m
        return m


# ---------------------------------------------------------------------------------------------------------
# Workloads. A read-only workload runs twice on one mount: cold (caches dropped), then warm (timed again
# right after). A mutating workload has two targets on one mount: target 0 cold, target 1 warm (warm-up:
# an untimed pass that reads or stats what the timed pass will change).
# ---------------------------------------------------------------------------------------------------------


class Ctx:
    def __init__(self, root, meta, layers, prof, pid, scratch):
        self.root, self.meta, self.layers, self.prof, self.pid = Path(root), meta, Path(layers), prof, pid
        self.scratch = Path(scratch)

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
        t = time.perf_counter()
        sig = wl.run(ctx, target)
        dt = time.perf_counter() - t
        rss1 = ctx.rss()
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
# Container workloads: podman on a private containers-storage per contender (the mount program is what is
# compared: pyunionfs, fuse-overlayfs, or none = the kernel's overlay, as containers-storage uses as root).
# The configuration follows tests/container/engines.py: runc, no default ulimits, no network, file locks,
# cgroupfs, every path under the engine's own directory; images only from `podman import` (no registry).
# ---------------------------------------------------------------------------------------------------------

CTR_FORMAT = 1  # bump whenever the base root filesystem below changes
BASE_IMAGE = "localhost/bench/base:1"
ENGINES = []  # live PodmanEngines, for the emergency cleanup

# What a container changes in the image (podman-diff, podman-commit): files of the base layer removed,
# replaced and appended to, a directory tree removed, new files and directories, a mode change.
CTR_CHANGES = (
    "rm /bin/vi /bin/ls && echo changed > /etc/motd && echo extra:x:1000:1000::/:/bin/sh >> /etc/passwd "
    "&& rm -rf /usr/share/doc && mkdir -p /data/sub && echo new > /data/sub/new && chmod 700 /root"
)
# Read back (untimed) from a committed image: must print the same on every contender.
CTR_VERIFY = (
    "for p in /bin/vi /bin/ls /usr/share/doc /data/sub/new; do [ -e $p ] && echo has $p || echo no $p; done; "
    "cat /etc/motd; tail -1 /etc/passwd; stat -c '%a %n' /root; find / -xdev -name '.wh.*' | wc -l"
)

# The end-to-end workload's image: three uncached steps that add, delete and replace files of the lower
# layers (the base and the steps before), then a container that changes it again, committed.
CTR_CONTAINERFILE = f"""\
FROM {BASE_IMAGE}
RUN mkdir -p /data/a /data/b && for i in $(seq 1 300); do echo $i > /data/a/f$i; done \\
 && cp -a /bin/busybox /data/b/bb && echo one > /etc/motd && mkdir -p /data/gone/x && echo g > /data/gone/x/f
RUN rm -f /data/a/f1* /bin/vi /bin/ls && rm -rf /usr/share/doc /data/gone && echo two > /etc/motd \\
 && echo extra:x:1000:1000::/:/bin/sh >> /etc/passwd && ln -sf motd /etc/motd.link
RUN mv /data/b/bb /data/b/bb2 && echo again > /data/a/f1 && mkdir -p /usr/share/doc /data/gone \\
 && echo doc > /usr/share/doc/new && chmod 600 /etc/group && echo three >> /etc/motd
"""
CTR_E2E_CHANGES = "rm -rf /data/a && echo four > /etc/motd && mkdir /data/c && echo c > /data/c/f && rm /data/b/bb2"
CTR_E2E_VERIFY = (
    "find /data /usr/share/doc /etc | sort; cat /etc/motd; readlink /etc/motd.link; "
    "stat -c '%a' /etc/group; ls /bin | wc -l; find / -xdev -name '.wh.*' | wc -l"
)


def build_rootfs(root):
    """A busybox-static root filesystem and its tarball, built once (apt-get download, no registry)."""
    root = Path(root)
    stamp = {"format": CTR_FORMAT}
    tarball = root / "rootfs.tar"
    try:
        if json.loads((root / "stamp.json").read_text()) == stamp and tarball.exists():
            return tarball
    except (OSError, ValueError):
        pass
    if root.exists():
        shutil.rmtree(root)
    build = root.with_name(root.name + ".building")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    deb = os.environ.get("BUSYBOX_DEB")
    if not deb:
        p = run_cmd(["apt-get", "download", "busybox-static"], cwd=build, check=False, timeout=300)
        debs = sorted(build.glob("busybox-static*.deb"))
        if not debs:
            raise BenchError(
                f"apt-get download busybox-static failed: "
                f"{p.stderr.decode(errors='replace').strip()[-300:]} (or set BUSYBOX_DEB)"
            )
        deb = str(debs[0])
    rfs = build / "rootfs"
    run_cmd(["dpkg-deb", "-x", deb, str(rfs)], timeout=120)
    for d in ("usr/bin", "usr/sbin", "sbin", "etc", "tmp", "root", "var/tmp", "proc", "sys", "dev"):
        (rfs / d).mkdir(parents=True, exist_ok=True)
    run_cmd(["chroot", str(rfs), "/bin/busybox", "--install", "-s"], timeout=120)
    (rfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    (rfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (rfs / "etc" / "motd").write_text("base\n")
    os.chmod(rfs / "tmp", 0o1777)
    run_cmd(["tar", "-C", str(rfs), "--numeric-owner", "-cf", str(build / "rootfs.tar"), "."], timeout=120)
    shutil.rmtree(rfs)
    for d in build.glob("*.deb"):
        d.unlink()
    (build / "stamp.json").write_text(json.dumps(stamp))
    build.rename(root)
    return root / "rootfs.tar"


def mounts_below(base):
    """Mount points at or below base (deepest last), from /proc/self/mountinfo, with their fs types."""
    prefix = str(base).rstrip("/") + "/"
    out = []
    for e in lifecycle.mount_table():
        mp = os.fsdecode(e.mountpoint)
        if (mp + "/").startswith(prefix):
            out.append((mp, os.fsdecode(e.fstype)))
    return out


def daemons_below(base):
    """Mount-program daemons of this engine: processes whose last argument (the mount point) is below base
    and that have an -o option (podman started them for this run's storage; nothing else can match)."""
    prefix = str(base).rstrip("/") + "/"
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if len(argv) > 2 and b"-o" in argv and os.fsdecode(argv[-1]).startswith(prefix):
            pids.append(int(pid))
    return pids


class PodmanEngine:
    """podman on a private storage under base, with mount_program (None: the kernel's overlay)."""

    def __init__(self, base, contender, mount_program, timeout):
        self.base, self.contender, self.timeout = Path(base), contender, timeout
        self.root, self.runroot = self.base / "root", self.base / "run"
        for d in (self.root, self.runroot / "libpod-tmp"):
            d.mkdir(parents=True, exist_ok=True)
        (self.base / "containers.conf").write_text(
            "\n".join(
                [
                    "[containers]",
                    "default_ulimits = []",
                    'netns = "none"',
                    'log_driver = "k8s-file"',
                    "[engine]",
                    'runtime = "runc"',
                    'cgroup_manager = "cgroupfs"',
                    'events_logger = "file"',
                    'lock_type = "file"',
                    f'tmp_dir = "{self.runroot}/libpod-tmp"',
                ]
            )
            + "\n"
        )
        (self.base / "storage.conf").write_text(
            '[storage]\ndriver = "overlay"\n'
            f'runroot = "{self.runroot}"\ngraphroot = "{self.root}"\n'
            "[storage.options.overlay]\n" + (f'mount_program = "{mount_program}"\n' if mount_program else "")
        )
        (self.base / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.env = dict(
            os.environ,
            CONTAINERS_CONF=str(self.base / "containers.conf"),
            CONTAINERS_STORAGE_CONF=str(self.base / "storage.conf"),
            CONTAINERS_REGISTRIES_CONF=str(self.base / "registries.conf"),
            XDG_RUNTIME_DIR=str(self.runroot),
            TMPDIR=str(self.runroot / "libpod-tmp"),
            BUILDAH_ISOLATION="oci",
        )
        for k in ("CONTAINER_HOST", "DOCKER_HOST", "CONTAINERS_REGISTRIES_CONF_DIR"):
            self.env.pop(k, None)
        ENGINES.append(self)

    def podman(self, *args, input=None, check=True):
        """Run podman; returns (seconds, stdout as text). A non-zero exit raises BenchError."""
        argv = ["podman", *map(str, args)]
        t = time.perf_counter()
        try:
            p = subprocess.run(
                argv,
                input=input,
                capture_output=True,
                timeout=self.timeout,
                env=self.env,
                stdin=None if input is not None else subprocess.DEVNULL,
                cwd=str(self.base),
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"{' '.join(argv)[:200]}: timed out after {self.timeout} s")
        dt = time.perf_counter() - t
        if check and p.returncode != 0:
            raise BenchError(
                f"{' '.join(argv)[:200]} exited {p.returncode}: {p.stderr.decode(errors='replace').strip()[-600:]}"
            )
        return dt, p.stdout.decode(errors="replace")

    def leftovers(self, grace=3.0):
        """Mounts below the storage and live mount-program daemons once podman is done (after a grace)."""
        deadline = time.monotonic() + grace
        while True:
            mnts = [m for m, t in mounts_below(self.root) if t.startswith(("fuse", "overlay"))]
            pids = daemons_below(self.base)
            if (not mnts and not pids) or time.monotonic() > deadline:
                return mnts, pids
            time.sleep(0.1)

    def close(self):
        """Remove this storage's containers and images, unmount what is below it, stop its daemons."""
        errors = []
        for args in (("rm", "-af", "-t", "0"), ("image", "unmount", "-af"), ("rmi", "-af")):
            try:
                self.podman(*args, check=False)
            except BenchError as e:
                errors.append(str(e))
        for mp, fstype in reversed(mounts_below(self.base)):
            lifecycle.unmount(mp, fuse=fstype.startswith("fuse"), timeout=60)
        pids = daemons_below(self.base)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
                time.sleep(0.05)
        if pids:
            errors.append(f"{len(pids)} mount-program daemon(s) still alive at clean-up, stopped: {pids}")
        if mounts_below(self.base):
            errors.append(f"{self.base}: still mounted after clean-up; left in place")
        else:
            shutil.rmtree(self.base, ignore_errors=True)
        if self in ENGINES:
            ENGINES.remove(self)
        return errors


def summarize(ts):
    return {"median": statistics.median(ts), "mean": statistics.mean(ts)}


class CtrWorkload:
    name = ""
    desc = ""
    modes = ("median",)
    group = "containers"

    def run(self, eng, rep, cprof):
        """Timed podman commands on the engine: returns (modes {mode: seconds}, signature, extra)."""
        raise NotImplementedError

    def changed_container(self, eng, name):
        eng.podman("run", "--pull=never", "--network=none", "--name", name, BASE_IMAGE, "sh", "-c", CTR_CHANGES)


class PodmanRun(CtrWorkload):
    name, desc = "podman-run", "podman run --rm IMG true (median and mean of N)"
    modes = ("median", "mean")

    def run(self, eng, rep, cprof):
        ts = [
            eng.podman("run", "--rm", "--pull=never", "--network=none", BASE_IMAGE, "true")[0]
            for _ in range(cprof["runs"])
        ]
        return summarize(ts), len(ts), {"times": ts}


class PodmanDiff(CtrWorkload):
    name, desc = "podman-diff", "podman diff of a stopped container that changed a few files (median of N)"

    def run(self, eng, rep, cprof):
        self.changed_container(eng, f"diff{rep}")
        ts, outs = [], set()
        for _ in range(cprof["diffs"]):
            dt, out = eng.podman("diff", f"diff{rep}")
            ts.append(dt)
            outs.add(tuple(sorted(out.split("\n"))))
        eng.podman("rm", f"diff{rep}")
        if len(outs) != 1:
            raise BenchError(f"podman diff gave {len(outs)} different answers for one container")
        return {"median": statistics.median(ts)}, [x for x in outs.pop() if x], {"times": ts}


class PodmanCommit(CtrWorkload):
    name, desc = "podman-commit", "podman commit of a stopped container that changed a few files (median of N)"

    # Each commit is a new container's first: the second commit of one container took about 1 s more on
    # both FUSE mount programs (not on the kernel), which is containers-storage's, not the filesystem's.
    def run(self, eng, rep, cprof):
        ts, tags = [], []
        for i in range(cprof["commits"]):
            name, tag = f"commit{rep}-{i}", f"localhost/bench/commit{rep}-{i}"
            self.changed_container(eng, name)
            ts.append(eng.podman("commit", "-q", name, tag)[0])
            tags.append(tag)
            eng.podman("rm", name)
        _, out = eng.podman("run", "--rm", "--pull=never", "--network=none", tags[-1], "sh", "-c", CTR_VERIFY)
        eng.podman("rmi", *tags)
        return {"median": statistics.median(ts)}, out.strip().split("\n"), {"times": ts}


class PodmanBuildRunCommit(CtrWorkload):
    name, desc = "container-e2e", "podman build (3 uncached steps), run, commit: end to end, and each phase"
    modes = ("total", "build", "run", "commit")

    def run(self, eng, rep, cprof):
        ctx = eng.base / f"ctx{rep}"
        ctx.mkdir()
        (ctx / "Containerfile").write_text(CTR_CONTAINERFILE)
        tag, final, name = f"localhost/bench/built{rep}", f"localhost/bench/final{rep}", f"e2e{rep}"
        t_build = eng.podman("build", "--pull=never", "--network=none", "--layers=false", "-q", "-t", tag, str(ctx))[0]
        t_run = eng.podman("run", "--pull=never", "--network=none", "--name", name, tag, "sh", "-c", CTR_E2E_CHANGES)[0]
        t_commit = eng.podman("commit", "-q", name, final)[0]
        _, out = eng.podman("run", "--rm", "--pull=never", "--network=none", final, "sh", "-c", CTR_E2E_VERIFY)
        eng.podman("rm", name)
        eng.podman("rmi", final, tag)
        shutil.rmtree(ctx)
        lines = out.strip().split("\n")
        sig = [len(lines), zlib.crc32(out.encode())]
        return (
            {"total": t_build + t_run + t_commit, "build": t_build, "run": t_run, "commit": t_commit},
            sig,
            {"verify_tail": lines[-4:]},
        )


CTR_WORKLOADS = [PodmanRun(), PodmanDiff(), PodmanCommit(), PodmanBuildRunCommit()]
CTR_CONTENDERS = ["kernel", "fuse-overlayfs", "pyunionfs"]


def ctr_available(name, pyu, scratch):
    for tool in ("podman", "runc"):
        if not shutil.which(tool):
            return False, f"{tool} not installed"
    if name == "kernel":
        return kernel_overlay_works(scratch)
    if not os.path.exists("/dev/fuse"):
        return False, "/dev/fuse missing"
    if name == "fuse-overlayfs":
        return (True, "") if shutil.which("fuse-overlayfs") else (False, "fuse-overlayfs not installed")
    return (True, "") if pyu and os.access(pyu, os.X_OK) else (False, f"{pyu} not found or not executable")


def mount_program(name, pyu):
    return {"kernel": None, "fuse-overlayfs": shutil.which("fuse-overlayfs"), "pyunionfs": pyu}[name]


def run_containers(
    workloads, names, pyu, scratch, cprof, repeat, rootfs_tar, results, extras, sigs, errors, jf, t_start
):
    """Every repetition: a fresh private storage per contender (base imported and one warm-up run, untimed),
    then each workload on every contender in turn (the contender that starts rotates with the repetition)."""
    total = repeat * len(workloads) * len(names)
    done = 0
    data = rootfs_tar.read_bytes()
    for rep in range(repeat):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        engines = {}
        try:
            for c in order:
                eng = PodmanEngine(scratch / f"podman-{c}-{rep}", c, mount_program(c, pyu), cprof["timeout"])
                try:
                    eng.podman("import", "-q", "-", BASE_IMAGE, input=data)
                    eng.podman("run", "--rm", "--pull=never", "--network=none", BASE_IMAGE, "true")
                    engines[c] = eng
                except BenchError as e:
                    errors.append(f"rep {rep} containers {c}: setup: {e}")
                    errors += [f"rep {rep} containers {c}: {x}" for x in eng.close()]
            for wl in workloads:
                for c in order:
                    if c not in engines:
                        continue
                    eng = engines[c]
                    t_step = time.monotonic()
                    line = f"rep {rep} {wl.name:13} {c:14}"
                    try:
                        modes, sig, extra = wl.run(eng, rep, cprof)
                    except BenchError as e:
                        errors.append(f"rep {rep} {wl.name} {c}: {e}")
                        modes = None
                    mnts, pids = eng.leftovers()
                    if mnts or pids:
                        errors.append(
                            f"rep {rep} {wl.name} {c}: after the workload {len(mnts)} mount(s) "
                            f"still below the storage ({mnts[:2]}) and {len(pids)} daemon(s) alive"
                        )
                    done += 1
                    now = time.monotonic()
                    head = f"[{done}/{total} {now - t_start:4.0f}s +{now - t_step:4.1f}s] {line}"
                    if modes is None:
                        log(head + " ERROR " + errors[-1].split(": ", 1)[1][:300])
                        continue
                    for mode, secs in modes.items():
                        results.setdefault((wl.name, mode, c), []).append(secs)
                        extras.setdefault((wl.name, mode, c), []).append(extra)
                    sigs.setdefault((wl.name, "-"), {}).setdefault(c, []).append(sig)
                    if jf:
                        jf.write(
                            json.dumps(
                                {
                                    "rep": rep,
                                    "workload": wl.name,
                                    "contender": c,
                                    "modes": modes,
                                    "sig": sig,
                                    "extra": extra,
                                }
                            )
                            + "\n"
                        )
                    log(head + " " + ", ".join(f"{m} {fmt_t(s)}" for m, s in modes.items()))
        finally:
            for c, eng in engines.items():
                errors += [f"rep {rep} containers {c}: clean-up: {x}" for x in eng.close()]


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


def run_startup(names, pyu, scratch, repeat, results, errors, jf):
    """STARTUP HOOK. benchmarks/startup.py is another engineer's module (not this file's); the contract
    expected of it: measure(contender, command, repeat, scratch) -> {"exec->mount": [seconds, ...],
    "exec->stat": [seconds, ...]}, contender "pyunionfs" or "fuse-overlayfs", command the daemon to exec.
    Returns None when measured, else why not (printed under the container table)."""
    path = Path(__file__).with_name("startup.py")
    if not path.exists():
        log("startup: benchmarks/startup.py does not exist yet: start-up not measured (hook: run_startup)")
        return "benchmarks/startup.py not there yet (hook: run_startup in run.py)"
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_startup", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - someone else's module: report, do not stop the run
        errors.append(f"startup: importing {path}: {type(e).__name__}: {e}")
        return f"importing benchmarks/startup.py failed ({type(e).__name__})"
    fn = getattr(mod, "measure", None)
    if fn is None:
        return "benchmarks/startup.py has no measure(contender, command, repeat, scratch) (hook: run_startup)"
    cmds = {"pyunionfs": pyu, "fuse-overlayfs": shutil.which("fuse-overlayfs")}
    for c in names:
        try:
            res = fn(c, cmds[c], repeat, scratch)
        except Exception as e:  # noqa: BLE001
            errors.append(f"startup {c}: {type(e).__name__}: {e}")
            continue
        for e in (res.get("errors") or [])[:5]:
            errors.append(f"startup {c}: {e}")
        for mode in StartupWorkload.modes:
            v = res.get(mode)
            vals = list(v) if isinstance(v, (list, tuple)) else [v] if v is not None else []
            if vals:
                results.setdefault(("startup", mode, c), []).extend(vals)
        log(
            f"startup {c:14} " + ", ".join(f"{m} {cell(results.get(('startup', m, c)))}" for m in StartupWorkload.modes)
        )
        if jf:
            jf.write(json.dumps({"workload": "startup", "contender": c, "result": res}, default=str) + "\n")
    return None


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def fmt_t(s):
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f}ms" if s >= 0.01 else f"{s * 1000:.1f}ms"
    return f"{s:.2f}s" if s < 100 else f"{s:.0f}s"


def cell(ts):
    if not ts:
        return "-"
    med = statistics.median(ts)
    if len(ts) == 1:
        return fmt_t(med)
    return f"{fmt_t(med)} ({fmt_t(min(ts))}-{fmt_t(max(ts))})"


def ratio(a, b):
    if not a or not b:
        return "-"
    return f"{statistics.median(a) / statistics.median(b):.2f}"


def report(results, contenders, workloads, mem, extras, errors, sigs, skipped, header):
    lines = [""]
    lines.append("=" * 100)
    lines += header
    for c, why in skipped.items():
        lines.append(f"skipped {c}: {why}")
    cols = ["workload", "mode"] + contenders + ["py/fo", "py/kern"]
    rows = []
    for wl in workloads:
        for mode in wl.modes:
            r = [wl.name, mode]
            for c in contenders:
                r.append(cell(results.get((wl.name, mode, c))))
            py = results.get((wl.name, mode, "pyunionfs"))
            r.append(ratio(py, results.get((wl.name, mode, "fuse-overlayfs"))))
            r.append(ratio(py, results.get((wl.name, mode, "kernel"))))
            rows.append(r)
    lines.append("")
    lines.append(
        "time: median (min-max) over repetitions; py/fo = pyunionfs / fuse-overlayfs, "
        "py/kern = pyunionfs / kernel (medians; < 1 means pyunionfs is faster)"
    )
    if rows:
        widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(cols, widths)))
        lines.append("  ".join("-" * w for w in widths))
        for r in rows:
            lines.append("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))

    daemons = [c for c in contenders if c in ("fuse-overlayfs", "pyunionfs")]
    if daemons and workloads:
        lines.append("")
        lines.append("daemon memory: peak VmHWM (MiB) over the mounts of each workload, sampled before unmount")
        mrows = []
        for wl in workloads:
            r = [wl.name]
            for c in daemons:
                v = [m["VmHWM"] for m in mem.get((wl.name, c), []) if m]
                r.append(f"{max(v) / MiB:.1f}" if v else "-")
            mrows.append(r)
        if any(wl.name == "find" for wl in workloads):
            r = ["bytes/entry (find, cold)"]
            for c in daemons:
                v = [e["bytes_per_entry"] for e in extras.get(("find", "cold", c), []) if "bytes_per_entry" in e]
                r.append(f"{statistics.median(v):.0f}" if v else "-")
            mrows.append(r)
        mcols = ["workload"] + daemons
        mw = [max(len(str(x)) for x in col) for col in zip(mcols, *mrows)]
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(mcols, mw)))
        for r in mrows:
            lines.append("  ".join(str(x).ljust(w) for x, w in zip(r, mw)))

    stall = []
    for wl in workloads:
        if wl.name.startswith("copyup"):
            for mode in wl.modes:
                parts = []
                for c in contenders:
                    v = [
                        e.get("stall_max_ms")
                        for e in extras.get((wl.name, mode, c), [])
                        if e.get("stall_max_ms") is not None
                    ]
                    if v:
                        parts.append(f"{c} {max(v):.0f}ms")
                if parts:
                    stall.append(f"  {wl.name} {mode}: " + ", ".join(parts))
    if stall:
        lines.append("")
        lines.append("worst lstat latency of a concurrent prober during the copy-up (other requests blocked?):")
        lines += stall

    mism = []
    for (wname, mode), per in sorted(sigs.items()):
        ref = per.get("plain", per.get("kernel"))
        for c, vals in per.items():
            for v in vals:
                if ref and v != ref[0]:
                    mism.append(f"  {wname} {mode}: {c} gave {v!r}, reference gave {ref[0]!r}")
                    break
    if mism:
        lines.append("")
        lines.append("RESULT MISMATCHES (signature differs from the plain/kernel reference):")
        lines += mism
    if errors:
        lines.append("")
        lines.append(f"ERRORS ({len(errors)}):")
        lines += ["  " + e for e in errors]
    lines.append("")
    return "\n".join(lines)


def ctr_report(results, names, workloads, startup, sigs, skipped, startup_note):
    """The container and start-up tables (kernel, fuse-overlayfs, pyunionfs), and the issue's targets."""
    lines = []
    for c, why in skipped.items():
        lines.append(f"containers: skipped {c}: {why}")
    cols = ["workload", "stat"] + names + ["py/fo", "py/kern"]
    rows = []
    for wl in workloads + ([StartupWorkload()] if startup else []):
        for mode in wl.modes:
            py = results.get((wl.name, mode, "pyunionfs"))
            rows.append(
                [wl.name, mode]
                + [cell(results.get((wl.name, mode, c))) for c in names]
                + [
                    ratio(py, results.get((wl.name, mode, "fuse-overlayfs"))),
                    ratio(py, results.get((wl.name, mode, "kernel"))),
                ]
            )
    if rows:
        widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
        lines.append("")
        lines.append(
            "containers: podman with each mount program on a private storage; median (min-max) over "
            "repetitions of each repetition's statistic"
        )
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(cols, widths)))
        lines.append("  ".join("-" * w for w in widths))
        for r in rows:
            lines.append("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    if startup_note:
        lines.append(f"startup: not measured: {startup_note}")

    def med(wname, mode, c):
        v = results.get((wname, mode, c))
        return statistics.median(v) if v else None

    targets = []
    for wname, mode, label, limit in (
        ("podman-run", "median", "podman run --rm", 1.25),
        ("podman-diff", "median", "podman diff", 1.5),
        ("podman-commit", "median", "podman commit", 1.5),
    ):
        py, fo = med(wname, mode, "pyunionfs"), med(wname, mode, "fuse-overlayfs")
        if py is not None and fo is not None:
            r = py / fo
            targets.append(
                f"  {label}: py/fo {r:.2f} (target <= {limit}): {'met' if r <= limit else 'NOT met'}"
                f"  [pyunionfs {fmt_t(py)}, fuse-overlayfs {fmt_t(fo)}]"
            )
    py = med("startup", "exec->stat", "pyunionfs")
    if py is not None:
        targets.append(
            f"  exec -> first answered stat: pyunionfs {fmt_t(py)} (target <= 150ms): "
            f"{'met' if py <= 0.150 else 'NOT met'}"
        )
    if targets:
        lines.append("")
        lines.append("targets (issue 12):")
        lines += targets
    mism = []
    for wl in workloads:
        per = sigs.get((wl.name, "-"), {})
        ref = per.get("kernel") or per.get("fuse-overlayfs")
        for c, vals in per.items():
            for v in vals:
                if ref and v != ref[0]:
                    mism.append(f"  {wl.name}: {c} gave {v!r}, reference gave {ref[0]!r}")
                    break
    if mism:
        lines.append("")
        lines.append("CONTAINER RESULT MISMATCHES (against the kernel's, else fuse-overlayfs's):")
        lines += mism
    return lines


# ---------------------------------------------------------------------------------------------------------


def cleanup_all():
    for eng in list(ENGINES):
        try:
            for e in eng.close():
                log(f"cleanup: {eng.base}: {e}")
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            log(f"cleanup: {eng.base}: {e}")
    for mnt, m in list(LIVE.items()):
        try:
            for e in m.unmount():
                log(f"cleanup: {mnt}: {e}")
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            log(f"cleanup: {mnt}: {e}")


CTR_PROFILES = {
    "quick": dict(runs=3, diffs=3, commits=3, startup=10),
    "full": dict(runs=10, diffs=5, commits=5, startup=20),
}
GROUPS = {"fs": lambda: [w.name for w in WORKLOADS], "containers": lambda: [w.name for w in CTR_WORKLOADS]}


def select_workloads(only):
    """--only: workload names and the groups fs, containers; startup. Default: everything."""
    names = [w.name for w in WORKLOADS] + [w.name for w in CTR_WORKLOADS] + ["startup"]
    if not only:
        want = set(names)
    else:
        want = set()
        for x in (x.strip() for x in only.split(",") if x.strip()):
            if x in GROUPS:
                want.update(GROUPS[x]())
            elif x in names:
                want.add(x)
            else:
                sys.exit(f"run.py: unknown workload {x!r}; known: {','.join(names)} and the groups {','.join(GROUPS)}")
    return ([w for w in WORKLOADS if w.name in want], [w for w in CTR_WORKLOADS if w.name in want], "startup" in want)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 repetitions, < 3 minutes")
    ap.add_argument("--repeat", type=int, help="repetitions (default 5, quick 2)")
    ap.add_argument(
        "--only",
        help="comma-separated workloads: "
        + ",".join(w.name for w in WORKLOADS + CTR_WORKLOADS)
        + ",startup, or the groups fs, containers",
    )
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="default: %(default)s")
    ap.add_argument("--json", help="write one JSON object per measurement (and a summary) to this file")
    ap.add_argument("--layers-dir", help="where layers are built and cached (default /tmp/bench-layers/PROFILE)")
    ap.add_argument(
        "--pyunionfs",
        default=os.environ.get("PYUNIONFS"),
        help="the pyunionfs command (default: $PYUNIONFS, else pyunionfs next to sys.executable)",
    )
    ap.add_argument("--timeout", type=float, help="seconds per mount (default quick 180, full 1200)")
    ap.add_argument(
        "--ctr-n",
        type=int,
        help="podman runs, diffs and commits per repetition (default quick 3, full 10 runs and 5 diffs and commits)",
    )
    args = ap.parse_args()

    if os.geteuid() != 0:
        sys.exit(
            "run.py: needs root (it mounts overlays and writes /proc/sys/vm/drop_caches); "
            "run it with sudo, e.g. sudo .venv/bin/python benchmarks/run.py --quick"
        )
    pname = "quick" if args.quick else "full"
    prof = dict(PROFILES[pname])
    if args.timeout:
        prof["timeout"] = args.timeout
    cprof = dict(CTR_PROFILES[pname], timeout=prof["timeout"])
    if args.ctr_n:
        cprof.update(runs=args.ctr_n, diffs=args.ctr_n, commits=args.ctr_n)
    repeat = args.repeat or prof["repeat"]
    workloads, ctr_workloads, want_startup = select_workloads(args.only)
    contenders = [x.strip() for x in args.contenders.split(",") if x.strip()]
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad:
        sys.exit(f"run.py: unknown contender(s) {bad}; known: {','.join(CONTENDERS)}")
    pyu = args.pyunionfs or str(Path(sys.executable).parent / "pyunionfs")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (&)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    layers = Path(args.layers_dir or f"/tmp/bench-layers/{pname}")
    scratch = Path(f"/tmp/bench-run-{os.getpid()}")
    scratch.mkdir(parents=True)
    jf = open(args.json, "w") if args.json else None
    t_start = time.monotonic()
    try:
        meta = build_layers(layers, pname, prof) if workloads else None
        rootfs_tar = build_rootfs(layers.with_name("containers")) if ctr_workloads else None
        active, skipped = [], {}
        for c in contenders if workloads else []:
            ok, why = Contender(c, layers, pyu).available(scratch)
            if ok:
                active.append(Contender(c, layers, pyu))
            else:
                skipped[c] = why
                log(f"skipping {c}: {why}")
        if workloads and not active:
            raise BenchError("no contender available")
        active.sort(key=lambda c: CONTENDERS.index(c.name))  # table columns in a fixed order
        ctr_names, ctr_skipped = [], {}
        for c in [c for c in CTR_CONTENDERS if c in contenders] if ctr_workloads else []:
            ok, why = ctr_available(c, pyu, scratch)
            if ok:
                ctr_names.append(c)
            else:
                ctr_skipped[c] = why
                log(f"containers: skipping {c}: {why}")
        fo_version = "-"
        if shutil.which("fuse-overlayfs"):
            fo = run_cmd(["fuse-overlayfs", "--version"], check=False).stdout.decode(errors="replace")
            fo_version = next(
                (
                    ln.split("version", 1)[1].strip()
                    for ln in fo.splitlines()
                    if ln.startswith("fuse-overlayfs") and "version" in ln
                ),
                "?",
            )
        try:
            rev = (
                run_cmd(
                    ["git", "-C", str(Path(__file__).resolve().parent.parent), "describe", "--always", "--dirty"],
                    timeout=30,
                )
                .stdout.decode()
                .strip()
            )
        except (BenchError, OSError, subprocess.TimeoutExpired):
            rev = "?"
        header = []
        if workloads:
            header.append(
                f"profile {pname}, {repeat} repetitions, {meta['entries']} entries "
                f"({len(meta['small_files'])} small files, {meta['tree_bytes'] / MiB:.0f} MiB), "
                f"big file {prof['seq_size'] // MiB} MiB, copy-up file {prof['cu_size'] // MiB} MiB, "
                f"write {prof['write_size'] // MiB} MiB, {prof['renames']} renames, "
                f"untar {meta['untar_files']} files"
            )
        if ctr_workloads:
            pv = run_cmd(["podman", "--version"], check=False).stdout.decode(errors="replace").strip()
            header.append(
                f"containers: profile {pname}, {repeat} repetitions, each {cprof['runs']} runs, "
                f"{cprof['diffs']} diffs, {cprof['commits']} commits, one build+run+commit; {pv}, "
                f"runc, busybox-static base image, warm caches"
            )
        header.append(
            f"kernel {os.uname().release}, {os.cpu_count()} cpus, loadavg at start "
            f"{open('/proc/loadavg').read().split()[0]}; pyunionfs = {pyu} (repo at {rev}); "
            f"fuse-overlayfs {fo_version}"
        )
        for h in header:
            log(h)
        t_start = time.monotonic()  # the layers are built: count from here
        results, mem, extras, errors, sigs = {}, {}, {}, [], {}
        total = repeat * len(workloads) * len(active)
        done = 0
        for rep in range(repeat if workloads else 0):
            order = active[rep % len(active) :] + active[: rep % len(active)]
            for wl in workloads:
                for c in order:
                    slot = scratch / f"{c.name}-{rep}-{wl.name}"
                    m = None
                    t_step = t_mounted = t_ran = time.monotonic()
                    phases = {}
                    try:
                        try:
                            m = c.mount(slot, wl)
                            t_mounted = time.monotonic()
                        except BenchError as e:
                            errors.append(f"rep {rep} {wl.name} {c.name}: mount: {e}")
                            res = None
                        else:
                            ctx = Ctx(m.root, meta, layers, prof, m.pid, scratch)
                            res = run_in_child(
                                lambda: mount_sequence(ctx, wl),  # noqa: B023 (called within this iteration)
                                prof["timeout"],
                                scratch / f"result-{rep}-{wl.name}-{c.name}.json",
                            )
                            t_ran = time.monotonic()
                    finally:
                        if m is not None:
                            if m.pid and not pid_alive(m.pid):
                                errors.append(f"rep {rep} {wl.name} {c.name}: daemon {m.pid} died during the workload")
                            t_unmount = time.monotonic()
                            for e in m.unmount():
                                errors.append(f"rep {rep} {wl.name} {c.name}: {e}")
                            phases = {
                                "mount": t_mounted - t_step,
                                "sequence": t_ran - t_mounted,
                                "unmount": time.monotonic() - t_unmount,
                            }
                        elif slot.exists():
                            shutil.rmtree(slot, ignore_errors=True)
                    done += 1
                    now = time.monotonic()
                    line = (
                        f"[{done}/{total} {now - t_start:4.0f}s +{now - t_step:4.1f}s] rep {rep} "
                        f"{wl.name:13} {c.name:14}"
                    )
                    if res is None:
                        log(line + " mount failed")
                        continue
                    if "error" in res:
                        errors.append(f"rep {rep} {wl.name} {c.name}: {res['error']}")
                        log(line + f" ERROR {res['error']}")
                        if jf:
                            jf.write(
                                json.dumps(
                                    {
                                        "rep": rep,
                                        "workload": wl.name,
                                        "contender": c.name,
                                        "error": res["error"],
                                        "trace": res.get("trace"),
                                    }
                                )
                                + "\n"
                            )
                        continue
                    ok = res["ok"]
                    mem.setdefault((wl.name, c.name), []).append(ok["mem"])
                    parts = []
                    for mode, r in ok["modes"].items():
                        results.setdefault((wl.name, mode, c.name), []).append(r["seconds"])
                        extras.setdefault((wl.name, mode, c.name), []).append(r["extra"])
                        sigs.setdefault((wl.name, mode), {}).setdefault(c.name, []).append(r["sig"])
                        parts.append(f"{mode} {fmt_t(r['seconds'])}")
                        if jf:
                            jf.write(
                                json.dumps(
                                    {
                                        "rep": rep,
                                        "workload": wl.name,
                                        "mode": mode,
                                        "contender": c.name,
                                        "seconds": r["seconds"],
                                        "sig": r["sig"],
                                        "extra": r["extra"],
                                        "mem": ok["mem"],
                                        "phases": phases,
                                    }
                                )
                                + "\n"
                            )
                    if ok["mem"]:
                        parts.append(f"hwm {ok['mem']['VmHWM'] / MiB:.0f}MiB")
                    eta = (time.monotonic() - t_start) / done * (total - done)
                    log(line + " " + ", ".join(parts) + f"  (eta {eta:.0f}s)")
        csigs = {}
        if ctr_workloads and ctr_names:
            run_containers(
                ctr_workloads,
                ctr_names,
                pyu,
                scratch,
                cprof,
                repeat,
                rootfs_tar,
                results,
                extras,
                csigs,
                errors,
                jf,
                time.monotonic(),
            )
        startup_note, startup_done = None, False
        if want_startup:
            startup_note = run_startup(
                [c for c in ("fuse-overlayfs", "pyunionfs") if c in contenders],
                pyu,
                scratch,
                cprof["startup"],
                results,
                errors,
                jf,
            )
            startup_done = startup_note is None
        names_c = [c.name for c in active]
        header.append(f"wall time {time.monotonic() - t_start:.0f} s")
        text = report(results, names_c, workloads, mem, extras, errors, sigs, skipped, header)
        if ctr_workloads or want_startup:
            cnames = ctr_names or [c for c in ("fuse-overlayfs", "pyunionfs") if c in contenders]
            extra_lines = ctr_report(results, cnames, ctr_workloads, startup_done, csigs, ctr_skipped, startup_note)
            marker = "\nERRORS (" if errors else None
            if marker and marker in text:
                i = text.index(marker)
                text = text[:i] + "\n" + "\n".join(extra_lines) + "\n" + text[i:]
            else:
                text = text.rstrip("\n") + "\n" + "\n".join(extra_lines) + "\n"
        print(text, flush=True)
        if jf:
            summary = {
                "summary": True,
                "profile": pname,
                "repeat": repeat,
                "header": header,
                "medians": {f"{w}|{m}|{c}": statistics.median(v) for (w, m, c), v in results.items()},
                "errors": errors,
            }
            jf.write(json.dumps(summary) + "\n")
        return 1 if errors else 0
    except KeyboardInterrupt:
        log("\ninterrupted: unmounting everything this run mounted")
        return 130
    except BenchError as e:
        log(f"run.py: {e}")
        return 1
    finally:
        cleanup_all()
        if jf:
            jf.close()
        leftover = [p for p in scratch.iterdir()] if scratch.exists() else []
        if not any(os.path.ismount(p / "mnt") or mounts_below(p) for p in leftover if p.is_dir()):
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            log(f"left {scratch} in place: something is still mounted there")


if __name__ == "__main__":
    sys.exit(main())
