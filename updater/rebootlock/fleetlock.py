"""The FleetLock protocol (Zincati's reboot coordination over HTTP): a client, and a server backed
by the etcd semaphore so that FleetLock clients and etcd clients share one set of limits.

Protocol: ``POST BASE/v1/pre-reboot`` takes a place (recursively: a holder asking again keeps
it), ``POST BASE/v1/steady-state`` gives it back (a holder that holds none succeeds too). Both
carry the header ``fleet-lock-protocol: true`` and the body
``{"client_params": {"id": ID, "group": GROUP}}``; 200 means done, anything else failed, with
``{"kind": ..., "value": ...}`` saying why (``failed_lock_semaphore_full`` when the group is full).

The server grants each holder an etcd lease of the configured TTL and renews it when the holder
asks again, so a FleetLock client that dies holding a place stops holding it after the TTL
(plain FleetLock servers keep it until an operator steps in). This module does not decide when
to reboot.
"""

from __future__ import annotations

import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from updater import jsonout
from updater.errors import DataError, TransportError, UpdaterError
from updater.rebootlock import semaphore
from updater.rebootlock.etcd import EtcdSemaphore, Grant

HEADER = "fleet-lock-protocol"
PRE_REBOOT = "/v1/pre-reboot"
STEADY_STATE = "/v1/steady-state"
FULL = "failed_lock_semaphore_full"
MAX_BODY = 64 * 1024


def body(holder: str, group: str) -> dict[str, Any]:
    return {"client_params": {"id": holder, "group": group}}


def parse_body(data: bytes) -> tuple[str, str]:
    """(id, group) of a request body; DataError naming what is wrong."""
    try:
        doc = jsonout.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise DataError("the body is not JSON") from None
    params = doc.get("client_params") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise DataError("the body has no client_params object")
    holder, group = params.get("id"), params.get("group")
    if not isinstance(holder, str) or not isinstance(group, str):
        raise DataError("client_params needs the strings id and group")
    return semaphore.check_id(holder), semaphore.check_group(group)


class FleetLockClient:
    def __init__(self, base_url: str, timeout: float) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _post(self, path: str, holder: str, group: str) -> tuple[int, dict[str, Any]]:
        url = self.base + path
        try:
            resp = self.session.post(url, json=body(holder, group), timeout=self.timeout,
                                     headers={HEADER: "true"})  # fmt: skip
        except requests.RequestException as exc:
            raise TransportError(f"FleetLock {url}: {type(exc).__name__}") from None
        try:
            doc = jsonout.loads(resp.content[:MAX_BODY]) if resp.content else {}
        except ValueError:
            doc = {}
        return resp.status_code, doc if isinstance(doc, dict) else {}

    def pre_reboot(self, holder: str, group: str) -> bool:
        """True: the place is ours; False: the group is full. TransportError otherwise."""
        status, doc = self._post(PRE_REBOOT, holder, group)
        if status == 200:
            return True
        if doc.get("kind") == FULL:
            return False
        raise TransportError(f"FleetLock {self.base}{PRE_REBOOT}: HTTP {status}: {_why(doc)}")

    def steady_state(self, holder: str, group: str) -> None:
        status, doc = self._post(STEADY_STATE, holder, group)
        if status != 200:
            raise TransportError(f"FleetLock {self.base}{STEADY_STATE}: HTTP {status}: {_why(doc)}")


def _why(doc: dict[str, Any]) -> str:
    kind, value = doc.get("kind"), doc.get("value")
    return f"{str(kind)[:64]}: {str(value)[:200]}" if kind else "no error description"


# --------------------------------------------------------------------------------- the server


class _Handler(BaseHTTPRequestHandler):
    server: FleetLockServer
    protocol_version = "HTTP/1.1"

    def _reply(self, status: int, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, sort_keys=True).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, kind: str, value: str) -> None:
        self._reply(status, {"kind": kind, "value": value})

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "FleetLock uses POST")

    def do_POST(self) -> None:  # noqa: N802
        if self.path not in (PRE_REBOOT, STEADY_STATE):
            self._error(HTTPStatus.NOT_FOUND, "not_found", f"no endpoint {self.path[:100]}")
            return
        if self.headers.get(HEADER, "").lower() != "true":
            self._error(HTTPStatus.BAD_REQUEST, "missing_header", f"{HEADER}: true is required")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._error(HTTPStatus.BAD_REQUEST, "bad_body", f"body of 0..{MAX_BODY} bytes needed")
            return
        try:
            holder, group = parse_body(self.rfile.read(length))
        except DataError as exc:
            self._error(HTTPStatus.BAD_REQUEST, "bad_client_params", exc.message)
            return
        try:
            if self.path == PRE_REBOOT:
                taken = self.server.lock(holder, group)
                if not taken:
                    self._error(HTTPStatus.CONFLICT, FULL,
                                f"group {group} is full: all places are taken")  # fmt: skip
                    return
            else:
                self.server.unlock(holder, group)
        except UpdaterError as exc:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "failed_etcd", exc.message)
            return
        self._reply(HTTPStatus.OK, {})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the API's name)
        sys.stderr.write(f"updater lock serve: {self.address_string()} {format % args}\n")


class FleetLockServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sem: EtcdSemaphore, ttl: int) -> None:
        super().__init__(address, _Handler)
        self.semaphore = sem
        self.ttl = ttl
        # One etcd session for all request threads: requests.Session is not thread-safe, and
        # the semaphore's compare-and-swap makes concurrent attempts retry anyway.
        self._mutex = threading.Lock()

    def lock(self, holder: str, group: str) -> bool:
        with self._mutex:
            got = self.semaphore.acquire(group, holder, self.ttl)
        return isinstance(got, Grant)

    def unlock(self, holder: str, group: str) -> None:
        with self._mutex:
            snap = self.semaphore.read(group)
            mine = snap.holds(holder)
            if mine is not None:
                self.semaphore.release(group, holder, mine.lease)
