"""The reader's spin before it sleeps (protocol/session.py, SPIN_DEFAULT): it polls for the next request
for at most `spin` seconds, stops spinning after SPIN_MISSES fruitless spins in a row, and tries again
once every SPIN_RETRY waits."""

import os
import select
import socket
import time

import pytest

from unionfs.protocol import session as session_mod
from unionfs.protocol.operations import Operations
from unionfs.protocol.session import SPIN_MISSES, SPIN_RETRY, Session


class _Poll:
    """A poll that finds something at its *ready_at*-th call (never with None), counting its calls."""

    def __init__(self, ready_at=None):
        self.calls, self.ready_at = 0, ready_at

    def __call__(self, timeout):
        assert timeout == 0, "a spin never sleeps"
        self.calls += 1
        return [(3, select.POLLIN)] if self.ready_at is not None and self.calls >= self.ready_at else []


class _Clock:
    """perf_counter for the session module that moves *step* seconds at every reading: what a spin
    does then cannot depend on how this machine schedules the test."""

    def __init__(self, step):
        self.now, self.step = 1000.0, step

    def __call__(self):
        now = self.now
        self.now += self.step
        return now


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock(1e-6)
    monkeypatch.setattr(session_mod, "perf_counter", fake)
    return fake


@pytest.fixture
def session():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        yield Session(Operations(), b.fileno(), spin=200e-6)
    finally:
        a.close()
        b.close()


def test_a_spin_ends_when_a_request_comes(session, clock):
    poll = _Poll(ready_at=3)
    session._spin_misses = 2
    assert session._spin_for_request(poll) == [(3, select.POLLIN)]
    assert poll.calls == 3 and session._spin_misses == 0


def test_a_spin_polls_until_its_deadline_and_no_longer(session, clock):
    clock.step = 50e-6  # a quarter of the session's 200 us a reading: polls at 0, 50, 100 and 150 us
    poll = _Poll()
    assert session._spin_for_request(poll) == []
    assert poll.calls == 4 and session._spin_misses == 1


def test_a_spin_is_bounded_in_time(session):
    """On the real clock: it returns once its time is up, not before, and not much later (the bound is
    loose: the test may be descheduled at any point of it)."""
    poll = _Poll()
    start = time.perf_counter()
    assert session._spin_for_request(poll) == []
    took = time.perf_counter() - start
    assert poll.calls >= 1 and 200e-6 <= took < 2.0
    assert session._spin_misses == 1


def test_fruitless_spins_turn_spinning_off_and_it_is_tried_again_later(session, clock):
    for _ in range(SPIN_MISSES):
        assert session._spin_for_request(_Poll()) == []
    for _ in range(SPIN_RETRY):  # off: no poll at all
        poll = _Poll(ready_at=1)
        assert session._spin_for_request(poll) == [] and poll.calls == 0
    retry = _Poll()
    assert session._spin_for_request(retry) == [] and retry.calls > 0  # the one try: nothing came
    poll = _Poll(ready_at=1)
    assert session._spin_for_request(poll) == [] and poll.calls == 0  # so off again at once
    for _ in range(SPIN_RETRY - 1):
        session._spin_for_request(_Poll())
    hit = _Poll(ready_at=2)
    assert session._spin_for_request(hit) == [(3, select.POLLIN)] and hit.calls == 2  # a try that found one: back on
    assert session._spin_misses == 0
    assert session._spin_for_request(_Poll(ready_at=1)) == [(3, select.POLLIN)]


def test_the_default_is_off_for_the_session_and_on_for_the_daemon():
    from unionfs.options import SPIN_US, MountOptions

    a, b = socket.socketpair()
    try:
        assert Session(Operations(), b.fileno()).spin == 0
    finally:
        a.close()
        b.close()
    assert MountOptions([]).spin == SPIN_US > 0
    assert session_mod.SPIN_DEFAULT == SPIN_US / 1e6


def test_a_spin_on_a_real_descriptor(session):
    """With a real descriptor: nothing readable, the spin ends by itself; readable, at its first poll."""
    r, w = os.pipe()
    try:
        poller = select.poll()
        poller.register(r, select.POLLIN)
        assert session._spin_for_request(poller.poll) == []
        os.write(w, b"x")
        assert session._spin_for_request(poller.poll) == [(r, select.POLLIN)]
    finally:
        os.close(r)
        os.close(w)
