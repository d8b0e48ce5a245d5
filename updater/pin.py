"""The version pin: ``updater pin VERSION`` holds a machine at one release, ``updater unpin``
lets it follow its channel again. ``updater update`` and the agent install no other release
while a pin is set (``update --version V --override-pin`` is the one explicit exception).

The pin is ``STATE_DIR/pin.json``, ``{"format": 1, "version": "3815.2.0"}``, replaced atomically
(temporary file, fsync, rename, directory fsync) and removed durably. A pin file that cannot be
read or does not hold a version is an error, never "no pin": a machine meant to be held must not
update because its pin file was damaged. This module does not choose releases
(``updater.release.choose`` does, given the pin).
"""

from __future__ import annotations

import os

from updater import jsonout
from updater.errors import DataError, DeviceError, ReleaseError, UsageError

# ``updater.release`` (the release model: verity, frames, hashlib) is imported to parse a pin
# that exists, not by every ``updater status`` asking whether there is one (start-up time).
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from updater.release import Version

FILE = "pin.json"
FORMAT = 1
MAX_BYTES = 4096


def parse(data: bytes) -> Version:
    """The version a pin file's bytes hold; DataError for anything else."""
    from updater import release

    doc: Any = jsonout.bounded_loads(data, MAX_BYTES)
    if not isinstance(doc, dict) or set(doc) != {"format", "version"} or doc["format"] != FORMAT:
        raise DataError(f'not {{"format": {FORMAT}, "version": "..."}}')
    try:
        return release.parse_version(doc["version"])
    except ValueError as exc:
        raise DataError(f"version: {exc}") from None


def render(version: Version) -> bytes:
    import json

    return (json.dumps({"format": FORMAT, "version": str(version)}) + "\n").encode()


def load(state_dir: str) -> Version | None:
    path = os.path.join(state_dir, FILE)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DeviceError(f"{path}: cannot read the pin: {exc.strerror}") from None
    try:
        return parse(data)
    except DataError as exc:
        hint = "updater pin VERSION or updater unpin rewrites it"
        raise DataError(f"{path}: {exc.message}", hint=hint) from None


def save(state_dir: str, version: Version) -> None:
    from updater import atomicfile

    os.makedirs(state_dir, exist_ok=True)
    atomicfile.write(os.path.join(state_dir, FILE), render(version), 0o644)


def clear(state_dir: str) -> bool:
    """Remove the pin, durably; whether there was one."""
    path = os.path.join(state_dir, FILE)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def effective(pinned: Version | None, asked: Version | None, override: bool) -> Version | None:
    """The version ``updater update`` may take: the pin, or what ``--version`` asked for, which
    must be the pinned one unless ``override`` (``--override-pin``, which needs ``--version``).
    Raises ReleaseError, or UsageError."""
    if override and asked is None:
        raise UsageError("--override-pin needs --version V: the release to take despite the pin")
    if pinned is None or override:
        return asked
    if asked is not None and asked != pinned:
        raise ReleaseError(
            f"this machine is pinned to release {pinned}: --version {asked} refused",
            hint="pass --override-pin to install it anyway, or run updater unpin",
        )
    return pinned


def load_or_none(state_dir: str) -> Version | None:
    """``load`` for commands that replace or remove the pin anyway: a damaged one is None."""
    try:
        return load(state_dir)
    except DataError:
        return None
