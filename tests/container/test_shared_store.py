"""A read-only image store shared between hosts: containers-storage's `additionalimagestores`.

One engine (the "image host") builds images into its storage; that storage is then offered read-only
to a second engine, as a loopback NFS export (kernel nfsd, the way such stores are shared between
hosts) or, everywhere, as a read-only bind mount (what a client sees of an `ro` export, minus the
network). The second engine lists the mount under `additionalimagestores`, keeps nothing of those
images in its own storage, and runs and builds from them on pyunionfs with local uppers. The store
must never be written: every file's content, metadata and mtime/ctime are the same before and after,
and the mount refuses writes.

NFS needs the kernel's NFS server and client (nfsd, nfs4); where the kernel has neither (no module
support either) that variant skips saying so. Everything the NFS variant starts is recorded and
undone in reverse: the client mount, exactly its export (`exportfs -u`), nfsd threads and rpc.mountd
only if this test started them, /proc/fs/nfsd only if this test mounted it.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest

from tests.util import mount_table, mounts_under, tree_snapshot

pytestmark = [pytest.mark.timeout(180)]

CONTAINERFILE = """\
FROM localhost/unionfs-test/base:1
RUN mkdir -p /data/d/e && echo one > /data/one && echo two > /data/d/two && echo gone > /data/gone \\
 && echo deep > /data/d/e/f
RUN rm /data/gone /bin/vi && rm -rf /data/d/e && echo changed > /data/one && mkdir /data/new && echo n > /data/new/n
"""
CHILD = """\
FROM localhost/t/shared
RUN rm /data/one && echo child > /data/child && rm -rf /data/new && mkdir /data/new && echo m > /data/new/m
"""


def _nfs_skip_reason() -> Optional[str]:
    fs = Path("/proc/filesystems").read_text().split()
    missing = [name for name in ("nfsd", "nfs4") if name not in fs]
    if not missing:
        return None
    modprobe = shutil.which("modprobe")
    if modprobe:
        for name, module in (("nfsd", "nfsd"), ("nfs4", "nfsv4")):
            if name in missing:
                subprocess.run([modprobe, module], capture_output=True, timeout=60)
        fs = Path("/proc/filesystems").read_text().split()
        missing = [name for name in ("nfsd", "nfs4") if name not in fs]
        if not missing:
            return None
    why = (
        f"the kernel ({os.uname().release}) has no NFS {'server' if 'nfsd' in missing else ''}"
        f"{' or ' if len(missing) == 2 else ''}{'client' if 'nfs4' in missing else ''}: "
        f"{', '.join(missing)} not in /proc/filesystems"
    )
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            config = f.read()
        if "CONFIG_MODULES=y" not in config:
            why += " and it was built without module support (CONFIG_MODULES unset)"
        for opt in ("CONFIG_NFSD", "CONFIG_NFS_FS"):
            if f"{opt}=" not in config:
                why += f"; {opt} is not set"
    except OSError:
        why += "; modprobe " + ("could not load nfsd/nfsv4" if modprobe else "is not installed")
    return why


class LoopbackNFS:
    """An `ro` loopback export of one directory, mounted at one mount point; undoes only its own steps."""

    def __init__(self, export: Path, mnt: Path, fsid: int):
        self.export, self.mnt, self.fsid = str(export), str(mnt), fsid
        self.undo = []  # (description, callable), run in reverse

    def _run(self, *argv, check=True):
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()}")
        return res

    def start(self) -> None:
        nfsd_fs = "/proc/fs/nfsd"
        if not any(m.mountpoint == nfsd_fs for m in mount_table()):
            self._run("mount", "-t", "nfsd", "nfsd", nfsd_fs)
            self.undo.append(("umount /proc/fs/nfsd", lambda: self._run("umount", nfsd_fs, check=False)))
        if not self._mountd_running():
            proc = subprocess.Popen(
                ["rpc.mountd", "--foreground", "--no-udp", "-N", "2", "-N", "3"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            self.undo.append(("stop our rpc.mountd", lambda: (proc.terminate(), proc.wait(10))))
        threads = Path(nfsd_fs, "threads").read_text().strip()
        if threads in ("", "0"):
            self._run("rpc.nfsd", "--no-udp", "-N", "2", "-N", "3", "-V", "4.2", "2")
            self.undo.append(("rpc.nfsd 0 (we started the threads)", lambda: self._run("rpc.nfsd", "0", check=False)))
        client = f"127.0.0.1:{self.export}"
        self._run("exportfs", "-o", f"ro,no_root_squash,insecure,no_subtree_check,fsid={self.fsid}", client)
        self.undo.append((f"exportfs -u {client}", lambda: self._run("exportfs", "-u", client, check=False)))
        deadline = time.monotonic() + 20
        while True:
            res = self._run(
                "mount", "-t", "nfs", "-o", "vers=4.2,ro,nolock,addr=127.0.0.1", client, self.mnt, check=False
            )
            if res.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"mount -t nfs {client} {self.mnt}: {res.stderr.strip()}")
            time.sleep(0.5)  # nfsd's grace period
        self.undo.append((f"umount {self.mnt}", lambda: self._run("umount", self.mnt, check=False)))

    @staticmethod
    def _mountd_running() -> bool:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "rpc.mountd":
                    return True
            except OSError:
                continue
        return False

    def stop(self) -> None:
        errors = []
        for what, fn in reversed(self.undo):
            try:
                fn()
            except Exception as exc:  # keep undoing the rest
                errors.append(f"{what}: {exc}")
        self.undo.clear()
        if errors:
            raise AssertionError("NFS teardown: " + "; ".join(errors))


def _local_layers(engine) -> list:
    path = engine.root / "overlay-layers" / "layers.json"
    return json.loads(path.read_text() or "[]") if path.exists() else []


def _snapshot(root: Path) -> dict:
    """Content, owners, modes, xattrs (tests.util.tree_snapshot) and mtime/ctime of every entry."""
    snap = tree_snapshot(root)
    times = {}
    for rel in snap:
        st = os.lstat(root / rel)
        times[rel] = (st.st_mtime_ns, st.st_ctime_ns)
    return {"tree": snap, "times": times}


def _diff(before: dict, after: dict) -> list:
    out = []
    for key in ("tree", "times"):
        b, a = before[key], after[key]
        for rel in sorted(set(b) | set(a)):
            if b.get(rel) != a.get(rel):
                out.append(f"{key} {rel}: {b.get(rel)} -> {a.get(rel)}")
    return out


@pytest.mark.parametrize("transport", ["nfs", "ro-bind"])
def test_additional_image_store_read_only(engines, tmp_path, transport):
    if transport == "nfs":
        reason = _nfs_skip_reason()
        if reason:
            pytest.skip(reason)
    # the image host: builds into its own storage, then stops touching it
    host = engines("pyunionfs")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    host.build(ctx, "localhost/t/shared")
    host.close()
    assert not mounts_under(host.base)
    store = host.root

    mnt = tmp_path / "store-mnt"
    mnt.mkdir()
    nfs = None
    try:
        if transport == "nfs":
            nfs = LoopbackNFS(store, mnt, fsid=0x1400 + os.getpid() % 1000)
            nfs.start()
        else:
            subprocess.run(["mount", "--bind", str(store), str(mnt)], check=True, timeout=30)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], check=True, timeout=30)
        before = _snapshot(store)
        with pytest.raises(OSError) as refused:
            (mnt / "probe").write_text("x")
        assert refused.value.errno == errno.EROFS

        e = engines(
            "pyunionfs",
            import_base=False,
            additional_stores=[str(mnt)],
            mount_options=[f"logfile={tmp_path}/pyunionfs.log"],
        )
        images = e.podman("images", "--format", "{{.Repository}}:{{.Tag}} {{.ReadOnly}}").stdout.split("\n")
        assert "localhost/t/shared:latest true" in images and "localhost/unionfs-test/base:1 true" in images, images
        assert _local_layers(e) == [], "the shared images' layers were copied into the local storage"

        script = (
            "cat /data/one /data/d/two; ls /data /data/d; ls /bin/vi 2>&1; rm /data/one && rm -rf /data/d "
            "&& mkdir /data/d && echo mine > /data/d/mine && echo x >> /data/new/n && ls -a /data /data/d "
            "&& cat /data/new/n"
        )
        out = e.podman("run", "--rm", "--pull=never", "--network=none", "localhost/t/shared", "sh", "-c", script).stdout
        assert out.startswith("changed\ntwo\n"), out
        assert "No such file" in out and ".wh." not in out and "gone" not in out, out
        assert out.endswith("n\nx\n") and "mine" in out, out

        # a container kept, its upper is local and the shared layers are its lowers
        e.podman(
            "run",
            "-d",
            "--pull=never",
            "--network=none",
            "--name",
            "keep",
            "localhost/t/shared",
            "sh",
            "-c",
            "echo local > /data/local; rm /data/new/n; sleep 60",
        )
        deadline = time.monotonic() + 30
        upper = e.podman("inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", "keep").stdout.strip()
        while not os.path.exists(os.path.join(upper, "data", "local")) and time.monotonic() < deadline:
            time.sleep(0.1)
        lowers = e.podman("inspect", "--format", "{{.GraphDriver.Data.LowerDir}}", "keep").stdout.strip()
        assert upper.startswith(str(e.root) + "/"), upper
        assert all(l.startswith(str(mnt) + "/") for l in lowers.split(":")), lowers
        assert open(os.path.join(upper, "data", "local")).read() == "local\n"
        assert os.path.lexists(os.path.join(upper, "data", "new", "n"))  # its whiteout
        diff = sorted(e.podman("diff", "keep").stdout.split("\n")[:-1])
        assert {"A /data/local", "D /data/new/n"} <= set(diff), diff
        e.podman("rm", "-f", "-t", "0", "keep")

        # a build FROM the shared image: new layers land in the local storage
        child = tmp_path / "child"
        child.mkdir()
        (child / "Containerfile").write_text(CHILD)
        e.build(child, "localhost/t/child")
        ls = e.podman(
            "run",
            "--rm",
            "--pull=never",
            "--network=none",
            "localhost/t/child",
            "sh",
            "-c",
            "ls -a /data /data/new; cat /data/child",
        ).stdout
        assert ls.split("\n") == [
            "/data:",
            ".",
            "..",
            "child",
            "d",
            "new",
            "",
            "/data/new:",
            ".",
            "..",
            "m",
            "child",
            "",
        ], ls
        e.close()
        assert not mounts_under(e.base)

        after = _snapshot(store)
        assert _diff(before, after) == [], "the shared store was written"
        log = tmp_path / "pyunionfs.log"
        text = log.read_text() if log.exists() else ""
        assert " ERROR " not in text and "Traceback" not in text, text[-4000:]
    finally:
        if nfs is not None:
            nfs.stop()
        elif any(
            m.mountpoint == str(mnt) for m in mounts_under(tmp_path, fstypes=("ext4", "xfs", "btrfs", "tmpfs"))
        ) or os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)
