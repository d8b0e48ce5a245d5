"""A copy of the repository in a directory (offline media, a mounted USB stick): python-tuf's
``FetcherInterface`` over ``file:`` URLs, with the same verification as over HTTP.

The directory is as hostile as a server: URLs must stay inside it (no ``..``, no symbolic link
pointing out of it), a missing file is answered like HTTP 404 (python-tuf stops its search for
a newer root on a 404), and a target is read from an offset to its signed length and never
beyond (``updater.fetch.bounds``). This module does not verify anything else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tuf.api.exceptions import DownloadHTTPError

from updater.errors import TransportError
from updater.fetch.bounds import capped, check_start, longer, truncated
from updater.fetch.source import StreamingFetcher

CHUNK = 1 << 20


class LocalFetcher(StreamingFetcher):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def url(self, folder: str) -> str:
        """The ``file:`` URL of a folder of the repository, with a trailing slash."""
        return (self.root / folder).as_uri() + "/"

    def _path(self, url: str) -> Path:
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise TransportError(f"{url}: not a file: URL of the repository")
        path = Path(os.path.realpath(unquote(parts.path)))
        if not path.is_relative_to(self.root):
            raise TransportError(f"{url} is outside the repository directory {self.root}")
        return path

    def _open(self, url: str) -> tuple[int, int]:
        """An open descriptor of the file behind ``url`` and its size."""
        path = self._path(url)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DownloadHTTPError(f"not found: {path}", 404) from None
        except OSError as exc:
            raise TransportError(f"cannot read {path}: {exc.strerror}") from None
        return fd, os.fstat(fd).st_size

    def _fetch(self, url: str) -> Iterator[bytes]:
        fd, size = self._open(url)
        return self._chunks(fd, url, 0, size)

    def stream(self, url: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        check_start(start, length)
        fd, size = self._open(url)
        if length is None:
            return self._chunks(fd, url, start, size)
        if size != length:
            os.close(fd)
            raise (longer if size > length else truncated)(url, length, size)
        return capped(self._chunks(fd, url, start, length), url, start, length)

    def _chunks(self, fd: int, url: str, offset: int, end: int) -> Iterator[bytes]:
        return pread_chunks(fd, url, offset, end)


def pread_chunks(fd: int, what: str, offset: int, end: int) -> Iterator[bytes]:
    """The bytes of ``fd`` from ``offset`` to ``end`` (fewer if it ends first), in chunks; the
    descriptor is closed when the iteration ends, however it ends."""
    try:
        while offset < end:
            try:
                chunk = os.pread(fd, min(CHUNK, end - offset), offset)
            except OSError as exc:
                raise TransportError(f"cannot read {what}: {exc.strerror}") from None
            if not chunk:
                return  # the file shrank: ``capped`` reports it as truncated
            offset += len(chunk)
            yield chunk
    finally:
        os.close(fd)
