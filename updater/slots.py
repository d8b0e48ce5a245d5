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

from collections.abc import Iterable, Mapping, Sequence

from updater.errors import NoBootableSlot, SlotError, UsageError
from updater.guid import Guid
from updater.records import dataclass, field

USR_TYPE = Guid("5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6")  # Flatcar "usr" partition type

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
    partuuid: Guid
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
        """``A`` for a partition labelled USR-A, and so on; None for other labels (a label is
        bytes from the disk: ``USR-1`` or ``USR-\\n`` name no slot letter)."""
        prefix = "USR-"
        if self.label.upper().startswith(prefix) and len(self.label) == len(prefix) + 1:
            letter = self.label[-1].upper()
            return letter if "A" <= letter <= "Z" else None
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


# An interface for the type checker only: a Protocol at run time imports ``typing``.
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Protocol

    class PartitionEntry(Protocol):
        """What a slot is made of: the fields of a GPT entry (``gptformat.GptEntry`` has
        them)."""

        @property
        def number(self) -> int: ...
        @property
        def name(self) -> str: ...
        @property
        def unique_guid(self) -> Guid: ...
        @property
        def type_guid(self) -> Guid: ...
        @property
        def attributes(self) -> int: ...


def slots_of(
    entries: Iterable[PartitionEntry], type_guid: Guid = USR_TYPE
) -> tuple[Slot, ...]:
    """The slots among a table's entries: the partitions of the usr type, in table order."""
    return tuple(
        Slot(e.number, e.name, e.unique_guid, e.attributes)
        for e in entries
        if e.type_guid == type_guid
    )


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
    return _disable(slots, target, "mark-bad", f"mark {target.label or partition} bad", force)


def _disable(
    slots: Sequence[Slot], target: Slot, action: str, what: str, force: bool
) -> Transition:
    """Priority 0, tries 0, not successful; refused when no other slot could boot after."""
    wanted = {target.partition: encode(target.attributes, priority=0, tries=0, successful=False)}
    t = Transition(action, target.partition, _diff(slots, wanted))
    if not force and choose_next(apply(slots, t.changes)) is None:
        raise SlotError(
            f"refusing to {what}: no other slot could boot",
            hint="pass --force if the disk is meant to stop booting",
        )
    return t


def make_unbootable(
    slots: Sequence[Slot], partition: int, *, booted: int | None, force: bool = False
) -> Transition:
    """The slot is about to be overwritten with a new image: priority 0, tries 0, not successful
    (Bottlerocket writes P0 T0 S0 before it writes a slot), so that no boot loader and no kexec
    picks a half-written slot. Refused for the booted slot whatever ``force`` says: its image is
    in use. Guarded like the others: refused when it would leave no slot to boot or take away
    the last known-good fallback, unless ``force``."""
    target = _by_partition(slots, partition)
    name = target.label or str(partition)
    if booted is None:
        raise SlotError(
            f"refusing to make {name} unbootable: the booted slot is unknown",
            hint="pass --booted PART for an image file",
        )
    if partition == booted:
        raise SlotError(f"{name} is the booted slot; its image is in use and cannot be replaced")
    t = _disable(slots, target, "make-unbootable", f"make {name} unbootable", force)
    return _guard(slots, t, force)


def give_back_try(slots: Sequence[Slot], consumed: Slot) -> Transition:
    """Undo the consumption of a boot try (a kexec whose jump failed): ``consumed`` is the slot
    as it was written when the try was taken. Only when the slot still has exactly those
    attributes, so a change someone made in between is never overwritten; else nothing."""
    now = _by_partition(slots, consumed.partition)
    if now.attributes != consumed.attributes or consumed.tries >= FIELD_MAX:
        return Transition("give-back", consumed.partition, {})
    wanted = {now.partition: encode(now.attributes, tries=now.tries + 1)}
    return Transition("give-back", consumed.partition, _diff(slots, wanted))


def consume_try(slots: Sequence[Slot], expected: Slot) -> Transition:
    """A kexec into ``expected`` consumes its boot try as GRUB would (tries - 1 when > 0).
    ``expected`` is the slot as it was when the boot was planned: if another tool changed it
    since, the plan is stale and refused."""
    now = _by_partition(slots, expected.partition)
    if now.attributes != expected.attributes:
        raise SlotError(f"the A/B state of {now.label} changed while preparing the kexec")
    changes = {now.partition: encode(now.attributes, tries=now.tries - 1)} if now.tries else {}
    return Transition("kexec", now.partition, changes)


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
    """Prioritize ``other`` (the operator's manual rollback), with its checks: the other slot
    must hold an image and have booted successfully before; ``force`` overrides both, and a
    forced slot that never succeeded gets one try so that the disk falls back again if it fails.
    """
    other = resolve(slots, "other", booted)
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


ROLES = ("booted", "other")


def resolve(slots: Sequence[Slot], spec: str, booted: int | None = None) -> Slot:
    """PART as a user writes it: a partition number ("3"), a label ("USR-B"), a letter ("B"),
    or a role as RAUC names them: ``booted`` (the running slot) or ``other`` (the one slot that
    is not booted)."""
    text = spec.strip()
    if text.lower() in ROLES:
        if booted is None:
            raise UsageError(
                f"slot {text!r} needs the booted slot, which is unknown",
                hint="pass --booted PART for an image file",
            )
        if text.lower() == "booted":
            return _by_partition(slots, booted)
        return other_slot(slots, booted)
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
