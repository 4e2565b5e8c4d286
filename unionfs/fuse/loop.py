"""The request loop: pyfuse3's own, with one reader task where pyfuse3 keeps two taking turns.

pyfuse3.main() lets worker tasks take turns on a trio.Lock around "wait until /dev/fuse is readable":
with a single caller, two tasks alternate on every request, and each turn costs a wake-up of the other
task, an epoll re-registration and the lock's own scheduling point. Measured on a minimal pyfuse3
filesystem (getxattr round trips): 65 us a request with pyfuse3.main(), 33 us with one reader and a lock
that does not yield when it is free, which is what fuse-overlayfs answers in (34 us).

So: one reader task reads and answers requests. A handler that is about to wait (a copy-up's byte
copy in a worker thread, or another request's copy-up) calls `spare_reader()` first: a second reader
serves the other requests meanwhile, and ends by itself once it finds another reader waiting
(pyfuse3's own idle rule, min_tasks=0). pyfuse3 starts a worker itself when its task count is below
max_tasks; spare readers it did not count lower that count as they end, so max_tasks is a large
negative number that the count never reaches (with 0 the third spare's end would start a second
permanent reader, and the turns would be back).

The reader also skips the trip through epoll and the scheduler when a request is queued already (a
poll(2) with no timeout says so), up to READY_STREAK requests in a row: parallel callers, readahead and
the kernel's background releases and forgets queue requests, and each skip saves about 10 us.

This uses two seams of pyfuse3: its module attribute `trio` (the one pyfuse3.asyncio replaces) and
`_session_loop(nursery, min_tasks, max_tasks)`, the same in pyfuse3 3.3 to 3.5. Where either is missing
the daemon runs plain pyfuse3.main() and logs that it did.
"""

import logging
import select

import pyfuse3
import trio

log = logging.getLogger("unionfs")

_spare_nursery = None
_NEVER = -(1 << 30)  # max_tasks: pyfuse3 never starts a worker of its own


class _ReadLock:
    """trio.Lock without the scheduling point on a free acquire (the wait for readability that follows
    is one), handing the lock straight to the next waiter on release."""

    __slots__ = ("_owner", "_lot")

    def __init__(self):
        self._owner = None
        self._lot = trio.lowlevel.ParkingLot()

    async def __aenter__(self):
        if self._owner is None and not self._lot:
            self._owner = trio.lowlevel.current_task()
            return
        await self._lot.park()  # __aexit__ of the owner makes this task the owner

    async def __aexit__(self, *exc_info):
        if self._lot:
            (self._owner,) = self._lot.unpark(count=1)
        else:
            self._owner = None

    def locked(self) -> bool:
        return self._owner is not None


class _Lowlevel:
    """trio.lowlevel, with a wait_readable that returns at once when a request is already queued (up to
    READY_STREAK times in a row, then it waits as trio does, which lets the other tasks run)."""

    def __init__(self):
        self._poll = select.poll()
        self._fd = None
        self._streak = 0

    def __getattr__(self, name):
        return getattr(trio.lowlevel, name)

    async def wait_readable(self, fd):
        if self._streak < READY_STREAK:
            if fd != self._fd:
                if self._fd is not None:
                    self._poll.unregister(self._fd)
                self._poll.register(fd, select.POLLIN)
                self._fd = fd
            if self._poll.poll(0):
                self._streak += 1
                return
        self._streak = 0
        await trio.lowlevel.wait_readable(fd)


READY_STREAK = 8


class _TrioForPyfuse3:
    """What pyfuse3 reaches as its `trio`: trio itself, with the read lock and the wait above."""

    Lock = _ReadLock

    def __init__(self):
        self.lowlevel = _Lowlevel()

    def __getattr__(self, name):
        return getattr(trio, name)


def available() -> bool:
    """Whether this pyfuse3 has the seams the single-reader loop needs."""
    return hasattr(pyfuse3, "trio") and callable(getattr(pyfuse3, "_session_loop", None))


def install() -> bool:
    """Give pyfuse3 the read lock above; call before pyfuse3.init() (3.3 makes its lock there)."""
    if not available():
        log.info(
            "pyfuse3 %s lacks the single-reader seams: using pyfuse3.main() as it is",
            getattr(pyfuse3, "__version__", "?"),
        )
        return False
    pyfuse3.trio = _TrioForPyfuse3()
    return True


async def main(nursery) -> None:
    """Serve requests until the session ends; spare readers run in *nursery*."""
    global _spare_nursery
    if not isinstance(pyfuse3.trio, _TrioForPyfuse3):
        await pyfuse3.main()
        return
    _spare_nursery = nursery
    try:
        await pyfuse3.main(min_tasks=1, max_tasks=_NEVER)
    finally:
        _spare_nursery = None


def spare_reader() -> None:
    """Start one more reader before this request waits, so the others are not held up meanwhile."""
    if _spare_nursery is not None:
        _spare_nursery.start_soon(pyfuse3._session_loop, _spare_nursery, 0, _NEVER, name="pyunionfs-spare-reader")
