"""Rootless podman the way a real user runs it: a throwaway user with subordinate ids, in its own
user namespace (podman makes it itself through the setuid newuidmap/newgidmap), with pyunionfs as the
mount program.

Nothing on the host changes for good: the user (and exactly its /etc/subuid and /etc/subgid lines) is
removed afterwards, and what the user needs that the host does not give it lives in a private mount
namespace (`unshare -m`) that every podman call starts in:
- /dev/fuse (mode 0600 here) is covered by a 0666 node 10/229 made on a namespace-private tmpfs;
- a directory the user cannot enter on the way to the venv's interpreter (here /root, mode 0700) is
  covered by a 0755 tmpfs holding a bind mount of just the subtree on the way (as tests/mount/test_rootless.py).
podman's pause process (which keeps the user namespace and its mount namespace for later calls) was
started in such a namespace, so the mount program always sees the same fixes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from tests.container.engines import PYUNIONFS, REPO
from tests.util import mounts_under

SUBID_COUNT = 65536


def skip_reason() -> Optional[str]:
    if os.geteuid() != 0:
        return "creating a test user and a mount namespace needs root"
    for tool in ("useradd", "userdel", "usermod", "setpriv", "unshare", "newuidmap", "newgidmap", "podman"):
        if shutil.which(tool) is None:
            return f"{tool} not found (scripts/setup.sh installs uidmap and podman)"
    for tool in ("newuidmap", "newgidmap"):
        st = os.stat(shutil.which(tool))
        if not (st.st_mode & stat.S_ISUID and st.st_uid == 0):
            return f"{tool} is not setuid root"
    try:
        if int(Path("/proc/sys/user/max_user_namespaces").read_text()) == 0:
            return "user namespaces are disabled (user.max_user_namespaces = 0)"
    except OSError:
        pass
    return None


def _used_ranges(path: str) -> List[Tuple[int, int]]:
    out = []
    try:
        for line in Path(path).read_text().splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                out.append((int(parts[1]), int(parts[1]) + int(parts[2])))
    except FileNotFoundError:
        pass
    return out


def _free_range(count: int) -> int:
    used = _used_ranges("/etc/subuid") + _used_ranges("/etc/subgid")
    start = 1_000_000_000 - count * 64  # well above what useradd hands out (SUB_UID_MIN 100000, 65536 each)
    while any(a < start + count and start < b for a, b in used):
        start -= count
    return start


class RootlessUser:
    """A system user with SUBID_COUNT subordinate uids and gids; `ids` are every host id it may use."""

    def __init__(self, pw: pwd.struct_passwd, sub_start: int):
        self.pw, self.sub_start = pw, sub_start
        self.name, self.uid, self.gid = pw.pw_name, pw.pw_uid, pw.pw_gid

    def owns_id(self, uid: int) -> bool:
        return uid == self.uid or self.sub_start <= uid < self.sub_start + SUBID_COUNT

    def processes(self) -> List[int]:
        """The pids whose real uid is the user's or one of its subordinate ids: podman's pause process,
        conmon, the mount programs and the containers' processes (the user exists only for the test)."""
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("Uid:"):
                        if self.owns_id(int(line.split()[1])):
                            pids.append(int(pid))
                        break
            except OSError:
                continue
        return pids

    def kill_processes(self, timeout: float = 5) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.processes()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + timeout
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.05)


@contextlib.contextmanager
def rootless_user(prefix: str = "i4p") -> Iterator[RootlessUser]:
    """useradd --system, a free subordinate id range (usermod --add-subuids/--add-subgids); in finally
    the user's processes are killed (by pid), the range removed and the user deleted."""
    name = f"{prefix}{os.getpid() % 100000}"
    res = subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            name,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if res.returncode != 0:
        raise RuntimeError(f"useradd {name} failed: {res.stderr.strip()}")
    user = None
    try:
        start = _free_range(SUBID_COUNT)
        rng = f"{start}-{start + SUBID_COUNT - 1}"
        subprocess.run(
            ["usermod", "--add-subuids", rng, "--add-subgids", rng, name], check=True, capture_output=True, timeout=60
        )
        user = RootlessUser(pwd.getpwnam(name), start)
        yield user
    finally:
        if user is not None:
            user.kill_processes()
            subprocess.run(
                ["usermod", "--del-subuids", rng, "--del-subgids", rng, name], capture_output=True, timeout=60
            )
        subprocess.run(["userdel", name], capture_output=True, timeout=60)
        for path in ("/etc/subuid", "/etc/subgid"):  # userdel of shadow 4.13 drops them too; make sure
            try:
                lines = Path(path).read_text().splitlines(keepends=True)
            except FileNotFoundError:
                continue
            kept = [ln for ln in lines if not ln.startswith(f"{name}:")]
            if kept != lines:
                Path(path).write_text("".join(kept))


@contextlib.contextmanager
def reachable_workspace(prefix: str) -> Iterator[Path]:
    """A 0755 directory under /tmp (pytest's base temp is 0700: the user could not enter it)."""
    w = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(w, 0o755)
    try:
        yield w
    finally:
        for m in reversed(mounts_under(w, fstypes=("fuse", "overlay", "tmpfs", "shm", "proc", "nsfs"))):
            subprocess.run(["umount", "-l", m.mountpoint], capture_output=True, timeout=30)
        shutil.rmtree(w, ignore_errors=True)


def _unreachable_ancestor(user: RootlessUser, path: str):
    """(A, C): the topmost ancestor A of `path` the user cannot traverse and the child C of A on the way."""
    parts = os.path.realpath(path).split("/")[1:]
    cur = "/"
    for part in parts[:-1]:
        st = os.stat(cur)
        ok = (
            st.st_mode & 0o001
            or (st.st_uid == user.uid and st.st_mode & 0o100)
            or (st.st_gid == user.gid and st.st_mode & 0o010)
        )
        if not ok:
            return cur, part
        cur = os.path.join(cur, part)
    return None


def run_as_prefix(user: RootlessUser) -> List[str]:
    """argv prefix: a private mount namespace with the fixes above, then setpriv to the user (no
    capabilities, no supplementary groups), ready for `podman ...`."""
    script = [
        'set -e',
        'd=$(mktemp -d /tmp/i4-ns.XXXXXX)',
        'mount -t tmpfs -o size=16k,mode=755 i4-ns "$d"',
        'mknod "$d/fuse" c 10 229',
        'chmod 666 "$d/fuse"',
        'mount --bind "$d/fuse" /dev/fuse',
    ]
    python = os.path.realpath(os.path.join(os.path.dirname(PYUNIONFS), "python"))
    fixes = {_unreachable_ancestor(user, p) for p in (PYUNIONFS, python, sys.base_prefix, sys.prefix, str(REPO))}
    for i, (a, c) in enumerate(sorted(f for f in fixes if f)):
        script += [
            f'mkdir "$d/keep{i}"',
            f'mount --bind "{a}" "$d/keep{i}"',
            f'mount -t tmpfs -o size=16k,mode=755 i4-ns "{a}"',
            f'mkdir "{a}/{c}"',
            f'mount --bind "$d/keep{i}/{c}" "{a}/{c}"',
        ]
    # a shared root inside the namespace (a new peer group: nothing propagates to the host) spares
    # podman its warning and lets its own mounts propagate within the namespace
    script += ['umount -l "$d"', 'rmdir "$d"', 'mount --make-rshared /', 'exec "$@"']
    drop = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--inh-caps=-all"]
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", "; ".join(script), "sh", *drop]


def chown_tree(path: Path, uid: int, gid: int) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for n in dirs + files:
            os.chown(os.path.join(root, n), uid, gid, follow_symlinks=False)


def rootless_env(engine, user: RootlessUser) -> None:
    """What podman reads as the user: HOME (its own), XDG_RUNTIME_DIR (the engine's run root, the
    user's), USER/LOGNAME; no root leftovers in the environment."""
    home = engine.base / "home"
    home.mkdir(exist_ok=True)
    engine.env.update(HOME=str(home), USER=user.name, LOGNAME=user.name)
    for k in ("SUDO_USER", "SUDO_UID", "DBUS_SESSION_BUS_ADDRESS", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        engine.env.pop(k, None)


def adapt_engine(engine, user: RootlessUser) -> None:
    """Make an `Engine(..., rootless=True, run_as=run_as_prefix(user))` work as the user:
    - rootless containers-storage ignores `graphroot` (it uses $HOME/.local/share/containers/storage
      unless `rootless_storage_path` says otherwise): point that at the engine's storage root;
    - runc refuses `cgroups = "disabled"` ("not compatible with NoCgroups", only crun supports it);
      rootless podman with the cgroupfs manager on this cgroup v1 host simply makes no cgroups;
    - builds use the OCI runtime (runc, rootless), not the harness's chroot isolation, which refuses
      `--network=none` ("cannot set --network other than host with --isolation chroot");
    - HOME, XDG_RUNTIME_DIR (the engine's run root) and the whole engine directory are the user's."""
    conf = engine.base / "storage.conf"
    text = conf.read_text()
    if "rootless_storage_path" not in text:
        text = text.replace("[storage]\n", f'[storage]\nrootless_storage_path = "{engine.root}"\n', 1)
        conf.write_text(text)
    cconf = engine.base / "containers.conf"
    cconf.write_text(
        "".join(ln for ln in cconf.read_text().splitlines(keepends=True) if not ln.startswith("cgroups ="))
    )
    engine.env["BUILDAH_ISOLATION"] = "oci"
    rootless_env(engine, user)
    chown_tree(engine.base, user.uid, user.gid)


_TREE_SCRIPT = "import json, sys; from tests.container.engines import tree_of; print(json.dumps(tree_of(sys.argv[1])))"


def image_tree(engine, image: str) -> dict:
    """The image's merged tree (engines.tree_of form, ids as the user namespace shows them).

    A rootless `podman image mount` lives in podman's own mount namespace and a FUSE mount made in a
    user namespace refuses processes outside it (even the host's root), so the walk runs in there:
    `podman unshare`, which joins the pause process's namespaces."""
    python = os.path.join(os.path.dirname(PYUNIONFS), "python")
    script = (
        'm=$(podman image mount "$1") || exit 1; PYTHONPATH="$2" "$3" -c "$4" "$m"; rc=$?; '
        'podman image unmount "$1" >/dev/null; exit $rc'
    )
    out = engine.podman("unshare", "sh", "-c", script, "sh", image, str(REPO), python, _TREE_SCRIPT).stdout
    return {k: tuple(v) for k, v in json.loads(out).items()}


def run_detached(engine, name: str, image: str, *argv, timeout: float = 60) -> str:
    """`podman run` without attaching: run -d, poll the state until it exited, logs; returns the output
    (the container is kept).

    Attached runs (`run`, `start -a`) and `podman wait` of rootless podman 4.3.1 here often sit 20 s
    after the container exited ("Exceeded conmon timeout waiting for container ... to exit", on
    fuse-overlayfs as on pyunionfs) though conmon wrote the exit file; `podman inspect` reads it at once."""
    engine.podman("run", "-d", "--pull=never", "--network=none", "--name", name, image, *argv)
    deadline = time.monotonic() + timeout
    while True:
        state = engine.podman(
            "container", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name
        ).stdout.split()
        if state[0] in ("exited", "stopped") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    logs = engine.podman("logs", name)
    if state[0] not in ("exited", "stopped") or state[1:] != ["0"]:
        raise AssertionError(f"container {name}: {state}:\n{logs.stdout}{logs.stderr}")
    return logs.stdout
