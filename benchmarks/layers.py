"""The test layer trees: built once per profile (stdlib copies, big files, whiteouts, opaque dirs), reused
while their stamp matches."""

import json
import os
import random
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

from benchutil import BenchError, MiB, log, run_cmd, stable_hash

LAYER_VERSION = 5  # bump whenever the layer layout below changes
SMALL_FILE_CAP = 2 * MiB  # stdlib files larger than this (libpython.a, pip wheel) stay out of the tree

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
