"""HTTP for the release client: python-tuf's ``FetcherInterface`` on one pooled ``requests``
session, and ranged streaming of a target bounded by its signed length.

- Timeouts: ``timeout`` seconds to connect and between any two reads (requests' read timeout
  is the gap between bytes), so a stalled server fails instead of hanging.
- Retries with exponential backoff on transient failures only: connection refused or reset, a
  timeout, a body cut short, HTTP 5xx, 408 and 429. A 404 or 403 is an answer, not a hiccup
  (python-tuf even relies on the 404 of ``N+1.root.json`` to know the newest root). A failure
  after bytes arrived resumes at that offset with a ``Range`` request, and the retry count
  starts again whenever bytes arrived since the last failure.
- ``Accept-Encoding: identity``: byte offsets and lengths must be those of the signed file,
  not of a gzip encoding a server or CDN might choose.
- A ranged response must be ``206`` with a ``Content-Range`` starting at the requested byte.
  A server that ignores ``Range`` answers ``200`` with the whole file: its first bytes are read
  and dropped, never taken for the bytes at the offset.

Every failure ends as one line: ``TransportError`` (with the URL) for the network, or
``DownloadHTTPError`` for an HTTP answer (the client turns that into a ``TransportError``);
bounds violations are ``VerificationError`` (``updater.fetch.bounds``). This module does not
check hashes and does not know TUF metadata.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from tuf.api.exceptions import DownloadHTTPError

from updater import __version__
from updater.errors import TransportError
from updater.fetch.bounds import check_start, longer, truncated
from updater.fetch.source import StreamingFetcher
from updater.records import dataclass

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429})  # besides every 5xx
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class HttpPolicy:
    timeout: float = 30.0  # seconds to connect, and between two reads
    retries: int = 4  # after a transient failure
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    max_backoff: float = 60.0
    chunk_size: int = 256 << 10  # small pieces: a few in flight cost little memory


class _Transient(Exception):
    """A failure worth retrying; its text is the one line shown when retries run out."""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps: requests wraps urllib3, which wraps the socket error."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [c for c in (e.__cause__, e.__context__, getattr(e, "reason", None)) if c]
        todo += [a for a in e.args if isinstance(a, BaseException)]


def describe(exc: BaseException, url: str, timeout: float) -> str:
    """One line for a network failure, without requests' connection-pool prose."""
    causes = list(_causes(exc))
    reason = f"{type(exc).__name__}"
    timeouts = (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    for e in causes:
        if isinstance(e, OSError) and e.errno is not None and e.strerror:
            reason = e.strerror[0].lower() + e.strerror[1:]  # "connection refused", "...reset..."
            break
    else:
        # urllib3's NewConnectionError derives from its timeout class: errno causes come first.
        if any(isinstance(e, timeouts) for e in causes):
            reason = f"no data for {timeout:g} s"
        elif any(isinstance(e, urllib3.exceptions.ProtocolError) for e in causes):
            reason = "connection broken"
    return f"cannot fetch {url}: {reason}"


class HttpFetcher(StreamingFetcher):
    def __init__(
        self,
        policy: HttpPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.policy = policy or HttpPolicy()
        self.sleep = sleep
        self.session = requests.Session()
        # Retries are ours (with Range resume); urllib3's would re-send from byte 0.
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=2, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = f"updater/{__version__}"
        self.session.headers["Accept-Encoding"] = "identity"

    def close(self) -> None:
        self.session.close()

    def _fetch(self, url: str) -> Iterator[bytes]:
        """python-tuf's entry: the whole resource (python-tuf bounds it by its max length)."""
        return self.stream(url, 0, None)

    def stream(self, url: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The bytes of ``url`` from ``start`` to its end, or to the signed ``length``. The first
        request is made now (so HTTP errors surface here); the body comes lazily."""
        check_start(start, length)
        if start == length:
            return iter(())  # a resume at the very end: nothing is left to ask for
        download = _Download(self, url, start, length)
        download.connect()
        return download.chunks()


class _Download:
    """One resource being read: where it stands, and the response it is reading from."""

    def __init__(self, fetcher: HttpFetcher, url: str, start: int, length: int | None) -> None:
        self.fetcher = fetcher
        self.policy = fetcher.policy
        self.url = url
        self.offset = start
        self.length = length
        self.failures = 0
        self.failed_at = -1
        self.response: requests.Response | None = None
        self.skip = 0  # bytes to drop: a server that ignored Range sent them again
        self.declared: int | None = None  # this response's Content-Length (body bytes)
        self.range_end: int | None = None  # a 206's last byte + 1

    def fail(self, exc: _Transient) -> None:
        if self.offset > self.failed_at:
            self.failures = 0  # bytes arrived since the last failure: a new run of retries
        self.failed_at = self.offset
        self.failures += 1
        retries = self.policy.retries
        if self.failures > retries:
            after = f" (gave up after {retries} retries)" if retries else ""
            raise TransportError(f"{exc}{after}") from exc
        delay = min(self.policy.max_backoff, self.policy.backoff * 2 ** (self.failures - 1))
        log.warning("%s; retrying in %g s (%d of %d)", exc, delay, self.failures, retries)
        self.fetcher.sleep(delay)

    def connect(self) -> None:
        while True:
            try:
                self.response = self._request()
                return
            except _Transient as exc:
                self.fail(exc)

    def _request(self) -> requests.Response:
        headers = {"Range": f"bytes={self.offset}-"} if self.offset else {}
        timeout = self.policy.timeout
        try:
            response = self.fetcher.session.get(
                self.url, headers=headers, stream=True, timeout=(timeout, timeout)
            )
        except (requests.exceptions.SSLError, requests.exceptions.InvalidURL) as exc:
            raise TransportError(f"cannot fetch {self.url}: {exc}") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Transient(describe(exc, self.url, timeout)) from exc
        except requests.RequestException as exc:
            raise TransportError(f"cannot fetch {self.url}: {exc}") from exc
        status = response.status_code
        if status in (200, 206):
            try:
                self._accept(response)
            except BaseException:
                response.close()
                raise
            return response
        response.close()
        what = f"HTTP {status} {response.reason or ''}".rstrip()
        if status == 416 and self.length is not None:
            # The server has fewer bytes than the offset asked for.
            raise truncated(self.url, self.length, _total(response) or f"fewer than {self.offset}")
        if status >= 500 or status in RETRY_STATUS:
            raise _Transient(f"{what} from {self.url}")
        raise DownloadHTTPError(f"{what}: {self.url}", status)

    def _accept(self, response: requests.Response) -> None:
        raw = response.headers.get("Content-Length", "")
        self.declared = int(raw) if raw.isdigit() else None
        self.range_end = None
        if response.status_code == 206:
            m = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if not m or int(m.group(1)) != self.offset or int(m.group(2)) < self.offset:
                raise TransportError(
                    f"{self.url}: asked for bytes from {self.offset}, the server answered "
                    f"Content-Range {response.headers.get('Content-Range')!r}"
                )
            total = None if m.group(3) == "*" else int(m.group(3))
            self._check_size(total)
            self.skip = 0
            self.range_end = int(m.group(2)) + 1
            return
        # 200: the whole file, wherever we asked to start.
        if self.offset:
            log.warning("%s ignores Range: reading %d bytes again", self.url, self.offset)
        self.skip = self.offset
        self._check_size(self.declared)

    def _check_size(self, size: int | None) -> None:
        """Refuse a file of the wrong size before its first byte, when the server says so."""
        if self.length is not None and size is not None:
            if size > self.length:
                raise longer(self.url, self.length, size)
            if size < self.length:
                raise truncated(self.url, self.length, size)

    def chunks(self) -> Iterator[bytes]:
        while True:
            response = self.response
            assert response is not None
            try:
                yield from self._body(response)
                if self._complete():
                    return
            except _Transient as exc:
                self.fail(exc)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                self.fail(_Transient(describe(exc, self.url, self.policy.timeout)))
            finally:
                response.close()
            self.connect()

    def _body(self, response: requests.Response) -> Iterator[bytes]:
        for chunk in response.iter_content(self.policy.chunk_size):
            if self.skip:
                drop = min(self.skip, len(chunk))
                self.skip -= drop
                chunk = chunk[drop:]
                if not chunk:
                    continue
            if self.length is not None and self.offset + len(chunk) > self.length:
                raise longer(self.url, self.length, f"more than {self.length}")
            self.offset += len(chunk)
            yield chunk

    def _complete(self) -> bool:
        """After a body ended cleanly: is the resource complete (else: read on)?"""
        if self.length is None or self.offset >= self.length:
            return True
        if self.range_end is not None and self.offset == self.range_end:
            return False  # a server may answer a range with less than asked: ask for the rest
        if self.declared is not None:
            # A complete response of a consistent length, short of the signed one.
            raise truncated(self.url, self.length, self.offset)
        raise _Transient(f"connection closed at byte {self.offset} of {self.url}")


def _total(response: requests.Response) -> int | None:
    m = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", "").strip())
    return int(m.group(1)) if m else None
