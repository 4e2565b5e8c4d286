"""The FUSE request loop on trio: read a request from the device, call the filesystem, write the reply.

One reader task reads the device (a spin of up to `spin` seconds first, see SPIN_DEFAULT, then a plain
poll of up to BRIEF_WAIT_MS, then a non-blocking read; trio's wait only when nothing came within them)
and runs each handler itself. A request
the filesystem answers with a plain method (its `*_now` methods: lookup, getattr, getxattr, listxattr,
read-only open, read, release, opendir, readdir, releasedir) is answered in place, with no coroutine
at all. Any other handler's coroutine is driven by hand, so one that finishes without waiting costs no
task and no switch. The first time a handler really waits (it yields to trio: a worker thread, a lock,
a sleep), the session starts a spare reader task, which serves the other requests meanwhile; the
waiting handler goes on in its own reader, as `await` would. Readers that find another one already
waiting for the device end by themselves, so the pool shrinks back to one. After
READY_STREAK requests in a row without a wait the reader yields once to trio, so other tasks (spares,
thread results) are not starved by a busy device.

The error edge: OSError answers its errno; any other exception, and a malformed request (short, bad
lengths, a name without its NUL), answers EIO and logs one line; an opcode without a handler answers
ENOSYS. Writing an answer to a request the kernel gave up on (ENOENT: interrupted) is ignored; ENODEV
or ECONNABORTED (or end of file, for a socket standing in for the device in tests) ends the loop
cleanly.

Before the loop: `serve_before_loop` answers requests on the calling thread with a plain poll, before
trio is even imported (~70-100 ms of CPU, most of a mount program's start). Every request is answered
so until a handler would have to wait for something other than a descriptor: it raises `LoopNeeded`
before it changes anything, and that request is handed, unanswered, to `run(first=...)`, which the
caller starts once it has imported trio. A handler may wait for a descriptor there
(`readable_before_loop`, e.g. a copy in a thread of its own): it is parked and the device is served
meanwhile; parked handlers are finished before the loop takes over. The caller may also start the loop
when the device has been idle for a while (*idle*), so that a long-lived mount pays for trio's import
when nobody waits for an answer. That is why this module imports trio only inside the loop's functions.
"""

from __future__ import annotations

import errno
import os
import select
from time import perf_counter

from ..logger import DEBUG, get_logger
from . import abi
from .operations import Context, LoopNeeded
from .requests import Malformed, Requests, error_reply
from .splice import CONNECTION_GONE, DeviceGone, SplicedRead, Splicer

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy takes any TYPE_CHECKING)
if TYPE_CHECKING:
    from collections.abc import Callable

    import trio

__all__ = ["Session", "Malformed"]

log = get_logger("unionfs.protocol")

READY_STREAK = 16
# Spinning: after an answer, a reader polls the device without sleeping for up to Session.spin seconds
# before it waits. A sequential client (tar, find, a container engine's walk) sends its next request a
# few microseconds after it got the last answer (untar: 58% within 10 us, 93% within 50 us); a reader
# that slept for it pays the wake-up (on a VM an interrupt through the host) and runs the next handler
# with cold caches. SPIN_MISSES spins in a row that found nothing turn spinning off (a client that thinks
# between its requests would only burn a CPU); it is tried again once every SPIN_RETRY waits.
SPIN_DEFAULT = 50e-6
SPIN_MISSES = 4
SPIN_RETRY = 64
# A reader that finds nothing queued waits this long in a plain poll (the whole loop with it) before it
# waits in trio's: a client's next request mostly comes within it, and trio's wait (an epoll
# registration, a task switch and back) was a fifth of the daemon's CPU in a cold read of every small
# file (71-75 against 59-61 ticks; the same walk before the loop: 48-58). Other tasks wait at most this.
BRIEF_WAIT_MS = 1
_HDR = abi.IN_HEADER.size  # 40
_PAGE = 4096
_NO_REPLY = (abi.FORGET, abi.BATCH_FORGET)

_pack_out = abi.OUT_HEADER.pack
_unpack_head = abi.IN_HEAD.unpack_from


class _GoOn:
    """`await _GoOn(coro, trap)` goes on with a handler coroutine that has yielded *trap* to trio: it
    passes traps up and what trio sends or throws down, as `await coro` would have from the start.
    (An awaitable class, not a `types.coroutine` generator: `types` is ~0.5 ms to import, in the
    daemon's time before its first answer.)"""

    __slots__ = ("coro", "trap")

    def __init__(self, coro, trap):
        self.coro, self.trap = coro, trap

    def __await__(self):
        coro, trap = self.coro, self.trap
        while True:
            try:
                sent = yield trap
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    trap = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    trap = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


# Requests allow_root lets through from anyone (libfuse's list): on what is open already, and the
# protocol's own.
_OPEN_OR_OWN = frozenset(
    (
        abi.INIT,
        abi.READ,
        abi.WRITE,
        abi.FSYNC,
        abi.RELEASE,
        abi.READDIR,
        abi.READDIRPLUS,
        abi.FSYNCDIR,
        abi.RELEASEDIR,
        abi.FORGET,
        abi.BATCH_FORGET,
        abi.INTERRUPT,
        abi.DESTROY,
    )
)


def _guarded(handler, allowed):
    async def guarded(view, end, unique, nodeid, ctx):
        if ctx.uid not in allowed:
            raise OSError(errno.EACCES, "allow_root: only root and the mount's owner")
        return await handler(view, end, unique, nodeid, ctx)

    return guarded


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _opcode_of(view, n: int) -> int:
    return abi.IN_HEADER.unpack_from(view, 0)[1] if n >= _HDR else -1


IDLE = b""  # serve_before_loop: the device was idle; start the loop with no request pending


class _Readable:
    """What a handler yields before the loop to wait for a descriptor (see readable_before_loop)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = fd

    def __await__(self):
        yield self


def readable_before_loop(fd: int) -> _Readable:
    """`await readable_before_loop(fd)` waits until *fd* is readable, in a handler answered by
    serve_before_loop (not in the loop: trio does not know this trap). The session answers other
    requests meanwhile."""
    return _Readable(fd)


class Session(Requests):
    """Serve the filesystem *ops* (an operations.Operations) on the FUSE device fd *fd*.

    *flags*: the INIT flags (abi.*) the filesystem wants; only those the kernel offers are agreed.
    *max_write*: the largest write request (with MAX_PAGES; without it the kernel sends at most 128 KiB).
    *max_readahead*: None leaves the kernel's. *max_background*, *congestion_threshold*: 0 leaves the
    kernel's. *max_stack_depth* (1 or 2): with PASSTHROUGH in *flags*, how deep the backing files'
    filesystems may be stacked themselves, plus one (the kernel refuses a backing file deeper than that,
    and no other filesystem may stack on this one deeper than it). *spin*: seconds a reader polls the
    device without sleeping before it waits for the next request (SPIN_DEFAULT above); 0: never. The
    session does not close *fd*.
    """

    def __init__(
        self,
        ops,
        fd: int,
        *,
        flags: int = abi.DEFAULT_INIT_FLAGS,
        max_write: int = 1 << 20,
        max_readahead=None,
        max_background: int = 0,
        congestion_threshold: int = 0,
        time_gran: int = 1,
        max_stack_depth: int = 1,
        spin: float = 0.0,
    ):
        self.ops = ops
        self.spin = max(0.0, spin)
        self._spin_misses = 0
        self.fd = fd
        self.want = flags
        self.max_write = max(_PAGE, max_write)
        self.max_readahead = max_readahead
        self.max_background = max_background
        self.congestion_threshold = congestion_threshold
        self.time_gran = time_gran
        self.max_stack_depth = max(0, min(abi.MAX_STACK_DEPTH, max_stack_depth))
        self.conn = None  # a Conn once INIT is answered
        self.proto_minor = 0
        self.requests = 0  # answered or not: every request read
        self.readers = 0  # reader tasks alive
        self._bufsize = max(abi.MIN_READ_BUFFER, _HDR + abi.WRITE_IN.size + self.max_write + _PAGE)
        self._buffers = []
        self._nursery: trio.Nursery | None = None
        self._waiting = False
        self._ended = False
        self._destroyed = False
        self._debug = False
        self._before_loop = False
        self._replay: list = []  # requests of parked handlers that raised LoopNeeded (run() answers them)
        self._splicer: Splicer | None = None  # made at the first spliced READ
        self._handlers = self._handler_table()
        self._immediate = self._immediate_table()
        self.others_denied = False  # deny_others: an open that reaches no handler would escape the filter

    def deny_others(self, owner: int) -> None:
        """allow_root, as libfuse does it: the mount is made with allow_other, and requests of users
        other than *owner* and root answer EACCES, except those on what is already open (read, write,
        release ...) and the protocol's own (INIT, FORGET, INTERRUPT, DESTROY)."""
        self.others_denied = True
        allowed = {0, owner}
        for opcode, handler in list(self._handlers.items()):
            if opcode not in _OPEN_OR_OWN:
                self._handlers[opcode] = _guarded(handler, allowed)
        for opcode in list(self._immediate):
            if opcode not in _OPEN_OR_OWN:
                del self._immediate[opcode]  # answered by the guarded handler (the filter needs the caller)

    # ------------------------------------------------------------------ the loop

    @property
    def ended(self) -> bool:
        """The device went away (unmounted), DESTROY came, or stop() was called."""
        return self._ended

    def serve_before_loop(self, until, wake_fd: int | None = None, idle: float | None = None):
        """Answer requests on this thread, without trio, until `until.is_set()`, the session ends, the
        device stays idle for *idle* seconds, or a handler raises LoopNeeded.

        Returns the request whose handler raised LoopNeeded (bytes, read but unanswered, for
        `run(first=...)`); IDLE when the device was idle for *idle* seconds (start the loop with nothing
        pending); None when *until* was set or the session ended (ENODEV).
        *wake_fd*: a descriptor that becomes readable when *until* may have changed (a signal wake-up
        pipe): then the wait for the device needs no short timeout, and *until* is looked at only when it
        is readable; without it *until* is looked at every 2 ms and between requests.

        A handler may wait here only for a descriptor (`await readable_before_loop(fd)`, e.g. the end
        of a copy in a thread of its own): it is parked, with the buffer its request is in, and the
        device is served meanwhile; it goes on when the descriptor is readable. Before this returns, for
        whatever reason, every parked handler is finished (their threads cannot be cancelled), and one
        that raised LoopNeeded on the way is answered by the loop after *first*.
        """
        self._debug = log.isEnabledFor(DEBUG)
        os.set_blocking(self.fd, False)
        buf = self._buffers.pop() if self._buffers else bytearray(self._bufsize)
        view = memoryview(buf)
        bufs = (buf,)
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        timeout = 2
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
            timeout = -1 if idle is None else max(1, int(idle * 1000))
        parked: dict = {}  # fd -> (coroutine, its buffer, its length)
        spin = self.spin
        self._before_loop = True
        every_round = wake_fd is None
        try:
            if until.is_set():
                return None
            while not self._ended:
                if every_round and until.is_set():
                    return None
                # Wait first, read then: a caller's next request mostly comes after the answer to its
                # last, so reading first would mostly fail (a syscall and an exception per request).
                events = self._spin_for_request(poller.poll) if spin else []
                if not events:
                    events = poller.poll(timeout)
                if not events:
                    if wake_fd is not None and idle is not None and not parked:
                        return IDLE
                    continue
                device = False
                for fd, _ in events:
                    if fd == self.fd:
                        device = True
                    elif fd == wake_fd:
                        _drain(wake_fd)
                        if until.is_set():
                            return None
                    elif fd in parked:
                        poller.unregister(fd)
                        first = self._resume(parked, fd, poller)
                        if first is not None:
                            return first
                if not device:
                    continue
                try:
                    n = os.readv(self.fd, bufs)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        continue
                    if exc.errno in CONNECTION_GONE:
                        self._ended = True
                        return None
                    raise
                if n == 0:
                    self._ended = True
                    return None
                self.requests += 1
                if self._answer_now(view, n):
                    continue
                coro = self._answer(view, n)
                try:
                    trap = coro.send(None)
                except StopIteration:
                    continue
                except LoopNeeded:
                    return bytes(view[:n])
                if type(trap) is _Readable:
                    # parked with its buffer; the next requests are read into another
                    parked[trap.fd] = (coro, buf, n)
                    poller.register(trap.fd, select.POLLIN)
                    buf = self._buffers.pop() if self._buffers else bytearray(self._bufsize)
                    view = memoryview(buf)
                    bufs = (buf,)
                    continue
                self._waited_before_loop(coro, view, n)
            return None
        finally:
            self._finish_parked(parked)
            self._before_loop = False
            self._buffers.append(buf)

    def _spin_for_request(self, poll) -> list[tuple[int, int]]:
        """Poll (*poll*: a select.poll's poll) without sleeping for up to self.spin seconds, yielding the
        CPU to anything else runnable on it meanwhile: the events of the poll that found something, or
        [] (nothing came). Off after SPIN_MISSES fruitless spins in a row, retried once every SPIN_RETRY
        calls (see SPIN_DEFAULT)."""
        misses = self._spin_misses
        if misses >= SPIN_MISSES:
            if misses < SPIN_MISSES + SPIN_RETRY:
                self._spin_misses = misses + 1
                return []
            misses = SPIN_MISSES - 1  # one more try: a miss turns spinning off again at once
        deadline = perf_counter() + self.spin
        yield_cpu = os.sched_yield
        while True:
            events = poll(0)
            if events:
                self._spin_misses = 0
                return events
            if perf_counter() >= deadline:
                self._spin_misses = misses + 1
                return []
            yield_cpu()

    def _resume(self, parked: dict, fd: int, poller=None):
        """Go on with the handler parked on *fd* (readable now). Returns its request (bytes) when it
        raised LoopNeeded, else None; parks it again when it waits again."""
        coro, buf, n = parked.pop(fd)
        try:
            trap = coro.send(None)
        except StopIteration:
            self._buffers.append(buf)
            return None
        except LoopNeeded:
            self._buffers.append(buf)
            return bytes(buf[:n])
        if type(trap) is _Readable:
            parked[trap.fd] = (coro, buf, n)
            if poller is not None:
                poller.register(trap.fd, select.POLLIN)
            return None
        self._waited_before_loop(coro, memoryview(buf), n)
        self._buffers.append(buf)
        return None

    def _finish_parked(self, parked: dict) -> None:
        """Wait for every parked handler to finish (the loop is about to run, or the session ends);
        those that raise LoopNeeded on the way are answered by run() after its *first*."""
        while parked:
            poller = select.poll()
            for fd in parked:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll():
                first = self._resume(parked, fd)
                if first is not None:
                    self._replay.append(first)

    def _waited_before_loop(self, coro, view, n: int) -> None:
        # A handler waited (yielded to trio) instead of raising LoopNeeded: a bug in the handler.
        coro.close()
        log.error("ERROR: %s waited before the loop ran; answered EIO", abi.opcode_name(_opcode_of(view, n)))
        self.reply(error_reply(abi.IN_HEADER.unpack_from(view, 0)[2], errno.EIO))

    async def run(self, first: bytes | None = None) -> None:
        """Serve until the filesystem is unmounted (ENODEV), DESTROY, or stop(). *first*: a request
        read already (by serve_before_loop), answered before any other; then those of handlers parked
        before the loop that needed it on the way."""
        import trio

        os.set_blocking(self.fd, False)
        self._debug = log.isEnabledFor(DEBUG)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # answered before anything read later (if one waits, _handle starts a reader)
                if first:
                    await self._answer_first(first)
                while self._replay:
                    await self._answer_first(self._replay.pop(0))
                nursery.start_soon(self._reader)
        finally:
            self._nursery = None
            self._ended = True
            if not self._destroyed:
                self._destroyed = True
                try:
                    await self.ops.destroy()
                except Exception:
                    log.exception("ERROR in destroy()")

    def stop(self) -> None:
        """End run() (its readers are cancelled); the mount stays until unmounted."""
        self._ended = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def spare_reader(self) -> None:
        """Start one more reader. The session does so by itself when a handler first waits."""
        if self._nursery is not None and not self._ended:
            self._nursery.start_soon(self._reader)

    async def _answer_first(self, request: bytes) -> None:
        buf = bytearray(max(self._bufsize, len(request)))
        buf[: len(request)] = request
        await self._handle(memoryview(buf), len(request))

    async def _reader(self) -> None:
        import trio

        buf = self._buffers.pop() if self._buffers else bytearray(self._bufsize)
        view = memoryview(buf)
        fd = self.fd
        readv = os.readv
        answer_now = self._answer_now
        bufs = (buf,)
        streak = 0
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        self.readers += 1
        poll = poller.poll
        spin = self.spin
        ready = False  # trio said the device is readable: read without polling first
        try:
            while not self._ended:
                # Poll first, read then (as before the loop): a request mostly comes while the reader
                # waits, and a read that finds nothing costs a syscall and an exception.
                if not ready and spin and not self._waiting:
                    ready = bool(self._spin_for_request(poll))
                if not ready and not poll(0 if self._waiting else BRIEF_WAIT_MS):
                    if self._waiting:
                        return  # another reader waits for the next request: this one is spare
                    self._waiting = True
                    try:
                        await trio.lowlevel.wait_readable(fd)
                    finally:
                        self._waiting = False
                    streak = 0
                    ready = True
                    continue
                ready = False
                try:
                    n = readv(fd, bufs)
                except BlockingIOError:
                    continue  # another reader took it
                except OSError as exc:
                    if exc.errno == errno.ENOENT:  # the request was interrupted before it was read
                        continue
                    if exc.errno in CONNECTION_GONE:  # unmounted, or the connection aborted
                        self._ended = True
                        return
                    raise
                if n == 0:  # end of file: a socket standing in for the device was closed
                    self._ended = True
                    return
                self.requests += 1
                if not answer_now(view, n):
                    await self._answer(view, n)
                streak += 1
                if streak >= READY_STREAK:
                    streak = 0
                    await trio.lowlevel.checkpoint()
        finally:
            self.readers -= 1
            self._buffers.append(buf)

    async def _handle(self, view, n: int) -> None:
        """Answer the request in view[:n]."""
        if not self._answer_now(view, n):
            await self._answer(view, n)

    def _answer_now(self, view, n: int) -> bool:
        """Answer the request in view[:n] in place if its handler never waits (the filesystem's *_now
        methods): no coroutine, no Context, the same error edge as _answer. False: _answer answers it
        (as it does anything malformed, and what a handler says it cannot answer now: None)."""
        if n < _HDR:
            return False
        length, opcode, unique, nodeid, extlen = _unpack_head(view, 0)
        handler = self._immediate.get(opcode)
        if handler is None:
            return False
        end = n - extlen * 8
        if length != n or end < _HDR:
            return False
        try:
            msg = handler(view, end, unique, nodeid)
            if msg is None:
                return False  # not now (e.g. an open that copies up): the async handler answers it
        except (Exception, LoopNeeded) as exc:
            msg = self._failed(exc, opcode, nodeid, unique)
        self.reply(msg)
        return True

    def _failed(self, exc: BaseException, opcode: int, nodeid: int, unique: int):
        """The error edge: the answer to a request whose handler raised *exc* (called in its except).
        LoopNeeded goes on up before the loop (serve_before_loop hands the request to the loop); in
        the loop it is a bug like any other."""
        if isinstance(exc, LoopNeeded) and self._before_loop:
            raise exc
        if isinstance(exc, OSError):
            err = exc.errno
            if self._debug:
                log.debug("%s node %d: %s", abi.opcode_name(opcode), nodeid, exc)
            if not err or not 0 < err < 512:  # the kernel refuses an error outside -511..0
                err = errno.EIO
        elif isinstance(exc, Malformed):
            log.error("malformed %s request (unique %d): %s", abi.opcode_name(opcode), unique, exc)
            err = errno.EIO
        else:
            log.exception("ERROR in %s (node %d, unique %d)", abi.opcode_name(opcode), nodeid, unique)
            err = errno.EIO
        return error_reply(unique, err) if opcode not in _NO_REPLY else None

    async def _answer(self, view, n: int) -> None:
        """Answer the request in view[:n] with its async handler."""
        if n < _HDR:
            log.error("malformed request: %d bytes, shorter than the header", n)
            if n >= 16:
                self.reply(error_reply(abi.OUT_HEADER.unpack_from(view, 0)[2], errno.EIO))
            return
        length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = abi.IN_HEADER.unpack_from(view, 0)
        end = n - extlen * 8  # extensions (security context, groups) follow the arguments
        if length != n or end < _HDR:
            log.error(
                "malformed %s request: length %d, read %d, extensions %d", abi.opcode_name(opcode), length, n, extlen
            )
            if opcode not in _NO_REPLY:
                self.reply(error_reply(unique, errno.EIO))
            return
        handler = self._handlers.get(opcode)
        if handler is None:
            if self._debug:
                log.debug("%s (unique %d): ENOSYS", abi.opcode_name(opcode), unique)
            self.reply(error_reply(unique, errno.ENOSYS))
            return
        ctx = Context(uid, gid, pid, unique, self)
        coro = handler(view, end, unique, nodeid, ctx)
        try:
            try:
                trap = coro.send(None)  # runs in this task, as `await` would
            except StopIteration as stop:
                msg = stop.value  # answered without waiting: the fast path
            else:
                # the handler waits: another reader serves the device meanwhile
                if not ctx.spared:
                    ctx.spared = True
                    self.spare_reader()
                msg = await _GoOn(coro, trap)
        except (Exception, LoopNeeded) as exc:
            msg = self._failed(exc, opcode, nodeid, unique)
        if msg is not None:
            self.reply(msg)

    def reply(self, msg) -> None:
        """Write one whole message (bytes, or a list of buffers for writev, or a SplicedRead) to the
        device."""
        try:
            if type(msg) is bytes:
                os.write(self.fd, msg)
            elif type(msg) is SplicedRead:
                self._splice(msg)
            else:
                os.writev(self.fd, msg)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # the kernel no longer waits for it (interrupted)
                return
            if exc.errno in CONNECTION_GONE:
                self._ended = True
                return
            log.error("writing a reply failed: %s", exc)

    def _splice(self, msg: SplicedRead) -> None:
        """Answer a READ spliced from its backing file (splice.py); from memory where the pipes cannot
        carry it or splicing fails (reading there says what failed, if anything did)."""
        splicer = self._splicer
        if splicer is None:
            conn = self.conn
            most = conn.max_pages * _PAGE if conn is not None and conn.max_pages else self.max_write
            splicer = self._splicer = Splicer(self.fd, most)
        if splicer.fits(msg.offset, msg.size):
            try:
                splicer.reply(msg.unique, msg.fd, msg.offset, msg.size, _pack_out)
                return
            except DeviceGone:
                raise
            except OSError as exc:
                if self._debug:
                    log.debug("READ spliced from fd %d: %s; answered from memory", msg.fd, exc)
        try:
            read_now: Callable = self.ops.read_now  # type: ignore[assignment]
            out = self._data(msg.unique, read_now(msg.fh, msg.offset, msg.size), msg.size)
        except Exception as exc:
            out = self._failed(exc, abi.READ, 0, msg.unique)
        self.reply(out)  # bytes or buffers: written as any other answer

    def close(self) -> None:
        """Let go of what the session opened itself (the device fd is the caller's)."""
        if self._splicer is not None:
            self._splicer.close()
            self._splicer = None

    def splice_reads(self) -> None:
        """Splice big READ answers from the files the filesystem names (ops.read_fd; splice.py)."""
        if self.ops.read_fd is not None and self.ops.read_now is not None:
            self.read_fd = self.ops.read_fd

    # ------------------------------------------------------------------ passthrough

    def backing_open(self, fd: int) -> int:
        """Register the open file *fd* as a backing file (PASSTHROUGH agreed; the daemon needs
        CAP_SYS_ADMIN): its backing id, for FileInfo(backing_id=...). The kernel keeps its own
        reference to the file: *fd* may be closed at once. OSError: EPERM (not privileged, or
        passthrough not agreed), ELOOP (the file's filesystem is stacked too deep), EOPNOTSUPP ..."""
        import fcntl

        arg = bytearray(abi.BACKING_MAP.pack(fd, 0, 0))
        return fcntl.ioctl(self.fd, abi.DEV_IOC_BACKING_OPEN, arg, True)  # mutable: returns the id

    def backing_close(self, backing_id: int) -> None:
        """Let go of a backing id (opens already answered with it keep their file)."""
        import fcntl

        fcntl.ioctl(self.fd, abi.DEV_IOC_BACKING_CLOSE, bytearray(backing_id.to_bytes(4, "little")), True)

    # ------------------------------------------------------------------ notifications

    def _notify(self, code: int, body: bytes, data=b"") -> bool:
        """Send notification *code* (*body*, then *data* as it is); False: the kernel has no such
        node or name (ENOENT)."""
        try:
            if data:
                os.writev(self.fd, [_pack_out(16 + len(body) + len(data), code, 0) + body, data])
            else:
                os.write(self.fd, _pack_out(16 + len(body), code, 0) + body)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # the kernel does not have that node or name cached
                return False
            raise
        return True

    def notify_inval_entry(self, parent: int, name: bytes, expire_only: bool = False) -> bool:
        """Drop the kernel's cached name *name* in *parent* (False: it had none cached). Not from a handler
        answering a request on that very directory: the kernel holds its lock meanwhile."""
        flags = abi.EXPIRE_ONLY if expire_only else 0
        return self._notify(
            abi.NOTIFY_INVAL_ENTRY, abi.NOTIFY_INVAL_ENTRY_OUT.pack(parent, len(name), flags) + name + b"\0"
        )

    def notify_inval_inode(self, node: int, offset: int = 0, length: int = 0) -> bool:
        """Drop the kernel's cached attributes of *node*, and its cached data from *offset* for *length*
        bytes (0: to the end; a negative offset keeps the data)."""
        return self._notify(abi.NOTIFY_INVAL_INODE, abi.NOTIFY_INVAL_INODE_OUT.pack(node, offset, length))

    def notify_store(self, node: int, offset: int, data) -> bool:
        """Put *data* into the kernel's page cache of *node* at *offset* (False: the kernel does not have
        that node). Only where no read of that node can be waiting for an answer: the kernel locks the
        pages it fills, and a read waiting for this daemon holds them locked."""
        return self._notify(abi.NOTIFY_STORE, abi.NOTIFY_STORE_OUT.pack(node, offset, len(data), 0), data)

    def notify_delete(self, parent: int, child: int, name: bytes) -> bool:
        """*name* in *parent* (node *child*) is gone: drop it, and detach the child's cached dentry."""
        return self._notify(abi.NOTIFY_DELETE, abi.NOTIFY_DELETE_OUT.pack(parent, child, len(name), 0) + name + b"\0")
