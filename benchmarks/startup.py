#!/usr/bin/env python3
"""Start-up time of a mount program: exec -> live mount, exec -> first answered stat, peak RSS.

    python benchmarks/startup.py [--repetitions N] [--warmup N] [--pyunionfs PATH]
                                 [--fuse-overlayfs PATH] [--only NAME,...] [--json OUT]

Container engines (podman, buildah) exec the mount program for every container they start, so the
time until the mount answers is paid on every `podman run`. For each repetition this makes fresh tiny
layers in a temp dir (a lower holding one file, an empty upper and workdir, an empty mountpoint), execs
the program with fuse-overlayfs's command line (pyunionfs twice: `-o backend=native` as "pyunionfs",
`-o backend=pyfuse3` as "pyunionfs-pyfuse3") and measures, from just before the exec:

  exec->mount   the command returned with exit status 0 (both programs return once the mount is made)
  exec->stat    the first os.stat() of the lower's file through the mount answered, done right after the
                command returned (what an engine does next); it is retried without sleeping until it
                succeeds, so a program that returned before its mount answered pays for it here
  cpu           user+system CPU seconds of the process exec'd, until it returned (wait4's rusage; the
                daemon it forked is not in it): less at the mercy of the machine's load than the wall times
  rss_kb        the daemon's peak RSS (VmHWM in /proc/PID/status) after that stat; the daemon is the
                process whose command line holds this repetition's own mountpoint (a path under this
                script's temp dir, unique to the repetition)

Every mount it made is unmounted with `fusermount3 -u MNT` in a finally, and the script waits (up to 5 s)
for that repetition's daemon to end before the next one starts, so daemons do not pile up and share the
CPUs with the next start. It never touches a mount or a process it did not make.

Cached bytecode matters for pyunionfs: with PYTHONDONTWRITEBYTECODE=1 and an editable install (no
__pycache__ beside the sources) unionfs is compiled on every start, about a quarter more instructions.
To measure a start with cached bytecode without writing into the source tree, compile everything into a
prefix and pass it on: `PYTHONPYCACHEPREFIX=/tmp/pyc python -m compileall -q -j0 STDLIB SITE-PACKAGES
unionfs`, then `--env PYTHONPYCACHEPREFIX=/tmp/pyc`. The machine's load moves the wall times a lot (two
CPUs shared with test runs: 140 to 300 ms for one and the same start); the programs take turns so
both see the same load, but compare medians of many runs, or count instructions (valgrind
--tool=callgrind on the program: the parent's total is exec -> mount).

As a module: measure_startup(argv_builder, repetitions) for any program (argv_builder(lower, upper,
work, mnt) -> argv), measure(contender, command, repeat, scratch) for benchmarks/run.py, and
compare() / format_table() for the side-by-side table this script prints. Needs root (or a user
allowed to mount FUSE) and fusermount3.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MODES = ("exec->mount", "exec->stat")
FIGURES = MODES + ("cpu", "rss_kb")
STAT_TIMEOUT = 10.0  # seconds the first stat may take before the repetition counts as failed
EXIT_TIMEOUT = 5.0  # seconds a daemon may take to end after its unmount
FILE_NAME = "hello"


class StartupError(Exception):
    pass


def pyunionfs_argv(command):
    """argv_builder for pyunionfs (or anything else with fuse-overlayfs's command line); *command* is the
    program, or a list (["env", "PYTHONPATH=/old/tree", "pyunionfs"]: an A/B of two source trees)."""
    prefix = [command] if isinstance(command, (str, bytes, os.PathLike)) else list(command)

    def build(lower, upper, work, mnt):
        return [*prefix, "-o", "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, work), mnt]

    return build


fuse_overlayfs_argv = pyunionfs_argv  # the same command line


def default_commands():
    here = os.path.dirname(os.path.abspath(sys.executable))
    pyu = os.path.join(here, "pyunionfs")
    if not os.access(pyu, os.X_OK):
        pyu = shutil.which("pyunionfs")
    return {
        "pyunionfs": [pyu, "-o", "backend=native"],
        "pyunionfs-pyfuse3": [pyu, "-o", "backend=pyfuse3"],
        "fuse-overlayfs": shutil.which("fuse-overlayfs") or "/usr/bin/fuse-overlayfs",
    }


def _is_mounted(path):
    """Whether *path* (absolute, as made by this script) is a mount point (the project's one mountinfo
    parser, through unionfs.embed.lifecycle)."""
    try:
        from unionfs.embed import lifecycle
    except ImportError:  # run by a python without the package installed: the checkout's own
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from unionfs.embed import lifecycle

    return bool(lifecycle.mounts_at(os.path.realpath(path)))


def _daemon_pids(mnt):
    """Pids of live processes whose argv holds *mnt*, a mountpoint unique to one repetition."""
    key = os.fsencode(mnt)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if key in argv or os.fsencode(os.path.realpath(mnt)) in argv:
            found.append(int(name))
    return found


def _status_kb(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _make_layers(base):
    lower, upper, work, mnt = (os.path.join(base, n) for n in ("lower", "upper", "work", "mnt"))
    for d in (lower, upper, work, mnt):
        os.mkdir(d)
    with open(os.path.join(lower, FILE_NAME), "w") as f:
        f.write("hello\n")
    return lower, upper, work, mnt


def measure_once(argv_builder, base, env=None):
    """One start in the empty directory *base*: -> {"exec->mount": s, "exec->stat": s, "rss_kb": kB|None,
    "stat_tries": n}. Unmounts what it mounted; raises StartupError if the program failed."""
    lower, upper, work, mnt = _make_layers(base)
    argv = argv_builder(lower, upper, work, mnt)
    target = os.path.join(mnt, FILE_NAME)
    errpath = os.path.join(base, "stderr")
    pids = []
    try:
        with open(errpath, "wb") as err:
            # stderr to a file, not a pipe: a daemon that kept the pipe open would hold up the read
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            t_mount = time.perf_counter()
            proc.returncode = rc = os.waitstatus_to_exitcode(status)
            tries = 0
            if rc == 0:
                while True:
                    tries += 1
                    try:
                        os.stat(target)
                        break
                    except FileNotFoundError:
                        if time.perf_counter() - t0 > STAT_TIMEOUT:
                            raise StartupError(
                                "%s: no answer through the mount after %.0f s" % (argv[0], STAT_TIMEOUT)
                            ) from None
                t_stat = time.perf_counter()
        if rc != 0:
            with open(errpath, "rb") as f:
                msg = f.read().decode(errors="replace").strip().splitlines()
            raise StartupError("%s exited %d: %s" % (argv[0], rc, msg[-1] if msg else "(no output)"))
        pids = _daemon_pids(mnt)
        rss = max((v for v in (_status_kb(p, "VmHWM") for p in pids) if v is not None), default=None)
        return {
            "exec->mount": t_mount - t0,
            "exec->stat": t_stat - t0,
            "rss_kb": rss,
            "stat_tries": tries,
            "cpu": usage.ru_utime + usage.ru_stime,
        }
    finally:
        if _is_mounted(mnt):
            if not pids:
                pids = _daemon_pids(mnt)
            subprocess.run(
                ["fusermount3", "-u", mnt],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        deadline = time.monotonic() + EXIT_TIMEOUT
        while pids and time.monotonic() < deadline:
            pids = [
                p for p in pids if os.path.exists("/proc/%d" % p) and _status_kb(p, "VmRSS") is not None
            ]  # a zombie has no VmRSS
            if pids:
                time.sleep(0.005)


def measure_startup(argv_builder, repetitions=10, warmup=1, scratch=None, env=None):
    """Start the program *repetitions* times (after *warmup* uncounted starts, which fill the page cache),
    each on fresh layers, with the environment *env* (default: this process's).
    -> {"exec->mount": [s...], "exec->stat": [s...], "rss_kb": [kB...], "cpu": [s...],
    "median": {figure: value}, "errors": [str...]}."""
    out = {"exec->mount": [], "exec->stat": [], "cpu": [], "rss_kb": [], "errors": []}
    top = tempfile.mkdtemp(prefix="startup-", dir=scratch)
    try:
        for i in range(warmup + repetitions):
            base = os.path.join(top, "r%d" % i)
            os.mkdir(base)
            try:
                res = measure_once(argv_builder, base, env)
            except StartupError as exc:
                out["errors"].append(str(exc))
                continue
            finally:
                if _is_mounted(os.path.join(base, "mnt")):
                    out["errors"].append("%s: still mounted after fusermount3 -u; left in place" % base)
                else:
                    shutil.rmtree(base, ignore_errors=True)
            if i >= warmup:
                for k in ("exec->mount", "exec->stat", "cpu"):
                    out[k].append(res[k])
                if res["rss_kb"] is not None:
                    out["rss_kb"].append(res["rss_kb"])
    finally:
        if not any(_is_mounted(os.path.join(top, d, "mnt")) for d in os.listdir(top)):
            shutil.rmtree(top, ignore_errors=True)
    out["median"] = {k: (statistics.median(out[k]) if out[k] else None) for k in FIGURES}
    return out


def measure(contender, command, repeat, scratch):
    """benchmarks/run.py's hook: *contender* "pyunionfs", "pyunionfs-pyfuse3" or "fuse-overlayfs" (all take
    fuse-overlayfs's command line), *command* the program, or a list (the program and its first arguments,
    e.g. ["pyunionfs", "-o", "backend=pyfuse3"]). -> measure_startup()'s dict ("exec->mount", "exec->stat"
    lists)."""
    if not command:
        raise StartupError("%s: no program to exec" % contender)
    return measure_startup(
        pyunionfs_argv(list(command) if isinstance(command, (list, tuple)) else str(command)),
        repetitions=repeat,
        warmup=1,
        scratch=str(scratch) if scratch is not None else None,
    )


def measure_exec(argv, repetitions=10):
    """Median seconds from exec of *argv* to its exit (a floor to compare with, e.g. `python -c pass`)."""
    times = []
    for _ in range(repetitions + 1):
        t0 = time.perf_counter()
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def compare(commands=None, repetitions=10, warmup=1, scratch=None, env=None):
    """measure_startup() for each {name: command} (default: pyunionfs with its native backend, with its
    pyfuse3 backend, and fuse-overlayfs), the programs
    taking turns (pyunionfs, fuse-overlayfs, pyunionfs, ...) so a change in the machine's load falls
    on both alike."""
    commands = commands or default_commands()
    runs = {name: [] for name in commands}
    for rep in range(repetitions):
        for name, cmd in commands.items():
            runs[name].append(measure_startup(pyunionfs_argv(cmd), 1, warmup if rep == 0 else 0, scratch, env))
    out = {}
    for name, parts in runs.items():
        merged = {k: [v for p in parts for v in p[k]] for k in FIGURES + ("errors",)}
        merged["median"] = {k: (statistics.median(merged[k]) if merged[k] else None) for k in FIGURES}
        out[name] = merged
    return out


def format_table(results):
    def ms(v):
        return "-" if v is None else "%.1f ms" % (v * 1000)

    names = list(results)
    rows = [("", *names)]
    for mode in MODES + ("cpu",):
        rows.append(("%s (median)" % mode, *(ms(results[n]["median"][mode]) for n in names)))
        rows.append(
            (
                "%s (min..max)" % mode,
                *(
                    "%s..%s" % (ms(min(results[n][mode])), ms(max(results[n][mode]))) if results[n][mode] else "-"
                    for n in names
                ),
            )
        )
    rows.append(
        (
            "peak RSS (median VmHWM)",
            *(
                "-" if results[n]["median"]["rss_kb"] is None else "%.1f MiB" % (results[n]["median"]["rss_kb"] / 1024)
                for n in names
            ),
        )
    )
    rows.append(("runs counted", *(str(len(results[n]["exec->mount"])) for n in names)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    for n in names:
        for e in results[n]["errors"]:
            lines.append("error (%s): %s" % (n, e))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repetitions", "-n", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--pyunionfs", default=None, help="the pyunionfs to exec (default: next to this python)")
    p.add_argument("--fuse-overlayfs", dest="fuse_overlayfs", default=None)
    p.add_argument("--only", default=None, help="comma-separated: pyunionfs,pyunionfs-pyfuse3,fuse-overlayfs")
    p.add_argument("--scratch", default=None, help="where the temp dirs go (default: $TMPDIR)")
    p.add_argument("--json", default=None, help="write the raw figures here")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in the programs' environment (NAME= removes it), e.g. PYTHONPYCACHEPREFIX=DIR",
    )
    args = p.parse_args(argv)
    commands = default_commands()
    if args.pyunionfs:
        commands["pyunionfs"] = [args.pyunionfs, "-o", "backend=native"]
        commands["pyunionfs-pyfuse3"] = [args.pyunionfs, "-o", "backend=pyfuse3"]
    if args.fuse_overlayfs:
        commands["fuse-overlayfs"] = args.fuse_overlayfs
    if args.only:
        commands = {k: v for k, v in commands.items() if k in args.only.split(",")}
    env = None
    if args.env:
        env = dict(os.environ)
        for item in args.env:
            name, _, value = item.partition("=")
            if value:
                env[name] = value
            else:
                env.pop(name, None)
    results = compare(commands, args.repetitions, args.warmup, args.scratch, env)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any(r["errors"] and not r["exec->mount"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
