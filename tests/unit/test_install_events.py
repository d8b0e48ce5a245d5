"""The install's events: the JSON objects of the ``install --json`` contract (README), one per
line through the project's encoder, shaped like ``update --json``'s, and the lines people read."""

from __future__ import annotations

import json

import pytest

from updater import jsonout, slots
from updater.guid import Guid
from updater.install import events
from updater.install.plan import DiskFacts

FACTS = DiskFacts("/dev/vda", "Virtio Block Device", "abc", 8 << 30, 512, True, True, None)
A = slots.Slot(3, "USR-A", Guid("7130c94a-213a-4e5a-8e26-6cce9662f132"), 0x0101 << 48)


def test_json_lines_carry_the_documented_keys() -> None:
    stream: list[events.Event] = [
        events.Installing(FACTS, "2", "stable", "http://10.0.2.100", ("A",)),
        events.Step("slot", "A", "release 2"),
        events.Progress("A", "write", 1 << 20, 4 << 20),
        events.Progress("A", "verify", 1, 2),
        events.Progress("A", "boot-files", 3, 3),
        events.Rebooting("A", "kexec_file_load"),
        events.Installed("/dev/vda", "2", (A,), 12.3456),
        events.Failed("boom", "verify", disk_changed=True),
    ]
    text = "".join(jsonout.line(events.to_json(e)) for e in stream)
    docs = [json.loads(line) for line in text.splitlines()]
    assert [d["event"] for d in docs] == [
        "installing", "step", "downloading", "verifying", "boot-files", "rebooting", "result",
        "result",
    ]  # fmt: skip
    assert docs[0] == {
        "event": "installing", "disk": "/dev/vda", "model": "Virtio Block Device",
        "serial": "abc", "size": 8 << 30, "sector_size": 512, "version": "2",
        "channel": "stable", "source": "http://10.0.2.100", "slots": ["A"],
    }  # fmt: skip
    assert docs[1] == {"event": "step", "step": "slot", "slot": "A", "detail": "release 2"}
    assert docs[2] == {"event": "downloading", "slot": "A", "bytes": 1 << 20, "total": 4 << 20}
    assert docs[5] == {"event": "rebooting", "slot": "A", "method": "kexec_file_load"}
    assert docs[6] == {
        "event": "result", "status": "installed", "disk": "/dev/vda", "version": "2",
        "seconds": 12.346, "exit": 0,
        "slots": [{"partition": 3, "label": "USR-A",
                   "partuuid": "7130c94a-213a-4e5a-8e26-6cce9662f132", "priority": 1,
                   "tries": 0, "successful": True}],
    }  # fmt: skip
    assert docs[7] == {"event": "result", "status": "failed", "error": "boom", "step": "verify",
                       "disk_changed": True, "exit": 1}  # fmt: skip


def test_lines_for_people() -> None:
    assert events.Progress("B", "verify", 3 << 20, 4 << 20).text() == (
        f"slot B verifying: 75 % ({3 << 20} of {4 << 20} bytes)"
    )
    assert "nothing was written" in events.Failed("bad signature", None).text()
    assert "boots nothing" in events.Failed("cut", "slot", disk_changed=True).text()
    assert "Virtio Block Device, serial abc, 8.0 GiB" in events.Installing(
        FACTS, "1", "stable", "/srv/repo", ("A", "B")
    ).text()
    with pytest.raises(ValueError, match="unknown install step"):
        events.Step("nap")
    with pytest.raises(ValueError, match="unknown progress phase"):
        events.Progress("A", "nap", 0, 0)
