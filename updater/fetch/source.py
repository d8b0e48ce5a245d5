"""The byte source of a signed target, and the fetchers that can provide one.

``TargetSource.open(start)`` yields the target's bytes from byte ``start`` to its signed
length: over HTTP with a ``Range`` request, from a directory at an offset. It moves bytes and
bounds them (``updater.fetch.bounds``) with the transport's timeouts and retries; it does not
hash them: the slot writer checks each frame against the signed frame table and the whole file
against the signed hashes, and may call ``open`` again at a frame boundary after a restart.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator

from tuf.ngclient.fetcher import FetcherInterface

from updater.fetch.bounds import check_start
from updater.fetch.failures import at_edge
from updater.records import dataclass


class StreamingFetcher(FetcherInterface):
    """A python-tuf fetcher that can also stream a resource from an offset, bounded by a
    signed length."""

    @abc.abstractmethod
    def stream(self, url: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The bytes of ``url`` from ``start`` to its end, or exactly to ``length`` (more or
        fewer bytes are a VerificationError)."""


@dataclass(frozen=True)
class TargetSource:
    fetcher: StreamingFetcher
    name: str  # the target's path, for messages
    url: str
    length: int  # the signed length

    def open(self, start: int = 0) -> Iterator[bytes]:
        """The bytes from ``start`` to the signed length. Failures, now or while iterating,
        are the project's ``TransportError`` or ``VerificationError``."""
        check_start(start, self.length)
        with at_edge(f"fetching {self.name}"):
            chunks = self.fetcher.stream(self.url, start, self.length)
        return self._translated(chunks)

    def _translated(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        with at_edge(f"fetching {self.name}"):
            yield from chunks
