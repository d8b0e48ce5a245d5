"""Which release each slot holds: the running /usr's own os-release, and a small record the
update flow keeps in the state directory for the slot it wrote.

The booted slot's version is the one the running system reports (``/usr/lib/os-release``,
``VERSION_ID``) when the target's booted slot is really the mounted /usr; another slot's /usr is
not mounted, and its version is what the record says (written after the slot's image was
verified, cleared when the slot is made unbootable for a new image). A slot neither source
knows has no version (None): an empty slot, or one written by another tool.

The record is ``STATE/slots.json``: ``{"<partuuid>": {"version": "2", "root_hash": "<hex>"}}``,
replaced atomically; a damaged record is ignored with a log line, never trusted. This module
decides nothing about updates.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from updater import atomicfile, bootdisk, jsonout, release
from updater.log import log
from updater.release import Version
from updater.target import Target

RECORD = "slots.json"
OS_RELEASE = "/usr/lib/os-release"
MAX_BYTES = 64 * 1024
_HASH = re.compile(r"[0-9a-f]{64}")


def os_release_version(text: str) -> Version | None:
    """``VERSION_ID`` of an os-release file (quotes allowed), when it is a release version."""
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == "VERSION_ID":
            try:
                return release.parse_version(value.strip().strip("\"'"))
            except ValueError:
                return None
    return None


def running_slot(target: Target, proc: str = "/proc", sys: str = "/sys") -> bool:
    """Whether the target's booted slot is the partition the running /usr is mounted from."""
    mounted = bootdisk.mounted_usr(proc, sys)
    return (
        mounted is not None
        and target.booted == mounted.partition
        and bootdisk.same_disk(mounted.disk, target.disk)
    )


def _load(state_dir: str) -> dict[str, Any]:
    path = Path(state_dir, RECORD)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
        doc = jsonout.loads(raw) if len(raw) <= MAX_BYTES else None
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log(f"ignoring {path}: {exc}")
        return {}
    if not isinstance(doc, dict):
        log(f"ignoring {path}: not a JSON object of at most {MAX_BYTES} bytes")
        return {}
    return doc


def recorded(state_dir: str, partuuid: str) -> Version | None:
    entry = _load(state_dir).get(partuuid.lower())
    if not isinstance(entry, dict):
        return None
    try:
        return release.parse_version(entry.get("version"))
    except ValueError:
        return None


def record(state_dir: str, partuuid: str, version: Version | None, root_hash: str = "") -> None:
    """Remember (or, with None, forget) what the slot ``partuuid`` holds."""
    doc = {k: v for k, v in _load(state_dir).items() if isinstance(v, dict)}
    key = partuuid.lower()
    if version is None:
        if doc.pop(key, None) is None:
            return
    else:
        doc[key] = {"version": str(version), "root_hash": root_hash if _HASH.fullmatch(root_hash)
                    else ""}  # fmt: skip
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    atomicfile.write(Path(state_dir, RECORD), (json.dumps(doc, sort_keys=True) + "\n").encode())


def slot_version(
    target: Target, partuuid: str, partition: int, state_dir: str, os_release: str = OS_RELEASE
) -> Version | None:
    """The version slot ``partition`` holds (see the module docstring)."""
    if partition == target.booted and running_slot(target):
        try:
            with open(os_release, encoding="utf-8", errors="replace") as f:
                found = os_release_version(f.read(MAX_BYTES))
        except OSError:
            found = None
        if found is not None:
            return found
    return recorded(state_dir, partuuid)


def recorded_root_hash(state_dir: str, partuuid: str) -> str:
    """The verity root hash recorded with the slot's version; "" when none is."""
    entry = _load(state_dir).get(partuuid.lower())
    value = entry.get("root_hash") if isinstance(entry, dict) else None
    return value if isinstance(value, str) and _HASH.fullmatch(value) else ""
