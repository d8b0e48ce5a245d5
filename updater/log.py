"""One line on stderr for what a command does on the way (``updater: ...``), flushed at once:
a reboot may follow right after. Results go to stdout (``updater.commands.common``)."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    sys.stderr.write(f"updater: {message}\n")
    sys.stderr.flush()
