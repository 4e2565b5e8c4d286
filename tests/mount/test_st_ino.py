"""st_ino as the kernel overlay shows it, with every layer on one filesystem (the kernel's samefs case,
default module parameters: xino and index off), compared with a kernel mount of the same lowers.

Each side has its own upper, so numbers are compared by what they name: "lower:PATH" for a lower
file's inode number, "upper:PATH" for the side's own upper file's. The kernel shows a lower file's
number, keeps it when the file is copied up (it records the origin) and after a remount, except for a
lower file with several names, whose copy shows the upper file's number (its names split).
"""

import os

import pytest

from tests.util import FUSE_SKIP_REASON, kernel_overlay_skip_reason, mount_kernel_overlay, mount_pyunionfs
from unionfs.options import default_backend

pytestmark = [
    pytest.mark.mount,
    pytest.mark.kernel,
    pytest.mark.timeout(120),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
]

NAMES = (".", "f", "kept", "s", "p", "h1", "h2", "d", "d/x", "md", "md/y", "up", "new", "newdir")


@pytest.fixture
def lower(tmp_path):
    reason = kernel_overlay_skip_reason()
    if reason:
        pytest.skip(reason)
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    (lower / "md").mkdir()
    (lower / "md/y").write_text("y\n")
    for name in ("f", "kept", "h1", "k1", "d/x"):
        (lower / name).write_text(name + "\n")
    os.link(lower / "h1", lower / "h2")
    os.link(lower / "k1", lower / "k2")
    os.symlink("f", lower / "s")
    os.mkfifo(lower / "p")
    return lower


def change(mnt):
    """Copy up a file, a symlink, a fifo, one name of a hard link and a file in a directory; make one."""
    for name in ("f", "h1", "d/x"):
        with open(os.path.join(mnt, name), "a") as f:
            f.write("changed\n")
    os.chown(os.path.join(mnt, "s"), 5, 5, follow_symlinks=False)
    os.chown(os.path.join(mnt, "p"), 5, 5)
    with open(os.path.join(mnt, "new"), "w") as f:
        f.write("new\n")
    os.mkdir(os.path.join(mnt, "newdir"))


def labels(*roots):
    """st_ino -> "KIND:PATH" of every entry under the (kind, root) pairs (a file with several names:
    the first name in sorted order)."""
    out = {}
    for kind, root in roots:
        out.setdefault(os.lstat(root).st_ino, "%s:." % kind)
        for dirpath, dirs, files in os.walk(root):
            for name in sorted(dirs + files):
                p = os.path.join(dirpath, name)
                out.setdefault(os.lstat(p).st_ino, "%s:%s" % (kind, os.path.relpath(p, root)))
    return out


def shown(mnt, lower, upper):
    named = labels(("lower", lower), ("upper", upper))
    out = {}
    for name in NAMES:
        try:
            ino = os.lstat(os.path.join(mnt, name)).st_ino
        except FileNotFoundError:
            continue
        out[name] = named.get(ino, "other %d" % ino)
    return out


def run_side(tmp_path, who, mount, lower, options=()):
    root = tmp_path / who
    upper, work, mnt = root / "upper", root / "work", root / "mnt"
    for d in (upper, work, mnt):
        d.mkdir(parents=True)
    (upper / "md").mkdir()  # a directory merged from the start (the upper's has no origin)
    (upper / "up").mkdir()  # an upper-only one
    phases = []
    with mount(mnt, [lower], upper, work, options=list(options)):
        phases.append(shown(mnt, lower, upper))
        change(mnt)
        phases.append(shown(mnt, lower, upper))
    with mount(mnt, [lower], upper, work, options=list(options)):
        phases.append(shown(mnt, lower, upper))
    return phases


def test_st_ino_across_copy_up_and_remount_as_the_kernel(tmp_path, lower):
    kernel = run_side(tmp_path, "kernel", mount_kernel_overlay, lower)
    ours = run_side(tmp_path, "pyunionfs", mount_pyunionfs, lower)
    # what the kernel shows, spelled out
    before = {name: "lower:" + name for name in NAMES if name not in (".", "new", "newdir", "up")}
    assert kernel[0] == before | {".": "upper:.", "h2": "lower:h1", "up": "upper:up"}
    after = dict(kernel[0], h1="upper:h1", new="upper:new", newdir="upper:newdir")
    assert kernel[1] == after and kernel[2] == after
    if default_backend() != "native":
        # Known difference (pyfuse3: the node id is st_ino, and FUSE's root is node 1)
        assert all(phase["."] == "other 1" for phase in ours)
        for phase in ours:
            phase["."] = "upper:."
    assert ours[0] == kernel[0], "before any change"
    assert ours[2] == kernel[2], "after a remount"
    if default_backend() == "native":
        assert ours[1] == kernel[1], "after copy-up, in the same mount"
    else:
        # Known difference (pyfuse3: the node id is st_ino, so a node keeps its number while the kernel
        # holds it): the copied-up name of a hard link keeps the lower's number until forgotten, and the
        # other name, a node of its own now, gets a fresh one.
        assert ours[1] == dict(kernel[1], h1="lower:h1", h2=ours[1]["h2"]), "after copy-up, in the same mount"
        assert ours[1]["h2"].startswith("other ")


def hard_link_story(mnt):
    """What a process sees of hard links: made through the mount (one inode: a change through one name
    shows through the other at once), and names of a lower file (split by the first change)."""
    p = lambda name: os.path.join(mnt, name)  # noqa: E731
    seen = []

    def look(*names):
        sts = [os.lstat(p(n)) for n in names]
        seen.append([(oct(st.st_mode), st.st_nlink, st.st_size) for st in sts] + [len({st.st_ino for st in sts})])

    look("h1", "h2")
    os.link(p("f"), p("g"))
    look("f", "g")
    os.chmod(p("f"), 0o600)
    with open(p("g"), "a") as f:
        f.write("more\n")
    look("f", "g")
    os.chmod(p("h1"), 0o600)
    look("h1", "h2")
    os.rename(p("h2"), p("h1"))  # names of a lower file split before: h2 is copied up and moves
    seen.append(sorted(os.listdir(mnt)))
    look("h1")
    os.rename(p("k2"), p("k1"))  # two names of one lower file: the kernel copies k2 up and moves it
    seen.append(sorted(os.listdir(mnt)))
    look("k1")
    return seen


def test_hard_links_as_the_kernel(tmp_path, lower):
    results = {}
    for who, mount in (("kernel", mount_kernel_overlay), ("pyunionfs", mount_pyunionfs)):
        root = tmp_path / who
        upper, work, mnt = root / "upper", root / "work", root / "mnt"
        for d in (upper, work, mnt):
            d.mkdir(parents=True)
        with mount(mnt, [lower], upper, work):
            results[who] = hard_link_story(str(mnt))
    kernel, ours = results["kernel"], results["pyunionfs"]
    assert kernel[2] == [("0o100600", 2, 7), ("0o100600", 2, 7), 1]  # one inode
    assert kernel[3] == [("0o100600", 1, 3), ("0o100644", 2, 3), 2]  # split
    if default_backend() == "native":
        assert ours == kernel
    else:
        # pyfuse3: a rename between two names of one lower file never reaches the daemon
        assert ours[:6] == kernel[:6] and "k2" in ours[6] and "k2" not in kernel[6]


def test_root_st_ino_of_a_union_without_an_upper_as_the_kernel(tmp_path, lower):
    """Without an upper the root shows the top lower's root number, as the kernel's overlay."""
    top = tmp_path / "top"
    top.mkdir()
    (top / "t").write_text("t\n")
    seen = {}
    for who, mount in (("kernel", mount_kernel_overlay), ("pyunionfs", mount_pyunionfs)):
        mnt = tmp_path / who / "mnt"
        mnt.mkdir(parents=True)
        with mount(mnt, [top, lower]):
            seen[who] = os.lstat(mnt).st_ino
    assert seen["kernel"] == os.lstat(top).st_ino
    if default_backend() == "native":
        assert seen["pyunionfs"] == seen["kernel"]
    else:
        assert seen["pyunionfs"] == 1  # pyfuse3: the node id is st_ino, and FUSE's root is node 1
