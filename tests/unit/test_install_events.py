"""The install's events: the JSON objects of the ``install --json`` contract (README), one per
line through the project's encoder, and the lines people read."""

from __future__ import annotations

import json
import uuid

import pytest

from updater import jsonout, slots
from updater.install import events
from updater.install.plan import DiskFacts

FACTS = DiskFacts("/dev/vda", "Virtio Block Device", "abc", 8 << 30, 512, True, True, None)
A = slots.Slot(3, "USR-A", uuid.UUID("7130c94a-213a-4e5a-8e26-6cce9662f132"), 0x0101 << 48)


def test_json_lines_carry_the_documented_keys() -> None:
    stream: list[events.Event] = [
        events.Start(FACTS, "2", "stable", "http://10.0.2.100", ("A",)),
        events.Step("slot", "A", "release 2"),
        events.Progress("A", "write", 1 << 20, 4 << 20),
        events.Done("/dev/vda", "2", (A,), 12.3456, "kexec"),
        events.Failed("boom", "verify", disk_changed=True),
    ]
    text = "".join(jsonout.line(e.to_json()) for e in stream)
    docs = [json.loads(line) for line in text.splitlines()]
    assert len(docs) == 5 and [d["event"] for d in docs] == [
        "start", "step", "progress", "done", "failed",
    ]  # fmt: skip
    assert docs[0] == {
        "event": "start", "disk": "/dev/vda", "model": "Virtio Block Device", "serial": "abc",
        "size": 8 << 30, "sector_size": 512, "version": "2", "channel": "stable",
        "source": "http://10.0.2.100", "slots": ["A"],
    }  # fmt: skip
    assert docs[1] == {"event": "step", "step": "slot", "slot": "A", "detail": "release 2"}
    assert docs[2] == {"event": "progress", "slot": "A", "phase": "write",
                       "done": 1 << 20, "total": 4 << 20}  # fmt: skip
    assert docs[3]["seconds"] == 12.346 and docs[3]["then"] == "kexec"
    assert docs[3]["slots"] == [{
        "partition": 3, "label": "USR-A", "partuuid": "7130c94a-213a-4e5a-8e26-6cce9662f132",
        "priority": 1, "tries": 0, "successful": True,
    }]  # fmt: skip
    assert docs[4] == {"event": "failed", "error": "boom", "step": "verify", "disk_changed": True}


def test_lines_for_people() -> None:
    assert events.Progress("B", "verify", 3 << 20, 4 << 20).text() == (
        "slot B verify: 75% (3 of 4 MiB)"
    )
    assert "nothing was written" in events.Failed("bad signature", None).text()
    assert "boots nothing" in events.Failed("cut", "slot", disk_changed=True).text()
    assert "Virtio Block Device, serial abc, 8.0 GiB" in events.Start(
        FACTS, "1", "stable", "/srv/repo", ("A", "B")
    ).text()
    with pytest.raises(ValueError, match="unknown install step"):
        events.Step("nap")
