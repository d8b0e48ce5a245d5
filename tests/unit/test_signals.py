"""The one signal guard of a flow: SIGTERM and SIGHUP raise inside it; after ``hold()`` they
wait for the end of the block, so that what the block did after the hold is complete."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from updater import signals
from updater.signals import Interrupted


def test_a_signal_raises_at_once_inside_the_guard() -> None:
    before = signal.getsignal(signal.SIGTERM)
    ran: list[str] = []
    with pytest.raises(Interrupted, match="SIGTERM"):
        with signals.guarded():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes, within these
                pass
            ran.append("after the signal")
    assert ran == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_held_signal_arrives_when_the_block_ends() -> None:
    before = signal.getsignal(signal.SIGHUP)
    ran: list[str] = []
    with pytest.raises(Interrupted, match="SIGHUP"):
        with signals.guarded() as guard:
            guard.hold()
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(1000):
                pass
            ran.append("after the signal")
    assert ran == ["after the signal"]
    assert signal.getsignal(signal.SIGHUP) is before


@pytest.fixture
def other_thread() -> Iterator[None]:
    """A second thread that blocks no signal, as a reader or writer thread or a library's: the
    kernel may hand a signal sent to the process to it instead of the main thread."""
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    yield
    stop.set()
    t.join()


def _python_work() -> None:
    """A fifth of a second of bytecodes: a pending handler runs between two of them, also when
    the signal first has to wake the other thread up."""
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        pass


@pytest.fixture
def interruptible() -> Iterator[None]:
    """Ctrl-C raising KeyboardInterrupt, as in an interactive shell; a job started in the
    background by a non-interactive shell (a CI runner) inherits SIGINT ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize(("sig", "raised"), [
    (signal.SIGHUP, Interrupted), (signal.SIGTERM, Interrupted), (signal.SIGINT, KeyboardInterrupt),
])  # fmt: skip
def test_a_held_signal_waits_whatever_thread_receives_it(
    other_thread: None, interruptible: None, sig: signal.Signals, raised: type[BaseException]
) -> None:
    """Holding by the main thread's mask alone let the signal reach the other thread, and its
    handler then ran in the main thread in the middle of the held steps."""
    ran: list[str] = []
    with pytest.raises(raised):
        with signals.guarded() as guard:
            guard.hold()
            os.kill(os.getpid(), sig)
            _python_work()
            ran.append("the held steps finished")
    assert ran == ["the held steps finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_held_signal_that_was_ignored_stays_ignored(other_thread: None) -> None:
    """The hold keeps a signal for the handler from before it: SIG_IGN drops it (a service or
    a background job whose SIGINT is ignored does not get a KeyboardInterrupt from the hold)."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            _python_work()
        _python_work()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_deferred_delivers_to_the_handlers_in_place_after_the_block(other_thread: None) -> None:
    got: list[int] = []
    before = signal.signal(signal.SIGHUP, lambda signum, frame: got.append(signum))
    try:
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGHUP)  # twice: delivered once, as a blocked signal is
            _python_work()
            assert got == []
        assert got == [signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, before)


def test_nothing_held_leaves_the_handlers_as_they_were() -> None:
    before = {s: signal.getsignal(s) for s in signals.DEFERRED}
    with signals.deferred():
        pass
    with signals.guarded() as guard:
        guard.hold()
    assert {s: signal.getsignal(s) for s in signals.DEFERRED} == before
