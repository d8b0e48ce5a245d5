"""Where the compressed image comes from: anything that can yield it from a byte offset.

The writer asks a ``ByteSource`` for the compressed target from a frame's compressed offset to its
end, and stops reading it by itself (signed length, bad frame); it closes the iterator when it
stops early, so an HTTP source can drop its connection. The TUF client's HTTP source (Range
requests) implements the same protocol; ``FileSource`` serves a local copy (``--repo DIR``,
offline media, tests). A source knows nothing about frames or hashes and verifies nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Protocol

from updater.errors import DeviceError
from updater.records import dataclass

CHUNK_SIZE = 1 << 20


class ByteSource(Protocol):
    def open(self, start: int) -> Iterator[bytes]:
        """Yield the compressed target from byte ``start`` to its end, in chunks of any size.
        Failures on the way are TransportError (network) or DeviceError (local media)."""
        ...


@dataclass(frozen=True)
class FileSource:
    path: str
    chunk_size: int = CHUNK_SIZE

    def open(self, start: int) -> Iterator[bytes]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise DeviceError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            offset = start
            while True:
                try:
                    chunk = os.pread(fd, self.chunk_size, offset)
                except OSError as exc:
                    raise DeviceError(f"cannot read {self.path}: {exc.strerror}") from None
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)
