"""What an install reports while it runs: plain values, as JSON objects (``--json``, one per
line) or as lines for people. The JSON form is a stable contract (README, "updater install"),
shaped like ``updater update``'s: the same progress events and the same closing ``result``.

Pure: this module renders; the command decides where the text goes.

``installing``: the disk and the release, before anything is written;
``step``: a step begins (``clear``, ``format``, ``slot``, ``boot-files``, ``partition-table``,
``verify``), with the slot letter for ``slot``;
``downloading`` / ``verifying`` / ``boot-files``: bytes of a slot's image into the slot
(uncompressed), read back, and of its kernel and initrd onto the ESP;
``rebooting``: ``--then kexec`` or ``reboot`` is under way;
``result``: ``installed`` with the new A/B state, or ``failed`` with the error, the step, and
whether the disk was written to at all.
"""

from __future__ import annotations

from typing import Any

from updater.install.plan import DiskFacts
from updater.records import dataclass
from updater.slots import Slot

STEPS = ("clear", "format", "slot", "boot-files", "partition-table", "verify")
PROGRESS = {"write": "downloading", "verify": "verifying", "boot-files": "boot-files"}


@dataclass(frozen=True)
class Installing:
    facts: DiskFacts
    version: str
    channel: str
    source: str
    letters: tuple[str, ...]

    kind = "installing"

    def data(self) -> dict[str, Any]:
        f = self.facts
        return {
            "disk": f.path, "model": f.model, "serial": f.serial, "size": f.size,
            "sector_size": f.sector_size, "version": self.version, "channel": self.channel,
            "source": self.source, "slots": list(self.letters),
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

    kind = "step"

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise ValueError(f"unknown install step {self.step!r}")

    def data(self) -> dict[str, Any]:
        return {"step": self.step, "slot": self.slot, "detail": self.detail}

    def text(self) -> str:
        what = f"{self.step} {self.slot}" if self.slot else self.step
        return f"{what}: {self.detail}" if self.detail else what


@dataclass(frozen=True)
class Progress:
    slot: str
    phase: str  # write | verify | boot-files, as ``updater.deploy`` reports them
    done: int
    total: int

    def __post_init__(self) -> None:
        if self.phase not in PROGRESS:
            raise ValueError(f"unknown progress phase {self.phase!r}")

    @property
    def kind(self) -> str:
        return PROGRESS[self.phase]

    def data(self) -> dict[str, Any]:
        return {"slot": self.slot, "bytes": self.done, "total": self.total}

    def text(self) -> str:
        percent = 100 * self.done // self.total if self.total else 100
        return f"slot {self.slot} {self.kind}: {percent} % ({self.done} of {self.total} bytes)"


@dataclass(frozen=True)
class Rebooting:
    slot: str | None
    method: str  # kexec_file_load, kexec_load or firmware

    kind = "rebooting"

    def data(self) -> dict[str, Any]:
        return {"slot": self.slot, "method": self.method}

    def text(self) -> str:
        return f"rebooting into the installed USR-{self.slot} ({self.method})"


@dataclass(frozen=True)
class Installed:
    disk: str
    version: str
    slots: tuple[Slot, ...]
    seconds: float

    kind = "result"

    def data(self) -> dict[str, Any]:
        return {
            "status": "installed", "disk": self.disk, "version": self.version,
            "seconds": round(self.seconds, 3), "exit": 0,
            "slots": [
                {"partition": s.partition, "label": s.label, "partuuid": str(s.partuuid),
                 "priority": s.priority, "tries": s.tries, "successful": s.successful}
                for s in self.slots
            ],
        }  # fmt: skip

    def text(self) -> str:
        return f"installed release {self.version} onto {self.disk} in {self.seconds:.1f} s"


@dataclass(frozen=True)
class Failed:
    error: str
    step: str | None  # the step that failed; None: before the disk was written to
    disk_changed: bool = False
    exit: int = 1

    kind = "result"

    def data(self) -> dict[str, Any]:
        return {"status": "failed", "error": self.error, "step": self.step,
                "disk_changed": self.disk_changed, "exit": self.exit}  # fmt: skip

    def text(self) -> str:
        where = f" during {self.step}" if self.step else ""
        after = (
            "; the disk has no partition table and boots nothing" if self.disk_changed
            else "; nothing was written"
        )
        return f"install failed{where}: {self.error}{after}"


Event = Installing | Step | Progress | Rebooting | Installed | Failed


def to_json(event: Event) -> dict[str, Any]:
    return {"event": event.kind, **event.data()}
