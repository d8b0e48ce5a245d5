"""The agent's persisted record (``/var/lib/updater/agent.json``): its state and what it must
remember across restarts and reboots, as a frozen value with a strict JSON codec.

Pure: ``to_json``/``from_json`` turn the value into a JSON document and back; reading and writing
the file is ``updater.agent.store``'s job, and the transitions are ``updater.agent.machine``'s.
The file is found on disk, so ``from_json`` treats it as hostile: types, lengths and counts are
checked and any problem is one DataError line.
"""

from __future__ import annotations

import json
import math
import re
from enum import StrEnum
from typing import Any

from updater import jsonout
from updater.agent.schedule import Wave, parse_waves, waves_json
from updater.errors import DataError
from updater.records import asdict, dataclass, replace

FORMAT = 1
MAX_BYTES = 256 * 1024
MAX_BLOCKED = 64  # the oldest entries go first; an operator can always forget more
MAX_TEXT = 512


class State(StrEnum):
    IDLE = "idle"
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    STAGED = "staged"
    WAITING_FOR_WINDOW = "waiting-for-window"
    WAITING_FOR_LOCK = "waiting-for-lock"
    REBOOTING = "rebooting"
    VERIFYING = "verifying"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"


# States in which no update is in flight: the next cycle starts from any of them.
RESTING = frozenset({State.IDLE, State.COMMITTED, State.ROLLED_BACK, State.FAILED})

DESCRIPTIONS = {
    State.IDLE: "up to date as far as the last check knows",
    State.CHECKING: "asking the repository for a release",
    State.DOWNLOADING: "writing the release into the inactive slot",
    State.STAGED: "the release is written and set to boot next",
    State.WAITING_FOR_WINDOW: "staged, waiting for a maintenance window",
    State.WAITING_FOR_LOCK: "staged, waiting for the fleet's reboot lock",
    State.REBOOTING: "rebooting into the new slot",
    State.VERIFYING: "booted the new slot on trial, running the health checks",
    State.COMMITTED: "the new slot passed its health checks and is marked good",
    State.ROLLED_BACK: "the new slot failed; back on the previous one",
    State.FAILED: "the last cycle failed; the next one retries",
}


class Reason(StrEnum):
    """Why a release is blocked (never offered again until an operator forgets it)."""

    HEALTH = "health-check-failed"
    BOOT = "boot-failed"
    MANUAL = "manual-rollback"


@dataclass(frozen=True)
class Blocked:
    version: str
    reason: Reason
    since: float


@dataclass(frozen=True)
class LockTicket:
    """A reboot lock this machine holds (kept across its own reboot)."""

    backend: str  # "etcd" or "fleetlock"
    id: str
    group: str
    lease: int = 0  # etcd lease id; 0 when the backend keeps no lease of ours
    taken: float = 0.0


@dataclass(frozen=True)
class Record:
    state: State = State.IDLE
    version: str | None = None  # the release in flight
    waves: tuple[Wave, ...] = ()
    from_slot: str | None = None  # booted when the update started: where a rollback returns
    from_version: str | None = None
    target_slot: str | None = None
    lock: LockTicket | None = None
    healthy: bool = False  # verifying: the checks passed, mark-good is next
    returning: bool = False  # rolled-back: still on the bad slot, going back
    signalled: bool = False  # strategy off: /run/reboot-required written
    verify_deadline: float | None = None
    reboot_attempts: int = 0
    reboot_requested: float | None = None  # when the last reboot was asked for
    reboot_boot: str | None = None  # the boot it was asked for in (Booted.boot_id)
    next_try: float | None = None  # when to try the lock or the reboot again
    committed_slot: str | None = None  # the slot last known good, and what it holds
    committed_version: str | None = None
    booted_version: str | None = None  # as last seen, for status
    available: str | None = None  # the newest release last offered
    wave_start: float | None = None  # when that release's wave starts for this machine
    lock_holders: tuple[str, ...] = ()  # who held the lock when it was last busy
    blocked: tuple[Blocked, ...] = ()
    last_error: str | None = None
    last_check: float | None = None
    last_success: float | None = None
    next_check: float | None = None
    rollbacks: int = 0
    changed: float = 0.0

    def blocked_versions(self) -> frozenset[str]:
        return frozenset(b.version for b in self.blocked)

    def block(self, version: str | None, reason: Reason, now: float) -> Record:
        if version is None or version in self.blocked_versions():
            return self
        entries = (*self.blocked, Blocked(version, reason, now))[-MAX_BLOCKED:]
        return replace(self, blocked=entries)

    def forget(self, versions: frozenset[str] | None) -> Record:
        """Unblock ``versions`` (None: all)."""
        kept = () if versions is None else tuple(
            b for b in self.blocked if b.version not in versions
        )
        return replace(self, blocked=kept)


def to_json(rec: Record) -> dict[str, Any]:
    doc = asdict(rec)
    doc["waves"] = waves_json(rec.waves)
    doc["lock_holders"] = list(rec.lock_holders)
    doc["blocked"] = [asdict(b) for b in rec.blocked]
    doc["format"] = FORMAT
    return doc


def dumps(rec: Record) -> bytes:
    return (json.dumps(to_json(rec), sort_keys=True, indent=2) + "\n").encode()


# ------------------------------------------------------------------------------ validation

_SLOT = re.compile(r"[A-Z]")


def _text(doc: dict[str, Any], key: str, *, optional: bool = True, pattern: re.Pattern[str] | None
          = None) -> str | None:  # fmt: skip
    value = doc.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise DataError(f"agent state: {key} must be printable text of at most {MAX_TEXT}")
    if pattern is not None and not pattern.fullmatch(value):
        raise DataError(f"agent state: {key} {value!r} is malformed")
    return value


def _number(doc: dict[str, Any], key: str, *, optional: bool = True) -> float | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise DataError(f"agent state: {key} must be a number")
    return float(value)


def _count(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 31:
        raise DataError(f"agent state: {key} must be a whole number")
    return value


def _flag(doc: dict[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise DataError(f"agent state: {key} must be true or false")
    return value


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_BLOCKED * 2:
        raise DataError(f"agent state: {key} must be a short list")
    return value


def _lock(raw: object) -> LockTicket | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise DataError("agent state: lock must be an object or null")
    backend = _text(raw, "backend", optional=False)
    if backend not in ("etcd", "fleetlock"):
        raise DataError(f"agent state: unknown lock backend {backend!r}")
    lease = raw.get("lease", 0)
    if not isinstance(lease, int) or isinstance(lease, bool) or not 0 <= lease < 1 << 63:
        raise DataError("agent state: lock lease must be a 63-bit whole number")
    return LockTicket(
        backend,
        _text(raw, "id", optional=False) or "",
        _text(raw, "group", optional=False) or "",
        lease,
        _number(raw, "taken") or 0.0,
    )


def _blocked(raw: object) -> Blocked:
    if not isinstance(raw, dict):
        raise DataError("agent state: blocked entries must be objects")
    reason = raw.get("reason")
    if reason not in {str(r) for r in Reason}:
        raise DataError(f"agent state: unknown block reason {reason!r}")
    return Blocked(
        _text(raw, "version", optional=False) or "", Reason(reason), _number(raw, "since") or 0.0
    )


def from_json(doc: object) -> Record:
    if not isinstance(doc, dict):
        raise DataError("agent state: not a JSON object")
    if doc.get("format") != FORMAT:
        raise DataError(f"agent state: format {doc.get('format')!r}, this agent reads {FORMAT}")
    state = doc.get("state")
    if state not in {str(s) for s in State}:
        raise DataError(f"agent state: unknown state {state!r}")
    try:
        waves = parse_waves(doc.get("waves", []))
    except DataError as exc:
        raise DataError(f"agent state: {exc.message}") from None
    holders = _list(doc, "lock_holders")
    if not all(isinstance(h, str) and len(h) <= MAX_TEXT for h in holders):
        raise DataError("agent state: lock_holders must be texts")
    texts = ("version", "from_version", "committed_version", "booted_version", "available",
             "last_error", "reboot_boot")  # fmt: skip
    slots = ("from_slot", "target_slot", "committed_slot")
    numbers = ("verify_deadline", "reboot_requested", "next_try", "wave_start", "last_check",
               "last_success", "next_check")  # fmt: skip
    values: dict[str, Any] = {k: _text(doc, k) for k in texts}
    values.update({k: _text(doc, k, pattern=_SLOT) for k in slots})
    values.update({k: _number(doc, k) for k in numbers})
    values.update({k: _flag(doc, k) for k in ("healthy", "returning", "signalled")})
    values.update({k: _count(doc, k) for k in ("reboot_attempts", "rollbacks")})
    rec = Record(
        state=State(state),
        waves=waves,
        lock=_lock(doc.get("lock")),
        lock_holders=tuple(holders),
        blocked=tuple(_blocked(b) for b in _list(doc, "blocked"))[-MAX_BLOCKED:],
        changed=_number(doc, "changed") or 0.0,
        **values,
    )
    # Unknown keys are ignored: the format number, not the key set, guards the meaning.
    return rec


def loads(data: bytes) -> Record:
    if len(data) > MAX_BYTES:
        raise DataError(f"agent state: {len(data)} bytes, more than {MAX_BYTES}")
    try:
        doc = jsonout.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"agent state: not JSON ({exc})") from None
    return from_json(doc)
