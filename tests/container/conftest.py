"""Fixtures for the container-engine tests: a busybox root filesystem and private engines."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.container.engines import Engine, skip_reason
from tests.util import mounts_under


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/container/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.container)


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory) -> Path:
    """A small root filesystem: Debian's busybox-static with its applet links (no registry needed)."""
    if os.geteuid() != 0:
        pytest.skip("the container tests run as root (the rootless ones drop to a test user themselves)")
    base = tmp_path_factory.mktemp("rootfs")
    deb = os.environ.get("BUSYBOX_DEB")
    if not deb:
        res = subprocess.run(
            ["apt-get", "download", "busybox-static"], cwd=base, capture_output=True, text=True, timeout=120
        )
        debs = sorted(base.glob("busybox-static*.deb"))
        if res.returncode != 0 or not debs:
            pytest.skip(f"cannot download busybox-static: {res.stderr.strip()[-200:]}")
        deb = str(debs[0])
    root = base / "rootfs"
    subprocess.run(["dpkg-deb", "-x", deb, str(root)], check=True, timeout=60)
    for d in ("usr/bin", "usr/sbin", "sbin", "etc", "tmp", "root", "var/tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    subprocess.run(["chroot", str(root), "/bin/busybox", "--install", "-s"], check=True, timeout=60)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    os.chmod(root / "tmp", 0o1777)
    return root


class EngineFactory:
    """engines(kind, **kw) -> an Engine with the base image imported; `close()` closes every one."""

    def __init__(self, rootfs: Path):
        self.rootfs, self.made = rootfs, []

    def __call__(self, kind: str, mount_program=None, import_base=True, **kw) -> Engine:
        from tests.container.engines import MOUNT_PROGRAMS

        reason = skip_reason()
        if reason:
            pytest.skip(reason)
        if kind == "fuse-overlayfs" and shutil.which("fuse-overlayfs") is None:
            pytest.skip("fuse-overlayfs is not installed")
        program = MOUNT_PROGRAMS[kind] if mount_program is None else mount_program
        # A short path: conmon's sockets and exit files live under it, and below pytest's deep temp
        # dirs (past the 108 bytes of a socket address) `podman run` waits 20 s for the exit file.
        e = Engine(Path(tempfile.mkdtemp(prefix=f"ufs-{kind[:4]}-", dir="/tmp")), program, **kw)
        self.made.append(e)
        if import_base:
            e.import_rootfs(self.rootfs)
        return e

    def close(self):
        for e in self.made:
            try:
                e.close()
            finally:
                if not mounts_under(e.base, fstypes=("fuse", "overlay", "tmpfs", "nfs", "nfs4")):
                    shutil.rmtree(e.base, ignore_errors=True)


@pytest.fixture
def engines(rootfs):
    factory = EngineFactory(rootfs)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def module_engines(rootfs):
    """As `engines`, for images that several tests of a module read."""
    factory = EngineFactory(rootfs)
    try:
        yield factory
    finally:
        factory.close()
