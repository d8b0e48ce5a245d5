"""The debug flag (``--debug``): commands echoed, tracebacks shown.

A context variable, not a module global: a flow that runs in a thread or a test that turns
debugging on for one call does not leak the setting into unrelated code. Its own module so that
the CLI can set it without importing ``subprocess`` (start-up time of commands that run none).
"""

from __future__ import annotations

import contextvars

_DEBUG: contextvars.ContextVar[bool] = contextvars.ContextVar("updater_debug", default=False)


def set_debug(enabled: bool) -> None:
    _DEBUG.set(enabled)


def debugging() -> bool:
    return _DEBUG.get()
