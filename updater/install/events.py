"""What an install reports while it runs: plain values, as JSON objects (``--json``, one per
line) or as lines for people. The JSON form is a stable contract (README, "updater install").

Pure: this module renders; the command decides where the text goes.

``start``: the disk and the release, before anything is written;
``step``: a step begins (``clear``, ``format``, ``slot``, ``boot-files``, ``partition-table``,
``verify``, ``then``), with the slot letter for ``slot``;
``progress``: bytes of a slot's ``write`` (uncompressed image bytes into the slot), ``verify``
(bytes read back) or ``boot-files`` (kernel and initrd onto the ESP);
``done``: the installed disk's A/B state; ``failed``: the error, and whether the disk was
written to at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from updater.install.plan import DiskFacts
from updater.slots import Slot

STEPS = ("clear", "format", "slot", "boot-files", "partition-table", "verify", "then")


@dataclass(frozen=True)
class Start:
    facts: DiskFacts
    version: str
    channel: str
    source: str
    letters: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        f = self.facts
        return {
            "event": "start", "disk": f.path, "model": f.model, "serial": f.serial,
            "size": f.size, "sector_size": f.sector_size, "version": self.version,
            "channel": self.channel, "source": self.source, "slots": list(self.letters),
        }  # fmt: skip

    def text(self) -> str:
        return (
            f"installing release {self.version} ({self.channel}) from {self.source} onto "
            f"{self.facts.describe()}, slot {' and '.join(self.letters)}"
        )


@dataclass(frozen=True)
class Step:
    step: str
    slot: str | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise ValueError(f"unknown install step {self.step!r}")

    def to_json(self) -> dict[str, Any]:
        return {"event": "step", "step": self.step, "slot": self.slot, "detail": self.detail}

    def text(self) -> str:
        what = f"{self.step} {self.slot}" if self.slot else self.step
        return f"{what}: {self.detail}" if self.detail else what


@dataclass(frozen=True)
class Progress:
    slot: str
    phase: str  # write | verify | boot-files
    done: int
    total: int

    def to_json(self) -> dict[str, Any]:
        return {"event": "progress", "slot": self.slot, "phase": self.phase,
                "done": self.done, "total": self.total}  # fmt: skip

    def text(self) -> str:
        percent = 100 * self.done // self.total if self.total else 100
        mib = f"{self.done >> 20} of {self.total >> 20} MiB"
        return f"slot {self.slot} {self.phase}: {percent}% ({mib})"


@dataclass(frozen=True)
class Done:
    disk: str
    version: str
    slots: tuple[Slot, ...]
    seconds: float
    then: str

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "done", "disk": self.disk, "version": self.version,
            "seconds": round(self.seconds, 3), "then": self.then,
            "slots": [
                {"partition": s.partition, "label": s.label, "partuuid": str(s.partuuid),
                 "priority": s.priority, "tries": s.tries, "successful": s.successful}
                for s in self.slots
            ],
        }  # fmt: skip

    def text(self) -> str:
        return (
            f"installed release {self.version} onto {self.disk} in {self.seconds:.1f} s; "
            f"next: {self.then}"
        )


@dataclass(frozen=True)
class Failed:
    error: str
    step: str | None  # the step that failed; None: before the disk was written to
    disk_changed: bool = field(default=False)

    def to_json(self) -> dict[str, Any]:
        return {"event": "failed", "error": self.error, "step": self.step,
                "disk_changed": self.disk_changed}  # fmt: skip

    def text(self) -> str:
        where = f" during {self.step}" if self.step else ""
        after = (
            "; the disk has no partition table and boots nothing" if self.disk_changed
            else "; nothing was written"
        )
        return f"install failed{where}: {self.error}{after}"


Event = Start | Step | Progress | Done | Failed
