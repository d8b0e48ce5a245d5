"""A real HTTP server for a repository directory, and a fault-injecting proxy in front of it.

``RepoServer`` serves files like any static web server, with single byte ranges (``206`` and
``Content-Range``, ``416`` past the end), HTTP/1.1 keep-alive, and a switch to ignore ``Range``
as some servers do. ``FaultProxy`` forwards every request (``Range`` included) and, for paths
matching a rule, answers with an HTTP error, resets the connection after some bytes, stalls,
or changes the body (longer, truncated, a flipped byte, other bytes, endless). Both log every
request they see. Loopback only.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.log: list[tuple[str, str | None]] = []  # (path, Range header)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hung up in the middle of a body (a VM that was killed) is no error of
        # the server's; anything else is printed as socketserver does.
        if not isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _RepoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RepoServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.log.append((self.path, self.headers.get("Range")))
        path = (self.server.root / unquote(urlsplit(self.path).path).lstrip("/")).resolve()
        if not path.is_relative_to(self.server.root) or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        m = _RANGE.fullmatch(self.headers.get("Range", ""))
        if m and not self.server.ignore_range:
            first = int(m.group(1))
            last = min(int(m.group(2) or len(data) - 1), len(data) - 1)
            if first >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
            data = data[first : last + 1]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class RepoServer(_Server):
    def __init__(self, root: Path, ignore_range: bool = False) -> None:
        super().__init__(_RepoHandler)
        self.root = root.resolve()
        self.ignore_range = ignore_range


@dataclass
class Fault:
    """What the proxy does to requests whose path contains ``match``, the first ``times``
    times (None: always). ``kind``:

    - ``status``: answer HTTP ``code``;
    - ``reset``: an RST after ``after`` body bytes (the kernel may drop what the client has
      not read yet); ``cut``: a normal close after ``after`` body bytes, all delivered;
    - ``stall``: say nothing until the client gives up;
    - ``body``: send ``change(upstream body)`` with ``length(body)`` as Content-Length (None:
      none, the end of the connection ends the body), and ``status`` instead of upstream's
      when given, so that a file the repository does not have can be served;
    - ``endless``: 200 without a length, and bytes until the client hangs up.
    """

    match: str
    kind: str
    times: int | None = None
    code: int = 500
    after: int = 0
    change: Callable[[bytes], bytes] = field(default=lambda b: b)
    length: Callable[[bytes], int | None] = field(default=len)
    status: int | None = None  # ``body``: answer with this status instead of upstream's

    def wants(self, path: str) -> bool:
        if self.match not in path or self.times == 0:
            return False
        if self.times is not None:
            self.times -= 1
        return True


class _ProxyHandler(BaseHTTPRequestHandler):
    server: FaultProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        self.server.log.append((self.path, rng))
        fault = next((f for f in self.server.faults if f.wants(self.path)), None)
        if fault is not None and fault.kind == "status":
            self.send_error(fault.code)
            return
        if fault is not None and fault.kind == "stall":
            self.server.stopping.wait(60)  # the client's timeout ends this first
            return
        status, headers, body = self._upstream(rng)
        if fault is not None and fault.kind == "endless":
            self._endless()
            return
        length: int | None = len(body)
        if fault is not None and fault.kind == "body":
            body = fault.change(body)
            length = fault.length(body)
            status = fault.status or status
        self.send_response(status)
        for name in ("Content-Range",):
            if name in headers:
                self.send_header(name, headers[name])
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()
        if fault is not None and fault.kind in ("reset", "cut"):
            self.wfile.write(body[: fault.after])
            self.wfile.flush()
            if fault.kind == "reset":
                self._reset()
            return  # "cut": the connection closes normally, short of Content-Length
        self.wfile.write(body)

    def _upstream(self, rng: str | None) -> tuple[int, dict[str, str], bytes]:
        host, port = self.server.upstream
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", self.path, headers={"Range": rng} if rng else {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def _endless(self) -> None:
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            while not self.server.stopping.is_set():
                self.wfile.write(b"\0" * 65536)
        except OSError:
            pass  # the client hung up, as it should

    def _reset(self) -> None:
        """Close with an RST rather than a FIN: SO_LINGER on with a zero timeout."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class FaultProxy(_Server):
    def __init__(self, upstream: str, faults: list[Fault] | None = None) -> None:
        super().__init__(_ProxyHandler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults = faults or []


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
