"""The start-up measurement: benchmarks/startup.py (exec -> live mount, exec -> first answered stat) loaded
and run for each contender, when it exists."""

import importlib.util
import json
import shutil
from pathlib import Path

from benchutil import log
from contenders import PYUNIONFS, pyunionfs_argv
from report import cell
from workloads import StartupWorkload


def run_startup(names, pyu, scratch, repeat, results, errors, jf):
    """STARTUP HOOK. benchmarks/startup.py is another engineer's module (not this file's); the contract
    expected of it: measure(contender, command, repeat, scratch) -> {"exec->mount": [seconds, ...],
    "exec->stat": [seconds, ...]}, contender "pyunionfs", "pyunionfs-pyfuse3" or "fuse-overlayfs", command
    the daemon to exec (for pyunionfs a list: the program and `-o backend=...`).
    Returns None when measured, else why not (printed under the container table)."""
    path = Path(__file__).with_name("startup.py")
    if not path.exists():
        log("startup: benchmarks/startup.py does not exist yet: start-up not measured (hook: run_startup)")
        return "benchmarks/startup.py not there yet (hook: run_startup in benchmarks/startuphook.py)"

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
    cmds = {"fuse-overlayfs": shutil.which("fuse-overlayfs")}
    cmds.update({name: pyunionfs_argv(name, pyu) for name in PYUNIONFS})
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
