"""Rootless podman with pyunionfs as the mount program, as a real user runs it, next to fuse-overlayfs.

A throwaway user (useradd --system, removed afterwards) with 65536 subordinate uids and gids runs
podman; podman makes its own user namespace through newuidmap/newgidmap (container root is the user,
container ids 1..65536 are the subordinate range) and runs the mount program inside it, so pyunionfs
writes the kernel's unprivileged format there: char 0/0 whiteouts and `user.overlay.opaque`.
The storage is a directory the user owns; see tests/container/rootless.py for the private mount
namespace that lends the user a 0666 /dev/fuse and a way to the venv's interpreter below /root.

The same steps run on fuse-overlayfs (rootless too): import the busybox root filesystem, a build whose
steps delete, replace and re-create files and directories of lower layers (and chown to ids of the
subordinate range), a container that changes the image, `podman diff`, commit. Images are compared as
merged trees (`podman image mount` inside `podman unshare`) and the container's upper directory is read
on the host.
"""

from __future__ import annotations

import os
import stat
import time

import pytest

from tests.container import rootless
from tests.container.engines import MOUNT_PROGRAMS, Engine

pytestmark = [pytest.mark.timeout(240)]

KINDS = ("pyunionfs", "fuse-overlayfs")

CONTAINERFILE = """\
FROM localhost/unionfs-test/base:1
RUN mkdir -p /data/sub/deep /data/gone_dir /data/todir && echo one > /data/keep && echo two > /data/gone \\
 && echo three > /data/sub/deep/f && echo four > /data/gone_dir/x && ln -s keep /data/link \\
 && echo five > /data/tofile && echo o > /data/owned && chown 1000:1001 /data/owned && chmod 640 /data/keep
RUN rm /data/gone /bin/vi && rm -rf /data/gone_dir /data/sub /usr/share/doc && echo changed > /data/keep \\
 && rm /data/tofile && mkdir /data/tofile && rmdir /data/todir && echo file > /data/todir \\
 && mv /bin/cat /bin/cat2 && ln -sf gone /data/link && chown 2000:3000 /data/keep && touch /data/.hidden
RUN mkdir -p /data/sub && echo again > /data/sub/new && echo back > /data/gone && echo in > /data/tofile/in \\
 && mkdir /usr/share/doc && echo doc > /usr/share/doc/new
"""

EXPECTED_DATA = sorted(
    [
        "/data",
        "/data/.hidden",
        "/data/gone",
        "/data/keep",
        "/data/link",
        "/data/owned",
        "/data/sub",
        "/data/sub/new",
        "/data/todir",
        "/data/tofile",
        "/data/tofile/in",
        "/usr/share/doc",
        "/usr/share/doc/new",
    ]
)

# The test container's name: not hexadecimal, so no image ID can start with it (`podman diff c1`
# sometimes diffed an image whose ID began with "c1").
CTR = "ctr1"
CONTAINER_CHANGES = (
    "rm /data/keep /bin/ls && rm -rf /data/sub && echo c > /data/gone && mkdir /data/sub "
    "&& echo s > /data/sub/only && mkdir -p /data/newdir && echo n > /data/newdir/n "
    "&& chown 5:6 /data/newdir/n && chmod 700 /data/tofile"
)
# `podman diff` with a mount program compares the container's mount with its image's; /etc is podman's.
EXPECTED_DIFF = sorted(
    [
        "C /bin",
        "D /bin/ls",
        "C /data",
        "D /data/keep",
        "C /data/gone",
        "C /data/sub",
        "D /data/sub/new",
        "A /data/sub/only",
        "A /data/newdir",
        "A /data/newdir/n",
        "C /data/tofile",
        "C /etc",
    ]
)
# fuse-overlayfs 1.10 right after mounting still finds a lower name in a directory made opaque (its
# lookup misses the marker), so both mounts show /data/sub/new and its diff and commit keep it.
FUSE_OVERLAYFS_MISSES = {"D /data/sub/new"}


def _wh_names(tree: dict) -> list:
    return [p for p in tree if p.split("/")[-1].startswith(".wh.")]


def _data_paths(tree: dict) -> list:
    return sorted(
        "/" + p
        for p in tree
        if p in ("data", "usr/share/doc") or p.startswith("data/") or p.startswith("usr/share/doc/")
    )


@pytest.fixture(scope="module")
def setup(rootfs):
    reason = rootless.skip_reason()
    if reason:
        pytest.skip(reason)
    with rootless.rootless_user() as user, rootless.reachable_workspace("i4-rootless-podman-") as w:
        made = []
        try:
            ctx = w / "ctx"
            ctx.mkdir()
            (ctx / "Containerfile").write_text(CONTAINERFILE)
            out = {}
            for kind in KINDS:
                opts = [f"logfile={w}/{kind}/pyunionfs.log"] if kind == "pyunionfs" else []
                e = Engine(
                    w / kind,
                    MOUNT_PROGRAMS[kind],
                    rootless=True,
                    mount_options=opts,
                    run_as=rootless.run_as_prefix(user),
                )
                made.append(e)
                rootless.adapt_engine(e, user)
                probe = e.podman("unshare", "cat", "/proc/self/uid_map", check=False)
                if probe.returncode != 0:
                    pytest.skip(f"rootless podman cannot make its user namespace: {probe.stderr.strip()[-300:]}")
                e.import_rootfs(rootfs)
                t0 = time.monotonic()
                e.build(ctx, "localhost/t/built")
                print(f"rootless build on {kind}: {time.monotonic() - t0:.1f}s")
                out[kind] = e
            yield user, out
            log = w / "pyunionfs" / "pyunionfs.log"
            text = log.read_text() if log.exists() else ""
            assert " ERROR " not in text and "Traceback" not in text, text[-4000:]
        finally:
            for e in made:
                e.close()


def test_rootless_build_matches_fuse_overlayfs(setup):
    user, built = setup
    info = built["pyunionfs"].podman("info", "--format", "{{.Host.Security.Rootless}} {{.Store.GraphRoot}}").stdout
    assert info.split() == ["true", str(built["pyunionfs"].root)]
    trees = {kind: rootless.image_tree(e, "localhost/t/built") for kind, e in built.items()}
    for kind, tree in trees.items():
        assert _wh_names(tree) == [], f"{kind}: .wh. names show in the image"
        assert _data_paths(tree) == EXPECTED_DATA, kind
        assert "bin/vi" not in tree and "bin/cat" not in tree and tree["bin/cat2"][0] == "l", kind
        assert tree["data/link"][4] == "gone" and tree["data/gone"][0] == "f", kind
    ours = trees["pyunionfs"]
    # ids inside the user namespace: what the build chowned to, in the subordinate range on the host
    assert ours["data/keep"][1:4] == (0o640, 2000, 3000)
    assert ours["data/owned"][2:4] == (1000, 1001)
    assert ours["bin/busybox"][2:4] == (0, 0)
    assert ours == trees["fuse-overlayfs"]


def _upper_entries(upper: str) -> dict:
    """{relative path: (type, rdev, uid, gid, sorted xattr names)} of an upper directory on the host."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            xattrs = sorted(os.listxattr(p, follow_symlinks=False)) if not stat.S_ISLNK(st.st_mode) else []
            kind = (
                "c"
                if stat.S_ISCHR(st.st_mode)
                else "d"
                if stat.S_ISDIR(st.st_mode)
                else "l"
                if stat.S_ISLNK(st.st_mode)
                else "f"
            )
            out[os.path.relpath(p, upper)] = (
                kind,
                (os.major(st.st_rdev), os.minor(st.st_rdev)),
                st.st_uid,
                st.st_gid,
                xattrs,
            )
    return out


def test_rootless_run_diff_commit(setup):
    user, built = setup
    diffs, trees, uppers, outs = {}, {}, {}, {}
    for kind, e in built.items():
        outs[kind] = rootless.run_detached(
            e,
            CTR,
            "localhost/t/built",
            "sh",
            "-c",
            CONTAINER_CHANGES + " && ls -a /data /data/sub /data/newdir && cat /data/gone",
        )
        diffs[kind] = sorted(e.podman("container", "diff", CTR).stdout.split("\n")[:-1])
        uppers[kind] = _upper_entries(
            e.podman("container", "inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", CTR).stdout.strip()
        )
        e.podman("commit", "-q", CTR, "localhost/t/committed")
        trees[kind] = rootless.image_tree(e, "localhost/t/committed")
        e.podman("rm", CTR)
    assert ".wh." not in outs["pyunionfs"] and outs["pyunionfs"].endswith("c\n")
    assert "only" in outs["pyunionfs"] and "new" not in outs["pyunionfs"].split("/data/sub:")[1]
    assert diffs["pyunionfs"] == EXPECTED_DIFF
    assert set(EXPECTED_DIFF) - set(diffs["fuse-overlayfs"]) <= FUSE_OVERLAYFS_MISSES

    # What pyunionfs wrote in the container's upper, seen from the host: char 0/0 whiteouts and
    # user.overlay.opaque (the unprivileged format), owners mapped through the namespace.
    up = uppers["pyunionfs"]
    sub = user.sub_start
    for gone in ("data/keep", "bin/ls"):
        assert up[gone][:4] == ("c", (0, 0), user.uid, user.gid), (gone, up[gone])
    assert up["data/sub"][0] == "d" and "user.overlay.opaque" in up["data/sub"][4], up["data/sub"]
    assert up["data/sub/only"][:4] == ("f", (0, 0), user.uid, user.gid)
    assert up["data/newdir/n"][2:4] == (sub + 4, sub + 5)  # container 5:6 -> subordinate ids 1 less
    assert not [p for p in up if os.path.basename(p).startswith(".wh.")], up
    assert not [p for p, v in up.items() if any(x.startswith("trusted.") for x in v[4])], up
    assert "data/sub/new" not in up

    theirs = uppers["fuse-overlayfs"]
    print("container upper, pyunionfs vs fuse-overlayfs where they differ:")
    for rel in sorted(set(up) | set(theirs)):
        if up.get(rel) != theirs.get(rel):
            print(f"  {rel}: {up.get(rel)} | {theirs.get(rel)}")

    ours = trees["pyunionfs"]
    assert _wh_names(ours) == []
    assert "data/keep" not in ours and "bin/ls" not in ours and "data/sub/new" not in ours
    assert ours["data/sub/only"][0] == "f" and ours["data/tofile"][1] == 0o700
    assert ours["data/newdir/n"][2:4] == (5, 6)
    # fuse-overlayfs's commit keeps /data/sub/new (its miss above)
    differ = {"data/sub/new"}
    assert {k: v for k, v in trees["fuse-overlayfs"].items() if k not in differ} == ours
    # the committed image runs: the deletions stay deleted, no whiteout names show
    e = built["pyunionfs"]
    seen = rootless.run_detached(
        e,
        "c2",
        "localhost/t/committed",
        "sh",
        "-c",
        "ls -a /data /data/sub /bin | grep -c '^\\.wh\\.'; "
        "ls /data/keep /data/sub/new /bin/ls 2>&1; cat /data/sub/only /data/gone",
    )
    e.podman("rm", "c2")
    lines = seen.split("\n")
    assert lines[0] == "0", seen
    assert seen.count("No such file") == 3 and seen.endswith("s\nc\n"), seen
