"""Session.serve_before_loop: requests answered on the calling thread before trio runs; the first one
whose handler raises LoopNeeded handed to run(first=...) unanswered; the idle return. A SOCK_SEQPACKET
socketpair stands in for /dev/fuse (one message a request, as the device frames them)."""

import os
import socket
import subprocess
import sys
import threading
import types

import trio

from tests.protocol.fakekernel import FULL_FLAGS, Reply, cstr
from tests.protocol.memfs import MemFS
from unionfs.protocol import abi
from unionfs.protocol.operations import LoopNeeded
from unionfs.protocol.session import IDLE, Session, readable_before_loop


class _WaitsToRename(MemFS):
    """A filesystem whose rename would wait: it needs the loop until `loop` is set."""

    loop = False

    async def rename(self, *args):
        if not self.loop:
            raise LoopNeeded
        return await super().rename(*args)


class _Yields(MemFS):
    """A filesystem whose getattr yields without saying LoopNeeded first (a bug)."""

    async def getattr(self, *args):
        await _trap()
        return await super().getattr(*args)


class _ParksGetattr(_WaitsToRename):
    """A filesystem whose getattr of node 1 waits for a pipe before the loop (a copy in a thread of its
    own), then answers; `after_park` may raise LoopNeeded once it goes on."""

    def __init__(self):
        super().__init__()
        self.r, self.w = os.pipe()
        self.resumed = 0
        self.after_park = None

    async def getattr(self, node, fh, ctx):
        if node == 1 and not self.loop:
            await readable_before_loop(self.r)
            os.read(self.r, 1)
            self.resumed += 1
            if self.after_park is not None:
                self.after_park()
        return await super().getattr(node, fh, ctx)

    def close(self):
        os.close(self.r)
        os.close(self.w)


@types.coroutine
def _trap():
    yield "a trap only trio understands"


class _Kernel:
    """The kernel's end, synchronous: send requests, read replies."""

    def __init__(self, sock):
        self.sock = sock
        self.unique = 0

    def send(self, opcode, nodeid=1, body=b"") -> int:
        self.unique += 2
        self.sock.send(abi.request(opcode, self.unique, nodeid, body, 0, 0, 1))
        return self.unique

    def recv(self) -> Reply:
        self.sock.settimeout(5)
        return Reply(self.sock.recv(1 << 21))


def _pair():
    k_sock, d_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return _Kernel(k_sock), d_sock


def _init_body():
    return abi.INIT_IN.pack(7, abi.KERNEL_MINOR_VERSION, 128 * 1024, FULL_FLAGS & 0xFFFFFFFF, FULL_FLAGS >> 32)


def test_answers_until_a_handler_needs_the_loop_and_hands_that_one_over():
    fs = _WaitsToRename()
    kernel, d_sock = _pair()
    session = Session(fs, d_sock.fileno())
    try:
        u_init = kernel.send(abi.INIT, 0, _init_body())
        u_look = kernel.send(abi.LOOKUP, 1, cstr(b"absent"))
        u_attr = kernel.send(abi.GETATTR, 1, abi.GETATTR_IN.pack(0, 0, 0))
        u_open = kernel.send(abi.OPENDIR, 1, abi.OPEN_IN.pack(os.O_RDONLY, 0))
        u_mkdir = kernel.send(abi.MKDIR, 1, abi.MKDIR_IN.pack(0o755, 0) + cstr(b"d"))
        u_rw = kernel.send(abi.OPEN, 1, abi.OPEN_IN.pack(os.O_RDWR | os.O_TRUNC, 0))
        u_move = kernel.send(abi.RENAME, 1, abi.RENAME_IN.pack(1) + cstr(b"d", b"e"))
        u_after = kernel.send(abi.GETATTR, 1, abi.GETATTR_IN.pack(0, 0, 0))

        first = session.serve_before_loop(threading.Event())

        # the six before RENAME are answered, in order; RENAME came back as read, unanswered
        replies = [kernel.recv() for _ in range(6)]
        assert [r.unique for r in replies] == [u_init, u_look, u_attr, u_open, u_mkdir, u_rw]
        assert replies[0].error == 0 and session.conn is not None
        assert replies[1].errno == 2  # ENOENT
        assert all(r.error == 0 for r in replies[2:])
        assert b"d" in fs.nodes[abi.ROOT_ID].children
        assert first is not None and abi.IN_HEADER.unpack_from(first)[1:3] == (abi.RENAME, u_move)
        assert b"e" not in fs.nodes[abi.ROOT_ID].children  # not renamed yet

        fs.loop = True

        async def loop():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.run, first)
                mv = await trio.to_thread.run_sync(kernel.recv)
                after = await trio.to_thread.run_sync(kernel.recv)
                kernel.sock.close()  # end of file ends the session
                return mv, after

        mv, after = trio.run(loop)
        # the handed-over RENAME is answered by the loop, before the request read after it
        assert (mv.unique, mv.error) == (u_move, 0)
        assert b"e" in fs.nodes[abi.ROOT_ID].children and b"d" not in fs.nodes[abi.ROOT_ID].children
        assert (after.unique, after.error) == (u_after, 0)
    finally:
        d_sock.close()
        kernel.sock.close()


def test_a_handler_that_yields_before_the_loop_answers_eio_and_serving_goes_on():
    kernel, d_sock = _pair()
    session = Session(_Yields(), d_sock.fileno())
    try:
        kernel.send(abi.INIT, 0, _init_body())
        u_attr = kernel.send(abi.GETATTR, 1, abi.GETATTR_IN.pack(0, 0, 0))
        u_look = kernel.send(abi.LOOKUP, 1, cstr(b"absent"))
        kernel.sock.shutdown(socket.SHUT_WR)  # end of file after these
        assert session.serve_before_loop(threading.Event()) is None
        assert kernel.recv().error == 0  # INIT
        attr, look = kernel.recv(), kernel.recv()
        assert (attr.unique, attr.errno) == (u_attr, 5)  # EIO
        assert (look.unique, look.errno) == (u_look, 2)  # ENOENT: still served
    finally:
        d_sock.close()
        kernel.sock.close()


def test_returns_idle_when_nothing_comes():
    kernel, d_sock = _pair()
    r, w = os.pipe()
    session = Session(MemFS(), d_sock.fileno())
    try:
        kernel.send(abi.INIT, 0, _init_body())
        assert session.serve_before_loop(threading.Event(), wake_fd=r, idle=0.05) is IDLE
        assert kernel.recv().error == 0 and not session.ended
    finally:
        d_sock.close()
        kernel.sock.close()
        os.close(r)
        os.close(w)


def test_returns_once_the_loop_is_loaded_and_on_end_of_file():
    kernel, d_sock = _pair()
    session = Session(MemFS(), d_sock.fileno())
    try:
        loaded = threading.Event()
        loaded.set()
        assert session.serve_before_loop(loaded) is None and not session.ended
        kernel.sock.close()
        assert session.serve_before_loop(threading.Event()) is None and session.ended
    finally:
        d_sock.close()


def test_the_session_module_loads_without_trio():
    code = "import sys, unionfs.protocol.session, unionfs.fuse.native_backend; sys.exit('trio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def _serving(session, until):
    """serve_before_loop in a thread of its own; its result in the returned list once it returns."""
    out = []
    t = threading.Thread(target=lambda: out.append(session.serve_before_loop(until)), daemon=True)
    t.start()
    return t, out


def test_a_parked_handler_lets_later_requests_be_answered_and_goes_on_when_its_descriptor_is_readable():
    fs = _ParksGetattr()
    kernel, d_sock = _pair()
    session = Session(fs, d_sock.fileno())
    until = threading.Event()
    try:
        kernel.send(abi.INIT, 0, _init_body())
        u_attr = kernel.send(abi.GETATTR, 1, abi.GETATTR_IN.pack(0, 0, 0))
        u_look = kernel.send(abi.LOOKUP, 1, cstr(b"absent"))
        u_mkdir = kernel.send(abi.MKDIR, 1, abi.MKDIR_IN.pack(0o755, 0) + cstr(b"d"))
        t, out = _serving(session, until)
        assert kernel.recv().error == 0  # INIT
        look, mkdir = kernel.recv(), kernel.recv()  # answered while GETATTR waits
        assert (look.unique, look.errno, mkdir.unique, mkdir.error) == (u_look, 2, u_mkdir, 0)
        assert fs.resumed == 0
        os.write(fs.w, b"!")
        attr = kernel.recv()
        assert (attr.unique, attr.error, fs.resumed) == (u_attr, 0, 1)
        u_after = kernel.send(abi.GETATTR, 2, abi.GETATTR_IN.pack(0, 0, 0))  # "d", not parked
        assert kernel.recv().unique == u_after
        until.set()
        kernel.send(abi.LOOKUP, 1, cstr(b"absent"))  # wakes the poll (no wake fd here: 2 ms anyway)
        t.join(5)
        assert out == [None] and not session.ended
    finally:
        until.set()
        d_sock.close()
        kernel.sock.close()
        fs.close()


def _park_then_need_the_loop(fs, kernel, session):
    """GETATTR parks, MKDIR is answered, RENAME needs the loop: serve_before_loop waits for the parked
    GETATTR until its pipe is written, then returns. (u_attr, u_move, what it returned)"""
    kernel.send(abi.INIT, 0, _init_body())
    u_attr = kernel.send(abi.GETATTR, 1, abi.GETATTR_IN.pack(0, 0, 0))
    kernel.send(abi.MKDIR, 1, abi.MKDIR_IN.pack(0o755, 0) + cstr(b"d"))
    u_move = kernel.send(abi.RENAME, 1, abi.RENAME_IN.pack(1) + cstr(b"d", b"e"))
    t, out = _serving(session, threading.Event())
    assert kernel.recv().error == 0 and kernel.recv().error == 0  # INIT, MKDIR
    t.join(0.3)
    assert t.is_alive() and out == []  # RENAME needs the loop, but GETATTR is still parked
    os.write(fs.w, b"!")
    t.join(5)
    assert len(out) == 1 and abi.IN_HEADER.unpack_from(out[0])[1:3] == (abi.RENAME, u_move)
    return u_attr, u_move, out[0]


def test_a_request_that_needs_the_loop_waits_for_the_parked_ones_to_finish_first():
    fs = _ParksGetattr()
    kernel, d_sock = _pair()
    session = Session(fs, d_sock.fileno())
    try:
        u_attr, _, _ = _park_then_need_the_loop(fs, kernel, session)
        attr = kernel.recv()
        assert (attr.unique, attr.error) == (u_attr, 0)
    finally:
        d_sock.close()
        kernel.sock.close()
        fs.close()


def test_a_parked_handler_that_needs_the_loop_once_it_goes_on_is_answered_by_the_loop():
    fs = _ParksGetattr()

    def needs_loop():
        if not fs.loop:
            raise LoopNeeded

    fs.after_park = needs_loop
    kernel, d_sock = _pair()
    session = Session(fs, d_sock.fileno())
    try:
        u_attr, u_move, first = _park_then_need_the_loop(fs, kernel, session)
        fs.loop = True

        async def loop():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.run, first)
                replies = [await trio.to_thread.run_sync(kernel.recv) for _ in range(2)]
                kernel.sock.close()
                return replies

        mv, attr = trio.run(loop)
        assert (mv.unique, mv.error) == (u_move, 0)  # the handed-over request first
        assert (attr.unique, attr.error, fs.resumed) == (u_attr, 0, 1)  # then the parked one, again
    finally:
        d_sock.close()
        kernel.sock.close()
        fs.close()
