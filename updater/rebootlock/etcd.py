"""etcd v3 through its JSON gateway (``/v3/...`` over HTTP, with ``requests``), and the reboot
semaphore on top of it.

No gRPC stack: the gateway that every etcd since 3.4 serves on its client port takes the same
requests as JSON (keys and values base64, 64-bit integers as strings). Endpoints are tried in
order until one answers. Every failure on the way (refused, reset, timeout, an error status,
a body that is not the JSON expected) is a TransportError naming the endpoint; malformed
semaphore contents are DataErrors (``updater.rebootlock.semaphore``). The semaphore only ever
changes through compare-and-swap transactions; this module decides nothing else.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import requests

from updater import jsonout
from updater.errors import TransportError
from updater.rebootlock import semaphore
from updater.rebootlock.semaphore import Decision, Holder, Keys, Snapshot
from updater.records import dataclass

MAX_RESPONSE = 4 << 20
ATTEMPTS = 8  # compare-and-swap rounds before giving up under heavy contention


class EtcdGateway:
    def __init__(self, endpoints: tuple[str, ...], timeout: float) -> None:
        if not endpoints:
            raise TransportError("no etcd endpoints configured", hint="set [lock] endpoints")
        self.endpoints = endpoints
        self.timeout = timeout
        self.session = requests.Session()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first endpoint that answers."""
        errors = []
        for endpoint in self.endpoints:
            url = f"{endpoint}/v3/{path}"
            try:
                resp = self.session.post(url, json=body, timeout=self.timeout)
            except requests.RequestException as exc:
                errors.append(f"{endpoint}: {type(exc).__name__}")
                continue
            data = resp.content[:MAX_RESPONSE]
            try:
                doc = jsonout.loads(data)
            except ValueError:
                doc = None
            if resp.status_code != 200:
                message = doc.get("message") if isinstance(doc, dict) else None
                raise TransportError(f"etcd {url}: HTTP {resp.status_code}"
                                     + (f": {str(message)[:200]}" if message else ""))  # fmt: skip
            if not isinstance(doc, dict):
                raise TransportError(f"etcd {url}: the answer is not a JSON object")
            return doc
        raise TransportError(f"etcd unreachable ({'; '.join(errors)})")

    def txn(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("kv/txn", body)

    def grant(self, ttl: int) -> int:
        doc = self.call("lease/grant", {"TTL": str(ttl)})
        lease = semaphore.parse_int(doc.get("ID"), "a lease id")
        if not lease:
            raise TransportError(f"etcd granted no lease: {str(doc.get('error', ''))[:200]}")
        return lease

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``; its new TTL, or 0 when it no longer exists. The gateway streams
        keep-alive answers; one request body gives one answer line."""
        doc = self.call("lease/keepalive", {"ID": str(lease)})
        result = doc.get("result")
        return semaphore.parse_int(result.get("TTL") if isinstance(result, dict) else None, "a TTL")

    def revoke(self, lease: int) -> None:
        try:
            self.call("lease/revoke", {"ID": str(lease)})
        except TransportError as exc:
            if "not found" not in exc.message:  # expired already: nothing to revoke
                raise

    def time_to_live(self, lease: int) -> int:
        doc = self.call("lease/timetolive", {"ID": str(lease)})
        ttl = doc.get("TTL")
        return -1 if ttl in ("-1", -1) else semaphore.parse_int(ttl, "a TTL")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Grant:
    group: str
    holder: str
    lease: int


@dataclass(frozen=True)
class GroupStatus:
    group: str
    max: int
    holders: tuple[tuple[Holder, int], ...]  # with the seconds their leases have left (-1: none)


class EtcdSemaphore:
    """The reboot semaphore of one etcd cluster (``semaphore`` describes the keys)."""

    def __init__(self, gateway: EtcdGateway, prefix: str) -> None:
        self.gateway = gateway
        self.prefix = prefix

    def read(self, group: str) -> Snapshot:
        keys = Keys(self.prefix, group)
        return semaphore.parse_snapshot(keys, self.gateway.txn(semaphore.read_txn(keys)))

    def acquire(self, group: str, holder: str, ttl: int) -> Grant | Snapshot:
        """Take a place in ``group``'s semaphore for ``holder``, with a new lease of ``ttl``
        seconds; the snapshot that showed it full when there is none."""
        keys = Keys(self.prefix, group)
        for _ in range(ATTEMPTS):
            snap = self.read(group)
            decision = semaphore.decide(snap, holder)
            if decision is Decision.FULL:
                return snap
            if decision is Decision.HELD:
                mine = snap.holds(holder)
                assert mine is not None
                if mine.lease:
                    self.gateway.keepalive(mine.lease)
                return Grant(group, holder, mine.lease)
            lease = self.gateway.grant(ttl)
            doc = self.gateway.txn(semaphore.acquire_txn(keys, snap, holder, lease, _now()))
            if doc.get("succeeded") is True:
                return Grant(group, holder, lease)
            self.gateway.revoke(lease)  # someone else changed the semaphore: read again
        raise TransportError(f"etcd: the reboot semaphore of {group} kept changing; try later")

    def refresh(self, grant: Grant) -> bool:
        """Keep the holder's lease alive; False when the lease (and so the lock) is gone."""
        if not grant.lease:
            return self.read(grant.group).holds(grant.holder) is not None
        return self.gateway.keepalive(grant.lease) > 0

    def release(self, group: str, holder: str, lease: int = 0) -> bool:
        """Give the place back; False when ``holder`` held none (expired, or unlocked)."""
        doc = self.gateway.txn(semaphore.release_txn(Keys(self.prefix, group), holder))
        if lease:
            self.gateway.revoke(lease)
        return doc.get("succeeded") is True

    def set_max(self, group: str, maximum: int) -> int:
        """Set the group's maximum; the previous one."""
        keys = Keys(self.prefix, group)
        for _ in range(ATTEMPTS):
            snap = self.read(group)
            if self.gateway.txn(semaphore.set_max_txn(keys, snap, maximum)).get("succeeded"):
                return snap.max
        raise TransportError(f"etcd: the maximum of {group} kept changing; try later")

    def groups(self) -> list[str]:
        base = self.prefix.strip("/").encode() + b"/"
        doc = self.gateway.call("kv/range", {
            "key": semaphore.b64(base), "range_end": semaphore.b64(semaphore.prefix_end(base)),
            "keys_only": True})  # fmt: skip
        return semaphore.groups_in(self.prefix, doc)

    def status(self, group: str | None = None) -> list[GroupStatus]:
        out = []
        for name in [group] if group else self.groups():
            snap = self.read(name)
            holders = tuple(
                (h, self.gateway.time_to_live(h.lease) if h.lease else -1) for h in snap.holders
            )
            out.append(GroupStatus(name, snap.max, holders))
        return out


def holder_json(holder: Holder, ttl: int) -> dict[str, Any]:
    return {"id": holder.id, "since": holder.since or None, "lease": holder.lease,
            "ttl": ttl if ttl >= 0 else None}  # fmt: skip
