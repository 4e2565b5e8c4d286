"""Layers written by one implementation, read by the other: pyunionfs and kernel overlayfs, in both
xattr namespaces (trusted.overlay.* as root; user.overlay.* with `userxattr`, the unprivileged format)."""

import os
import shutil
import stat

import pytest

from tests.util import (
    DIR,
    FUSE_SKIP_REASON,
    kernel_overlay_skip_reason,
    mount_fuse_overlayfs,
    mount_kernel_overlay,
    mount_pyunionfs,
    tree_snapshot,
)

pytestmark = [
    pytest.mark.mount,
    pytest.mark.kernel,
    pytest.mark.timeout(120),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
]

SPEC = {
    "lower1": {"f1": "lower1 f1\n", "d/a": "a\n", "d/b": "b\n", "gone/x": "x\n", "keep/k": "k\n"},
    "lower0": {"f2": "lower0 f2\n", "d/c": "c\n", "e": DIR},
}


def change(mnt):
    """The same changes, whoever serves the mount: copy-up, whiteouts, an opaque dir, new entries."""
    with open(os.path.join(mnt, "f1"), "a") as f:
        f.write("appended\n")
    os.unlink(os.path.join(mnt, "f2"))
    os.unlink(os.path.join(mnt, "d/a"))
    os.unlink(os.path.join(mnt, "gone/x"))
    os.rmdir(os.path.join(mnt, "gone"))
    os.mkdir(os.path.join(mnt, "gone"))  # over a whiteout: opaque
    with open(os.path.join(mnt, "gone/new"), "w") as f:
        f.write("new\n")
    os.mkdir(os.path.join(mnt, "e/sub"))
    os.symlink("../f1", os.path.join(mnt, "e/sub/link"))


def view(mnt):
    snap = tree_snapshot(mnt, ignore_xattrs=("trusted.overlay.", "user.overlay."))
    return {path: (e.type, e.mode, e.size, e.sha256, e.target) for path, e in snap.items()}


@pytest.fixture
def skip_without_kernel():
    reason = kernel_overlay_skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("userxattr", [False, True], ids=["trusted", "userxattr"])
@pytest.mark.parametrize("writer", ["pyunionfs", "kernel"])
def test_upper_written_by_one_reads_the_same_in_the_other(layers, skip_without_kernel, writer, userxattr):
    L = layers(SPEC)
    kernel_opts = ["userxattr"] if userxattr else []
    ours_opts = ["userxattr"] if userxattr else []
    writer_mount = (
        mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, options=ours_opts)
        if writer == "pyunionfs"
        else mount_kernel_overlay(L.mnt, L.lowers, L.upper, L.work, options=kernel_opts)
    )
    with writer_mount:
        change(L.mnt)
        seen_by_writer = view(L.mnt)
    marker = "user.overlay.opaque" if userxattr else "trusted.overlay.opaque"
    assert os.getxattr(L.upper / "gone", marker) == b"y"
    assert "gone/x" not in seen_by_writer and "d/a" not in seen_by_writer
    reader_work = L.root / "work2"
    reader_work.mkdir()
    reader_mount = (
        mount_kernel_overlay(L.mnt, L.lowers, L.upper, reader_work, options=kernel_opts + ["ro"])
        if writer == "pyunionfs"
        else mount_pyunionfs(L.mnt, L.lowers, L.upper, reader_work, options=["ro"])
    )
    with reader_mount:
        assert view(L.mnt) == seen_by_writer


def move_directories(mnt):
    """Directory renames that need redirect_dir=on: a merged one in place, a lower one elsewhere,
    then its child out of it, and a file changed below a moved directory."""
    os.rename(os.path.join(mnt, "d"), os.path.join(mnt, "d2"))
    os.rename(os.path.join(mnt, "keep"), os.path.join(mnt, "e/keep2"))
    os.makedirs(os.path.join(mnt, "e/keep2/inner"))
    os.rename(os.path.join(mnt, "e"), os.path.join(mnt, "e3"))
    with open(os.path.join(mnt, "d2/b"), "a") as f:
        f.write("changed\n")
    os.rename(os.path.join(mnt, "d2"), os.path.join(mnt, "e3/keep2/inner/d4"))


@pytest.mark.parametrize("writer", ["pyunionfs", "kernel"])
def test_redirect_dir_uppers_read_the_same_in_the_other(layers, skip_without_kernel, writer):
    L = layers(SPEC)
    mount = mount_pyunionfs if writer == "pyunionfs" else mount_kernel_overlay
    with mount(L.mnt, L.lowers, L.upper, L.work, options=["redirect_dir=on"]):
        move_directories(L.mnt)
        seen_by_writer = view(L.mnt)
    assert "e3/keep2/inner/d4/c" in seen_by_writer and "keep/k" not in seen_by_writer
    assert os.getxattr(L.upper / "e3/keep2/inner/d4", "trusted.overlay.redirect") == b"/d"
    # Readers with the default redirect_dir=off follow the redirects (as the kernel does).
    for i, reader in enumerate((mount_kernel_overlay, mount_pyunionfs)):
        reader_work = L.root / f"work{i + 2}"
        reader_work.mkdir()
        with reader(L.mnt, L.lowers, L.upper, reader_work, options=["ro"]):
            assert view(L.mnt) == seen_by_writer, reader.__name__


def _docker_step(root, n, lowers, change):
    """One `docker build` step: a kernel overlay over the layers so far with a fresh upper (the new
    layer's diff directory), `change` run in it, unmounted. Returns the diff directory."""
    diff, work, mnt = root / f"layer{n}/diff", root / f"layer{n}/work", root / f"layer{n}/merged"
    for d in (diff, work, mnt):
        d.mkdir(parents=True)
    with mount_kernel_overlay(mnt, lowers, diff, work):
        change(str(mnt))
    return diff


def _write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def test_docker_overlay2_stack_written_by_the_kernel(tmp_path, skip_without_kernel):
    """A Docker overlay2 image: each layer's diff dir was the kernel's upper while a build step ran, and
    the container mounts them through the short `l/` symlinks. pyunionfs mounts that stack as the kernel
    does, and a container's changes on it land the same way."""
    base = tmp_path / "layer0/diff"
    for rel, text in {
        "etc/os-release": "ID=test\n",
        "etc/app/conf": "a=1\n",
        "usr/lib/x/mod.py": "x\n",
        "usr/lib/x/old.py": "old\n",
        "var/cache/c1": "c\n",
        "bin/tool": "#!/bin/sh\n",
    }.items():
        _write(base / rel, text, 0o755 if rel.startswith("bin") else 0o644)
    os.symlink("tool", base / "bin/alias")
    os.link(base / "bin/tool", base / "bin/tool-hl")
    os.setxattr(base / "etc/app/conf", "user.origin", b"base")

    def step1(m):  # apt-get-like: replace a tree, delete, modify, add
        shutil.rmtree(f"{m}/var/cache")
        os.mkdir(f"{m}/var/cache")  # opaque over the removed dir
        _write(f"{m}/var/cache/c2", "new cache\n")
        os.unlink(f"{m}/usr/lib/x/old.py")  # whiteout
        with open(f"{m}/etc/app/conf", "a") as f:  # copy-up keeps the xattr
            f.write("b=2\n")
        _write(f"{m}/usr/lib/x/new.py", "new\n")
        os.symlink("../lib/x", f"{m}/usr/lib/x-link")

    def step2(m):  # a later step undoes part of the first
        os.unlink(f"{m}/usr/lib/x-link")
        _write(f"{m}/usr/lib/x/old.py", "back\n")  # over a lower whiteout
        os.chmod(f"{m}/bin/tool", 0o700)
        os.rename(f"{m}/etc/os-release", f"{m}/etc/os-release.orig")

    layer1 = _docker_step(tmp_path, 1, [base], step1)
    layer2 = _docker_step(tmp_path, 2, [layer1, base], step2)
    short = tmp_path / "l"
    short.mkdir()
    lowers = []
    for name, diff in (("B2", layer2), ("B1", layer1), ("B0", base)):
        os.symlink(os.path.relpath(diff, short), short / name)
        lowers.append(short / name)

    def container(m):
        _write(f"{m}/etc/app/conf", "container\n")
        os.unlink(f"{m}/usr/lib/x/new.py")
        os.mkdir(f"{m}/run-data")

    results = {}
    for who, mount in (("kernel", mount_kernel_overlay), ("pyunionfs", mount_pyunionfs)):
        root = tmp_path / who
        upper, work, mnt = root / "diff", root / "work", root / "merged"
        for d in (upper, work, mnt):
            d.mkdir(parents=True)
        with mount(mnt, lowers, upper, work):
            before = view(mnt)
            container(str(mnt))
            after = tree_snapshot(mnt, ignore_xattrs=("trusted.overlay.", "user.overlay."))
        # Each one's own copy-up bookkeeping (origin records), in its own format.
        bookkeeping = (
            "trusted.overlay.origin",
            "trusted.overlay.impure",
            "trusted.overlay.uuid",
            "trusted.overlay.pyunionfs.origin",
        )
        results[who] = (before, after, tree_snapshot(upper, ignore_xattrs=bookkeeping))
    kernel, ours = results["kernel"], results["pyunionfs"]
    assert ours[0] == kernel[0]
    assert ours[1] == kernel[1]
    assert ours[2] == kernel[2]
    assert {"var/cache/c2", "usr/lib/x/old.py", "etc/os-release.orig"} <= set(ours[0])
    assert not {"var/cache/c1", "usr/lib/x-link", "etc/os-release"} & set(ours[0])
    assert ours[1]["etc/app/conf"].xattrs == (("user.origin", b"base"),)


def _records_changes(mnt):
    """What a container does on a rootless mount: owners and modes the daemon cannot give for real."""
    with open(os.path.join(mnt, "etc-conf"), "w") as f:
        f.write("c\n")
    os.chown(os.path.join(mnt, "etc-conf"), 1234, 5678)
    os.chmod(os.path.join(mnt, "etc-conf"), 0o640)
    os.mkdir(os.path.join(mnt, "svc"), 0o750)
    os.chown(os.path.join(mnt, "svc"), 33, 33)
    os.chown(os.path.join(mnt, "f1"), 7, 8)  # a lower file: copied up, then recorded
    os.chmod(os.path.join(mnt, "d/b"), 0o600)


def _owners(mnt):
    out = {}
    for rel in ("etc-conf", "svc", "f1", "d/b", "d", "."):
        st = os.lstat(os.path.join(mnt, rel))
        out[rel] = (st.st_uid, st.st_gid, oct(st.st_mode))
    return out


@pytest.mark.skipif(shutil.which("fuse-overlayfs") is None, reason="fuse-overlayfs is not installed")
@pytest.mark.parametrize("writer", ["fuse-overlayfs", "pyunionfs"])
def test_ownership_records_move_between_fuse_overlayfs_and_pyunionfs(layers, writer):
    """xattr_permissions=2: owners and modes live in override_stat records, the backing files keep the
    daemon's. fuse-overlayfs makes the upper first (it marks the upper's root with the record name it
    uses: user.fuseoverlayfs.override_stat up to 1.13, user.containers.override_stat after), then the
    writer changes owners and modes and the other daemon must show the same."""
    L = layers(SPEC)
    opts = ["xattr_permissions=2"]
    with mount_fuse_overlayfs(L.mnt, L.lowers, L.upper, L.work, options=opts):
        pass
    marks = [n for n in os.listxattr(L.upper) if n.endswith(".override_stat")]
    assert len(marks) == 1, marks
    peer = mount_fuse_overlayfs if writer == "fuse-overlayfs" else mount_pyunionfs
    with peer(L.mnt, L.lowers, L.upper, L.work, options=opts):
        _records_changes(L.mnt)
        written = _owners(L.mnt)
    if writer == "pyunionfs":
        assert written["etc-conf"] == (1234, 5678, oct(stat.S_IFREG | 0o640))
        assert written["svc"][:2] == (33, 33) and written["f1"][:2] == (7, 8)
        assert os.getxattr(L.upper / "etc-conf", marks[0]) == b"1234:5678:640"
    # the backing files keep the daemon's owner; the records say the rest
    assert os.stat(L.upper / "etc-conf").st_uid == os.geteuid()
    assert marks[0] in os.listxattr(L.upper / "etc-conf")
    reader = mount_pyunionfs if writer == "fuse-overlayfs" else mount_fuse_overlayfs
    work2 = L.root / "work2"
    work2.mkdir()
    with reader(L.mnt, L.lowers, L.upper, work2, options=opts):
        read = _owners(L.mnt)
        if reader is mount_pyunionfs:
            assert marks[0] not in os.listxattr(os.path.join(L.mnt, "etc-conf"))
    assert read == written, (read, written)
