"""A private podman/buildah per test: its own storage root, run root, configuration and locks.

Nothing here touches the host's container storage or another test's: every path the engines write is
under the directory given to `Engine`, the configuration comes from files there (CONTAINERS_CONF,
CONTAINERS_STORAGE_CONF, CONTAINERS_REGISTRIES_CONF; images only come from local tarballs, so the host's policy.json is
never consulted for a registry), and `close()` removes only the
containers and images of that storage, unmounts only mounts below that directory and signals only the
processes whose mount point is below it.

The mount program is what is compared: pyunionfs, fuse-overlayfs, or none (the kernel's overlay, what
containers-storage uses as root without a mount program). Known obstacles of these machines, none of
them the union filesystem's, are configured away: runc instead of crun (crun refuses cgroup v1 hybrid
mode), no default ulimits (setrlimit RLIMIT_NOFILE/NPROC is refused), no network, file locks instead of
the machine-wide /dev/shm lock table.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Optional, Sequence

from tests.util import mounts_under, unmount

REPO = Path(__file__).resolve().parents[2]
PYUNIONFS = str(REPO / ".venv" / "bin" / "pyunionfs")
MOUNT_PROGRAMS = {
    "pyunionfs": PYUNIONFS,
    "fuse-overlayfs": shutil.which("fuse-overlayfs") or "fuse-overlayfs",
    "kernel": None,
}
BASE_IMAGE = "localhost/unionfs-test/base:1"


def skip_reason(tool: str = "podman") -> Optional[str]:
    for needed in (tool, "runc"):
        if shutil.which(needed) is None:
            return f"{needed} is not installed (scripts/setup.sh installs it)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    return None


def _conf(runtime_dir: Path, rootless: bool) -> str:
    lines = [
        "[containers]",
        "default_ulimits = []",
        'netns = "none"',
        'log_driver = "k8s-file"',
        "[engine]",
        'runtime = "runc"',
        'cgroup_manager = "cgroupfs"',
        'events_logger = "file"',
        'lock_type = "file"',
        f'tmp_dir = "{runtime_dir}/libpod-tmp"',
    ]
    if rootless:
        lines.insert(1, 'cgroups = "disabled"')
    return "\n".join(lines) + "\n"


class Engine:
    """podman and buildah on a private storage under *base* with *mount_program* (None: the kernel)."""

    def __init__(
        self,
        base: Path,
        mount_program: Optional[str],
        *,
        rootless: bool = False,
        mount_options: Sequence[str] = (),
        additional_stores: Sequence[str] = (),
        run_as: Sequence[str] = (),
    ):
        self.base = Path(base)
        self.mount_program = mount_program
        self.run_as = list(run_as)  # a prefix (e.g. setpriv ... / unshare ...) for rootless runs
        self.root, self.runroot = self.base / "root", self.base / "run"
        for d in (self.root, self.runroot, self.runroot / "libpod-tmp"):
            d.mkdir(parents=True, exist_ok=True)
        (self.base / "containers.conf").write_text(_conf(self.runroot, rootless))
        opts = []
        if mount_program:
            opts.append(f'mount_program = "{mount_program}"')
        if mount_options:
            opts.append(f'mountopt = "{",".join(mount_options)}"')
        stores = ", ".join(f'"{s}"' for s in additional_stores)
        (self.base / "storage.conf").write_text(
            "[storage]\ndriver = \"overlay\"\n"
            f'runroot = "{self.runroot}"\ngraphroot = "{self.root}"\n'
            f"[storage.options]\nadditionalimagestores = [{stores}]\n"
            "[storage.options.overlay]\n" + "\n".join(opts) + "\n"
        )
        (self.base / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.env = dict(
            os.environ,
            CONTAINERS_CONF=str(self.base / "containers.conf"),
            CONTAINERS_STORAGE_CONF=str(self.base / "storage.conf"),
            CONTAINERS_REGISTRIES_CONF=str(self.base / "registries.conf"),
            XDG_RUNTIME_DIR=str(self.runroot),
            TMPDIR=str(self.runroot / "libpod-tmp"),
            BUILDAH_ISOLATION="chroot" if rootless else "oci",
        )
        self.env.pop("CONTAINER_HOST", None)
        self.env.pop("DOCKER_HOST", None)

    # -- running the tools

    def _run(self, tool: str, args, *, check=True, input=None, timeout=180, text=True):
        argv = [*self.run_as, tool, *map(str, args)]
        res = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            timeout=timeout,
            env=self.env,
            text=text,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            err = res.stderr if text else res.stderr.decode(errors="replace")
            raise AssertionError(f"{' '.join(argv)} exited {res.returncode}:\n{err[-4000:]}")
        return res

    def podman(self, *args, **kw):
        return self._run("podman", args, **kw)

    def buildah(self, *args, **kw):
        return self._run("buildah", args, **kw)

    # -- images

    def import_rootfs(self, rootfs: Path, name: str = BASE_IMAGE) -> str:
        data = _tar_of(rootfs)
        return self._run("podman", ["import", "-", name], input=data, text=False).stdout.decode().strip()

    def build(self, context: Path, tag: str, *extra) -> None:
        self.podman("build", "--pull=never", "--network=none", "--layers", *extra, "-t", tag, str(context), timeout=300)

    def image_tree(self, image: str) -> dict:
        """The image's merged tree as `podman image mount` shows it (tests.util snapshot form)."""
        mnt = self.podman("image", "mount", image).stdout.strip()
        try:
            return tree_of(Path(mnt))
        finally:
            self.podman("image", "unmount", image)

    def layer_tars(self, image: str) -> list:
        """The layers of `podman save` (docker-archive), bottom first, each as {name: entry}."""
        out = self.base / "save.tar"
        self.podman("save", "--format", "docker-archive", "-o", str(out), image)
        try:
            with tarfile.open(out) as archive:
                manifest = json.load(archive.extractfile("manifest.json"))[0]
                return [tar_entries(archive.extractfile(layer).read()) for layer in manifest["Layers"]]
        finally:
            out.unlink()

    # -- clean-up: only what this engine made

    def close(self) -> None:
        try:
            self.podman("rm", "-af", "-t", "0", check=False, timeout=120)
            self.podman("image", "unmount", "-af", check=False, timeout=120)
        except subprocess.TimeoutExpired:
            pass
        for m in reversed(mounts_under(self.base)):
            unmount(m.mountpoint, fuse=m.fstype.startswith("fuse"))
        _stop_daemons_under(self.base)
        for m in reversed(mounts_under(self.base, fstypes=("fuse", "overlay", "tmpfs", "shm", "proc", "nsfs"))):
            subprocess.run(["umount", "-l", m.mountpoint], capture_output=True, timeout=30)


def _stop_daemons_under(base: Path) -> None:
    """SIGTERM, then SIGKILL, the mount programs whose last argument (the mount point) is below base."""
    prefix = str(base.resolve()).rstrip("/") + "/"
    mine = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if argv and os.fsdecode(argv[-1]).startswith(prefix) and b"-o" in argv:
            mine.append(int(pid))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while mine and time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in mine):
            time.sleep(0.05)


def _tar_of(root: Path) -> bytes:
    return subprocess.run(
        ["tar", "-C", str(root), "--numeric-owner", "-cf", "-", "."], check=True, capture_output=True
    ).stdout


def tree_of(root: Path) -> dict:
    """{relative path: (type, mode, uid, gid, size-or-target, sha256)} of a tree, never following links."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            kind = stat_kind(st.st_mode)
            if kind == "f":
                with open(p, "rb") as f:
                    detail = hashlib.sha256(f.read()).hexdigest()
            elif kind == "l":
                detail = os.readlink(p)
            elif kind in "cb":
                detail = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
            else:
                detail = None
            tree[rel] = (kind, st.st_mode & 0o7777, st.st_uid, st.st_gid, detail)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return tree


def stat_kind(mode: int) -> str:
    import stat as S

    for test, ch in (
        (S.S_ISREG, "f"),
        (S.S_ISDIR, "d"),
        (S.S_ISLNK, "l"),
        (S.S_ISCHR, "c"),
        (S.S_ISBLK, "b"),
        (S.S_ISFIFO, "p"),
        (S.S_ISSOCK, "s"),
    ):
        if test(mode):
            return ch
    return "?"


def tar_entries(data: bytes) -> dict:
    """{name: (type, mode, uid, gid, sha256-or-target)} of one layer tarball (leading ./ dropped)."""
    entries = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            name = m.name[2:] if m.name.startswith("./") else m.name
            name = name.rstrip("/")
            if m.isreg():
                detail = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
            elif m.issym() or m.islnk():
                detail = ("link:" if m.islnk() else "") + m.linkname
            else:
                detail = None
            kind = (
                "f" if m.isreg() else "d" if m.isdir() else "l" if m.issym() else "h" if m.islnk() else m.type.decode()
            )
            entries[name] = (kind, m.mode & 0o7777, m.uid, m.gid, detail)
    return entries
