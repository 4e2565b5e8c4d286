"""readdirplus entries without attributes (bare_entries.py): the probe finds pyfuse3's layout on the
installed build, and strip zeroes the node id alone."""

import ctypes
import stat
import struct

import pyfuse3

from unionfs.fuse import bare_entries


def test_the_installed_pyfuse3_has_the_layout():
    # Without it every listing refreshes the kernel's inodes and drops their cached ACLs: `ls -l`
    # then costs a request more per name. This test is the alarm.
    assert bare_entries.available, pyfuse3.__version__


def test_strip_zeroes_the_node_id_and_keeps_st_ino_and_mode():
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = 4242
    attr.generation = 7
    attr.st_mode = stat.S_IFREG | 0o644
    attr.st_size = 99
    bare_entries.strip(attr)
    assert attr.st_ino == 0  # the getter reads the node id
    assert (attr.generation, attr.st_mode, attr.st_size) == (7, stat.S_IFREG | 0o644, 99)
    raw = ctypes.string_at(id(attr), type(attr).__basicsize__)
    # struct stat's st_ino, which becomes the entry's d_ino, follows ino, generation and st_dev
    assert struct.unpack_from("=Q", raw, bare_entries._OFFSET + 24)[0] == 4242
