"""The A/B state of one disk: read it, and change it in one locked, durable read-modify-write.

Glue between the partition table (``updater.gpt``) and the slot rules (``updater.slots``): it
reads the table, names the slots and the booted one, lets a pure function decide a transition
from that state, and writes the result. It makes no A/B decision itself.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from updater import bootdisk, gpt, gptformat, slots
from updater.errors import DeviceError
from updater.slots import Slot

# Filesystem signatures that mean "this slot holds an image": (offset, magic).
_IMAGE_MAGICS = (
    (0, b"hsqs"),  # squashfs
    (1024, b"\xe2\xe1\xf5\xe0"),  # erofs
    (1080, b"\x53\xef"),  # ext2/3/4
    (65600, b"_BHRfS_M"),  # btrfs
)


@dataclass(frozen=True)
class DiskState:
    disk: str
    table: gptformat.GptTable
    slots: tuple[Slot, ...]
    booted: int | None  # partition number of the booted slot, when known

    @property
    def next(self) -> Slot | None:
        return slots.choose_next(self.slots)

    def slot(self, partition: int) -> Slot:
        for s in self.slots:
            if s.partition == partition:
                return s
        raise KeyError(partition)

    def to_json(self) -> dict[str, Any]:
        """The ``status --json`` contract (README): disk, slots, next, gpt health."""
        nxt = self.next
        t = self.table
        return {
            "disk": self.disk,
            "next": nxt.partition if nxt else None,
            "slots": [slot_json(s, self.booted) for s in self.slots],
            "gpt": {
                "sector_size": t.sector_size,
                "source": t.source,
                "primary": t.primary.problem or "valid",
                "backup": t.backup.problem or ("stale" if t.backup_stale else "valid"),
            },
        }


def slot_json(s: slots.Slot, booted: int | None) -> dict[str, Any]:
    return {
        "partition": s.partition,
        "label": s.label,
        "partuuid": str(s.partuuid),
        "priority": s.priority,
        "tries": s.tries,
        "successful": s.successful,
        "booted": s.partition == booted,
    }


def slots_of(
    entries: Sequence[gptformat.GptEntry], type_guid: uuid.UUID = slots.USR_TYPE
) -> tuple[slots.Slot, ...]:
    return tuple(
        slots.Slot(e.number, e.name, e.unique_guid, e.attributes)
        for e in entries
        if e.type_guid == type_guid
    )


def resolve_disk(disk: str | None) -> str:
    if disk:
        return disk
    return bootdisk.booted_disk(bootdisk.read_cmdline())


def _booted(found: tuple[slots.Slot, ...], booted_spec: str | None) -> int | None:
    if booted_spec:
        return slots.resolve(found, booted_spec).partition
    partuuid = bootdisk.usr_partuuid(bootdisk.read_cmdline())
    for s in found:
        if s.partuuid == partuuid:
            return s.partition
    return None


def _state(path: str, table: gptformat.GptTable, booted_spec: str | None) -> DiskState:
    found = slots_of(table.entries())
    if not found:
        raise DeviceError(f"{path}: no partitions of the usr slot type {slots.USR_TYPE}")
    return DiskState(path, table, found, _booted(found, booted_spec))


def load(disk: str | None, booted_spec: str | None = None) -> DiskState:
    path = resolve_disk(disk)
    with gpt.locked(path, writable=False) as d:
        return _state(path, gpt.read_table(d), booted_spec)


@dataclass(frozen=True)
class Outcome:
    before: DiskState
    transition: slots.Transition
    after: tuple[slots.Slot, ...]
    sectors_written: int


def change(
    disk: str | None,
    booted_spec: str | None,
    decide: Callable[[DiskState], slots.Transition],
    *,
    dry_run: bool = False,
) -> Outcome:
    """Read the state under an exclusive lock, decide, and write the decision durably.

    An empty transition writes nothing at all, even when a table copy is damaged: like GRUB,
    repair happens only together with a write that is needed anyway (or with ``repair``).
    """
    path = resolve_disk(disk)
    with gpt.locked(path, writable=not dry_run) as d:
        before = _state(path, gpt.read_table(d), booted_spec)
        transition = decide(before)
        after = tuple(slots.apply(before.slots, transition.changes))
        written = 0
        if not dry_run and not transition.empty:
            entries = gptformat.with_attributes(
                before.table, {n - 1: a for n, a in transition.changes.items()}
            )
            written = gpt.apply_plan(d, gptformat.plan_write(before.table, entries))
    return Outcome(before, transition, after, written)


def holds_image(state: DiskState, partition: int) -> bool:
    """Whether a slot's partition starts with a known filesystem signature."""
    entry = gptformat.entries_by_number(state.table.entries())[partition]
    ss = state.table.sector_size
    start = entry.first_lba * ss
    size = (entry.last_lba - entry.first_lba + 1) * ss
    fd = os.open(state.disk, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for offset, magic in _IMAGE_MAGICS:
            if offset + len(magic) <= size and os.pread(fd, len(magic), start + offset) == magic:
                return True
    finally:
        os.close(fd)
    return False
