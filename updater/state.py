"""The A/B state of one disk: read it, and change it in one locked, durable read-modify-write.

Glue between the partition table (``updater.gpt``), the slot rules (``updater.slots``) and the
ESP's copy of the state for stock GRUB (``updater.espenv``): it reads the table of the
``Target``'s disk (or takes the table and grubenv copies the Target read while resolving:
``as_resolved``), names the slots and the booted one, lets a pure function decide a transition
from that state, and writes the result, the GPT first, in one call into ``gpt`` that holds the
lock (``gpt.with_table``). It makes no A/B decision itself, and it
does not read kernels or slot contents (``updater.espfiles``, ``updater.slotimage``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from updater import gpt, gptformat, grubenv, slots
from updater.errors import DeviceError, UpdaterError
from updater.espenv import EspEnv
from updater.records import dataclass, field, replace
from updater.slots import Slot
from updater.target import Target


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

    def resolve(self, spec: str) -> Slot:
        """A slot named as the user writes it, roles (``booted``, ``other``) included."""
        return slots.resolve(self.slots, spec, self.booted)


def by_slots(
    rule: Callable[..., slots.Transition], *args: object, **kwargs: object
) -> Callable[[DiskState], slots.Transition]:
    """A decision for ``change`` from a rule of ``updater.slots`` that takes the slots first:
    ``change(target, by_slots(slots.consume_try, planned))``, or
    ``change(target, by_slots(slots.make_unbootable, 4, booted=target.booted))``."""
    return lambda st: rule(st.slots, *args, **kwargs)


def sync_only(st: DiskState) -> slots.Transition:
    """The decision that changes no attribute: ``change`` then only carries GRUB's consumed
    tries into the GPT and rewrites the grubenv."""
    return slots.Transition("sync", None, {})


def _state(target: Target, table: gptformat.GptTable) -> DiskState:
    found = slots.slots_of(table.entries())
    if not found:
        raise DeviceError(f"{target.disk}: no partitions of the usr slot type {slots.USR_TYPE}")
    return DiskState(target.disk, table, found, target.booted)


def load(target: Target) -> DiskState:
    """The disk's A/B state, including boot tries GRUB consumed in the ESP's grubenv that are
    not yet carried into the GPT (see ``change``), read now under a shared lock. Writes
    nothing."""

    def under_lock(d: gpt.Disk, table: gptformat.GptTable) -> DiskState:
        return _reconciled(_state(target, table), EspEnv.find(target.esp))

    return gpt.with_table(target.disk, under_lock, writable=False)


def as_resolved(target: Target) -> DiskState:
    """``load``, from the table and grubenv copies the Target read when it was resolved (its
    ``snapshot``), without reading the disk again: for a flow handed a Target resolved for it
    (after a ``change`` through the same Target the snapshot is no longer current, and this
    reads the disk again, as ``load`` does)."""
    snap = target.snapshot
    if snap is None or not snap.current:
        return load(target)
    if snap.grubenv is None:  # not readable while resolving: read (and meet the error) now
        env = EspEnv.find(target.esp)
    else:
        env = EspEnv.of(target.esp, snap.grubenv)
    return _reconciled(_state(target, snap.table), env)


def _reconciled(st: DiskState, env: EspEnv | None) -> DiskState:
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


class GrubenvNotWritten(DeviceError):
    """The GPT was written, the ESP's grubenv could not be: the change is made (the GPT is the
    truth, ``outcome`` says what it holds now), but stock GRUB still sees the previous state
    until a later command rewrites it."""

    def __init__(self, message: str, outcome: Outcome, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.outcome = outcome


def change(
    target: Target,
    decide: Callable[[DiskState], slots.Transition],
    *,
    dry_run: bool = False,
    hashes: Mapping[str, str] | None = None,
) -> Outcome:
    """Read the state under an exclusive lock, decide, and write the decision durably.

    An empty transition writes nothing to the GPT, even when a table copy is damaged: like GRUB,
    repair happens only together with a write that is needed anyway (or with ``repair``).

    Disks booted by stock GRUB carry a copy of the A/B state in the ESP's grubenv (see
    grub/README.md). Tries that GRUB consumed there are first carried back into the GPT
    (``grubenv.reconcile``); after the GPT is written, the copies are rewritten from it. The GPT
    is written first: a cut in between leaves a block whose ``usr_sync`` no longer matches, which
    is then ignored and rewritten, never trusted. ``hashes`` (slot letter -> verity root hash)
    updates the block's hashes, for a slot that received a new image. When the grubenv cannot be
    written after the GPT was, ``GrubenvNotWritten`` says so.
    """

    if target.snapshot is not None:
        target.snapshot.current = False  # what this changes, the snapshot does not show

    def under_lock(d: gpt.Disk, table: gptformat.GptTable) -> Outcome:
        current = _state(target, table)
        env = EspEnv.find(target.esp)
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
                outcome = Outcome(before, transition, after, written, False, consumed)
                env_written = _sync_env(target, env, outcome, hashes or {})
        return Outcome(before, transition, after, written, env_written, consumed)

    return gpt.with_table(target.disk, under_lock, writable=not dry_run)


def _sync_env(
    target: Target, env: EspEnv, outcome: Outcome, hashes: Mapping[str, str]
) -> bool:
    try:
        return env.sync(outcome.after, hashes, arch=target.boot.arch, panic=target.boot.panic)
    except (UpdaterError, OSError) as exc:
        detail = exc.message if isinstance(exc, UpdaterError) else (exc.strerror or str(exc))
        n = outcome.sectors_written
        gpt_part = f"the GPT was written ({n} sectors)" if n else "the GPT is unchanged"
        raise GrubenvNotWritten(
            f"{gpt_part}, but rewriting the ESP's grubenv failed: {detail}; GRUB still sees "
            "the previous state",
            outcome,
            hint="fix the ESP and run updater sync",
        ) from exc
