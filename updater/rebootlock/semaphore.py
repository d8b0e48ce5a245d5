"""The reboot semaphore as data: etcd keys, holder records, and the transactions, as plain values.

Semantics are locksmith's (a maximum number of holders per group, holders known by id, groups
independent of each other), with one change that fixes locksmith's best-known failure: every
holder key is attached to an etcd lease, so a machine that dies holding the lock stops holding it
when its lease runs out, instead of blocking its group until an operator steps in.

Keys under ``PREFIX/GROUP/``:
- ``max``: the group's maximum number of holders, in decimal (absent: 1, as locksmith starts);
- ``holders/ID``: one key per holder, ``{"id": ID, "since": RFC 3339}``, attached to its lease.

Taking the lock is one compare-and-swap transaction built from one consistent read at revision
R: "no key under ``holders/`` was created or changed after R, ``max`` is unchanged and my key
does not exist" -> put my key with my lease. A holder that vanished meanwhile (lease expired,
unlocked) can only make the count lower, so the count read at R stays a safe bound. The
transactions are JSON values for etcd's v3 gateway (keys and values base64); this module sends
nothing (``updater.rebootlock.etcd`` does).
"""

from __future__ import annotations

import base64
import json
import re
from enum import StrEnum
from typing import Any

from updater import jsonout
from updater.errors import DataError
from updater.records import dataclass

DEFAULT_MAX = 1
MAX_HOLDERS_LIMIT = 1000
_INT = re.compile(r"[0-9]{1,19}")
_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_GROUP = re.compile(r"[a-zA-Z0-9.-]{1,64}")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: object) -> bytes:
    if not isinstance(text, str) or len(text) > 1 << 16:
        raise DataError("etcd: a key or value is not base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise DataError("etcd: a key or value is not base64") from None


def prefix_end(key: bytes) -> bytes:
    """The end of the range of keys starting with ``key`` (etcd's "prefix" range)."""
    for i in range(len(key) - 1, -1, -1):
        if key[i] < 0xFF:
            return key[:i] + bytes([key[i] + 1])
    return b"\0"  # every key


def check_id(holder: str) -> str:
    if not _ID.fullmatch(holder):
        raise DataError(f"lock holder id {holder!r} is not 1-128 of A-Z a-z 0-9 . _ : @ -")
    return holder


def check_group(group: str) -> str:
    if not _GROUP.fullmatch(group):
        raise DataError(f"lock group {group!r} is not 1-64 of a-z A-Z 0-9 . -")
    return group


@dataclass(frozen=True)
class Keys:
    prefix: str
    group: str

    @property
    def base(self) -> bytes:
        return f"{self.prefix.strip('/')}/{check_group(self.group)}/".encode()

    @property
    def max(self) -> bytes:
        return self.base + b"max"

    @property
    def holders(self) -> bytes:
        return self.base + b"holders/"

    def holder(self, holder: str) -> bytes:
        return self.holders + check_id(holder).encode()


@dataclass(frozen=True)
class Holder:
    id: str
    since: str
    lease: int
    created: int  # etcd create_revision of the key


@dataclass(frozen=True)
class Snapshot:
    """One group's semaphore, read at one revision."""

    group: str
    max: int
    max_revision: int  # mod_revision of the max key; 0: absent
    holders: tuple[Holder, ...]
    revision: int

    def holds(self, holder: str) -> Holder | None:
        return next((h for h in self.holders if h.id == holder), None)

    @property
    def full(self) -> bool:
        return len(self.holders) >= self.max


class Decision(StrEnum):
    HELD = "held"  # the holder has it already (a retry, or after its reboot)
    FULL = "full"
    FREE = "free"


def decide(snap: Snapshot, holder: str) -> Decision:
    if snap.holds(holder):
        return Decision.HELD
    return Decision.FULL if snap.full else Decision.FREE


def parse_int(value: object, what: str) -> int:
    """etcd's gateway writes 64-bit integers as JSON strings."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and _INT.fullmatch(value):
        return int(value)
    if value is None:
        return 0  # proto3 JSON leaves zero values out
    raise DataError(f"etcd: {what} is not a whole number")


def read_txn(keys: Keys) -> dict[str, Any]:
    """Both parts of a group's semaphore in one consistent read."""
    return {
        "success": [
            {"request_range": {"key": b64(keys.max)}},
            {"request_range": {"key": b64(keys.holders),
                               "range_end": b64(prefix_end(keys.holders))}},
        ]
    }


def _kvs(response: object) -> list[dict[str, Any]]:
    if not isinstance(response, dict):
        raise DataError("etcd: a range response is not an object")
    kvs = response.get("kvs", [])
    if not isinstance(kvs, list) or len(kvs) > MAX_HOLDERS_LIMIT * 2:
        raise DataError("etcd: a range response has no usable kvs list")
    if not all(isinstance(kv, dict) for kv in kvs):
        raise DataError("etcd: a range response holds a non-object kv")
    return kvs


def parse_max(value: bytes) -> int:
    text = value.decode("ascii", errors="replace").strip()
    if not _INT.fullmatch(text) or not 0 <= int(text) <= MAX_HOLDERS_LIMIT:
        raise DataError(f"etcd: the semaphore maximum {text[:20]!r} is not 0..{MAX_HOLDERS_LIMIT}")
    return int(text)


def parse_holder(kv: dict[str, Any], keys: Keys) -> Holder:
    key = unb64(kv.get("key"))
    if not key.startswith(keys.holders):
        raise DataError("etcd: a holder key lies outside the semaphore")
    holder = check_id(key[len(keys.holders):].decode("ascii", errors="replace"))
    try:
        doc = jsonout.loads(unb64(kv.get("value", "")))
    except (ValueError, UnicodeDecodeError):
        doc = {}
    since = doc.get("since", "") if isinstance(doc, dict) else ""
    since = since if isinstance(since, str) and len(since) <= 40 else ""
    return Holder(holder, since, parse_int(kv.get("lease"), "a lease id"),
                  parse_int(kv.get("create_revision"), "a revision"))  # fmt: skip


def parse_snapshot(keys: Keys, response: object) -> Snapshot:
    """The semaphore from the gateway's answer to ``read_txn``."""
    if not isinstance(response, dict):
        raise DataError("etcd: the transaction response is not an object")
    parts = response.get("responses")
    if not isinstance(parts, list) or len(parts) != 2:
        raise DataError("etcd: the read transaction did not return two ranges")
    ranges = [p.get("response_range", {}) if isinstance(p, dict) else None for p in parts]
    header = response.get("header")
    revision = parse_int(header.get("revision") if isinstance(header, dict) else None, "a revision")
    max_kvs = _kvs(ranges[0])
    maximum, max_revision = DEFAULT_MAX, 0
    if max_kvs:
        maximum = parse_max(unb64(max_kvs[0].get("value", "")))
        max_revision = parse_int(max_kvs[0].get("mod_revision"), "a revision")
    holders = tuple(sorted((parse_holder(kv, keys) for kv in _kvs(ranges[1])),
                           key=lambda h: (h.created, h.id)))  # fmt: skip
    return Snapshot(keys.group, maximum, max_revision, holders, revision)


def acquire_txn(keys: Keys, snap: Snapshot, holder: str, lease: int, since: str) -> dict[str, Any]:
    """Put ``holder``'s key with ``lease`` if nothing changed since ``snap`` was read."""
    value = json.dumps({"id": holder, "since": since}, sort_keys=True).encode()
    return {
        "compare": [
            {"key": b64(keys.holders), "range_end": b64(prefix_end(keys.holders)),
             "target": "MOD", "result": "LESS", "mod_revision": str(snap.revision + 1)},
            {"key": b64(keys.max), "target": "MOD", "result": "EQUAL",
             "mod_revision": str(snap.max_revision)},
            {"key": b64(keys.holder(holder)), "target": "CREATE", "result": "EQUAL",
             "create_revision": "0"},
        ],
        "success": [{"request_put": {"key": b64(keys.holder(holder)), "value": b64(value),
                                     "lease": str(lease)}}],
    }  # fmt: skip


def release_txn(keys: Keys, holder: str) -> dict[str, Any]:
    """Delete ``holder``'s key if it exists (``succeeded`` says whether it did)."""
    key = b64(keys.holder(holder))
    return {
        "compare": [{"key": key, "target": "CREATE", "result": "GREATER", "create_revision": "0"}],
        "success": [{"request_delete_range": {"key": key}}],
    }


def set_max_txn(keys: Keys, snap: Snapshot, maximum: int) -> dict[str, Any]:
    if not 0 <= maximum <= MAX_HOLDERS_LIMIT:
        raise DataError(f"the maximum must be 0..{MAX_HOLDERS_LIMIT}, not {maximum}")
    return {
        "compare": [{"key": b64(keys.max), "target": "MOD", "result": "EQUAL",
                     "mod_revision": str(snap.max_revision)}],
        "success": [{"request_put": {"key": b64(keys.max), "value": b64(str(maximum).encode())}}],
    }  # fmt: skip


def groups_in(prefix: str, response: object) -> list[str]:
    """The groups that have keys under ``prefix`` (from a keys-only range over it)."""
    base = prefix.strip("/").encode() + b"/"
    found: set[str] = set()
    for kv in _kvs(response):
        key = unb64(kv.get("key"))
        if key.startswith(base):
            group = key[len(base):].split(b"/", 1)[0].decode("ascii", errors="replace")
            if _GROUP.fullmatch(group):
                found.add(group)
    return sorted(found)
