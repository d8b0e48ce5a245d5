"""The resume journal: which image goes to which slot, and how many frames of it are durable.

One small JSON file in the state directory, replaced atomically (temporary file, fsync, rename,
directory fsync), so that after a power cut it holds the old or the new content, never a mix.
``frames_done`` only ever counts frames whose signed sha256 matched and whose bytes were on the
destination after an fdatasync. A journal that cannot be read, or that names another image or
another destination, is not an error: the writer starts from frame 0 (the journal only saves
time; the read-back verifies everything anyway) and says so in its result.

This module does not write the slot and does not lock anything; the writer holds the lock.
"""

from __future__ import annotations

import json
import os
from typing import Any, TypeGuard

from updater import jsonout
from updater.errors import DataError, DeviceError
from updater.records import dataclass

FILENAME = "slot-write.json"
LOCKNAME = "slot-write.lock"
FORMAT = 1
MAX_SIZE = 64 << 10  # a journal is a few hundred bytes; a larger file is not one of ours


@dataclass(frozen=True)
class Journal:
    image: str  # ImageFacts.identity()
    destination: dict[str, Any]  # Target.identity()
    frames: int  # frames in the image
    frames_done: int  # durable and verified, from frame 0

    def encode(self) -> bytes:
        value = {
            "format": FORMAT,
            "image": self.image,
            "destination": self.destination,
            "frames": self.frames,
            "frames_done": self.frames_done,
        }
        return (json.dumps(value, sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, raw: bytes) -> Journal:
        """Parse a journal; raise DataError for anything this module would not have written."""
        try:
            value = jsonout.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"resume journal is not JSON: {exc}") from None
        if not isinstance(value, dict) or value.get("format") != FORMAT:
            raise DataError("resume journal has an unknown format")
        image, destination = value.get("image"), value.get("destination")
        frames, done = value.get("frames"), value.get("frames_done")
        if not isinstance(image, str) or not isinstance(destination, dict):
            raise DataError("resume journal lacks the image or destination identity")
        if not (_is_count(frames) and _is_count(done) and done <= frames):
            raise DataError("resume journal has an impossible frame count")
        return cls(image, destination, frames, done)

    def resumes(self, image: str, destination: dict[str, Any], frames: int) -> bool:
        return (self.image, self.destination, self.frames) == (image, destination, frames)


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def path_in(state_dir: str) -> str:
    return os.path.join(state_dir, FILENAME)


def load(state_dir: str) -> Journal | None:
    """The journal in ``state_dir``, None when there is none; DataError when it is damaged."""
    try:
        fd = os.open(path_in(state_dir), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataError(f"cannot open the resume journal: {exc.strerror}") from None
    try:
        raw = os.read(fd, MAX_SIZE + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_SIZE:
        raise DataError(f"resume journal is larger than {MAX_SIZE} bytes")
    return Journal.decode(raw)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(state_dir: str, journal: Journal) -> None:
    """Replace the journal atomically and durably."""
    final = path_in(state_dir)
    temporary = final + ".tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, journal.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, final)
        _fsync_dir(state_dir)
    except OSError as exc:
        raise DeviceError(f"cannot write the resume journal {final}: {exc.strerror}") from None


def remove(state_dir: str) -> None:
    """Forget any progress (a verification failed, or the caller activated the slot)."""
    try:
        os.unlink(path_in(state_dir))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DeviceError(f"cannot remove the resume journal: {exc.strerror}") from None
    _fsync_dir(state_dir)
