"""unionfs.protocol without FUSE: the wire format, INIT negotiation and the session's error edge, with a
socketpair standing in for /dev/fuse (tests/protocol/fakekernel.py)."""

import errno
import logging
import os
import socket
import stat
import subprocess
import sys

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.protocol.fakekernel import FULL_FLAGS, attr_out, cstr, dirents, entry_out, run_session, u32s
from tests.protocol.memfs import MemFS
from unionfs.protocol import abi
from unionfs.protocol.operations import DirBuffer, Entry, FileInfo, Operations
from unionfs.protocol.session import Session

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ------------------------------------------------------------------ the structures


def test_struct_sizes_match_the_kernel_header():
    # sizes from linux/fuse.h (sizeof of each struct; compat sizes from its FUSE_COMPAT_* defines)
    assert abi.IN_HEADER.size == 40
    assert abi.OUT_HEADER.size == 16
    assert abi.ATTR.size == 88
    assert abi.ENTRY_OUT.size == 128 and abi.COMPAT_ENTRY_OUT_SIZE == 120
    assert abi.ATTR_OUT.size == 104 and abi.COMPAT_ATTR_OUT_SIZE == 96
    assert abi.INIT_IN.size == 64 and abi.INIT_OUT.size == 64
    assert abi.SETATTR_IN.size == 88
    assert abi.READ_IN.size == 40 and abi.WRITE_IN.size == 40
    assert abi.KSTATFS.size == 80
    assert abi.OPEN_OUT.size == 16
    assert abi.COPY_FILE_RANGE_IN.size == 56
    assert abi.DIRENT.size == 24
    assert abi.CREATE_IN.size == 16 and abi.MKNOD_IN.size == 16
    assert abi.RELEASE_IN.size == 24 and abi.FLUSH_IN.size == 24
    assert abi.FALLOCATE_IN.size == 32 and abi.LSEEK_IN.size == 24


def test_header_file_values_when_present():
    """Where linux-libc-dev is installed, every opcode and INIT flag it defines has our value."""
    path = "/usr/include/linux/fuse.h"
    if not os.path.exists(path):
        pytest.skip("linux/fuse.h not installed")
    import re

    text = open(path).read()
    checked = 0
    for name, value in re.findall(r"^\s*FUSE_([A-Z0-9_]+)\s*=\s*(\d+),", text, re.M):
        if hasattr(abi, name) and name not in ("MAX_NR_SECCTX", "INIT_BSWAP_RESERVED"):
            assert getattr(abi, name) == int(value), name
            checked += 1
    for name, shift in re.findall(r"^#define FUSE_([A-Z0-9_]+)\s+\(1(?:ULL)? << (\d+)\)", text, re.M):
        if name in abi.INIT_FLAG_NAMES.values():
            assert getattr(abi, name) == 1 << int(shift), name
            checked += 1
    assert checked > 60


times = st.integers(min_value=-(2**62), max_value=2**62)


@given(
    node=st.integers(0, 2**64 - 1),
    ino=st.integers(0, 2**64 - 1),
    mode=st.integers(0, 2**32 - 1),
    size=st.integers(0, 2**63),
    atime=times,
    mtime=times,
    ctime=times,
    timeout=st.floats(0, 1e6),
)
def test_entry_out_round_trip(node, ino, mode, size, atime, mtime, ctime, timeout):
    e = Entry(
        node, ino=ino, mode=mode, size=size, atime_ns=atime, mtime_ns=mtime, ctime_ns=ctime, entry_timeout=timeout
    )
    e.attr_timeout = timeout / 2
    d = entry_out(abi.pack_entry_out(e))
    assert (d["nodeid"], d["ino"], d["mode"], d["size"]) == (node, ino, mode, size)
    for field, ns in (("atime", atime), ("mtime", mtime), ("ctime", ctime)):
        assert d[field] * 10**9 + d[field + "nsec"] == ns
        assert 0 <= d[field + "nsec"] < 10**9
    assert abs(d["entry_valid"] + d["entry_valid_nsec"] / 1e9 - timeout) < 1e-6 * max(1, timeout)
    assert 0 <= d["attr_valid_nsec"] < 10**9
    a = attr_out(abi.pack_attr_out(e))
    assert a["ino"] == ino and a["mtime"] * 10**9 + a["mtimensec"] == mtime


@given(major=st.integers(0, 4095), minor=st.integers(0, 2**20 - 1))
def test_dev_encoding_round_trip(major, minor):
    dev = os.makedev(major, minor)
    enc = abi.encode_dev(dev)
    assert enc < 2**32
    # the kernel's new_decode_dev
    assert ((enc & 0xFFF00) >> 8, (enc & 0xFF) | ((enc >> 12) & 0xFFF00)) == (major, minor)
    assert abi.decode_dev(enc) == dev


def test_split_timeout():
    assert abi.split_timeout(1.5) == (1, 500_000_000)
    assert abi.split_timeout(0) == (0, 0)
    assert abi.split_timeout(-3) == (0, 0)
    assert abi.split_timeout(300) == (300, 0)


@given(
    names=st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b and b"/" not in b), max_size=30)
)
def test_dirbuffer_packs_and_stops_when_full(names):
    for plus in (False, True):
        size = 600
        buf = DirBuffer(size, plus)
        added = []
        for i, name in enumerate(names):
            e = Entry(i + 10, mode=stat.S_IFREG | 0o644, size=i)
            if not buf.add(name, e, i + 1):
                break
            added.append(name)
        body = buf.getvalue()
        assert len(body) <= size
        got = dirents(body, plus)
        assert [g[0] for g in got] == added
        for i, (_name, ino, off, typ, ent) in enumerate(got):
            assert (ino, off, typ) == (i + 10, i + 1, stat.S_IFREG >> 12)
            if plus:
                assert ent["nodeid"] == i + 10 and ent["size"] == i
        if len(added) < len(names):  # it stopped because the next one did not fit
            rec = abi.direntplus_size(len(names[len(added)])) if plus else abi.dirent_size(len(names[len(added)]))
            assert len(body) + rec > size


@given(
    names=st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b and b"/" not in b), max_size=30)
)
def test_dirbuffer_reply_packs_entries_and_bare_entries(names):
    # reply(name, ino, mode, entry or None, off): the one call a listing's entries take (add and
    # add_bare are it too), against the structures packed one by one (abi's pack_* functions)
    for plus in (False, True):
        buf, expected, used = DirBuffer(900, plus), [], 0
        for i, name in enumerate(names):
            mode = (stat.S_IFDIR if i % 3 else stat.S_IFLNK) | 0o755
            e = Entry(i + 10, ino=i + 1000, mode=mode, size=i, atime_ns=i * 1_500_000_000, entry_timeout=1.5)
            entry = e if i % 2 else None
            if not plus:
                rec = abi.pack_dirent(e.ino if entry else i + 77, i + 1, name, mode)
            elif entry:
                rec = abi.pack_direntplus(e, i + 1, name)
            else:  # node id 0: only st_ino and the mode in the attributes
                bare = abi.ENTRY_OUT.pack(0, 0, 0, 0, 0, 0, i + 77, *(0,) * 8, mode, *(0,) * 6)
                rec = bare + abi.pack_dirent(i + 77, i + 1, name, mode)
            fits = used + len(rec) <= 900
            assert buf.reply(name, i + 77, mode, entry, i + 1) is fits
            if not fits:
                break
            expected.append(rec)
            used += len(rec)
        assert buf.getvalue() == b"".join(expected) and len(buf) == len(expected)


def test_fileinfo_flags():
    assert FileInfo(3, keep_cache=True).open_flags == abi.FOPEN_KEEP_CACHE
    assert FileInfo(3, direct_io=True, cache_dir=True).open_flags == abi.FOPEN_DIRECT_IO | abi.FOPEN_CACHE_DIR
    assert FileInfo(3, noflush=True, parallel_direct_writes=True).open_flags == (
        abi.FOPEN_NOFLUSH | abi.FOPEN_PARALLEL_DIRECT_WRITES
    )


def test_light_modules_import_no_trio_or_ctypes():
    code = (
        "import sys; import unionfs.protocol.abi, unionfs.protocol.mount, unionfs.protocol.operations; "
        "import unionfs.protocol.requests; "
        "heavy = [m for m in ('trio', 'ctypes', 'socket', 'subprocess', 'pyfuse3') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ INIT


def test_init_agrees_on_the_smaller_minor_and_offered_flags():
    want = abi.DEFAULT_INIT_FLAGS | abi.POSIX_ACL | abi.SETXATTR_EXT | abi.ALLOW_IDMAP

    async def script(k):
        return await k.init(minor=45, flags=FULL_FLAGS & ~abi.POSIX_ACL)

    fs = MemFS()
    session, (reply, f) = run_session(fs, script, flags=want, max_write=1 << 20)
    major, minor, readahead, flags, max_bg, congestion, max_write, time_gran, max_pages, _, flags2, _, _ = f
    assert reply.error == 0 and len(reply.body) == 64
    assert (major, minor) == (7, abi.KERNEL_MINOR_VERSION)
    agreed = flags | flags2 << 32
    # POSIX_ACL was not offered; the high flag ALLOW_IDMAP travels in flags2 with INIT_EXT
    assert agreed == (want & ~abi.POSIX_ACL) | abi.INIT_EXT
    assert flags2 == abi.ALLOW_IDMAP >> 32
    assert (max_write, max_pages, time_gran, readahead) == (1 << 20, 256, 1, 128 * 1024)
    assert fs.conn.proto_minor == abi.KERNEL_MINOR_VERSION and fs.conn.kernel_minor == 45
    assert session.conn is fs.conn


@pytest.mark.parametrize(
    "minor, reply_len", [(12, 24), (22, 24), (23, 64), (28, 64), (31, 64), (35, 64), (36, 64), (38, 64)]
)
def test_init_with_older_kernels(minor, reply_len):
    want = abi.DEFAULT_INIT_FLAGS | abi.ALLOW_IDMAP | abi.HAS_EXPIRE_ONLY | abi.POSIX_ACL

    async def script(k):
        r, f = await k.init(minor=minor, flags=FULL_FLAGS)
        # the session speaks the kernel's minor from now on: an entry reply is full size from 7.9 on
        lookup = await k.call(abi.LOOKUP, 1, cstr(b"."))
        return r, f, lookup

    session, (reply, f, lookup) = run_session(MemFS(), script, flags=want)
    assert len(reply.body) == reply_len
    agreed = f[3] | f[10] << 32
    assert f[1] == minor
    for flag, since in abi.FLAG_MINOR.items():
        if since > minor:
            assert not agreed & flag, abi.flag_names(flag)
    assert agreed & abi.ASYNC_READ
    assert bool(agreed & abi.PARALLEL_DIROPS) == (minor >= 25)
    assert bool(agreed & abi.MAX_PAGES) == (minor >= 28) and (f[8] == 256) == (minor >= 28)
    assert not agreed >> 32 or minor >= 36
    if minor < 28:
        assert f[6] == 32 * 4096  # without MAX_PAGES the kernel sends at most 32 pages a request
    assert len(lookup.body) == 128 and entry_out(lookup.body)["nodeid"] == 1


def test_init_of_an_ancient_kernel_uses_compat_entry_sizes():
    async def script(k):
        r, f = await k.init(minor=8, flags=abi.ASYNC_READ)
        lookup = await k.call(abi.LOOKUP, 1, cstr(b"."))
        getattr_ = await k.call(abi.GETATTR, 1, b"")  # no fuse_getattr_in before 7.9
        statfs = await k.call(abi.STATFS, 1)
        return r, lookup, getattr_, statfs

    _, (r, lookup, getattr_, statfs) = run_session(MemFS(), script)
    assert len(r.body) == 24 and abi.INIT_OUT.unpack(r.body + bytes(40))[3] == abi.ASYNC_READ
    assert len(lookup.body) == abi.COMPAT_ENTRY_OUT_SIZE
    assert len(getattr_.body) == abi.COMPAT_ATTR_OUT_SIZE
    assert len(statfs.body) == 80  # compat statfs only below 7.4


@pytest.mark.parametrize(
    "depth, writeback, agreed_depth",
    [(1, False, 1), (2, False, 2), (0, False, 0), (1, True, 0)],
)
def test_init_passthrough_needs_a_stack_depth_and_no_writeback_cache(depth, writeback, agreed_depth):
    want = abi.DEFAULT_INIT_FLAGS | abi.PASSTHROUGH | (abi.WRITEBACK_CACHE if writeback else 0)

    async def script(k):
        return await k.init(minor=45, flags=FULL_FLAGS)

    _, (reply, f) = run_session(MemFS(), script, flags=want, max_stack_depth=depth)
    agreed = f[3] | f[10] << 32
    # the kernel turns passthrough on only with a depth of 1 or 2 and without the write-back cache
    assert bool(agreed & abi.PASSTHROUGH) == bool(agreed_depth)
    assert f[11] == agreed_depth


def test_open_reply_names_the_backing_file():
    class Passing(MemFS):
        async def open(self, node, flags, ctx):
            await super().open(node, flags, ctx)
            return FileInfo(7, keep_cache=True, backing_id=42)

    async def script(k):
        await k.init(minor=45)
        node = entry_out((await k.call(abi.CREATE, 1, abi.CREATE_IN.pack(os.O_RDWR, 0o100644, 0, 0) + cstr(b"f"))).body)
        opened = await k.call(abi.OPEN, node["nodeid"], abi.OPEN_IN.pack(os.O_RDONLY, 0))
        return opened

    _, opened = run_session(Passing(), script, flags=abi.DEFAULT_INIT_FLAGS | abi.PASSTHROUGH)
    fh, open_flags, backing_id = abi.OPEN_OUT.unpack(opened.body)
    assert (fh, backing_id) == (7, 42)
    assert open_flags == abi.FOPEN_PASSTHROUGH | abi.FOPEN_KEEP_CACHE


def test_init_major_mismatch():
    async def script(k):
        newer, _ = await k.init(major=8, minor=0)
        older, _ = await k.init(major=6, minor=99)
        return newer, older

    _, (newer, older) = run_session(MemFS(), script)
    # a newer major: answer ours, and the kernel sends INIT again
    assert newer.error == 0 and abi.INIT_OUT.unpack(newer.body + bytes(56))[:2] == (7, abi.KERNEL_MINOR_VERSION)
    assert older.errno == errno.EPROTO


# ------------------------------------------------------------------ the error edge


class Boom(Operations):
    async def getattr(self, node, fh, ctx):
        if node == 2:
            raise PermissionError(errno.EACCES, "no")
        if node == 3:
            raise OSError("no errno")
        if node == 4:
            raise OSError(600, "beyond what the kernel takes")
        raise RuntimeError("handler bug")

    async def forget(self, forgets):
        raise RuntimeError("forget bug")


def test_errors_become_errno_or_eio(caplog):
    async def script(k):
        await k.init()
        bug = await k.call(abi.GETATTR, 5, bytes(16), expect_ok=False)
        denied = await k.call(abi.GETATTR, 2, bytes(16), expect_ok=False)
        no_errno = await k.call(abi.GETATTR, 3, bytes(16), expect_ok=False)
        too_big = await k.call(abi.GETATTR, 4, bytes(16), expect_ok=False)
        assert too_big.errno == errno.EIO
        nosys = await k.call(abi.READLINK, 1, expect_ok=False)  # not overridden: ENOSYS
        unknown = await k.call(99, 1, expect_ok=False)
        ioctl = await k.call(abi.IOCTL, 1, bytes(32), expect_ok=False)
        await k.send_raw(abi.request(abi.FORGET, 1000, 5, abi.FORGET_IN.pack(1)))
        await k.no_reply()
        after = await k.call(abi.GETATTR, 2, bytes(16), expect_ok=False)  # the loop is alive
        return bug, denied, no_errno, nosys, unknown, ioctl, after

    with caplog.at_level(logging.ERROR, logger="unionfs.protocol"):
        _, replies = run_session(Boom(), script)
    bug, denied, no_errno, nosys, unknown, ioctl, after = replies
    assert bug.errno == errno.EIO and len(bug.raw) == 16
    assert denied.errno == errno.EACCES == after.errno
    assert no_errno.errno == errno.EIO
    assert nosys.errno == unknown.errno == ioctl.errno == errno.ENOSYS
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2  # the RuntimeError in GETATTR and in FORGET, one line each with traceback
    assert all(r.exc_info for r in errors) and "GETATTR" in errors[0].getMessage()


class InPlace(Operations):
    """Answers lookup, getattr, getxattr and listxattr with plain methods (the session calls those in
    place); the async ones would answer ENOTTY, so a reply tells which was called."""

    def lookup_now(self, parent, name):
        if name == b"absent":
            return Entry.negative(2.0)
        return Entry(7, mode=stat.S_IFREG | 0o644, size=len(name), entry_timeout=1.0, attr_timeout=1.0)

    def getattr_now(self, node, fh):
        if node == 2:
            raise PermissionError(errno.EACCES, "no")
        if node == 3:
            raise OSError("no errno")
        if node == 5:
            raise RuntimeError("handler bug")
        return Entry(node, mode=stat.S_IFDIR | 0o755, size=fh or 0, attr_timeout=1.0)

    def getxattr_now(self, node, name):
        return b"value" if name == b"user.k" else None

    def listxattr_now(self, node):
        return [b"user.k", b"user.l"] if node == 1 else []

    async def lookup(self, parent, name, ctx):
        raise OSError(errno.ENOTTY, "async")

    getattr = getxattr = lookup

    async def listxattr(self, node, ctx):
        raise OSError(errno.ENOTTY, "async")


def test_plain_methods_are_answered_in_place_with_the_same_error_edge(caplog):
    async def script(k):
        await k.init()
        r = {}
        r["entry"] = await k.call(abi.LOOKUP, 1, cstr(b"name"))
        r["negative"] = await k.call(abi.LOOKUP, 1, cstr(b"absent"))
        r["attr"] = await k.call(abi.GETATTR, 1, abi.GETATTR_IN.pack(abi.GETATTR_FH, 0, 42))
        r["denied"] = await k.call(abi.GETATTR, 2, bytes(16), expect_ok=False)
        r["no_errno"] = await k.call(abi.GETATTR, 3, bytes(16), expect_ok=False)
        r["bug"] = await k.call(abi.GETATTR, 5, bytes(16), expect_ok=False)
        r["value"] = await k.call(abi.GETXATTR, 1, abi.GETXATTR_IN.pack(64, 0) + cstr(b"user.k"))
        r["probe"] = await k.call(abi.GETXATTR, 1, abi.GETXATTR_IN.pack(0, 0) + cstr(b"user.k"))
        r["small"] = await k.call(abi.GETXATTR, 1, abi.GETXATTR_IN.pack(2, 0) + cstr(b"user.k"), expect_ok=False)
        r["nodata"] = await k.call(abi.GETXATTR, 1, abi.GETXATTR_IN.pack(64, 0) + cstr(b"user.x"), expect_ok=False)
        r["no_nul"] = await k.call(abi.GETXATTR, 1, abi.GETXATTR_IN.pack(64, 0) + b"user.k", expect_ok=False)
        r["names"] = await k.call(abi.LISTXATTR, 1, abi.GETXATTR_IN.pack(100, 0))
        r["names_probe"] = await k.call(abi.LISTXATTR, 1, abi.GETXATTR_IN.pack(0, 0))
        r["none"] = await k.call(abi.LISTXATTR, 9, abi.GETXATTR_IN.pack(100, 0))
        r["none_probe"] = await k.call(abi.LISTXATTR, 9, abi.GETXATTR_IN.pack(0, 0))
        r["short"] = await k.call(abi.LISTXATTR, 9, b"\0\0", expect_ok=False)
        # allow_root: the filter needs the caller, so these go to the (guarded) async handlers
        k.session.deny_others(0)
        r["other"] = await k.call(abi.GETXATTR, 1, abi.GETXATTR_IN.pack(64, 0) + cstr(b"user.k"), expect_ok=False)
        k.uid = 0
        r["root"] = await k.call(abi.LISTXATTR, 1, abi.GETXATTR_IN.pack(100, 0), expect_ok=False)
        return r

    with caplog.at_level(logging.ERROR, logger="unionfs.protocol"):
        _, r = run_session(InPlace(), script)
    e = entry_out(r["entry"].body)
    assert (e["nodeid"], e["size"], e["entry_valid"]) == (7, 4, 1)
    n = entry_out(r["negative"].body)
    assert (n["nodeid"], n["entry_valid"]) == (0, 2)
    a = attr_out(r["attr"].body)
    assert (a["ino"], a["size"], a["mode"]) == (1, 42, stat.S_IFDIR | 0o755)
    assert r["denied"].errno == errno.EACCES
    assert r["no_errno"].errno == r["bug"].errno == r["no_nul"].errno == errno.EIO
    assert r["value"].body == b"value" and abi.GETXATTR_OUT.unpack(r["probe"].body)[0] == 5
    assert r["small"].errno == errno.ERANGE and r["nodata"].errno == errno.ENODATA
    assert len(r["nodata"].raw) == 16
    assert r["names"].body == b"user.k\0user.l\0" and abi.GETXATTR_OUT.unpack(r["names_probe"].body)[0] == 14
    assert r["none"].body == b"" and r["none"].error == 0
    assert abi.GETXATTR_OUT.unpack(r["none_probe"].body)[0] == 0
    assert r["short"].errno == errno.EIO
    assert r["other"].errno == errno.EACCES and r["root"].errno == errno.ENOTTY
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 3, errors  # the RuntimeError (with its traceback), two malformed requests
    assert "GETATTR" in errors[0] and [rec.exc_info is not None for rec in caplog.records][0]
    assert all("malformed" in m for m in errors[1:])


class OpensInPlace(Operations):
    """Read-only opens, reads, releases and directory handles answered by plain methods; an open for
    writing is "not now" (None) and goes to the async open, as does every async method's ENOTTY."""

    def __init__(self):
        self.calls = []

    def open_now(self, node, flags):
        self.calls.append(("open_now", flags & os.O_ACCMODE))
        return None if flags & os.O_ACCMODE else FileInfo(11, keep_cache=True)

    async def open(self, node, flags, ctx):
        self.calls.append(("open", flags & os.O_ACCMODE))
        return FileInfo(12)

    def read_now(self, fh, offset, size):
        return b"x" * min(size, 5)

    def release_now(self, fh):
        self.calls.append(("release_now", fh))

    def opendir_now(self, node):
        if node == 4:
            raise NotADirectoryError(errno.ENOTDIR, "no")
        return FileInfo(21, cache_dir=True)

    def readdir_now(self, node, fh, offset, out):
        if offset == 0:
            out.reply(b"a", 5, stat.S_IFREG, None, 1)

    def releasedir_now(self, fh):
        self.calls.append(("releasedir_now", fh))

    async def read(self, *args):
        raise OSError(errno.ENOTTY, "async")

    release = opendir = readdir = releasedir = read


def test_read_only_opens_reads_and_listings_are_answered_in_place_and_an_open_for_writing_is_not():
    fs = OpensInPlace()

    async def script(k):
        await k.init()
        r = {}
        r["ro"] = await k.call(abi.OPEN, 2, abi.OPEN_IN.pack(os.O_RDONLY, 0))
        r["rw"] = await k.call(abi.OPEN, 2, abi.OPEN_IN.pack(os.O_RDWR, 0))
        r["read"] = await k.call(abi.READ, 2, abi.READ_IN.pack(11, 0, 4096, 0, 0, 0, 0))
        r["release"] = await k.call(abi.RELEASE, 2, abi.RELEASE_IN.pack(11, 0, 0, 0))
        r["opendir"] = await k.call(abi.OPENDIR, 1, abi.OPEN_IN.pack(os.O_RDONLY, 0))
        r["notdir"] = await k.call(abi.OPENDIR, 4, abi.OPEN_IN.pack(os.O_RDONLY, 0), expect_ok=False)
        r["list"] = await k.call(abi.READDIRPLUS, 1, abi.READ_IN.pack(21, 0, 4096, 0, 0, 0, 0))
        r["end"] = await k.call(abi.READDIR, 1, abi.READ_IN.pack(21, 1, 4096, 0, 0, 0, 0))
        r["releasedir"] = await k.call(abi.RELEASEDIR, 1, abi.RELEASE_IN.pack(21, 0, 0, 0))
        return r

    _, r = run_session(fs, script)
    assert abi.OPEN_OUT.unpack(r["ro"].body)[0] == 11 and abi.OPEN_OUT.unpack(r["rw"].body)[0] == 12
    assert r["read"].body == b"xxxxx" and r["release"].error == 0 and r["releasedir"].error == 0
    assert abi.OPEN_OUT.unpack(r["opendir"].body)[0] == 21 and r["notdir"].errno == errno.ENOTDIR
    assert b"a" in r["list"].body and r["end"].body == b""
    assert fs.calls == [
        ("open_now", os.O_RDONLY),
        ("open_now", os.O_RDWR),
        ("open", os.O_RDWR),  # not now: the async open answered it
        ("release_now", 11),
        ("releasedir_now", 21),
    ]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(lambda u: abi.request(abi.LOOKUP, u, 1, b"name-without-nul"), id="name-without-nul"),
        pytest.param(lambda u: abi.request(abi.LOOKUP, u, 1, b""), id="empty-name"),
        pytest.param(lambda u: abi.request(abi.RENAME, u, 1, abi.RENAME_IN.pack(1) + b"a\0b"), id="rename-names"),
        pytest.param(lambda u: abi.request(abi.SETATTR, u, 1, bytes(40)), id="short-setattr"),
        pytest.param(lambda u: abi.request(abi.OPEN, u, 1, b"\0\0"), id="short-open"),
        pytest.param(
            lambda u: abi.request(abi.WRITE, u, 1, abi.WRITE_IN.pack(1, 0, 100, 0, 0, 0, 0) + b"x" * 10),
            id="write-size",
        ),
        pytest.param(lambda u: abi.request(abi.WRITE, u, 1, b"x" * 10), id="write-short"),
        pytest.param(
            lambda u: abi.request(abi.SETXATTR, u, 1, u32s(50, 0) + b"user.a\0" + b"v" * 3), id="setxattr-size"
        ),
        pytest.param(lambda u: abi.request(abi.BATCH_FORGET, u, 1, u32s(1000, 0)) + bytes(0), id="batch-forget"),
        pytest.param(lambda u: abi.pack_in_header(99, abi.GETATTR, u, 1) + bytes(16), id="length-field-wrong"),
        pytest.param(lambda u: abi.pack_in_header(56, abi.GETATTR, u, 1, total_extlen=9) + bytes(16), id="extlen"),
        pytest.param(lambda u: abi.pack_in_header(30, abi.GETATTR, u, 1)[:30], id="shorter-than-header"),
    ],
)
def test_malformed_requests_answer_eio_and_the_loop_goes_on(raw, caplog):
    async def script(k):
        await k.init()
        msg = raw(777)
        await k.send_raw(msg)
        opcode = abi.IN_HEADER.unpack_from(msg + bytes(40))[1]
        reply = None if opcode == abi.BATCH_FORGET else await k.recv()
        alive = await k.call(abi.GETATTR, 1, bytes(16))
        return reply, alive

    with caplog.at_level(logging.ERROR, logger="unionfs.protocol"):
        _, (reply, alive) = run_session(MemFS(), script)
    if reply is not None:
        assert (reply.unique, reply.errno, len(reply.raw)) == (777, errno.EIO, 16)
    assert alive.error == 0
    assert any("malformed" in r.getMessage() for r in caplog.records)


def test_a_failing_init_is_answered_and_ends_the_session(caplog):
    class BadInit(Operations):
        async def init(self, conn):
            raise RuntimeError("cannot start")

    async def script(k):
        reply, _ = await k.init()
        with trio.fail_after(5):
            while k.session._nursery is not None:  # run() returns although the device stays open
                await trio.sleep(0.01)
        return reply

    with caplog.at_level(logging.ERROR, logger="unionfs.protocol"):
        _, reply = run_session(BadInit(), script)
    assert reply.errno == errno.EIO
    assert any("INIT" in r.getMessage() for r in caplog.records)


def test_defaults_of_the_base_class():
    async def script(k):
        await k.init()
        opened = await k.call(abi.OPEN, 5, abi.OPEN_IN.pack(os.O_RDONLY, 0))
        opendir = await k.call(abi.OPENDIR, 1, abi.OPEN_IN.pack(0, 0))
        statfs = await k.call(abi.STATFS, 1)
        read = await k.call(abi.READ, 5, abi.READ_IN.pack(0, 0, 10, 0, 0, 0, 0), expect_ok=False)
        flush = await k.call(abi.FLUSH, 5, abi.FLUSH_IN.pack(0, 0, 0, 0), expect_ok=False)
        release = await k.call(abi.RELEASE, 5, abi.RELEASE_IN.pack(0, 0, 0, 0))
        lookup = await k.call(abi.LOOKUP, 1, cstr(b"x"), expect_ok=False)
        return opened, opendir, statfs, read, flush, release, lookup

    _, (opened, opendir, statfs, read, flush, release, lookup) = run_session(Operations(), script)
    assert abi.OPEN_OUT.unpack(opened.body) == (0, 0, 0) == abi.OPEN_OUT.unpack(opendir.body)
    sf = abi.KSTATFS.unpack(statfs.body)
    assert (sf[5], sf[6]) == (512, 255)  # bsize, namelen
    assert read.errno == flush.errno == lookup.errno == errno.ENOSYS
    assert release.error == 0


class Records(Operations):
    """Answers every call with a fixed entry and keeps what it was called with."""

    def __init__(self):
        self.calls = []

    def _keep(self, name, *args):
        ctx = args[-1]
        self.calls.append((name, args[:-1], ctx.umask, ctx.kill_suidgid, (ctx.uid, ctx.gid, ctx.pid)))
        return Entry(7, mode=stat.S_IFREG | 0o644, entry_timeout=2.5, attr_timeout=0.25)

    async def lookup(self, parent, name, ctx):
        self._keep("lookup", parent, name, ctx)
        return Entry.negative(5.0)

    async def mknod(self, parent, name, mode, rdev, ctx):
        return self._keep("mknod", parent, name, mode, rdev, ctx)

    async def create(self, parent, name, mode, flags, ctx):
        return self._keep("create", parent, name, mode, flags, ctx), FileInfo(9, direct_io=True)

    async def open(self, node, flags, ctx):
        self._keep("open", node, flags, ctx)
        return FileInfo(11, keep_cache=True)

    async def write(self, node, fh, offset, data, ctx):
        self._keep("write", node, fh, offset, bytes(data), ctx)
        return len(data)

    async def setattr(self, node, changes, fh, ctx):
        return self._keep("setattr", node, repr(changes), fh, ctx)


@pytest.mark.parametrize("minor", [11, 41])
def test_decoded_arguments_and_context(minor):
    ops = Records()

    async def script(k):
        await k.init(minor=minor)
        k.uid, k.gid, k.pid = 11, 22, 33
        neg = entry_out((await k.call(abi.LOOKUP, 1, cstr(b"nope"))).body)
        if minor >= 12:
            await k.call(abi.MKNOD, 1, abi.MKNOD_IN.pack(0o10644, 0, 0o027, 0) + cstr(b"p"))
            created = await k.call(
                abi.CREATE, 1, abi.CREATE_IN.pack(0o101, 0o644, 0o022, abi.OPEN_KILL_SUIDGID) + cstr(b"c")
            )
        else:  # 7.11: no umask; CREATE takes fuse_open_in {flags, mode}
            await k.call(abi.MKNOD, 1, abi.COMPAT_MKNOD_IN.pack(0o10644, 0) + cstr(b"p"))
            created = await k.call(abi.CREATE, 1, abi.OPEN_IN.pack(0o101, 0o644) + cstr(b"c"))
        opened = await k.call(abi.OPEN, 7, abi.OPEN_IN.pack(2, abi.OPEN_KILL_SUIDGID))
        write_in = abi.WRITE_IN.pack(11, 100, 3, abi.WRITE_KILL_SUIDGID, 0, 0, 0)
        if minor < 9:
            write_in = write_in[:24]
        await k.call(abi.WRITE, 7, write_in + b"abc")
        valid = abi.FATTR_UID | abi.FATTR_CTIME | abi.FATTR_KILL_SUIDGID | abi.FATTR_FH | abi.FATTR_LOCKOWNER
        await k.call(abi.SETATTR, 7, abi.SETATTR_IN.pack(valid, 0, 11, 0, 99, 0, 0, 3, 0, 0, 4, 0, 0, 500, 0, 0))
        return neg, created, opened

    _, (neg, created, opened) = run_session(ops, script, flags=abi.DEFAULT_INIT_FLAGS | abi.HANDLE_KILLPRIV_V2)
    assert (neg["nodeid"], neg["entry_valid"], neg["entry_valid_nsec"]) == (0, 5, 0)  # cached "no such name"
    e = entry_out(created.body)
    assert (e["nodeid"], e["entry_valid"], e["entry_valid_nsec"], e["attr_valid"], e["attr_valid_nsec"]) == (
        7, 2, 500_000_000, 0, 250_000_000,
    )  # fmt: skip
    assert abi.OPEN_OUT.unpack_from(created.body, 128) == (9, abi.FOPEN_DIRECT_IO, 0)
    assert abi.OPEN_OUT.unpack(opened.body) == (11, abi.FOPEN_KEEP_CACHE, 0)
    new = minor >= 12
    killpriv = minor >= 33
    assert ops.calls == [
        ("lookup", (1, b"nope"), 0, False, (11, 22, 33)),
        ("mknod", (1, b"p", 0o10644, 0), 0o027 if new else 0, False, (11, 22, 33)),
        ("create", (1, b"c", 0o644, 0o101), 0o022 if new else 0, killpriv, (11, 22, 33)),
        ("open", (7, 2), 0, killpriv, (11, 22, 33)),
        ("write", (7, 11, 100, b"abc"), 0, True, (11, 22, 33)),
        ("setattr", (7, "SetAttr(uid=500, ctime_ns=3000000004, lock_owner=99)", 11), 0, True, (11, 22, 33)),
    ]


# ------------------------------------------------------------------ every common opcode, on memfs


@pytest.mark.parametrize("spin", [0.0, 50e-6])
def test_memfs_through_the_wire(spin):
    """Every common opcode, with the reader sleeping at once between requests and spinning first."""
    fs = MemFS()

    async def script(k):
        await k.init(flags=FULL_FLAGS)
        k.uid, k.gid = 1234, 5678
        # mkdir d, create d/f, write, read
        d = entry_out((await k.call(abi.MKDIR, 1, abi.MKDIR_IN.pack(0o777, 0o022) + cstr(b"d"))).body)
        assert stat.S_ISDIR(d["mode"]) and stat.S_IMODE(d["mode"]) == 0o755 and d["uid"] == 1234
        r = await k.call(abi.CREATE, d["nodeid"], abi.CREATE_IN.pack(os.O_RDWR, 0o100666, 0o002, 0) + cstr(b"f"))
        f = entry_out(r.body)
        fh, open_flags, _ = abi.OPEN_OUT.unpack_from(r.body, 128)
        assert stat.S_IMODE(f["mode"]) == 0o664 and f["gid"] == 5678
        data = os.urandom(3000)
        w = await k.call(abi.WRITE, f["nodeid"], abi.WRITE_IN.pack(fh, 10, len(data), 0, 0, 0, 0) + data)
        assert abi.WRITE_OUT.unpack(w.body)[0] == 3000
        r = await k.call(abi.READ, f["nodeid"], abi.READ_IN.pack(fh, 0, 5000, 0, 0, 0, 0))
        assert r.body == bytes(10) + data
        r = await k.call(abi.READ, f["nodeid"], abi.READ_IN.pack(fh, 3000, 4, 0, 0, 0, 0))
        assert r.body == data[2990:2994]
        # setattr: truncate and chmod and times
        body = abi.SETATTR_IN.pack(
            abi.FATTR_SIZE | abi.FATTR_MODE | abi.FATTR_MTIME | abi.FATTR_ATIME | abi.FATTR_ATIME_NOW,
            0, 0, 100, 0, 0, 1_000_000, 0, 0, 5, 0, 0o100600, 0, 0, 0, 0,
        )  # fmt: skip
        a = attr_out((await k.call(abi.SETATTR, f["nodeid"], body)).body)
        assert (a["size"], stat.S_IMODE(a["mode"]), a["mtime"], a["mtimensec"]) == (100, 0o600, 1_000_000, 5)
        assert abs(a["atime"] - __import__("time").time()) < 60
        # getattr with a file handle
        a = attr_out((await k.call(abi.GETATTR, f["nodeid"], abi.GETATTR_IN.pack(abi.GETATTR_FH, 0, fh))).body)
        assert a["size"] == 100 and a["attr_valid"] == 1
        await k.call(abi.FLUSH, f["nodeid"], abi.FLUSH_IN.pack(fh, 0, 0, 0), expect_ok=False)
        await k.call(abi.FSYNC, f["nodeid"], abi.FSYNC_IN.pack(fh, 1, 0))
        await k.call(abi.RELEASE, f["nodeid"], abi.RELEASE_IN.pack(fh, 0, 0, 0))
        # open again, O_TRUNC
        r = await k.call(abi.OPEN, f["nodeid"], abi.OPEN_IN.pack(os.O_WRONLY | os.O_TRUNC, 0))
        await k.call(abi.RELEASE, f["nodeid"], abi.RELEASE_IN.pack(abi.OPEN_OUT.unpack(r.body)[0], 0, 0, 0))
        # lookups, symlink, readlink, link, mknod
        assert entry_out((await k.call(abi.LOOKUP, d["nodeid"], cstr(b"f"))).body)["size"] == 0
        missing = await k.call(abi.LOOKUP, d["nodeid"], cstr(b"nope"), expect_ok=False)
        assert missing.errno == errno.ENOENT
        s = entry_out((await k.call(abi.SYMLINK, 1, cstr(b"s", b"d/f"))).body)
        assert (await k.call(abi.READLINK, s["nodeid"])).body == b"d/f"
        ln = entry_out((await k.call(abi.LINK, 1, abi.LINK_IN.pack(f["nodeid"]) + cstr(b"hard"))).body)
        assert ln["nodeid"] == f["nodeid"] and ln["nlink"] == 2
        rdev = abi.encode_dev(os.makedev(1, 3))
        mknod = abi.MKNOD_IN.pack(stat.S_IFCHR | 0o600, rdev, 0, 0) + cstr(b"null")
        dev = entry_out((await k.call(abi.MKNOD, 1, mknod)).body)
        assert stat.S_ISCHR(dev["mode"]) and dev["rdev"] == abi.encode_dev(os.makedev(1, 3))
        assert fs.nodes[dev["nodeid"]].rdev == os.makedev(1, 3)
        # xattrs: size probe, value, ERANGE, list, remove
        await k.call(abi.SETXATTR, f["nodeid"], abi.SETXATTR_IN.pack(5, 0, 0, 0) + cstr(b"user.k") + b"value")
        probe = await k.call(abi.GETXATTR, f["nodeid"], abi.GETXATTR_IN.pack(0, 0) + cstr(b"user.k"))
        assert abi.GETXATTR_OUT.unpack(probe.body)[0] == 5
        assert (await k.call(abi.GETXATTR, f["nodeid"], abi.GETXATTR_IN.pack(64, 0) + cstr(b"user.k"))).body == b"value"
        small = await k.call(abi.GETXATTR, f["nodeid"], abi.GETXATTR_IN.pack(2, 0) + cstr(b"user.k"), expect_ok=False)
        assert small.errno == errno.ERANGE
        listed = await k.call(abi.LISTXATTR, f["nodeid"], abi.GETXATTR_IN.pack(100, 0))
        assert listed.body == b"user.k\0"
        await k.call(abi.REMOVEXATTR, f["nodeid"], cstr(b"user.k"))
        gone = await k.call(abi.GETXATTR, f["nodeid"], abi.GETXATTR_IN.pack(64, 0) + cstr(b"user.k"), expect_ok=False)
        assert gone.errno == errno.ENODATA
        # readdir and readdirplus, in pieces
        for i in range(20):
            await k.call(abi.MKNOD, d["nodeid"], abi.MKNOD_IN.pack(stat.S_IFREG | 0o644, 0, 0, 0) + cstr(b"n%02d" % i))
        dh = abi.OPEN_OUT.unpack((await k.call(abi.OPENDIR, d["nodeid"], abi.OPEN_IN.pack(0, 0))).body)[0]
        for opcode, plus in ((abi.READDIR, False), (abi.READDIRPLUS, True)):
            names, offset = [], 0
            while True:
                r = await k.call(opcode, d["nodeid"], abi.READ_IN.pack(dh, offset, 400, 0, 0, 0, 0))
                got = dirents(r.body, plus)
                if not got:
                    break
                names += [g[0] for g in got]
                offset = got[-1][2]
            assert names == [b".", b".."] + [b"f"] + [b"n%02d" % i for i in range(20)]
        await k.call(abi.RELEASEDIR, d["nodeid"], abi.RELEASE_IN.pack(dh, 0, 0, 0))
        # rename, rename2 with NOREPLACE and EXCHANGE
        await k.call(abi.RENAME, d["nodeid"], abi.RENAME_IN.pack(1) + cstr(b"n00", b"moved"))
        clash = await k.call(
            abi.RENAME2, d["nodeid"], abi.RENAME2_IN.pack(1, 1, 0) + cstr(b"n01", b"moved"), expect_ok=False
        )
        assert clash.errno == errno.EEXIST
        await k.call(abi.RENAME2, d["nodeid"], abi.RENAME2_IN.pack(1, 2, 0) + cstr(b"n01", b"moved"))
        # unlink, rmdir, statfs, access (not implemented), forget
        await k.call(abi.UNLINK, 1, cstr(b"moved"))
        notempty = await k.call(abi.RMDIR, 1, cstr(b"d"), expect_ok=False)
        assert notempty.errno == errno.ENOTEMPTY
        sf = abi.KSTATFS.unpack((await k.call(abi.STATFS, 1)).body)
        assert sf[:5] == (1000, 900, 800, 100, len(fs.nodes)) and sf[5:8] == (4096, 255, 4096)
        assert (await k.call(abi.ACCESS, 1, abi.ACCESS_IN.pack(4, 0), expect_ok=False)).errno == errno.ENOSYS
        before = fs.forgotten
        await k.send_raw(
            abi.request(
                abi.BATCH_FORGET,
                0,
                0,
                u32s(2, 0) + abi.FORGET_ONE.pack(s["nodeid"], 1) + abi.FORGET_ONE.pack(dev["nodeid"], 1),
            )
        )
        await k.send_raw(abi.request(abi.FORGET, 0, s["nodeid"], abi.FORGET_IN.pack(1)))
        await k.no_reply()
        assert fs.forgotten == before + 3
        # interrupt: not supported, the kernel is told so
        assert (await k.call(abi.INTERRUPT, 0, abi.INTERRUPT_IN.pack(4), expect_ok=False)).errno == errno.ENOSYS
        # destroy ends the session
        await k.call(abi.DESTROY, 0)

    session, _ = run_session(fs, script, flags=abi.DEFAULT_INIT_FLAGS | abi.SETXATTR_EXT, spin=spin)
    assert session._destroyed and session.conn.flags & abi.SETXATTR_EXT


def test_notifications_are_written_with_unique_zero():
    async def script(k):
        await k.init()
        assert k.session.notify_inval_entry(1, b"name")
        assert k.session.notify_inval_inode(5, 0, -1)
        assert k.session.notify_delete(1, 7, b"gone")
        return [await k.recv() for _ in range(3)]

    _, (entry, inode, delete) = run_session(MemFS(), script)
    assert (entry.unique, entry.error) == (0, abi.NOTIFY_INVAL_ENTRY)
    assert abi.NOTIFY_INVAL_ENTRY_OUT.unpack_from(entry.body) == (1, 4, 0) and entry.body[16:] == b"name\0"
    assert (inode.error, abi.NOTIFY_INVAL_INODE_OUT.unpack(inode.body)) == (abi.NOTIFY_INVAL_INODE, (5, 0, -1))
    assert delete.error == abi.NOTIFY_DELETE and abi.NOTIFY_DELETE_OUT.unpack_from(delete.body) == (1, 7, 4, 0)


# ------------------------------------------------------------------ concurrency


class Waits(Operations):
    """getxattr "user.wait" waits for an event (a setxattr sets it); "user.yield" only passes a
    checkpoint; "user.late-error"/"user.late-bug" fail after a checkpoint; anything else answers at once."""

    def __init__(self, spare: bool):
        self.spare = spare
        self.event = None
        self.readers_seen = []

    async def getxattr(self, node, name, ctx):
        if name == b"user.wait":
            if self.spare:
                ctx.spare_reader()
            await self.event.wait()
            return b"woken"
        if name == b"user.yield":
            await trio.sleep(0)
            return b"yielded"
        if name == b"user.late-error":
            await trio.sleep(0)
            raise PermissionError(errno.EACCES, "denied after a wait")
        if name == b"user.late-bug":
            await trio.sleep(0)
            raise RuntimeError("bug after a wait")
        self.readers_seen.append(ctx.session.readers)
        return b"quick"

    async def setxattr(self, node, name, value, flags, ctx):
        self.event.set()


def _getxattr(name: bytes) -> bytes:
    return abi.GETXATTR_IN.pack(64, 0) + cstr(name)


@pytest.mark.parametrize("explicit", [False, True], ids=["by-itself", "ctx.spare_reader"])
def test_a_waiting_handler_does_not_hold_up_the_others(explicit):
    ops = Waits(spare=explicit)

    async def script(k):
        ops.event = trio.Event()
        await k.init()
        await k.send_raw(abi.request(abi.GETXATTR, 100, 1, _getxattr(b"user.wait")))
        quick = await k.call(abi.GETXATTR, 1, _getxattr(b"user.quick"))  # answered while the other waits
        await k.call(abi.SETXATTR, 1, abi.COMPAT_SETXATTR_IN.pack(1, 0) + cstr(b"user.go") + b"1")
        woken = await k.recv()
        await trio.sleep(0.05)
        again = await k.call(abi.GETXATTR, 1, _getxattr(b"user.quick"))
        return quick, woken, again

    session, (quick, woken, again) = run_session(ops, script)
    assert quick.body == b"quick" and again.body == b"quick"
    assert (woken.unique, woken.body) == (100, b"woken")
    # two readers while the handler waited (one spare, not more), one again afterwards
    assert ops.readers_seen == [2, 1]


def test_handlers_that_pass_a_checkpoint_or_fail_after_it():
    ops = Waits(spare=False)

    async def script(k):
        await k.init()
        out = [await k.call(abi.GETXATTR, 1, _getxattr(b"user.yield")) for _ in range(30)]
        late_error = await k.call(abi.GETXATTR, 1, _getxattr(b"user.late-error"), expect_ok=False)
        late_bug = await k.call(abi.GETXATTR, 1, _getxattr(b"user.late-bug"), expect_ok=False)
        await trio.sleep(0.05)
        quick = await k.call(abi.GETXATTR, 1, _getxattr(b"user.quick"))
        return out, late_error, late_bug, quick

    logging.disable(logging.CRITICAL)
    try:
        _, (out, late_error, late_bug, quick) = run_session(ops, script)
    finally:
        logging.disable(logging.NOTSET)
    assert all(r.body == b"yielded" for r in out)
    assert late_error.errno == errno.EACCES and late_bug.errno == errno.EIO
    assert quick.body == b"quick" and ops.readers_seen == [1]  # the spares ended by themselves


def test_stop_cancels_a_waiting_handler():
    ops = Waits(spare=False)

    async def script(k):
        ops.event = trio.Event()  # never set
        await k.init()
        await k.send_raw(abi.request(abi.GETXATTR, 100, 1, _getxattr(b"user.wait")))
        await trio.sleep(0.05)
        assert k.session.readers == 2
        k.session.stop()
        with trio.fail_after(5):
            while k.session._nursery is not None:
                await trio.sleep(0.01)
        await k.no_reply(0.1)

    session, _ = run_session(ops, script)
    assert session.readers == 0 and session._destroyed


# ------------------------------------------------------------------ fuzzing the decoders

_FUZZ_OPCODES = sorted(set(abi.OPCODE_NAMES) - {abi.INIT, abi.DESTROY, abi.FORGET, abi.BATCH_FORGET}) + [0, 7, 99, 4095]

fuzz_request = st.tuples(
    st.sampled_from(_FUZZ_OPCODES),
    st.integers(0, 12),  # node ids: most exist in memfs after the setup below
    st.one_of(
        st.binary(max_size=200),
        # a plausible fixed part followed by a name: reaches the name and size checks
        st.builds(lambda head, name: head + name, st.binary(min_size=8, max_size=40), st.binary(max_size=20)),
    ),
)


@given(st.lists(fuzz_request, min_size=1, max_size=25))
def test_random_requests_get_one_well_formed_answer_each(requests):
    fs = MemFS()

    async def script(k):
        await k.init()
        await k.call(abi.MKDIR, 1, abi.MKDIR_IN.pack(0o755, 0) + cstr(b"d"))
        await k.call(abi.CREATE, 1, abi.CREATE_IN.pack(os.O_RDWR, 0o644, 0, 0) + cstr(b"f"))
        for opcode, node, body in requests:
            reply = await k.call(opcode, node, body, expect_ok=False)
            assert reply.error <= 0 and -reply.error < 512
            if reply.error:
                assert len(reply.raw) == 16
        alive = await k.call(abi.GETATTR, 1, bytes(16))
        assert stat.S_ISDIR(attr_out(alive.body)["mode"])

    logging.disable(logging.CRITICAL)  # the EIO answers log a line each
    try:
        run_session(fs, script)
    finally:
        logging.disable(logging.NOTSET)


class _Never:
    def is_set(self):
        return False


@pytest.mark.parametrize("code", [errno.ENODEV, errno.ECONNABORTED])
@pytest.mark.parametrize("where", ["before the loop", "on the loop"])
def test_a_device_gone_ends_the_session_cleanly(monkeypatch, code, where):
    """The device reports the connection over with ENODEV (unmounted) or ECONNABORTED (aborted; seen
    after a lazy unmount's last close): the session ends, cleanly, wherever it reads."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        a.send(b"x")  # readable, so the reader reads

        def gone(fd, buffers):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "readv", gone)
        session = Session(Operations(), b.fileno(), spin=50e-6)
        if where == "before the loop":
            assert session.serve_before_loop(_Never(), idle=5) is None
        else:
            trio.run(session.run)
        assert session.ended
    finally:
        a.close()
        b.close()
