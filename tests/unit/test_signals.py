"""The one signal guard of a flow: SIGTERM and SIGHUP raise inside it; after ``hold()`` they
wait for the end of the block, so that what the block did after the hold is complete."""

from __future__ import annotations

import os
import signal

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
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & signals.DEFERRED  # unblocked again
