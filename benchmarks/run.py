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

LAYER_VERSION = 5          # bump whenever the layer layout below changes
MiB = 1 << 20
SMALL_FILE_CAP = 2 * MiB   # stdlib files larger than this (libpython.a, pip wheel) stay out of the tree
CONTENDERS = ["plain", "kernel", "fuse-overlayfs", "pyunionfs"]

PROFILES = {
    "quick": dict(
        repeat=2, with_test=False, slim=True, vendor=0, seq_size=128 * MiB, cu_size=64 * MiB,
        write_size=128 * MiB, renames=300, untar_files=500, import_cap=150, timeout=180,
        rm_pkgs=["email", "json", "http", "logging", "urllib"],
    ),
    "full": dict(
        repeat=5, with_test=True, slim=False, vendor=2, seq_size=1024 * MiB, cu_size=256 * MiB, write_size=1024 * MiB,
        renames=2000, untar_files=5000, import_cap=None, timeout=1200,
        rm_pkgs=["email", "json", "asyncio", "xml", "unittest", "concurrent", "http", "logging", "urllib",
                 "xmlrpc", "multiprocessing", "importlib"],
    ),
}

# Modules never imported by the import workload: side effects at import, GUIs, tests, entry points.
IMPORT_EXCLUDE = {"test", "tests", "idlelib", "tkinter", "turtledemo", "turtle", "__main__", "antigravity",
                  "this", "__hello__", "__phello__", "site-packages", "lib-dynload", "__pycache__"}

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
                if not dirs:          # a non-directory on top is the answer
                    out = os.path.join(d, n)
                    if stat.S_ISLNK(st.st_mode):
                        os.symlink(os.readlink(p), out)
                    else:
                        shutil.copy2(p, out)
                break                  # a non-directory below a directory ends the merge
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
            out.append((rel, fmt, stat.S_IMODE(st.st_mode),
                        st.st_size if fmt == stat.S_IFREG else 0,
                        int(st.st_mtime) if fmt == stat.S_IFREG else 0))
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
    run_cmd(cmd, timeout=timeout, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, cwd="/")
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
    p = run_cmd(["mount", "-t", "overlay", "overlay", "-o",
                 f"lowerdir={d}/l,upperdir={d}/u,workdir={d}/w", str(d / "m")], check=False, timeout=30)
    if p.returncode == 0:
        run_cmd(["umount", str(d / "m")], check=False, timeout=30)
        shutil.rmtree(d, ignore_errors=True)
        return True, ""
    shutil.rmtree(d, ignore_errors=True)
    return False, p.stderr.decode(errors="replace").strip()


def build_layers(root, profile_name, prof):
    """Build (or reuse) the layers for a profile under root. Returns the meta dict."""
    root = Path(root)
    stamp = {"version": LAYER_VERSION, "profile": profile_name, "stdlib": str(stdlib_dir()),
             "python": sys.version, "params": {k: v for k, v in prof.items() if k not in ("repeat", "timeout")}}
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
            shutil.copytree(src / pkg, l2 / f"rm{k}" / pkg, copy_function=shutil.copy2,
                            ignore=shutil.ignore_patterns("*.opt-*.pyc") if prof["slim"] else None)
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
        copy_stdlib(src, l1 / "vendor" / "v2", False)      # lower1-only subtree
    # whiteout of a whole lower2 directory
    os.mknod(l1 / "py" / "turtledemo", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    # opaque directory: a full identical copy in lower1 hides an extra file in lower2
    shutil.copytree(l2 / "py" / "xmlrpc", l1 / "py" / "xmlrpc", copy_function=shutil.copy2)
    (l2 / "py" / "xmlrpc" / "hidden_by_opaque.py").write_text("raise ImportError('opaque dir leaked')\n")
    os.setxattr(l1 / "py" / "xmlrpc", "trusted.overlay.opaque", b"y")
    # lower1 directories carry lower2's metadata
    for dp, dns, fns in os.walk(l1, topdown=False):
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
    meta = {"entries": entries, "small_files": small, "modules": mods, "untar_files": len(files),
            "tree_bytes": sum(os.path.getsize(plain / f) for f in small),
            "overrides": overrides, "whiteouts": whiteouts + 1, "opaque_dirs": 1}
    (build / "meta.json").write_text(json.dumps(meta))
    (build / "stamp.json").write_text(json.dumps(stamp))
    os.sync()
    build.rename(root)
    log(f"layers: built in {time.monotonic() - t0:.0f} s: {entries} entries, {len(small)} small files "
        f"({meta['tree_bytes'] / MiB:.0f} MiB), {overrides} overrides and {whiteouts + 1} whiteouts in lower1, "
        f"{len(mods)} importable modules")
    return meta


# ---------------------------------------------------------------------------------------------------------
# Contenders: each mount is fresh (empty upper and work), unmounted in finally
# ---------------------------------------------------------------------------------------------------------

LIVE = {}   # mountpoint -> Mount, for the emergency cleanup


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
        if self.is_mount:
            cmd = ["fusermount3", "-u", mnt] if self.fuse else ["umount", mnt]
            for attempt in range(5):
                p = run_cmd(cmd, check=False, timeout=60)
                if p.returncode == 0 or not os.path.ismount(mnt):
                    break
                time.sleep(0.5)
            else:
                errors.append(f"unmount failed: {p.stderr.decode(errors='replace').strip()}; forcing")
                if self.fuse and self.dev is not None:
                    try:
                        with open(f"/sys/fs/fuse/connections/{os.minor(self.dev)}/abort", "w") as f:
                            f.write("1")
                    except OSError:
                        pass
                run_cmd(["umount", "-l", mnt], check=False, timeout=60)
        if self.proc:
            try:
                rc = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                errors.append(f"daemon {self.pid} still alive 15 s after unmount; killed")
                self.proc.kill()
                rc = self.proc.wait()
            errors += self.daemon_log_errors(rc)
        LIVE.pop(mnt, None)
        if not os.path.ismount(mnt):
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
        return [f"{self.contender} daemon exit status {rc}, {len(bad)} ERROR/Traceback lines; "
                f"log kept in {dst}; last lines: {tail[-600:]}"]


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
            farm = slot / "farm"     # hard-link farm of the plain tree: renames and removals stay private
            run_cmd(["cp", "-al", str(self.layers / "plain"), str(farm)], timeout=600)
            for rel in workload.plain_private:   # files whose data or mode the workload changes: real copies
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
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(cmd + ["-f", "-o", opts, str(mnt)], stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.ismount(str(mnt)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if not os.path.ismount(str(mnt)):
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

    def prepare(self, ctx):                 # untimed, once per mount
        pass

    def warmup(self, ctx, target):          # untimed, before the warm run of a mutating workload
        pass

    def run(self, ctx, target):             # timed; returns a signature compared across contenders
        raise NotImplementedError

    def check(self, ctx, target, sig):      # untimed; returns the signature (or raises)
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
        p = sh(["ls", "-lR", str(ctx.root)], ctx.prof["timeout"], stdout=subprocess.PIPE,
               stderr=subprocess.PIPE, env=dict(os.environ, LC_ALL="C"))
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
        sh(["tar", "-xf", str(ctx.layers / "untar.tar"), "-C", str(ctx.root / f"untar{target}")],
           ctx.prof["timeout"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return None

    def check(self, ctx, target, sig):
        return list(walk_lstat(ctx.root / f"untar{target}"))


class RmRf(Workload):
    name, desc = "rm-rf", "rm -rf of a lower subtree (leaves whiteouts)"
    mutating = True

    def warmup(self, ctx, target):
        walk_lstat(ctx.root / f"rm{target}")

    def run(self, ctx, target):
        sh(["rm", "-rf", str(ctx.root / f"rm{target}")], ctx.prof["timeout"], stdout=subprocess.DEVNULL,
           stderr=subprocess.PIPE)
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
            raise BenchError(f"{len(res['failed'])} imports failed, {len(res['elsewhere'])} not from the "
                             f"mount, of {len(mods)}: {bad}")
        return len(res["mount"])


WORKLOADS = [Find(), Walk(), LsLR(), ReadAll(), Parallel4(), SeqRead(), SeqWrite(), CopyUpAppend(),
             CopyUpChmod(), Untar(), RmRf(), Rename(), Import()]


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
                res = {"error": f"{type(e).__name__}: {e}",
                       "trace": traceback.format_exc(limit=4)}
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
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    lines.append("")
    lines.append("time: median (min-max) over repetitions; py/fo = pyunionfs / fuse-overlayfs, "
                 "py/kern = pyunionfs / kernel (medians; < 1 means pyunionfs is faster)")
    lines.append("  ".join(str(x).ljust(w) for x, w in zip(cols, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))

    daemons = [c for c in contenders if c in ("fuse-overlayfs", "pyunionfs")]
    if daemons:
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
                    v = [e.get("stall_max_ms") for e in extras.get((wl.name, mode, c), [])
                         if e.get("stall_max_ms") is not None]
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


# ---------------------------------------------------------------------------------------------------------

def cleanup_all():
    for mnt, m in list(LIVE.items()):
        try:
            for e in m.unmount():
                log(f"cleanup: {mnt}: {e}")
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            log(f"cleanup: {mnt}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 repetitions, < 3 minutes")
    ap.add_argument("--repeat", type=int, help="repetitions (default 5, quick 2)")
    ap.add_argument("--only", help="comma-separated workloads: " + ",".join(w.name for w in WORKLOADS))
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="default: %(default)s")
    ap.add_argument("--json", help="write one JSON object per measurement (and a summary) to this file")
    ap.add_argument("--layers-dir", help="where layers are built and cached (default /tmp/bench-layers/PROFILE)")
    ap.add_argument("--pyunionfs", default=os.environ.get("PYUNIONFS"),
                    help="the pyunionfs command (default: $PYUNIONFS, else pyunionfs next to sys.executable)")
    ap.add_argument("--timeout", type=float, help="seconds per mount (default quick 180, full 1200)")
    args = ap.parse_args()

    if os.geteuid() != 0:
        sys.exit("run.py: needs root (it mounts overlays and writes /proc/sys/vm/drop_caches); "
                 "run it with sudo, e.g. sudo .venv/bin/python benchmarks/run.py --quick")
    pname = "quick" if args.quick else "full"
    prof = dict(PROFILES[pname])
    if args.timeout:
        prof["timeout"] = args.timeout
    repeat = args.repeat or prof["repeat"]
    names = [w.name for w in WORKLOADS]
    if args.only:
        want = [x.strip() for x in args.only.split(",") if x.strip()]
        bad = [x for x in want if x not in names]
        if bad:
            sys.exit(f"run.py: unknown workload(s) {bad}; known: {','.join(names)}")
        workloads = [w for w in WORKLOADS if w.name in want]
    else:
        workloads = list(WORKLOADS)
    contenders = [x.strip() for x in args.contenders.split(",") if x.strip()]
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad:
        sys.exit(f"run.py: unknown contender(s) {bad}; known: {','.join(CONTENDERS)}")
    pyu = args.pyunionfs or str(Path(sys.executable).parent / "pyunionfs")

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even when started with SIGINT ignored (&)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    layers = Path(args.layers_dir or f"/tmp/bench-layers/{pname}")
    scratch = Path(f"/tmp/bench-run-{os.getpid()}")
    scratch.mkdir(parents=True)
    jf = open(args.json, "w") if args.json else None
    t_start = time.monotonic()
    try:
        meta = build_layers(layers, pname, prof)
        active, skipped = [], {}
        for c in contenders:
            ok, why = Contender(c, layers, pyu).available(scratch)
            if ok:
                active.append(Contender(c, layers, pyu))
            else:
                skipped[c] = why
                log(f"skipping {c}: {why}")
        if not active:
            raise BenchError("no contender available")
        active.sort(key=lambda c: CONTENDERS.index(c.name))      # table columns in a fixed order
        fo_version = "-"
        if shutil.which("fuse-overlayfs"):
            fo = run_cmd(["fuse-overlayfs", "--version"], check=False).stdout.decode(errors="replace")
            fo_version = next((ln.split("version", 1)[1].strip() for ln in fo.splitlines()
                               if ln.startswith("fuse-overlayfs") and "version" in ln), "?")
        try:
            rev = run_cmd(["git", "-C", str(Path(__file__).resolve().parent.parent), "describe", "--always",
                           "--dirty"], timeout=30).stdout.decode().strip()
        except (BenchError, OSError, subprocess.TimeoutExpired):
            rev = "?"
        header = [
            f"profile {pname}, {repeat} repetitions, {meta['entries']} entries "
            f"({len(meta['small_files'])} small files, {meta['tree_bytes'] / MiB:.0f} MiB), "
            f"big file {prof['seq_size'] // MiB} MiB, copy-up file {prof['cu_size'] // MiB} MiB, "
            f"write {prof['write_size'] // MiB} MiB, {prof['renames']} renames, "
            f"untar {meta['untar_files']} files",
            f"kernel {os.uname().release}, {os.cpu_count()} cpus, loadavg at start "
            f"{open('/proc/loadavg').read().split()[0]}; pyunionfs = {pyu} (repo at {rev}); "
            f"fuse-overlayfs {fo_version}",
        ]
        log(header[0])
        log(header[1])
        t_start = time.monotonic()     # the layers are built: count from here
        results, mem, extras, errors, sigs = {}, {}, {}, [], {}
        total = repeat * len(workloads) * len(active)
        done = 0
        for rep in range(repeat):
            order = active[rep % len(active):] + active[: rep % len(active)]
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
                            res = run_in_child(lambda: mount_sequence(ctx, wl), prof["timeout"],
                                               scratch / f"result-{rep}-{wl.name}-{c.name}.json")
                            t_ran = time.monotonic()
                    finally:
                        if m is not None:
                            if m.pid and not pid_alive(m.pid):
                                errors.append(f"rep {rep} {wl.name} {c.name}: daemon {m.pid} died during "
                                              "the workload")
                            t_unmount = time.monotonic()
                            for e in m.unmount():
                                errors.append(f"rep {rep} {wl.name} {c.name}: {e}")
                            phases = {"mount": t_mounted - t_step, "sequence": t_ran - t_mounted,
                                      "unmount": time.monotonic() - t_unmount}
                        elif slot.exists():
                            shutil.rmtree(slot, ignore_errors=True)
                    done += 1
                    now = time.monotonic()
                    line = (f"[{done}/{total} {now - t_start:4.0f}s +{now - t_step:4.1f}s] rep {rep} "
                            f"{wl.name:13} {c.name:14}")
                    if res is None:
                        log(line + " mount failed")
                        continue
                    if "error" in res:
                        errors.append(f"rep {rep} {wl.name} {c.name}: {res['error']}")
                        log(line + f" ERROR {res['error']}")
                        if jf:
                            jf.write(json.dumps({"rep": rep, "workload": wl.name, "contender": c.name,
                                                 "error": res["error"], "trace": res.get("trace")}) + "\n")
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
                            jf.write(json.dumps({"rep": rep, "workload": wl.name, "mode": mode,
                                                 "contender": c.name, "seconds": r["seconds"],
                                                 "sig": r["sig"], "extra": r["extra"],
                                                 "mem": ok["mem"], "phases": phases}) + "\n")
                    if ok["mem"]:
                        parts.append(f"hwm {ok['mem']['VmHWM'] / MiB:.0f}MiB")
                    eta = (time.monotonic() - t_start) / done * (total - done)
                    log(line + " " + ", ".join(parts) + f"  (eta {eta:.0f}s)")
        names_c = [c.name for c in active]
        header.append(f"wall time {time.monotonic() - t_start:.0f} s")
        text = report(results, names_c, workloads, mem, extras, errors, sigs, skipped, header)
        print(text, flush=True)
        if jf:
            summary = {"summary": True, "profile": pname, "repeat": repeat, "header": header,
                       "medians": {f"{w}|{m}|{c}": statistics.median(v) for (w, m, c), v in results.items()},
                       "errors": errors}
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
        if not any(os.path.ismount(p / "mnt") for p in leftover if p.is_dir()):
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            log(f"left {scratch} in place: something is still mounted there")


if __name__ == "__main__":
    sys.exit(main())
