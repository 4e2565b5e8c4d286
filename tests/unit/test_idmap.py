"""uidmapping/gidmapping and squash options (fuse-overlayfs's semantics), without mounting."""

import pytest

from unionfs.engine.idmap import OVERFLOW_ID, IdMap
from unionfs.options import OptionError, build, parse_o


def test_mapping_both_ways_as_fuse_overlayfs_man_page():
    m = IdMap.parse("0:1000:1:1:110000:65536", "uidmapping")
    assert [m.shown(0), m.shown(1), m.shown(65536), m.shown(70000)] == [1000, 110000, 175535, OVERFLOW_ID]
    assert [m.stored(1000), m.stored(110001), m.stored(0)] == [0, 2, OVERFLOW_ID]
    assert IdMap.parse("0:1000:1,1:110000:65536", "x").ranges == m.ranges


def test_options_and_precedence():
    opts = build(parse_o(["lowerdir=/l,uidmapping=0:1000:10,gidmapping=0:2000:10,squash_to_root"]))
    assert opts.uid_map.shown(5) == 0 and opts.gid_map.shown(5) == 0  # squash wins when showing
    assert opts.uid_map.stored(1005) == 5  # but not when storing
    opts = build(parse_o(["lowerdir=/l,squash_to_root,squash_to_uid=42"]))
    assert (opts.uid_map.shown(7), opts.gid_map.shown(7)) == (42, 0)
    assert build(parse_o(["lowerdir=/l"])).uid_map.identity


@pytest.mark.parametrize(
    "bad", ["uidmapping=0:1", "uidmapping=a:b:c", "gidmapping=0:10:0", "squash_to_uid=x", "uidmapping"]
)
def test_bad_mappings_refused(bad):
    with pytest.raises(OptionError):
        build(parse_o(["lowerdir=/l," + bad]))
