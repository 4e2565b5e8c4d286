"""Counting the FUSE requests the kernel sends to one mount, and the CPU time its daemon spends.

The kernel's `fuse:fuse_request_send` trace event (Linux 6.15+) fires once for every request queued to a
FUSE connection (FORGETs excepted: they take another queue), whichever daemon answers it; so the count is
the same measure for pyunionfs's two backends and for fuse-overlayfs, and needs nothing from the daemon.
It is counted without reading any event: a private trace instance with a tiny ring buffer in overwrite
mode, the event filtered on the mount's connection; per CPU, `entries + overrun` of the instance's `stats`
is every event written since it was made. The cost is the tracepoint's, well under a microsecond a
request, alike for every FUSE contender.

The daemon's CPU time is its process CPU clock (what clock_getcpuclockid(3) gives): the whole process with
all its threads, also those that have exited, in nanoseconds.
"""

import os
import time
from pathlib import Path

from benchutil import log, run_cmd

EVENT = "events/fuse/fuse_request_send"
_TICK = os.sysconf("SC_CLK_TCK")


def daemon_cpu(pid):
    """Seconds of CPU (user + system, all its threads, also those that have exited) the process has used,
    or None. Its process CPU clock (clock_getcpuclockid's id, computed as the kernel makes it): the
    scheduler's nanoseconds, where /proc/PID/stat's utime + stime come in 10 ms ticks."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After "pid (comm) ": state is fields[0]; utime and stime are the 14th and 15th fields of the line.
    return (int(fields[11]) + int(fields[12])) / _TICK


def kernel_dev(st_dev):
    """The kernel's dev_t (MAJOR << 20 | MINOR), as the trace event's `connection` holds it; st_dev is
    encoded differently for minors above 255."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


class RequestCounter:
    """A trace instance of this run counting fuse_request_send for the mount being measured."""

    def __init__(self, scratch):
        self.inst = None
        self.mounted = None
        self.why_not = None
        root = Path("/sys/kernel/tracing")
        try:
            if not (root / "instances").is_dir():
                own = Path(scratch) / "tracefs"
                own.mkdir(exist_ok=True)
                if run_cmd(["mount", "-t", "tracefs", "nodev", str(own)], check=False).returncode != 0:
                    self.why_not = "tracefs cannot be mounted"
                    own.rmdir()
                    return
                self.mounted, root = own, own
            if not (root / EVENT).is_dir():
                self.why_not = "this kernel has no fuse:fuse_request_send trace event (Linux 6.15+)"
                return
            inst = root / "instances" / f"bench-run-{os.getpid()}"
            inst.mkdir()
            self.inst = inst
            (inst / "buffer_size_kb").write_text("4\n")  # the events are counted, never read
            (inst / EVENT / "filter").write_text("connection == 0\n")
            (inst / EVENT / "enable").write_text("1\n")
            self.cpus = sorted((inst / "per_cpu").glob("cpu*/stats"))
        except OSError as e:
            self.why_not = f"trace instance: {e}"
            self.close()

    @property
    def ok(self):
        return self.inst is not None

    def watch(self, st_dev):
        """Count the requests of the connection of this mount (its st_dev) from now on; None: no mount."""
        if self.inst is not None:
            dev = kernel_dev(st_dev) if st_dev is not None else 0
            (self.inst / EVENT / "filter").write_text(f"connection == {dev}\n")

    def count(self):
        """Requests sent to the watched connection since the instance was made (None when not counting)."""
        if self.inst is None:
            return None
        n = 0
        for p in self.cpus:
            for line in p.read_text().splitlines():
                k, _, v = line.partition(":")
                if k in ("entries", "overrun"):
                    n += int(v)
        return n

    def close(self):
        if self.inst is not None:
            try:
                (self.inst / EVENT / "enable").write_text("0\n")
                self.inst.rmdir()
            except OSError as e:
                log(f"request counter: removing {self.inst}: {e}")
            self.inst = None
        if self.mounted is not None:
            run_cmd(["umount", str(self.mounted)], check=False)
            try:
                self.mounted.rmdir()
            except OSError:
                pass
            self.mounted = None
