"""What every part of the benchmark uses: its error, logging, commands, cache dropping, process status."""

import os
import subprocess
import zlib

MiB = 1 << 20


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


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
