"""Signals during the few steps that must not be cut short: after a kernel is loaded for kexec
and before the jump, a SIGTERM, SIGHUP or Ctrl-C must unload it (a kernel left loaded turns a
later plain reboot into a kexec that consumes no try).

``guarded()`` is the one context manager a flow holds around those steps: it turns SIGTERM and
SIGHUP into an ``Interrupted`` exception (SIGINT already raises KeyboardInterrupt), so that the
``finally``/``except`` of the caller runs, and from ``Guard.hold()`` on it holds the three back
until the block ends, so that a durable write started after the hold is either done or not
started when the exception arrives, and the caller knows which. When the block ends, a held
signal arrives (as the exception, raised where the block ends), and then the previous handlers
are back. ``raising()`` and ``deferred()`` are the two halves on their own.

This module does not decide what to undo; the boot flow does.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from updater.errors import Interrupted

__all__ = ["Guard", "Interrupted", "deferred", "guarded", "raising"]

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


class _Held:
    """A handler that keeps the signals it receives, in order, for ``release``.

    Holding is done by the handler, not by the thread's signal mask: a mask holds a signal back
    only from the thread that set it, and the kernel gives a signal sent to the process to any
    thread that does not block it (a reader or writer thread, a library's). Python runs every
    handler in the main thread, whichever thread the signal arrived in, so a handler that keeps
    the signal holds it whatever the threads of the process."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.previous: dict[int, signal._HANDLER] = {}

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if signum not in self.pending:
            self.pending.append(signum)

    def start(self) -> None:
        self.previous = {sig: signal.signal(sig, self) for sig in DEFERRED}

    def release(self) -> None:
        """The handlers from before ``start`` back, then each kept signal delivered to them
        (an exception a handler raises is raised here)."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        for sig in self.pending:
            signal.raise_signal(sig)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends; then they are delivered."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python delivers signals to the main thread only; nothing arrives here
        return
    held = _Held()
    held.start()
    try:
        yield
    finally:
        held.release()


class Guard:
    """The handle of ``guarded()``."""

    def __init__(self) -> None:
        self.held: _Held | None = None  # from ``hold`` on

    def hold(self) -> None:
        """Hold SIGINT, SIGTERM and SIGHUP back until the guarded block ends."""
        if self.held is None and threading.current_thread() is threading.main_thread():
            self.held = _Held()
            self.held.start()


@contextlib.contextmanager
def guarded() -> Iterator[Guard]:
    """``raising()`` for the block, and ``Guard.hold()`` within it (module docstring)."""
    guard = Guard()
    with raising():
        try:
            yield guard
        finally:
            if guard.held is not None:  # a held signal is raised here, with our handlers
                guard.held.release()
