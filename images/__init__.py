"""Image building for the test VMs: ``images/build.py`` is the entry point.

Modules: ``tree`` (the Debian tree, its customisation and initramfs), ``payload`` (USR images with
dm-verity, kernels carrying the root hash), ``disk`` (ESP, OEM, ROOT and the GPT disk), ``build``
(cache, orchestration, command line).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_START = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr for a long step, with the seconds since the build started."""
    sys.stderr.write(f"images: [{time.monotonic() - _START:5.0f} s] {message}\n")
    sys.stderr.flush()


def digest_files(h: hashlib._Hash, paths: Sequence[Path]) -> None:
    """Feed each file's repository path and contents into ``h`` (cache keys)."""
    for path in paths:
        h.update(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
