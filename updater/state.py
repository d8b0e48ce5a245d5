"""The A/B state of one disk: read it, and change it in one locked, durable read-modify-write.

Glue between the partition table (``updater.gpt``) and the slot rules (``updater.slots``): it
reads the table, names the slots and the booted one, lets a pure function decide a transition
from that state, and writes the result. It makes no A/B decision itself.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from updater import bootdisk, bootfs, cmdline, gpt, gptformat, grubenv, slots
from updater.errors import DeviceError, UpdaterError
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


def load(disk: str | None, booted_spec: str | None = None, esp: str | None = None) -> DiskState:
    """The disk's A/B state, including boot tries GRUB consumed in the ESP's grubenv that are
    not yet carried into the GPT (see ``change``). Writes nothing."""
    path = resolve_disk(disk)
    with gpt.locked(path, writable=False) as d:
        table = gpt.read_table(d)
        st = _state(path, table, booted_spec)
        env = _Grubenv.find(path, table, esp)
    if env is None:
        return st
    return replace(st, slots=tuple(slots.apply(st.slots, grubenv.reconcile(env.values, st.slots))))


@dataclass(frozen=True)
class Outcome:
    before: DiskState
    transition: slots.Transition
    after: tuple[Slot, ...]
    sectors_written: int
    grubenv_written: bool = False
    consumed: Mapping[int, int] = field(default_factory=dict)  # tries GRUB used, by partition


GRUBENV = "flatcar/grubenv"


@dataclass
class _Grubenv:
    """The ESP's GRUB environment block, when the disk uses the stock-GRUB design (grub/)."""

    files: bootfs.BootFiles
    raw: bytes
    values: dict[str, str]

    @classmethod
    def find(cls, path: str, table: gptformat.GptTable, esp: str | None) -> _Grubenv | None:
        try:
            files = bootfs.locate_esp(path, table, esp, running=False)
            raw = files.read(GRUBENV)
        except UpdaterError:
            return None  # no ESP, or no tool to read it: the disk does not use a grubenv
        if raw is None:
            return None
        try:
            return cls(files, raw, grubenv.parse(raw))
        except UpdaterError:
            # A damaged block is rewritten from the GPT below; nothing is reconciled from it.
            return cls(files, raw, {})

    def hashes(self, final: Sequence[Slot], known: Mapping[str, str]) -> dict[str, str]:
        """Each slot's verity root hash: ``known`` ones as given, the others from the slot's
        kernel on the ESP (written there together with the image, so it is the truth), else what
        the block already said."""
        out: dict[str, str] = dict(known)
        for s in final:
            if s.letter is None or s.letter in known:
                continue
            found = self.values.get(f"usr_{s.letter.lower()}_hash", "")
            for rel in cmdline.kernel_candidates(s.letter):
                data = self.files.read(rel)
                if data is not None:
                    found = cmdline.usrhash_from_kernel(data) or found
                    break
            if found:
                out[s.letter] = found
        return out

    def sync(self, final: tuple[Slot, ...], hashes: Mapping[str, str]) -> bool:
        block = grubenv.render(grubenv.slot_vars(final, self.hashes(final, hashes)))
        if block == self.raw:
            return False
        self.files.write(GRUBENV, block)
        return True


def change(
    disk: str | None,
    booted_spec: str | None,
    decide: Callable[[DiskState], slots.Transition],
    *,
    dry_run: bool = False,
    esp: str | None = None,
    hashes: Mapping[str, str] | None = None,
) -> Outcome:
    """Read the state under an exclusive lock, decide, and write the decision durably.

    An empty transition writes nothing to the GPT, even when a table copy is damaged: like GRUB,
    repair happens only together with a write that is needed anyway (or with ``repair``).

    Disks booted by stock GRUB carry a copy of the A/B state in the ESP's ``flatcar/grubenv``
    (see grub/README.md). Tries that GRUB consumed there are first carried back into the GPT
    (``grubenv.reconcile``); after the GPT is written, the block is rewritten from it. The GPT is
    written first: a cut in between leaves a block whose ``usr_sync`` no longer matches, which
    is then ignored and rewritten, never trusted. ``hashes`` (slot letter -> verity root hash)
    updates the block's hashes, for a slot that received a new image.
    """
    path = resolve_disk(disk)
    with gpt.locked(path, writable=not dry_run) as d:
        table = gpt.read_table(d)
        current = _state(path, table, booted_spec)
        env = _Grubenv.find(path, table, esp)
        before = current
        consumed: dict[int, int] = {}
        if env is not None:
            consumed = grubenv.reconcile(env.values, current.slots)
            before = replace(current, slots=tuple(slots.apply(current.slots, consumed)))
        transition = decide(before)
        after = tuple(slots.apply(before.slots, transition.changes))
        changes = {s.partition: s.attributes for s in after if s not in current.slots}
        written = 0
        env_written = False
        if not dry_run:
            if changes:
                entries = gptformat.with_attributes(table, {n - 1: a for n, a in changes.items()})
                written = gpt.apply_plan(d, gptformat.plan_write(table, entries))
            if env is not None:
                env_written = env.sync(after, hashes or {})
    return Outcome(before, transition, after, written, env_written, consumed)


def holds_image(state: DiskState, partition: int) -> bool:
    """Whether a slot's partition starts with a known filesystem signature."""
    entry = gptformat.entries_by_number(state.table.entries())[partition]
    ss = state.table.sector_size
    start = entry.first_lba * ss
    size = (entry.last_lba - entry.first_lba + 1) * ss
    # Through the partition node where there is one: it does not share the whole disk's page
    # cache, which may hold what the slot contained before an image was written to it.
    path = bootfs.partition_node(state.disk, partition) or state.disk
    if path != state.disk:
        start = 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for offset, magic in _IMAGE_MAGICS:
            if offset + len(magic) <= size and os.pread(fd, len(magic), start + offset) == magic:
                return True
    finally:
        os.close(fd)
    return False
