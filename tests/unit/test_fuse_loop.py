"""The single-reader request loop: the installed pyfuse3 has the seams it uses, and its read lock is a
lock (one owner, waiters served in order, handed over on release) that does not yield when free.
That other requests go on while one waits on a copy-up is tested through a real mount in
tests/mount/test_stress.py (test_latency_during_big_copy_up)."""

import os

import pyfuse3
import pytest
import trio
import trio.testing

from unionfs.fuse import loop as fuse_loop


def test_the_installed_pyfuse3_has_the_seams():
    # If a pyfuse3 release drops them the daemon still works (plain pyfuse3.main()), at twice the cost
    # a request: this test is the alarm.
    assert fuse_loop.available(), pyfuse3.__version__


def test_install_keeps_everything_else_of_trio():
    saved = pyfuse3.trio
    try:
        assert fuse_loop.install()
        shim = pyfuse3.trio
        assert shim.Lock is fuse_loop._ReadLock
        assert shim.open_nursery is trio.open_nursery
        assert shim.lowlevel.current_task is trio.lowlevel.current_task
        assert shim.lowlevel.notify_closing is trio.lowlevel.notify_closing
        assert shim.ClosedResourceError is trio.ClosedResourceError
    finally:
        pyfuse3.trio = saved


def test_read_lock_excludes_and_hands_over_in_order():
    order = []

    async def main():
        lock = fuse_loop._ReadLock()

        async def worker(name, hold):
            async with lock:
                order.append(("in", name))
                assert lock.locked()
                await trio.sleep(hold)
                order.append(("out", name))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker, "a", 0.05)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(worker, "b", 0)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(worker, "c", 0)
        assert not lock.locked()

    trio.run(main)
    assert order == [("in", "a"), ("out", "a"), ("in", "b"), ("out", "b"), ("in", "c"), ("out", "c")]


def test_free_read_lock_takes_no_scheduling_point():
    async def main():
        lock = fuse_loop._ReadLock()
        with trio.CancelScope() as scope:
            scope.cancel()
            # trio.Lock would raise Cancelled here (its acquire checkpoints); ours does not yield.
            async with lock:
                pass
        assert not scope.cancelled_caught

    trio.run(main)


class _RecordingNursery:
    def __init__(self):
        self.started = []

    def start_soon(self, fn, *args, name=None):
        self.started.append((fn, args, name))


def test_spare_reader_outside_the_daemon_does_nothing(monkeypatch):
    # No session loop running (no nursery): nothing is started, and pyfuse3's loop is never entered.
    monkeypatch.setattr(fuse_loop, "_spare_nursery", None)
    entered = []
    monkeypatch.setattr(pyfuse3, "_session_loop", lambda *a: entered.append(a))
    fuse_loop.spare_reader()
    assert entered == []


def test_spare_reader_starts_one_reader_that_never_starts_workers(monkeypatch):
    nursery = _RecordingNursery()
    monkeypatch.setattr(fuse_loop, "_spare_nursery", nursery)
    fuse_loop.spare_reader()
    assert len(nursery.started) == 1
    fn, args, _name = nursery.started[0]
    assert fn is pyfuse3._session_loop
    # min_tasks 0: it ends once another reader waits; max_tasks never reached: pyfuse3 adds no worker.
    assert args == (nursery, 0, fuse_loop._NEVER) and fuse_loop._NEVER < 0


def test_wait_readable_returns_at_once_while_requests_queue_then_lets_others_run():
    """A request already queued is read without a trip through epoll and the scheduler, READY_STREAK
    times in a row at most; then the wait is trio's (a scheduling point: other tasks get their turn)."""
    lowlevel = fuse_loop._Lowlevel()
    r, w = os.pipe()
    try:

        async def main():
            with trio.CancelScope() as scope:
                scope.cancel()
                for _ in range(fuse_loop.READY_STREAK):
                    await lowlevel.wait_readable(r)  # readable: no scheduling point, no Cancelled
                with pytest.raises(trio.Cancelled):
                    await lowlevel.wait_readable(r)  # the streak is over: trio's own wait
            # not readable: trio's wait, which returns once data comes
            os.read(r, 1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lowlevel.wait_readable, r)
                await trio.testing.wait_all_tasks_blocked()
                os.write(w, b"y")

        os.write(w, b"x")
        trio.run(main)
    finally:
        os.close(r)
        os.close(w)
