"""`.wh.` markers (OCI layers, containers-storage's layers for mount programs) are read by default, as
fuse-overlayfs reads them; `-o whiteout_files=off` is the kernel-exact mode that shows them as names."""

import errno
import os

import pytest

from tests.util import FUSE_SKIP_REASON, hash_tree, mount_pyunionfs

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(90),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
]


@pytest.fixture
def L(layers):
    return layers(
        {
            "lower1": {"gone": "g\n", "keep": "k\n", "op/hidden": "h\n", "d/inner": "i\n"},
            "lower0": {".wh.gone": "", "op/.wh..wh..opq": "", "op/shown": "s\n", "d/.wh.inner": "", "d/mine": "m\n"},
        }
    )


@pytest.mark.parametrize("options", [(), ("whiteout_files",)], ids=["default", "whiteout_files"])
def test_oci_markers_in_lowers(L, options):
    before = [hash_tree(p) for p in L.lowers]
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, options=options):
        assert sorted(os.listdir(L.mnt)) == ["d", "keep", "op"]
        assert os.listdir(L.mnt / "op") == ["shown"]
        assert os.listdir(L.mnt / "d") == ["mine"]
        assert not os.path.lexists(L.mnt / ".wh.gone")
        with pytest.raises(OSError) as exc:
            (L.mnt / ".wh.keep").write_bytes(b"forged")
        assert exc.value.errno == errno.EINVAL
        os.unlink(L.mnt / "keep")  # kernel-format whiteout in the upper (mknod works here)
        (L.mnt / "gone").write_bytes(b"back\n")
        assert sorted(os.listdir(L.mnt)) == ["d", "gone", "op"]
    st = os.lstat(L.upper / "keep")
    assert (st.st_mode & 0o170000, st.st_rdev) == (0o020000, 0)
    assert [hash_tree(p) for p in L.lowers] == before


def test_kernel_exact_mode_shows_markers_as_plain_files(L):
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, options=["whiteout_files=off"]):
        assert sorted(os.listdir(L.mnt)) == [".wh.gone", "d", "gone", "keep", "op"]
        assert sorted(os.listdir(L.mnt / "op")) == [".wh..wh..opq", "hidden", "shown"]
        (L.mnt / ".wh.new").write_bytes(b"plain\n")  # an ordinary name, as on the kernel
    assert (L.upper / ".wh.new").read_bytes() == b"plain\n"


def test_wh_names_cannot_be_made_by_default(L):
    """As fuse-overlayfs: every way of making a `.wh.` name answers EINVAL and writes nothing."""
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work):
        makers = {
            "create": lambda p: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)),
            "mkdir": lambda p: os.mkdir(p),
            "symlink": lambda p: os.symlink("keep", p),
            "mkfifo": lambda p: os.mkfifo(p),
            "link": lambda p: os.link(L.mnt / "keep", p),
            "rename": lambda p: os.rename(L.mnt / "keep", p),
        }
        for what, make in makers.items():
            with pytest.raises(OSError) as exc:
                make(str(L.mnt / ".wh.made"))
            assert exc.value.errno == errno.EINVAL, what
        assert sorted(os.listdir(L.mnt)) == ["d", "keep", "op"]
    assert os.listdir(L.upper) == []
