"""The agent's part of ``updater status``: its record as the ``agent`` object of the status JSON
(README, "Status JSON: the agent"), and one line for humans.

Reads only the record file (no network, no lock backend): status must answer while etcd or the
repository is down. A missing record (the agent never ran) is ``null``; a damaged one or an
unreadable configuration gives ``{"state": null, "error": "..."}`` rather than failing status.
"""

from __future__ import annotations

from updater import config
from updater.agent.store import Store
from updater.errors import UpdaterError

# The record's module (and with it the schedule's: hashlib, datetime) is imported only when
# there is a record to show (start-up time of status where the agent never ran).
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from updater.agent.record import Record


def _time(epoch: float | None) -> str | None:
    from updater.agent.schedule import rfc3339

    return rfc3339(epoch) if epoch is not None else None


def record_json(rec: Record) -> dict[str, Any]:
    from updater.agent.record import DESCRIPTIONS

    lock = None
    if rec.lock is not None:
        lock = {"backend": rec.lock.backend, "id": rec.lock.id, "group": rec.lock.group,
                "since": _time(rec.lock.taken or None)}  # fmt: skip
    return {
        "state": str(rec.state),
        "description": DESCRIPTIONS[rec.state],
        "version": rec.version,
        "booted_version": rec.booted_version,
        "available_version": rec.available,
        "committed_version": rec.committed_version,
        "wave_start": _time(rec.wave_start),
        "last_error": rec.last_error,
        "last_check": _time(rec.last_check),
        "last_success": _time(rec.last_success),
        "next_check": _time(rec.next_check),
        "rollbacks": rec.rollbacks,
        "blocked": [{"version": b.version, "reason": str(b.reason), "since": _time(b.since)}
                    for b in rec.blocked],  # fmt: skip
        "lock": lock,
        "lock_holders": list(rec.lock_holders),
    }


def status_json(config_path: str | None) -> dict[str, Any] | None:
    """The ``agent`` value of ``status --json``."""
    try:
        store = Store(config.load(config_path).update.state_dir)
        if not store.exists():
            return None
        return record_json(store.load())
    except UpdaterError as exc:
        return {"state": None, "error": exc.message}


def status_line(doc: dict[str, Any] | None) -> str:
    if doc is None:
        return "agent: never ran\n"
    if doc.get("state") is None:
        return f"agent: {doc.get('error')}\n"
    line = f"agent: {doc['state']}"
    if doc.get("version") and doc["state"] not in ("idle", "failed"):
        line += f" (release {doc['version']})"
    if doc.get("lock"):
        line += f"; holds the reboot lock of group {doc['lock']['group']}"
    if doc.get("last_error"):
        line += f"; last error: {doc['last_error']}"
    return line + "\n"
