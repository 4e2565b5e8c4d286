"""The container workloads: podman on a private containers-storage per contender (run, diff, commit,
build+run+commit)."""

import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import time
import zlib
from pathlib import Path

from benchutil import BenchError, log, pid_alive, run_cmd
from contenders import pyunionfs_argv
from layers import kernel_overlay_works
from report import fmt_t

from unionfs.embed import lifecycle

# ---------------------------------------------------------------------------------------------------------
# Container workloads: podman on a private containers-storage per contender (the mount program is what is
# compared: pyunionfs, fuse-overlayfs, or none = the kernel's overlay, as containers-storage uses as root).
# The configuration follows tests/container/engines.py: runc, no default ulimits, no network, file locks,
# cgroupfs, every path under the engine's own directory; images only from `podman import` (no registry).
# ---------------------------------------------------------------------------------------------------------

CTR_FORMAT = 1  # bump whenever the base root filesystem below changes
BASE_IMAGE = "localhost/bench/base:1"
ENGINES = []  # live PodmanEngines, for the emergency cleanup

# What a container changes in the image (podman-diff, podman-commit): files of the base layer removed,
# replaced and appended to, a directory tree removed, new files and directories, a mode change.
CTR_CHANGES = (
    "rm /bin/vi /bin/ls && echo changed > /etc/motd && echo extra:x:1000:1000::/:/bin/sh >> /etc/passwd "
    "&& rm -rf /usr/share/doc && mkdir -p /data/sub && echo new > /data/sub/new && chmod 700 /root"
)
# Read back (untimed) from a committed image: must print the same on every contender.
CTR_VERIFY = (
    "for p in /bin/vi /bin/ls /usr/share/doc /data/sub/new; do [ -e $p ] && echo has $p || echo no $p; done; "
    "cat /etc/motd; tail -1 /etc/passwd; stat -c '%a %n' /root; find / -xdev -name '.wh.*' | wc -l"
)

# The end-to-end workload's image: three uncached steps that add, delete and replace files of the lower
# layers (the base and the steps before), then a container that changes it again, committed.
CTR_CONTAINERFILE = f"""\
FROM {BASE_IMAGE}
RUN mkdir -p /data/a /data/b && for i in $(seq 1 300); do echo $i > /data/a/f$i; done \\
 && cp -a /bin/busybox /data/b/bb && echo one > /etc/motd && mkdir -p /data/gone/x && echo g > /data/gone/x/f
RUN rm -f /data/a/f1* /bin/vi /bin/ls && rm -rf /usr/share/doc /data/gone && echo two > /etc/motd \\
 && echo extra:x:1000:1000::/:/bin/sh >> /etc/passwd && ln -sf motd /etc/motd.link
RUN mv /data/b/bb /data/b/bb2 && echo again > /data/a/f1 && mkdir -p /usr/share/doc /data/gone \\
 && echo doc > /usr/share/doc/new && chmod 600 /etc/group && echo three >> /etc/motd
"""
CTR_E2E_CHANGES = "rm -rf /data/a && echo four > /etc/motd && mkdir /data/c && echo c > /data/c/f && rm /data/b/bb2"
CTR_E2E_VERIFY = (
    "find /data /usr/share/doc /etc | sort; cat /etc/motd; readlink /etc/motd.link; "
    "stat -c '%a' /etc/group; ls /bin | wc -l; find / -xdev -name '.wh.*' | wc -l"
)


def build_rootfs(root):
    """A busybox-static root filesystem and its tarball, built once (apt-get download, no registry)."""
    root = Path(root)
    stamp = {"format": CTR_FORMAT}
    tarball = root / "rootfs.tar"
    try:
        if json.loads((root / "stamp.json").read_text()) == stamp and tarball.exists():
            return tarball
    except (OSError, ValueError):
        pass
    if root.exists():
        shutil.rmtree(root)
    build = root.with_name(root.name + ".building")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    deb = os.environ.get("BUSYBOX_DEB")
    if not deb:
        p = run_cmd(["apt-get", "download", "busybox-static"], cwd=build, check=False, timeout=300)
        debs = sorted(build.glob("busybox-static*.deb"))
        if not debs:
            raise BenchError(
                f"apt-get download busybox-static failed: "
                f"{p.stderr.decode(errors='replace').strip()[-300:]} (or set BUSYBOX_DEB)"
            )
        deb = str(debs[0])
    rfs = build / "rootfs"
    run_cmd(["dpkg-deb", "-x", deb, str(rfs)], timeout=120)
    for d in ("usr/bin", "usr/sbin", "sbin", "etc", "tmp", "root", "var/tmp", "proc", "sys", "dev"):
        (rfs / d).mkdir(parents=True, exist_ok=True)
    run_cmd(["chroot", str(rfs), "/bin/busybox", "--install", "-s"], timeout=120)
    (rfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    (rfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (rfs / "etc" / "motd").write_text("base\n")
    os.chmod(rfs / "tmp", 0o1777)
    run_cmd(["tar", "-C", str(rfs), "--numeric-owner", "-cf", str(build / "rootfs.tar"), "."], timeout=120)
    shutil.rmtree(rfs)
    for d in build.glob("*.deb"):
        d.unlink()
    (build / "stamp.json").write_text(json.dumps(stamp))
    build.rename(root)
    return root / "rootfs.tar"


def mounts_below(base):
    """Mount points at or below base (deepest last), from /proc/self/mountinfo, with their fs types."""
    prefix = str(base).rstrip("/") + "/"
    out = []
    for e in lifecycle.mount_table():
        mp = os.fsdecode(e.mountpoint)
        if (mp + "/").startswith(prefix):
            out.append((mp, os.fsdecode(e.fstype)))
    return out


def daemons_below(base):
    """Mount-program daemons of this engine: processes whose last argument (the mount point) is below base
    and that have an -o option (podman started them for this run's storage; nothing else can match)."""
    prefix = str(base).rstrip("/") + "/"
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if len(argv) > 2 and b"-o" in argv and os.fsdecode(argv[-1]).startswith(prefix):
            pids.append(int(pid))
    return pids


class PodmanEngine:
    """podman on a private storage under base, with mount_program (None: the kernel's overlay)."""

    def __init__(self, base, contender, mount_program, timeout):
        self.base, self.contender, self.timeout = Path(base), contender, timeout
        self.root, self.runroot = self.base / "root", self.base / "run"
        for d in (self.root, self.runroot / "libpod-tmp"):
            d.mkdir(parents=True, exist_ok=True)
        (self.base / "containers.conf").write_text(
            "\n".join(
                [
                    "[containers]",
                    "default_ulimits = []",
                    'netns = "none"',
                    'log_driver = "k8s-file"',
                    "[engine]",
                    'runtime = "runc"',
                    'cgroup_manager = "cgroupfs"',
                    'events_logger = "file"',
                    'lock_type = "file"',
                    f'tmp_dir = "{self.runroot}/libpod-tmp"',
                ]
            )
            + "\n"
        )
        (self.base / "storage.conf").write_text(
            '[storage]\ndriver = "overlay"\n'
            f'runroot = "{self.runroot}"\ngraphroot = "{self.root}"\n'
            "[storage.options.overlay]\n" + (f'mount_program = "{mount_program}"\n' if mount_program else "")
        )
        (self.base / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.env = dict(
            os.environ,
            CONTAINERS_CONF=str(self.base / "containers.conf"),
            CONTAINERS_STORAGE_CONF=str(self.base / "storage.conf"),
            CONTAINERS_REGISTRIES_CONF=str(self.base / "registries.conf"),
            XDG_RUNTIME_DIR=str(self.runroot),
            TMPDIR=str(self.runroot / "libpod-tmp"),
            BUILDAH_ISOLATION="oci",
        )
        for k in ("CONTAINER_HOST", "DOCKER_HOST", "CONTAINERS_REGISTRIES_CONF_DIR"):
            self.env.pop(k, None)
        ENGINES.append(self)

    def podman(self, *args, input=None, check=True):
        """Run podman; returns (seconds, stdout as text). A non-zero exit raises BenchError."""
        argv = ["podman", *map(str, args)]
        t = time.perf_counter()
        try:
            p = subprocess.run(
                argv,
                input=input,
                capture_output=True,
                timeout=self.timeout,
                env=self.env,
                stdin=None if input is not None else subprocess.DEVNULL,
                cwd=str(self.base),
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"{' '.join(argv)[:200]}: timed out after {self.timeout} s")
        dt = time.perf_counter() - t
        if check and p.returncode != 0:
            raise BenchError(
                f"{' '.join(argv)[:200]} exited {p.returncode}: {p.stderr.decode(errors='replace').strip()[-600:]}"
            )
        return dt, p.stdout.decode(errors="replace")

    def leftovers(self, grace=3.0):
        """Mounts below the storage and live mount-program daemons once podman is done (after a grace)."""
        deadline = time.monotonic() + grace
        while True:
            mnts = [m for m, t in mounts_below(self.root) if t.startswith(("fuse", "overlay"))]
            pids = daemons_below(self.base)
            if (not mnts and not pids) or time.monotonic() > deadline:
                return mnts, pids
            time.sleep(0.1)

    def close(self):
        """Remove this storage's containers and images, unmount what is below it, stop its daemons."""
        errors = []
        for args in (("rm", "-af", "-t", "0"), ("image", "unmount", "-af"), ("rmi", "-af")):
            try:
                self.podman(*args, check=False)
            except BenchError as e:
                errors.append(str(e))
        for mp, fstype in reversed(mounts_below(self.base)):
            lifecycle.unmount(mp, fuse=fstype.startswith("fuse"), timeout=60)
        pids = daemons_below(self.base)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
                time.sleep(0.05)
        if pids:
            errors.append(f"{len(pids)} mount-program daemon(s) still alive at clean-up, stopped: {pids}")
        if mounts_below(self.base):
            errors.append(f"{self.base}: still mounted after clean-up; left in place")
        else:
            shutil.rmtree(self.base, ignore_errors=True)
        if self in ENGINES:
            ENGINES.remove(self)
        return errors


def summarize(ts):
    return {"median": statistics.median(ts), "mean": statistics.mean(ts)}


class CtrWorkload:
    name = ""
    desc = ""
    modes = ("median",)
    group = "containers"

    def run(self, eng, rep, cprof):
        """Timed podman commands on the engine: returns (modes {mode: seconds}, signature, extra)."""
        raise NotImplementedError

    def changed_container(self, eng, name):
        eng.podman("run", "--pull=never", "--network=none", "--name", name, BASE_IMAGE, "sh", "-c", CTR_CHANGES)


class PodmanRun(CtrWorkload):
    name, desc = "podman-run", "podman run --rm IMG true (median and mean of N)"
    modes = ("median", "mean")

    def run(self, eng, rep, cprof):
        ts = [
            eng.podman("run", "--rm", "--pull=never", "--network=none", BASE_IMAGE, "true")[0]
            for _ in range(cprof["runs"])
        ]
        return summarize(ts), len(ts), {"times": ts}


class PodmanDiff(CtrWorkload):
    name, desc = "podman-diff", "podman diff of a stopped container that changed a few files (median of N)"

    def run(self, eng, rep, cprof):
        self.changed_container(eng, f"diff{rep}")
        ts, outs = [], set()
        for _ in range(cprof["diffs"]):
            dt, out = eng.podman("diff", f"diff{rep}")
            ts.append(dt)
            outs.add(tuple(sorted(out.split("\n"))))
        eng.podman("rm", f"diff{rep}")
        if len(outs) != 1:
            raise BenchError(f"podman diff gave {len(outs)} different answers for one container")
        return {"median": statistics.median(ts)}, [x for x in outs.pop() if x], {"times": ts}


class PodmanCommit(CtrWorkload):
    name, desc = "podman-commit", "podman commit of a stopped container that changed a few files (median of N)"

    # Each commit is a new container's first: the second commit of one container took about 1 s more on
    # both FUSE mount programs (not on the kernel), which is containers-storage's, not the filesystem's.
    def run(self, eng, rep, cprof):
        ts, tags = [], []
        for i in range(cprof["commits"]):
            name, tag = f"commit{rep}-{i}", f"localhost/bench/commit{rep}-{i}"
            self.changed_container(eng, name)
            ts.append(eng.podman("commit", "-q", name, tag)[0])
            tags.append(tag)
            eng.podman("rm", name)
        _, out = eng.podman("run", "--rm", "--pull=never", "--network=none", tags[-1], "sh", "-c", CTR_VERIFY)
        eng.podman("rmi", *tags)
        return {"median": statistics.median(ts)}, out.strip().split("\n"), {"times": ts}


class PodmanBuildRunCommit(CtrWorkload):
    name, desc = "container-e2e", "podman build (3 uncached steps), run, commit: end to end, and each phase"
    modes = ("total", "build", "run", "commit")

    def run(self, eng, rep, cprof):
        ctx = eng.base / f"ctx{rep}"
        ctx.mkdir()
        (ctx / "Containerfile").write_text(CTR_CONTAINERFILE)
        tag, final, name = f"localhost/bench/built{rep}", f"localhost/bench/final{rep}", f"e2e{rep}"
        t_build = eng.podman("build", "--pull=never", "--network=none", "--layers=false", "-q", "-t", tag, str(ctx))[0]
        t_run = eng.podman("run", "--pull=never", "--network=none", "--name", name, tag, "sh", "-c", CTR_E2E_CHANGES)[0]
        t_commit = eng.podman("commit", "-q", name, final)[0]
        _, out = eng.podman("run", "--rm", "--pull=never", "--network=none", final, "sh", "-c", CTR_E2E_VERIFY)
        eng.podman("rm", name)
        eng.podman("rmi", final, tag)
        shutil.rmtree(ctx)
        lines = out.strip().split("\n")
        sig = [len(lines), zlib.crc32(out.encode())]
        return (
            {"total": t_build + t_run + t_commit, "build": t_build, "run": t_run, "commit": t_commit},
            sig,
            {"verify_tail": lines[-4:]},
        )


CTR_WORKLOADS = [PodmanRun(), PodmanDiff(), PodmanCommit(), PodmanBuildRunCommit()]
CTR_CONTENDERS = ["kernel", "fuse-overlayfs", "pyunionfs", "pyunionfs-pyfuse3"]


def ctr_available(name, pyu, scratch):
    for tool in ("podman", "runc"):
        if not shutil.which(tool):
            return False, f"{tool} not installed"
    if name == "kernel":
        return kernel_overlay_works(scratch)
    if not os.path.exists("/dev/fuse"):
        return False, "/dev/fuse missing"
    if name == "fuse-overlayfs":
        return (True, "") if shutil.which("fuse-overlayfs") else (False, "fuse-overlayfs not installed")
    return (True, "") if pyu and os.access(pyu, os.X_OK) else (False, f"{pyu} not found or not executable")


def mount_program(name, pyu, scratch):
    """storage.conf's mount_program for the contender: none for the kernel; for pyunionfs a two-line script
    in the scratch dir that execs it with its backend chosen (`-o backend=...` before podman's options),
    so the choice does not depend on podman passing its environment on to the program it execs."""
    if name == "kernel":
        return None
    if name == "fuse-overlayfs":
        return shutil.which("fuse-overlayfs")
    wrapper = Path(scratch) / f"mount-program-{name}"
    if not wrapper.exists():
        wrapper.write_text("#!/bin/sh\nexec " + " ".join(map(shlex.quote, pyunionfs_argv(name, pyu))) + ' "$@"\n')
        wrapper.chmod(0o755)
    return str(wrapper)


def run_containers(
    workloads, names, pyu, scratch, cprof, repeat, rootfs_tar, results, extras, sigs, errors, jf, t_start
):
    """Every repetition: a fresh private storage per contender (base imported and one warm-up run, untimed),
    then each workload on every contender in turn (the contender that starts rotates with the repetition)."""
    total = repeat * len(workloads) * len(names)
    done = 0
    data = rootfs_tar.read_bytes()
    for rep in range(repeat):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        engines = {}
        try:
            for c in order:
                # A short directory: conmon's socket paths under the run root must stay below 108 bytes,
                # or every `podman run` waits 20 s for the container's exit file ("Exceeded conmon
                # timeout"); `podman-pyunionfs-pyfuse3-0` was long enough to do that.
                short = f"p{names.index(c)}r{rep}"
                eng = PodmanEngine(scratch / short, c, mount_program(c, pyu, scratch), cprof["timeout"])
                try:
                    eng.podman("import", "-q", "-", BASE_IMAGE, input=data)
                    eng.podman("run", "--rm", "--pull=never", "--network=none", BASE_IMAGE, "true")
                    engines[c] = eng
                except BenchError as e:
                    errors.append(f"rep {rep} containers {c}: setup: {e}")
                    errors += [f"rep {rep} containers {c}: {x}" for x in eng.close()]
            for wl in workloads:
                for c in order:
                    if c not in engines:
                        continue
                    eng = engines[c]
                    t_step = time.monotonic()
                    line = f"rep {rep} {wl.name:13} {c:14}"
                    try:
                        modes, sig, extra = wl.run(eng, rep, cprof)
                    except BenchError as e:
                        errors.append(f"rep {rep} {wl.name} {c}: {e}")
                        modes = None
                    mnts, pids = eng.leftovers()
                    if mnts or pids:
                        errors.append(
                            f"rep {rep} {wl.name} {c}: after the workload {len(mnts)} mount(s) "
                            f"still below the storage ({mnts[:2]}) and {len(pids)} daemon(s) alive"
                        )
                    done += 1
                    now = time.monotonic()
                    head = f"[{done}/{total} {now - t_start:4.0f}s +{now - t_step:4.1f}s] {line}"
                    if modes is None:
                        log(head + " ERROR " + errors[-1].split(": ", 1)[1][:300])
                        continue
                    for mode, secs in modes.items():
                        results.setdefault((wl.name, mode, c), []).append(secs)
                        extras.setdefault((wl.name, mode, c), []).append(extra)
                    sigs.setdefault((wl.name, "-"), {}).setdefault(c, []).append(sig)
                    if jf:
                        jf.write(
                            json.dumps(
                                {
                                    "rep": rep,
                                    "workload": wl.name,
                                    "contender": c,
                                    "modes": modes,
                                    "sig": sig,
                                    "extra": extra,
                                }
                            )
                            + "\n"
                        )
                    log(head + " " + ", ".join(f"{m} {fmt_t(s)}" for m, s in modes.items()))
        finally:
            for c, eng in engines.items():
                errors += [f"rep {rep} containers {c}: clean-up: {x}" for x in eng.close()]
