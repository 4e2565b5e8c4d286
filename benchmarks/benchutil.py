"""What every part of the benchmark uses: its error, logging, commands, cache dropping, process status."""

import os
import shutil
import stat
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


RETIRED = "retired"  # the scratch dir's folder of finished slots, removed with the scratch dir at the end


def retire(slot):
    """Put a finished slot aside, in the scratch dir, until the whole run ends; only its big files go now
    (their space: seq-write's 1 GiB, the copy-ups' 256 MiB), which frees few inodes.

    Why not delete it: where ext4 has no journal (this machine's root filesystem), a new inode is never
    one freed in the last 60 to 360 s (ext4's recently_deleted), and each create scans past those. After
    a slot of thousands of entries was deleted, creating a file near it took 0.7-1 ms instead of 35 us,
    so `untar` and `rename` measured which contender ran right after a big deletion more than the
    contender itself (untars in one directory, pyunionfs and fuse-overlayfs in turns, each slot deleted
    after: pyunionfs's took 6.1, 9.2, 11.4 s)."""
    trash = slot.parent / RETIRED
    trash.mkdir(exist_ok=True)
    for dirpath, _, files in os.walk(slot):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size >= MiB:
                    os.unlink(path)
            except OSError:
                pass
    try:
        os.rename(slot, trash / slot.name)
    except OSError:
        shutil.rmtree(slot, ignore_errors=True)


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
