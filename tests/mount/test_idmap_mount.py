"""Ownership options through a real mount: what users see and what lands in the upper."""

import os

import pytest

from tests.util import FUSE_SKIP_REASON, File, mount_pyunionfs

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(90),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
]


@pytest.fixture
def L(layers):
    return layers(
        {
            "lower0": {
                "root_file": File("r\n", uid=0, gid=0),
                "one_file": File("1\n", uid=1, gid=1),
                "far_file": File("f\n", uid=99999, gid=99999),
            }
        }
    )


def owners(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def test_uidmapping_shows_and_stores_mapped_ids(L):
    m = "0:1000:1:1:110000:65536"
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, options=[f"uidmapping={m}", f"gidmapping={m}"]):
        assert owners(L.mnt / "root_file") == (1000, 1000)
        assert owners(L.mnt / "one_file") == (110000, 110000)
        assert owners(L.mnt / "far_file") == (65534, 65534)  # outside every range: the overflow id
        os.chown(L.mnt / "root_file", 110005, 1000)  # a container's uid 5 chowns...
        assert owners(L.mnt / "root_file") == (110005, 1000)
        (L.mnt / "new").write_bytes(b"n\n")  # root (0) is unmapped here:
        assert owners(L.mnt / "new") == (110000 + 65533,) * 2  # stored as 65534, shown through the map
    assert owners(L.upper / "root_file") == (6, 0)  # ...and the layer stores host uid 6
    assert owners(L.upper / "new") == (65534, 65534)
    assert owners(L.lowers[0] / "root_file") == (0, 0)


def test_squash_options_show_one_owner(L):
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, options=["squash_to_root"]):
        assert {owners(L.mnt / n) for n in os.listdir(L.mnt)} == {(0, 0)}
    with mount_pyunionfs(L.mnt, L.lowers, L.upper, L.work, options=["squash_to_uid=4242", "squash_to_gid=77"]):
        assert {owners(L.mnt / n) for n in os.listdir(L.mnt)} == {(4242, 77)}
        (L.mnt / "made").write_bytes(b"m\n")
    assert owners(L.upper / "made") == (0, 0)  # stored as the caller (root): squash only shows
