"""index=on through a real mount: names of one lower file stay one file across copy-up (what tar, rsync
and backup tools see: one st_ino, one link count, one content), and st_ino survives a remount."""

import os

import pytest

from tests.util import FUSE_SKIP_REASON, mount_pyunionfs

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(120),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
]


def test_hard_links_whole_and_st_ino_stable(layers):
    L = layers({"lower0": {"pkg/bin/tool": "v1\n", "single": "s\n"}})
    os.link(L.lowers[0] / "pkg/bin/tool", L.lowers[0] / "pkg/bin/tool-alias")
    lower_ino = os.stat(L.lowers[0] / "pkg/bin/tool").st_ino
    single_ino = os.stat(L.lowers[0] / "single").st_ino
    mnt = str(L.mnt)
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, options=["index=on"]):
        with open(os.path.join(mnt, "pkg/bin/tool"), "a") as f:
            f.write("v2\n")
        with open(os.path.join(mnt, "single"), "a") as f:
            f.write("changed\n")
        a, b = os.stat(os.path.join(mnt, "pkg/bin/tool")), os.stat(os.path.join(mnt, "pkg/bin/tool-alias"))
        assert (a.st_ino, a.st_nlink, b.st_nlink) == (b.st_ino, 2, 2)
        assert open(os.path.join(mnt, "pkg/bin/tool-alias")).read() == "v1\nv2\n"
        assert a.st_ino == lower_ino and os.stat(os.path.join(mnt, "single")).st_ino == single_ino
    assert open(L.lowers[0] / "pkg/bin/tool").read() == "v1\n"
    work2 = L.root / "work-again"
    os.rename(L.work, work2)  # the index lives in the work dir and goes with it
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, work2, options=["index=on"]):
        a, b = os.stat(os.path.join(mnt, "pkg/bin/tool")), os.stat(os.path.join(mnt, "pkg/bin/tool-alias"))
        assert a.st_ino == b.st_ino == lower_ino and a.st_nlink == 2
        assert open(os.path.join(mnt, "pkg/bin/tool-alias")).read() == "v1\nv2\n"
        assert os.stat(os.path.join(mnt, "single")).st_ino == single_ino
        os.unlink(os.path.join(mnt, "pkg/bin/tool"))
        assert os.stat(os.path.join(mnt, "pkg/bin/tool-alias")).st_nlink == 1
