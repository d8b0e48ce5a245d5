"""The A/B decision: GPT attribute bits, GRUB's slot choice, cgpt's prioritize, and transitions.

Pure: values in, values out. Every A/B rule of the project lives here; disk access is in
``updater.gpt`` and the commands only glue the two together.

Bits of a partition's 64-bit attribute field (ChromeOS / Flatcar layout):
priority 48-51 (0 = never boot), tries left 52-55, successful 56. Every other bit belongs to
someone else (UEFI 0-2, ChromeOS error counter or another tool's flag at 57, Microsoft 60/63)
and is preserved exactly.

Safety rule on top of the peers' semantics: a transition that would leave no slot that is both
successful and of non-zero priority (a known-good fallback once all trial tries are spent) is
refused unless forced, because such a disk stops booting after one bad update. Only an explicit
``mark_bad`` (or ``force``) may do that.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from updater.errors import NoBootableSlot, SlotError, UsageError

USR_TYPE = uuid.UUID("5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6")  # Flatcar "usr" partition type

PRIORITY_SHIFT = 48
TRIES_SHIFT = 52
SUCCESSFUL_SHIFT = 56
FIELD_MAX = 15
OWNED_MASK = (0xF << PRIORITY_SHIFT) | (0xF << TRIES_SHIFT) | (1 << SUCCESSFUL_SHIFT)
DEFAULT_TRIES = 1  # Flatcar's postinst gives a new slot exactly one try


def priority_of(attributes: int) -> int:
    return (attributes >> PRIORITY_SHIFT) & 0xF


def tries_of(attributes: int) -> int:
    return (attributes >> TRIES_SHIFT) & 0xF


def successful_of(attributes: int) -> bool:
    return bool((attributes >> SUCCESSFUL_SHIFT) & 1)


def encode(
    attributes: int,
    *,
    priority: int | None = None,
    tries: int | None = None,
    successful: bool | None = None,
) -> int:
    """Return ``attributes`` with the given fields replaced and every other bit unchanged."""
    if priority is not None:
        _check_field("priority", priority)
        attributes = (attributes & ~(0xF << PRIORITY_SHIFT)) | (priority << PRIORITY_SHIFT)
    if tries is not None:
        _check_field("tries", tries)
        attributes = (attributes & ~(0xF << TRIES_SHIFT)) | (tries << TRIES_SHIFT)
    if successful is not None:
        attributes = (attributes & ~(1 << SUCCESSFUL_SHIFT)) | (int(successful) << SUCCESSFUL_SHIFT)
    return attributes


def _check_field(name: str, value: int) -> None:
    if not 0 <= value <= FIELD_MAX:
        raise UsageError(f"{name} must be between 0 and {FIELD_MAX}, not {value}")


@dataclass(frozen=True)
class Slot:
    """One partition of the slot type, as the partition table describes it."""

    partition: int  # 1-based partition number
    label: str
    partuuid: uuid.UUID
    attributes: int

    @property
    def priority(self) -> int:
        return priority_of(self.attributes)

    @property
    def tries(self) -> int:
        return tries_of(self.attributes)

    @property
    def successful(self) -> bool:
        return successful_of(self.attributes)

    @property
    def letter(self) -> str | None:
        """``A`` for a partition labelled USR-A, and so on; None for other labels."""
        prefix = "USR-"
        if self.label.upper().startswith(prefix) and len(self.label) == len(prefix) + 1:
            return self.label[-1].upper()
        return None

    @property
    def bootable(self) -> bool:
        """GRUB would consider it: non-zero priority and a try left or proven good."""
        return self.priority > 0 and (self.tries > 0 or self.successful)

    @property
    def good(self) -> bool:
        """A fallback that never runs out: proven good and still eligible."""
        return self.priority > 0 and self.successful

    def with_attributes(self, attributes: int) -> Slot:
        return Slot(self.partition, self.label, self.partuuid, attributes)


@dataclass(frozen=True)
class Transition:
    """A decided change: new attribute values by partition number (only those that differ)."""

    action: str
    target: int | None
    changes: Mapping[int, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.changes


def apply(slots: Sequence[Slot], changes: Mapping[int, int]) -> list[Slot]:
    return [s.with_attributes(changes.get(s.partition, s.attributes)) for s in slots]


def _diff(slots: Sequence[Slot], wanted: Mapping[int, int]) -> dict[int, int]:
    current = {s.partition: s.attributes for s in slots}
    return {p: a for p, a in wanted.items() if current[p] != a}


def choose_next(slots: Sequence[Slot]) -> Slot | None:
    """GRUB gptprio.next's choice: the first slot in table order with the highest priority among
    those with ``tries > 0 or successful``; priority 0 never boots."""
    best: Slot | None = None
    best_priority = 0
    for slot in slots:
        if (slot.tries > 0 or slot.successful) and slot.priority > best_priority:
            best, best_priority = slot, slot.priority
    return best


def next_boot(slots: Sequence[Slot]) -> tuple[Slot, Transition]:
    """The slot to boot and the try it consumes. Like GRUB, a slot with tries 0 that is
    successful is booted without any write at all."""
    chosen = choose_next(slots)
    if chosen is None:
        raise NoBootableSlot(
            "no bootable slot: every slot has priority 0, or no tries left and never booted well"
        )
    changes: dict[int, int] = {}
    if chosen.tries > 0:
        changes[chosen.partition] = encode(chosen.attributes, tries=chosen.tries - 1)
    return chosen, Transition("next", chosen.partition, changes)


def prioritize(
    slots: Sequence[Slot], partition: int, max_priority: int = FIELD_MAX
) -> dict[int, int]:
    """cgpt prioritize: ``partition`` on top, the others keep their relative order.

    Group the other slots of non-zero priority by priority, put the chosen slot in a group of its
    own in front, sort groups by priority descending; the top group gets the number of groups
    (capped at ``max_priority``), each following group one less but never below 1 (lower ranks
    coalesce); other slots at priority 0 stay at 0. Returns new attributes for every slot.
    """
    _check_field("max priority", max_priority)
    if max_priority < 1:
        raise UsageError("max priority must be at least 1")
    chosen = _by_partition(slots, partition)
    others = [s for s in slots if s.partition != partition]
    levels = sorted({s.priority for s in others if s.priority > 0}, reverse=True)
    groups: list[list[Slot]] = [[chosen]]
    groups += [[s for s in others if s.priority == p] for p in levels]
    out = {s.partition: encode(s.attributes, priority=0) for s in others if s.priority == 0}
    value = min(len(groups), max_priority)
    for group in groups:
        for slot in group:
            out[slot.partition] = encode(slot.attributes, priority=value)
        value = max(value - 1, 1)
    return out


def prioritize_transition(slots: Sequence[Slot], partition: int) -> Transition:
    """``prioritize`` as a transition: only the slots whose attributes change."""
    return Transition("prioritize", partition, _diff(slots, prioritize(slots, partition)))


def _by_partition(slots: Iterable[Slot], partition: int) -> Slot:
    for slot in slots:
        if slot.partition == partition:
            return slot
    raise UsageError(f"partition {partition} is not a slot")


def has_fallback(slots: Iterable[Slot]) -> bool:
    return any(s.good for s in slots)


def _guard(slots: Sequence[Slot], t: Transition, force: bool) -> Transition:
    """Refuse a transition that takes away the last known-good fallback (see module doc)."""
    if force or not has_fallback(slots) or has_fallback(apply(slots, t.changes)):
        return t
    raise SlotError(
        f"refusing to {t.action}: it would leave no slot marked good to fall back to",
        hint="mark the booted slot good first, or pass --force",
    )


def set_active(
    slots: Sequence[Slot],
    partition: int,
    *,
    tries: int = DEFAULT_TRIES,
    booted: int | None = None,
    force: bool = False,
) -> Transition:
    """A freshly written slot: not yet successful, ``tries`` boot attempts, top priority
    (Flatcar postinst: ``cgpt add -S0 -T1 NEW; cgpt prioritize NEW``)."""
    if tries < 1:
        raise UsageError("--tries must be at least 1: a slot with no tries never boots")
    _check_field("tries", tries)
    target = _by_partition(slots, partition)
    if booted == partition and not force:
        raise SlotError(
            f"partition {partition} ({target.label}) is the booted slot; set-active is for the "
            "slot that received a new image",
            hint="use mark-good to keep the booted slot",
        )
    staged = apply(slots, {partition: encode(target.attributes, tries=tries, successful=False)})
    wanted = prioritize(staged, partition)
    return _guard(slots, Transition("set-active", partition, _diff(slots, wanted)), force)


def mark_good(slots: Sequence[Slot], partition: int) -> Transition:
    """The booted slot proved healthy (flatcar-setgoodroot: ``-S1 -T0``, then prioritize)."""
    target = _by_partition(slots, partition)
    staged = apply(slots, {partition: encode(target.attributes, tries=0, successful=True)})
    wanted = prioritize(staged, partition)
    return Transition("mark-good", partition, _diff(slots, wanted))


def mark_bad(slots: Sequence[Slot], partition: int, *, force: bool = False) -> Transition:
    """Never boot this slot again until it is set active: priority 0, tries 0, not successful."""
    target = _by_partition(slots, partition)
    wanted = {partition: encode(target.attributes, priority=0, tries=0, successful=False)}
    t = Transition("mark-bad", partition, _diff(slots, wanted))
    if not force and choose_next(apply(slots, t.changes)) is None:
        raise SlotError(
            f"refusing to mark {target.label or partition} bad: no other slot could boot",
            hint="pass --force if the disk is meant to stop booting",
        )
    return t


def other_slot(slots: Sequence[Slot], booted: int) -> Slot:
    others = [s for s in slots if s.partition != booted]
    if len(others) != 1:
        raise SlotError(
            f"expected exactly one slot besides partition {booted}, found {len(others)}"
        )
    return others[0]


def rollback(
    slots: Sequence[Slot],
    booted: int,
    *,
    has_image: bool,
    force: bool = False,
) -> Transition:
    """Make the slot that is not booted boot next (the operator's manual rollback).

    It must hold an image and have booted successfully before; ``force`` overrides both, and a
    forced slot that never succeeded gets one try so that the disk falls back again if it fails.
    """
    _by_partition(slots, booted)
    other = other_slot(slots, booted)
    name = other.label or str(other.partition)
    if not force:
        if not has_image:
            raise SlotError(f"{name} holds no image", hint="pass --force to try it anyway")
        if not other.successful:
            raise SlotError(
                f"{name} was never booted successfully", hint="pass --force to give it one try"
            )
    attrs = other.attributes
    if not other.successful and other.tries == 0:
        attrs = encode(attrs, tries=1)
    wanted = prioritize(apply(slots, {other.partition: attrs}), other.partition)
    return _guard(slots, Transition("rollback", other.partition, _diff(slots, wanted)), force)


def resolve(slots: Sequence[Slot], spec: str) -> Slot:
    """PART as a user writes it: a partition number ("3"), a label ("USR-B") or a letter ("B")."""
    text = spec.strip()
    if text.isdigit():
        for slot in slots:
            if slot.partition == int(text):
                return slot
        raise UsageError(f"partition {text} is not a slot (slots: {_names(slots)})")
    for slot in slots:
        if slot.label.lower() == text.lower() or (slot.letter or "") == text.upper():
            return slot
    raise UsageError(f"no slot named {spec!r} (slots: {_names(slots)})")


def _names(slots: Iterable[Slot]) -> str:
    return ", ".join(f"{s.partition}={s.label or '?'}" for s in slots) or "none"
