"""The contenders: a plain directory, the kernel overlay (mount/umount), fuse-overlayfs and pyunionfs with
each of its two FUSE backends (daemons started, waited for and unmounted through unionfs.embed.lifecycle);
each mount is fresh."""

import os
import shutil
import subprocess
from pathlib import Path

from benchutil import BenchError, retire, run_cmd
from layers import kernel_overlay_works

from unionfs.embed import lifecycle

CONTENDERS = ["plain", "kernel", "fuse-overlayfs", "pyunionfs", "pyunionfs-pyfuse3"]
# pyunionfs's contenders and the backend each one runs (-o backend=...): "pyunionfs" is the native one.
PYUNIONFS = {"pyunionfs": "native", "pyunionfs-pyfuse3": "pyfuse3"}
DAEMONS = ["fuse-overlayfs", *PYUNIONFS]  # the contenders with a daemon of their own
RATIO_LABEL = {"pyunionfs": "py", "pyunionfs-pyfuse3": "py3"}  # the ratio columns' names: py/fo, py3/fo


def pyunionfs_argv(name, pyu):
    """The command that starts the contender *name* (one of PYUNIONFS): pyu with its backend chosen."""
    return [pyu, "-o", f"backend={PYUNIONFS[name]}"]


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
            retire(self.slot)
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
        if self.name in PYUNIONFS:
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
        cmd = pyunionfs_argv(self.name, self.pyunionfs_cmd) if self.name in PYUNIONFS else ["fuse-overlayfs"]
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
