#!/usr/bin/env python3
"""Benchmark pyunionfs against fuse-overlayfs, the kernel overlay and a plain directory.

    python benchmarks/run.py [--quick] [--repeat N] [--only WORKLOAD,...] [--json OUT]
                             [--contenders plain,kernel,fuse-overlayfs,pyunionfs,pyunionfs-pyfuse3]

pyunionfs runs twice: "pyunionfs" is its native FUSE backend (-o backend=native), "pyunionfs-pyfuse3"
the pyfuse3 one (-o backend=pyfuse3); both are compared with fuse-overlayfs and the kernel in one table.

Needs root (mounts, drop_caches). See benchmarks/README.md for what it measures and how to read it.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
# The benchmark's modules (beside this script) and this checkout's unionfs (unionfs.embed.lifecycle).
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from benchutil import BenchError, MiB, log, pid_alive, run_cmd  # noqa: E402
from containers import CTR_CONTENDERS, CTR_WORKLOADS, ENGINES, build_rootfs, ctr_available, mounts_below, run_containers  # noqa: E402
from contenders import CONTENDERS, DAEMONS, LIVE, PYUNIONFS, Contender  # noqa: E402
from layers import build_layers  # noqa: E402
from report import ctr_report, fmt_t, report  # noqa: E402
from reqcount import RequestCounter  # noqa: E402
from startuphook import run_startup  # noqa: E402
from workloads import WORKLOADS, Ctx, mount_sequence, run_in_child  # noqa: E402

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


def disk_readahead(path):
    """(device "major:minor", read_ahead_kb) of the block device holding *path*, or None: cold reads of
    the layers (plain, kernel, and every daemon's reads of lower files) move with it. Found at 1020 KiB
    on 2026-12-07 where the default is 128: pyunionfs had raised it (fixed in 85c27ed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    for queue in (f"/sys/dev/block/{dev}/queue", f"/sys/dev/block/{dev}/../queue"):  # a disk, a partition
        try:
            with open(f"{queue}/read_ahead_kb") as f:
                return dev, int(f.read())
        except (OSError, ValueError):
            continue
    return None


def interpreter_of(command):
    """A line on the interpreter that runs *command* (a script: its #! line), or None: whether it links
    libpython statically moves every Python row by 20-30% (scripts/setup.sh)."""
    try:
        with open(command, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    interp = first[2:].split()[0].decode(errors="replace")
    probe = (
        "import os, sys; print(os.path.realpath(sys._base_executable), sys.version.split()[0], "
        "any('libpython' in line for line in open('/proc/self/maps')))"
    )
    try:
        out = run_cmd([interp, "-c", probe], check=False).stdout.decode().split()
    except OSError:
        return None
    if len(out) != 3:
        return None
    base, version, shared = out
    linked = "libpython a shared library" if shared == "True" else "libpython linked in"
    return f"pyunionfs's interpreter: {base}, Python {version}, {linked}"


def fuse_module_parameters() -> dict:
    """The fuse module's parameters as /sys shows them (name -> value; {} where there are none)."""
    base = "/sys/module/fuse/parameters"
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return {}
    out = {}
    for name in names:
        try:
            with open(os.path.join(base, name)) as f:
                out[name] = f.read().strip()
        except OSError:
            continue
    return out


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
    counter = None
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
        disk = disk_readahead(layers) if workloads else None
        if disk:
            header.append(f"layers on block device {disk[0]}, read_ahead_kb {disk[1]}")
        interp = interpreter_of(pyu) if any(c.name in PYUNIONFS for c in active) else None
        if interp:
            header.append(interp)
        params = fuse_module_parameters()
        if params:
            # Where the kernel runs a woken daemon moves request-bound rows several-fold (benchmarks/README,
            # "Placement tested"): the switches that decide it are part of the figures.
            header.append("fuse module parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
        if workloads and any(c.name in DAEMONS for c in active):
            counter = RequestCounter(scratch)
            header.append(
                "FUSE requests counted with the kernel's fuse:fuse_request_send trace event"
                if counter.ok
                else f"FUSE requests not counted: {counter.why_not}"
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
                            ctx = Ctx(m.root, meta, layers, prof, m.pid, scratch, counter)
                            if counter:
                                counter.watch(m.dev if m.fuse else None)
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
                [c for c in DAEMONS if c in contenders],
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
            cnames = ctr_names or [c for c in DAEMONS if c in contenders]
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
        if counter:
            counter.close()
        if jf:
            jf.close()
        leftover = [p for p in scratch.iterdir()] if scratch.exists() else []
        if not any(os.path.ismount(p / "mnt") or mounts_below(p) for p in leftover if p.is_dir()):
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            log(f"left {scratch} in place: something is still mounted there")


if __name__ == "__main__":
    sys.exit(main())
