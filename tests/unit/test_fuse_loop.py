"""The single-reader request loop: the installed pyfuse3 has the seams it uses, and its read lock is a
lock (one owner, waiters served in order, handed over on release) that does not yield when free.
That other requests go on while one waits on a copy-up is tested through a real mount in
tests/mount/test_stress.py (test_latency_during_big_copy_up)."""
import pyfuse3
import trio
import trio.testing

from unionfs import fuse_loop


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
        assert shim.lowlevel is trio.lowlevel and shim.open_nursery is trio.open_nursery
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


def test_spare_reader_outside_the_daemon_does_nothing():
    fuse_loop.spare_reader()
