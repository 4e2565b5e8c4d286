"""Counting the FUSE requests of one opcode that the kernel sends to one mount.

The kernel's `fuse:fuse_request_send` trace event (Linux 6.15+) fires for each request queued to a
connection, whoever answers it. A private trace instance (on a tracefs this helper mounts under the
test's own directory, unmounted in `finally`), the event filtered on the mount's connection and the
opcodes asked for, counts them without reading a single event: per CPU, `entries + overrun` of the
instance's stats is every event written since it was made. So a test can tell what the daemon was
asked, not what it says it was asked.
"""

import contextlib
import os
import subprocess
from pathlib import Path

_EVENT = "events/fuse/fuse_request_send"


def _kernel_dev(st_dev: int) -> int:
    """The kernel's dev_t (MAJOR << 20 | MINOR), as the event's `connection` holds it."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


class Counter:
    def __init__(self, inst: Path):
        self.inst = inst
        self.cpus = sorted((inst / "per_cpu").glob("cpu*/stats"))

    def count(self) -> int:
        """Requests counted since the counter was made."""
        n = 0
        for p in self.cpus:
            for line in p.read_text().splitlines():
                k, _, v = line.partition(":")
                if k in ("entries", "overrun"):
                    n += int(v)
        return n


def why_not_counting() -> str:
    """'' where requests can be counted, else why not (to skip on)."""
    if os.geteuid() != 0:
        return "counting FUSE requests needs root (tracefs)"
    with open("/proc/filesystems") as f:
        if "tracefs" not in f.read():
            return "no tracefs in this kernel"
    return ""


@contextlib.contextmanager
def counting_requests(scratch, mountpoint, opcodes):
    """A Counter of the requests with one of *opcodes* (abi numbers) sent to the FUSE mount at
    *mountpoint* while the block runs. *scratch*: a directory of the test's own; the tracefs is mounted
    in it (and unmounted, by that path, on the way out). Raises RuntimeError if counting is impossible
    (see why_not_counting)."""
    own = Path(scratch) / "tracefs"
    own.mkdir(exist_ok=True)
    mounted = False
    inst = None
    try:
        if subprocess.run(["mount", "-t", "tracefs", "nodev", str(own)], capture_output=True).returncode != 0:
            raise RuntimeError("tracefs cannot be mounted")
        mounted = True
        if not (own / _EVENT).is_dir():
            raise RuntimeError("this kernel has no fuse:fuse_request_send trace event (Linux 6.15+)")
        inst = own / "instances" / f"test-{os.getpid()}-{id(own)}"
        inst.mkdir()
        (inst / "buffer_size_kb").write_text("4\n")  # the events are counted, never read
        dev = _kernel_dev(os.stat(mountpoint).st_dev)
        ops = " || ".join(f"opcode == {op}" for op in opcodes)
        (inst / _EVENT / "filter").write_text(f"connection == {dev} && ({ops})\n")
        (inst / _EVENT / "enable").write_text("1\n")
        yield Counter(inst)
    finally:
        if inst is not None and inst.exists():
            with contextlib.suppress(OSError):
                (inst / _EVENT / "enable").write_text("0\n")
            with contextlib.suppress(OSError):
                inst.rmdir()
        if mounted:
            subprocess.run(["umount", str(own)], capture_output=True)
        with contextlib.suppress(OSError):
            own.rmdir()


@contextlib.contextmanager
def requests_counted(scratch, mountpoint, opcodes):
    """counting_requests for a test: the test is skipped, saying why, where requests cannot be counted
    (not root, no tracefs, a kernel without the trace event)."""
    import pytest

    reason = why_not_counting()
    if reason:
        pytest.skip(reason)
    stack = contextlib.ExitStack()
    try:
        counter = stack.enter_context(counting_requests(scratch, mountpoint, opcodes))
    except RuntimeError as exc:
        pytest.skip(str(exc))
    with stack:
        yield counter
