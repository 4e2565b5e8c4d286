"""A stand-in for the kernel's side of /dev/fuse: a SOCK_SEQPACKET socketpair, one message a request or
reply (the device's own framing), driving a unionfs.protocol Session in the same trio run.

    run_session(ops, script, **session_kw) -> (session, script's result)

*script* is `async def script(k: FakeKernel)`; when it returns, the kernel end is closed and the session
ends on end of file.
"""

import errno
import itertools
import socket
import struct

import trio

from unionfs.protocol import abi
from unionfs.protocol.session import Session

FULL_FLAGS = (1 << 43) - 1  # every flag a 7.43 kernel knows


class Reply:
    def __init__(self, raw: bytes):
        self.raw = raw
        self.len, self.error, self.unique = abi.OUT_HEADER.unpack_from(raw)
        self.body = raw[16:]

    @property
    def errno(self) -> int:
        return -self.error

    def __repr__(self):
        return f"Reply(error={self.error}, unique={self.unique}, body={len(self.body)} bytes)"


class FakeKernel:
    def __init__(self, sock):
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.uniques = itertools.count(2, 2)
        self.uid, self.gid, self.pid = 1000, 1000, 4242

    async def send_raw(self, data: bytes) -> None:
        await self.sock.send(data)

    async def recv(self, timeout=5) -> Reply:
        with trio.fail_after(timeout):
            raw = await self.sock.recv(1 << 21)
        reply = Reply(raw)
        assert reply.len == len(raw), f"reply length field {reply.len}, message {len(raw)}"
        return reply

    async def no_reply(self, wait=0.2) -> None:
        with trio.move_on_after(wait):
            raw = await self.sock.recv(1 << 21)
            raise AssertionError(f"unexpected message {Reply(raw)!r}")

    async def call(self, opcode, nodeid=1, body=b"", expect_ok=True) -> Reply:
        unique = next(self.uniques)
        await self.send_raw(abi.request(opcode, unique, nodeid, body, self.uid, self.gid, self.pid))
        reply = await self.recv()
        assert reply.unique == unique
        if expect_ok:
            assert reply.error == 0, f"{abi.opcode_name(opcode)}: {errno.errorcode.get(-reply.error)}"
        return reply

    async def init(self, minor=abi.KERNEL_MINOR_VERSION + 4, flags=FULL_FLAGS, max_readahead=128 * 1024, major=7):
        """INIT as a kernel of 7.*minor* offering *flags* sends it; returns the decoded init_out fields
        (missing ones, for short replies, are 0) and the reply length."""
        body = abi.INIT_IN.pack(major, minor, max_readahead, flags & 0xFFFFFFFF, flags >> 32)
        if minor < 36:
            body = body[:16]  # fuse_init_in before 7.36: major minor max_readahead flags
        reply = await self.call(abi.INIT, 0, body, expect_ok=False)
        fields = (
            abi.INIT_OUT.unpack(reply.body + bytes(abi.INIT_OUT.size - len(reply.body))) if reply.error == 0 else None
        )
        return reply, fields


async def _drive(ops, script, session_kw, out):
    k_sock, d_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    session = Session(ops, d_sock.fileno(), **session_kw)
    out["session"] = session
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            kernel = FakeKernel(k_sock)
            kernel.session = session
            try:
                out["result"] = await script(kernel)
            finally:
                kernel.sock.close()
            with trio.fail_after(5):
                while session._nursery is not None:
                    await trio.sleep(0.01)
    finally:
        d_sock.close()


def run_session(ops, script, **session_kw):
    out = {}
    trio.run(_drive, ops, script, session_kw, out)
    return out["session"], out.get("result")


def entry_out(body: bytes) -> dict:
    """fuse_entry_out as a dict (nodeid, generation, entry_valid, attr_valid, ..., and the attr fields)."""
    names = "nodeid generation entry_valid attr_valid entry_valid_nsec attr_valid_nsec".split() + ATTR_NAMES
    return dict(zip(names, abi.ENTRY_OUT.unpack_from(body)))


def attr_out(body: bytes) -> dict:
    names = ["attr_valid", "attr_valid_nsec", "dummy"] + ATTR_NAMES
    return dict(zip(names, abi.ATTR_OUT.unpack_from(body)))


ATTR_NAMES = (
    "ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid gid rdev blksize flags".split()
)


def dirents(body: bytes, plus: bool) -> list:
    """[(name, ino, off, type, entry-or-None)] of a readdir(plus) reply."""
    out = []
    pos = 0
    while pos < len(body):
        entry = None
        if plus:
            entry = entry_out(body[pos:])
            pos += abi.ENTRY_OUT.size
        ino, off, namelen, typ = abi.DIRENT.unpack_from(body, pos)
        name = body[pos + abi.DIRENT_SIZE : pos + abi.DIRENT_SIZE + namelen]
        out.append((name, ino, off, typ, entry))
        pos += (abi.DIRENT_SIZE + namelen + 7) & ~7
    assert pos == len(body), "records not padded to 8 bytes"
    return out


def cstr(*names: bytes) -> bytes:
    return b"".join(n + b"\0" for n in names)


def u32s(*values) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)
