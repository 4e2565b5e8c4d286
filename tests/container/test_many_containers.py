"""Sixteen containers of one multi-layer image running at once on pyunionfs (one daemon each).

Each container changes the image in its own way (a new directory of its own, a copy-up of a shared
lower file with its own content, a deletion of its own lower file, a file made over that whiteout's
neighbour) and says so in a shared volume (`ready.N`); when all 16 are up the test writes `go`, every
container lists what it sees (`out.N`) and waits for `exit`. While all of them still run, the test
checks that no container sees another's changes, that each container's upper directory holds only its
own changes, and reads every pyunionfs daemon's peak memory (VmHWM). The image's layer directories
are hashed before the containers start and after they are gone.
"""

from __future__ import annotations

import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.container.engines import PYUNIONFS
from tests.util import tree_snapshot

pytestmark = [pytest.mark.timeout(180)]

N = 16
MAX_VMHWM_MIB = 200
IMAGE = "localhost/t/many"

CONTAINERFILE = f"""\
FROM localhost/unionfs-test/base:1
RUN mkdir -p /data/victims /data/deep/a/b && echo base > /data/shared \\
 && for i in $(seq 0 {N - 1}); do echo v$i > /data/victims/v$i; done && echo deep > /data/deep/a/b/f
RUN echo layer2 >> /data/shared && rm /data/deep/a/b/f && echo l2 > /data/deep/a/l2 && mkdir /data/l2dir \\
 && echo x > /data/l2dir/x
RUN echo layer3 >> /data/shared && rm -rf /data/l2dir && mkdir /data/l2dir && echo y > /data/l2dir/y
"""

# $1 is the container's number. Everything it writes in the volume is written last (after its own
# changes are made), and it never waits longer than the test's own time limit.
SCRIPT = r"""
n=$1
mkdir -p /own/c$n && echo "mine $n" > /own/c$n/f && echo "shared by $n" > /data/shared
rm /data/victims/v$n && echo "made by $n" > /data/victims/mine$n && echo $n > /data/l2dir/c$n
touch /vol/ready.$n
i=0; while [ ! -e /vol/go ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done
{ ls /own; echo --; cat /data/shared; echo --; ls /data/victims | tr '\n' ' '; echo; echo --; ls /data/l2dir | tr '\n' ' '; echo; \
  echo --; ls -a / /data /data/victims | grep -c '^\.wh\.'; } > /vol/out.$n.tmp; mv /vol/out.$n.tmp /vol/out.$n
i=0; while [ ! -e /vol/exit ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done
"""


def _wait_for(paths, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            missing = [os.path.basename(p) for p in paths if not os.path.exists(p)]
            raise AssertionError(f"timed out waiting for {what}: missing {missing}")
        time.sleep(0.1)


def _daemons_under(base: Path) -> dict:
    """{pid: mountpoint} of the pyunionfs daemons whose mount point (last argument) is below base."""
    prefix = str(base.resolve()).rstrip("/") + "/"
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if (
            len(argv) > 2
            and os.fsdecode(argv[-1]).startswith(prefix)
            and b"-o" in argv
            and any(os.fsdecode(a) == PYUNIONFS or os.fsdecode(a).endswith("unionfs") for a in argv[:3])
        ):
            out[int(pid)] = os.fsdecode(argv[-1])
    return out


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _upper(upper: str) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, upper)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                out[rel] = "whiteout"
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    out[rel] = f.read()
            else:
                out[rel] = "d" if stat.S_ISDIR(st.st_mode) else oct(st.st_mode)
    return out


def test_sixteen_containers_at_once(engines, tmp_path):
    e = engines("pyunionfs", mount_options=[f"logfile={tmp_path}/pyunionfs.log"])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    (ctx / "run.sh").write_text(SCRIPT)
    t0 = time.monotonic()
    e.build(ctx, IMAGE)
    t_build = time.monotonic() - t0
    layers = e.podman(
        "image", "inspect", "--format", "{{.GraphDriver.Data.UpperDir}}:{{.GraphDriver.Data.LowerDir}}", IMAGE
    ).stdout.strip()
    layer_dirs = [d for d in layers.split(":") if d]
    assert len(layer_dirs) == 4, layer_dirs  # the base and three RUN layers
    before = {d: tree_snapshot(d) for d in layer_dirs}

    vol = tmp_path / "vol"
    vol.mkdir()
    names = [f"many{i}" for i in range(N)]
    try:

        def start(i):
            e.podman(
                "run",
                "-d",
                "--pull=never",
                "--network=none",
                "--name",
                names[i],
                "-v",
                f"{vol}:/vol",
                "-v",
                f"{ctx / 'run.sh'}:/run.sh:ro",
                IMAGE,
                "sh",
                "/run.sh",
                str(i),
            )

        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(start, range(N)))
        _wait_for([vol / f"ready.{i}" for i in range(N)], 60, "the containers' ready files")
        t_start = time.monotonic() - t0
        daemons = _daemons_under(e.base)
        assert len(daemons) == N, daemons  # one daemon per running container, all alive at once
        running = e.podman("ps", "--format", "{{.Names}}").stdout.split()
        assert sorted(running) == sorted(names)

        (vol / "go").touch()
        _wait_for([vol / f"out.{i}" for i in range(N)], 60, "the containers' listings")
        # every container sees the image plus its own changes, nobody else's
        for i in range(N):
            own, shared, victims, l2dir, wh = (part.strip() for part in (vol / f"out.{i}").read_text().split("--"))
            assert own == f"c{i}", (i, own)
            assert shared == f"shared by {i}", (i, shared)
            expected_victims = sorted([f"v{j}" for j in range(N) if j != i] + [f"mine{i}"])
            assert sorted(victims.split()) == expected_victims, (i, victims)
            assert sorted(l2dir.split()) == sorted([f"c{i}", "y"]), (i, l2dir)
            assert wh == "0", (i, wh)

        # each upper holds only its own changes (and podman's own mount points and /etc files)
        uppers = e.podman("inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", *names).stdout.split()
        assert len(set(uppers)) == N
        podmans_own = None
        for i, upper in enumerate(uppers):
            got = _upper(upper)
            mine = {
                "own": "d",
                f"own/c{i}": "d",
                f"own/c{i}/f": f"mine {i}\n".encode(),
                "data": "d",
                "data/shared": f"shared by {i}\n".encode(),
                "data/victims": "d",
                f"data/victims/v{i}": "whiteout",
                f"data/victims/mine{i}": f"made by {i}\n".encode(),
                "data/l2dir": "d",
                f"data/l2dir/c{i}": f"{i}\n".encode(),
            }
            assert {k: got.get(k) for k in mine} == mine, (i, upper)
            rest = {k: v for k, v in got.items() if k not in mine}
            if podmans_own is None:
                podmans_own = rest
                print(f"podman's own entries in every upper: {sorted(rest)}")
            assert rest == podmans_own, (i, rest)
            assert not any(str(j) in k for j in range(N) for k in rest), rest

        peaks = {pid: (_status_kib(pid, "VmHWM"), _status_kib(pid, "VmRSS")) for pid in daemons}
        print(f"\nbuild {t_build:.1f}s; {N} containers started and ready in {t_start:.1f}s")
        for pid, (hwm, rss) in sorted(peaks.items()):
            print(
                f"pyunionfs pid {pid}: VmHWM {hwm / 1024:.1f} MiB, VmRSS {rss / 1024:.1f} MiB "
                f"({daemons[pid].rsplit('/', 2)[-2][:12]})"
            )
        total = sum(h for h, _ in peaks.values())
        print(f"sum of VmHWM: {total / 1024:.1f} MiB, max {max(h for h, _ in peaks.values()) / 1024:.1f} MiB")
        for pid, (hwm, _) in peaks.items():
            assert hwm < MAX_VMHWM_MIB * 1024, f"pyunionfs pid {pid} peaked at {hwm / 1024:.1f} MiB"

        (vol / "exit").touch()
    finally:
        (vol / "exit").touch()
        e.podman("rm", "-f", "-t", "0", *names, check=False, timeout=120)
    after = {d: tree_snapshot(d) for d in layer_dirs}
    for d in layer_dirs:
        assert after[d] == before[d], f"image layer {d} changed"
    deadline = time.monotonic() + 10
    while _daemons_under(e.base) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _daemons_under(e.base), "pyunionfs daemons outlived their containers"
    log = tmp_path / "pyunionfs.log"
    text = log.read_text() if log.exists() else ""
    assert " ERROR " not in text and "Traceback" not in text, text[-4000:]
