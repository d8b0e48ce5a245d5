"""Replace a file so that a power cut leaves the old or the new content, never a mix.

Temporary file in the same directory, write, fsync, rename over the target, fsync the
directory (the rename itself is only durable once the directory is). Used for files on a
mounted ESP and for the agent's state, metrics and reboot-required files. This module does not
lock: callers that read-modify-write hold their own lock.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """``mode`` None keeps what the temporary file got (0600): a vfat ESP refuses chmod."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
