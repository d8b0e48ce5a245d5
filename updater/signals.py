"""Signals during the few steps that must not be cut short: after a kernel is loaded for kexec
and before the jump, a SIGTERM, SIGHUP or Ctrl-C must unload it (a kernel left loaded turns a
later plain reboot into a kexec that consumes no try).

``raising()`` turns SIGTERM and SIGHUP into an ``Interrupted`` exception (SIGINT already raises
KeyboardInterrupt), so that the ``finally``/``except`` of the caller runs. ``deferred()`` blocks
the three while a durable write is under way, so that the write is either done or not started
when the exception arrives, and the caller knows which.

This module does not decide what to undo; the boot flow does.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from updater.errors import Interrupted

__all__ = ["Interrupted", "deferred", "raising"]

CAUGHT = (signal.SIGTERM, signal.SIGHUP)
DEFERRED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum, signal.Signals(signum).name)


@contextlib.contextmanager
def raising() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # Python delivers signals to the main thread only; nothing to install here
        return
    previous = {sig: signal.signal(sig, _raise) for sig in CAUGHT}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends; then they are delivered."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
