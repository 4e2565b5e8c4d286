"""The pyfuse3 backend only translates: records into pyfuse3's types, OSError into FUSEError."""

import errno
import logging
import os
import stat

import pyfuse3
import pytest
import trio

from unionfs.engine import UnionEngine
from unionfs.fuse import bare_entries
from unionfs.fuse.pyfuse3_backend import Pyfuse3Operations, _bare
from unionfs.fuse.requests import Entry, UnionRequests


@pytest.fixture
def ops(tmp_path):
    dirs = [str(tmp_path / name) for name in ("lower", "upper", "work")]
    for d in dirs:
        os.mkdir(d)
    with open(f"{dirs[0]}/f", "wb") as f:
        f.write(b"12345")
    union = UnionEngine([dirs[0]], dirs[1], dirs[2])
    yield Pyfuse3Operations(UnionRequests(union, timeout=5.0))
    union.close()


def test_entries_translate_field_for_field(ops):
    attr = trio.run(ops.lookup, 1, b"f")
    entry = trio.run(ops.requests.getattr, attr.st_ino)
    assert isinstance(attr, pyfuse3.EntryAttributes)
    assert attr.st_ino == entry.node_id != 0
    got = (attr.generation, attr.st_mode, attr.st_nlink, attr.st_uid, attr.st_gid, attr.st_rdev, attr.st_size)
    assert got == (entry.generation, entry.mode, entry.nlink, entry.uid, entry.gid, entry.rdev, entry.size)
    assert (attr.st_blksize, attr.st_blocks) == (entry.blksize, entry.blocks)
    assert (attr.st_atime_ns, attr.st_mtime_ns, attr.st_ctime_ns) == (entry.atime_ns, entry.mtime_ns, entry.ctime_ns)
    assert (attr.entry_timeout, attr.attr_timeout) == (5.0, 5.0)
    negative = trio.run(ops.lookup, 1, b"absent")
    assert negative.st_ino == 0 and negative.entry_timeout == 5.0


def test_oserror_becomes_fuseerror(ops):
    with pytest.raises(pyfuse3.FUSEError) as exc:
        trio.run(ops.getattr, 987654321)
    assert exc.value.errno == errno.ESTALE
    with pytest.raises(pyfuse3.FUSEError) as exc:
        trio.run(ops.read, 4242, 0, 1)  # a bug: EIO from the request layer's boundary
    assert exc.value.errno == errno.EIO


def test_open_and_statfs_translate(ops):
    attr = trio.run(ops.lookup, 1, b"f")
    info = trio.run(ops.open, attr.st_ino, os.O_RDONLY, None)
    assert isinstance(info, pyfuse3.FileInfo) and info.fh > 0 and info.keep_cache and not info.direct_io
    assert trio.run(ops.read, info.fh, 1, 3) == b"234"
    trio.run(ops.release, info.fh)
    vfs = trio.run(ops.statfs, None)
    assert isinstance(vfs, pyfuse3.StatvfsData) and vfs.f_bsize > 0 and vfs.f_namemax > 0


def test_capabilities_come_from_the_request_layer(ops):
    assert ops.enable_writeback_cache is ops.requests.writeback_cache is False
    assert ops.enable_acl and ops.supports_dot_lookup
    assert ops.requests.bare_entries == bare_entries.available


def test_bare_entry_keeps_d_ino_and_type():
    attrs = _bare(77, stat.S_IFREG)
    assert attrs.st_mode == stat.S_IFREG
    assert attrs.st_ino == (0 if bare_entries.available else 77)  # the node id


def test_a_translation_bug_is_eio_and_an_error_line(ops, caplog, monkeypatch):
    # pyfuse3 ends the session on any exception but FUSEError: a record it cannot take must not do that
    def broken_record(node_id):
        return Entry(node_id, 0, node_id, None, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1.0, 1.0)

    monkeypatch.setattr(ops.requests, "getattr_now", broken_record)
    with caplog.at_level(logging.ERROR, logger="unionfs"):
        with pytest.raises(pyfuse3.FUSEError) as exc:
            trio.run(ops.getattr, 1)
    assert exc.value.errno == errno.EIO
    assert [r.getMessage().split(" Entry(")[0] for r in caplog.records] == ["ERROR translating entry"]
    assert caplog.records[0].exc_info[0] is TypeError
