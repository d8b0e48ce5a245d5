"""Prepared kexec reboots: the slow part of ``updater kexec`` ahead of time, the try at shutdown.

``prepare`` does everything of the kexec flow (``updater.bootflow``) that takes time (plan the
boot, read the slot's files, stage them, load the kernel) and records in /run what it loaded:
the slot, the hashes of the staged kernel and initrd, the command line, and a fingerprint of
the A/B state it planned from. It consumes no try: the machine keeps running as before.

Preparing is the moment the reboot is decided, so ``prepare`` runs the pre-reboot hooks
(``updater.hooks.stages``) after planning and before the load, when asked to and the planned
slot is a new one; a failing hook loads nothing and puts the booted slot back on top. The
record says that they ran, so that a later ``updater reboot`` or ``kexec`` of the same boot
from the same A/B state does not run them again (``hooks_ran``); nothing runs them inside the
shutdown.

The try is consumed at shutdown instead, by ``consume`` (``updater kexec --consume-prepared``,
run by systemd/updater-kexec-prepared.service, which kexec.target pulls in and which finishes
before filesystems are unmounted). Every systemd path into a loaded kernel goes through
kexec.target: ``systemctl kexec``; ``reboot`` and ``shutdown -r`` with a kernel loaded; and,
since systemd 255, a plain ``systemctl reboot`` with a kernel loaded. A reboot through
reboot.target is a firmware reboot, in which GRUB counts the try; nothing runs then.

- the record is there and the kernel is still loaded, and the A/B state is the one planned
  from: consume the slot's try durably (GPT, then grubenv), exactly as ``updater kexec`` does
  before its jump; the reboot then enters the prepared kernel with its try counted;
- the A/B state changed since (an update, set-active, mark-good, a rollback), or consuming
  fails: unload the kernel, so that the reboot goes through the firmware and GRUB chooses
  (and counts) by the state as it is now;
- the kernel is no longer loaded: nothing to count; the firmware reboot lets GRUB count.

Any later ``updater kexec`` drops the record first (``forget``): it loads and counts its own.
A jump that skips the shutdown units (``systemctl kexec --force``, ``reboot -f`` with a kernel
loaded, ``kexec -e`` by hand) bypasses the consumption too; the updater's own ``--force`` path
loads its own kernel and counts its try. This module does not decide slots or build command
lines, and does not jump.
"""

from __future__ import annotations

import os

from updater import bootplan, kexec, records, slots, state
from updater.bootplan import BootPlan
from updater.errors import DataError, UpdaterError
from updater.hooks.prereboot import pre_reboot_due
from updater.kexec import KexecSupport
from updater.log import log
from updater.records import dataclass
from updater.target import Target

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from updater.hooks.prereboot import PreReboot

RECORD = "/run/updater/kexec-prepared.json"
STAGE_DIR = "/run/updater/kexec-prepared"
KEXEC_LOADED = kexec.KEXEC_LOADED
MAX_RECORD = 64 * 1024
FORMAT = 1


@dataclass(frozen=True)
class Record:
    """What ``prepare`` loaded, and from which A/B state."""

    disk: str
    partition: int
    label: str
    kernel_sha256: str
    initrd_sha256: str | None
    cmdline: str
    method: str
    fingerprint: str  # of the A/B state the boot was planned from (``fingerprint``)
    # The pre-reboot hooks that ran and passed before the load (empty: none were due); None:
    # the preparation ran none (it was not asked to).
    pre_reboot_hooks: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **self.__dict__}


@dataclass(frozen=True)
class Consumed:
    """What ``consume`` did at shutdown."""

    action: str  # "consumed", "unloaded", "not-loaded", "none" (nothing was prepared)
    record: Record | None
    tries_left: int | None = None
    reason: str | None = None


def fingerprint(st: state.DiskState) -> str:
    """The A/B state as the reboot depends on it: every slot's partition, PARTUUID and
    attribute bits (priority, tries, successful and the bits the updater does not own)."""
    # Imported here, as below: a dry run without a record needs neither (hashlib loads OpenSSL,
    # about 50 ms under emulation; json about 20 ms).
    import hashlib
    import json

    rows = sorted((s.partition, str(s.partuuid), s.attributes) for s in st.slots)
    return hashlib.sha256(json.dumps([st.disk, rows]).encode()).hexdigest()


def _sha256(path: str | None) -> str | None:
    if path is None:
        return None
    import hashlib  # here: see fingerprint

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def prepare(target: Target, spec: str, support: KexecSupport,
            hooks: PreReboot | None = None) -> tuple[BootPlan, Record]:  # fmt: skip
    """Plan, stage and load the boot of ``spec`` (``auto``: GRUB's choice), and record it;
    with ``hooks``, the pre-reboot hooks run between the plan and the load (module docstring).
    Raises ``kexec.LoadFailed`` when no kernel can be loaded, HookFailed when a hook failed
    (nothing is loaded or recorded then)."""
    # Where no kexec can work, nothing is prepared and no hook runs: the reboot itself (through
    # the firmware) runs them, once.
    kexec.require_possible(support)
    st = state.load(target)
    plan = bootplan.plan_boot(st, spec, target, STAGE_DIR, copy=True)
    # The hooks run before the old record goes: if one fails, the state it changed makes the
    # shutdown unload a kernel prepared earlier instead of entering it uncounted.
    ran = None if hooks is None else pre_reboot(hooks, target, st, plan.slot)
    forget()
    image = plan.image()
    method = kexec.load(image, support)
    try:
        record = Record(
            disk=st.disk, partition=plan.slot.partition, label=plan.slot.label,
            kernel_sha256=_sha256(image.kernel) or "", initrd_sha256=_sha256(image.initrd),
            cmdline=image.cmdline, method=str(method), fingerprint=fingerprint(st),
            pre_reboot_hooks=ran,
        )  # fmt: skip
        from updater import atomicfile  # only --prepare writes (start-up time of the rest)

        os.makedirs(os.path.dirname(RECORD), exist_ok=True)
        import json  # here: see fingerprint

        atomicfile.write(RECORD, json.dumps(record.to_json(), sort_keys=True).encode())
    except BaseException:
        kexec.UNLOAD.run()  # a loaded kernel without its record would kexec uncounted
        raise
    return plan, record


def forget() -> None:
    """Drop the record (the kernel itself is unloaded by whoever loads the next one)."""
    try:
        os.unlink(RECORD)
    except FileNotFoundError:
        pass


def pre_reboot(hooks: PreReboot | None, target: Target, st: state.DiskState,
               into: slots.Slot | None, *, dry_run: bool = False) -> tuple[str, ...]:  # fmt: skip
    """The pre-reboot hooks of a reboot into ``into`` (``stages.before_reboot``: the names of
    those that ran, or in a dry run would run), unless the preparation of that very boot ran
    them already (``hooks_ran``). The one way every reboot flow runs them."""
    if hooks is None:
        return ()
    if into is not None and hooks_ran(st, into):
        log(f"the pre-reboot hooks ran when the boot of {into.label} was prepared: not again")
        return ()
    if into is None or not pre_reboot_due(into.partition, st.booted, into.successful):
        return ()  # as stages.before_reboot would say, without importing the hook machinery
    from updater.hooks import stages  # only a reboot that runs hooks pays for the import

    return stages.before_reboot(hooks, target, st, into, dry_run=dry_run)


def hooks_ran(st: state.DiskState, into: slots.Slot) -> bool:
    """Whether the preparation of the boot of ``into`` from the A/B state ``st`` ran the
    pre-reboot hooks (passed, or none were due): a reboot of that boot runs them no second
    time. A damaged record counts as not."""
    try:
        record = read_record()
    except DataError:
        return False
    if record is None or record.pre_reboot_hooks is None:
        return False
    return record.partition == into.partition and record.fingerprint == fingerprint(st)


def read_record() -> Record | None:
    """The record, None when there is none; DataError when it is not one of ours."""
    from updater import jsonout  # here: see fingerprint

    record_path = RECORD
    raw = jsonout.read_bounded(record_path, MAX_RECORD)
    if raw is None:
        return None
    try:
        doc = jsonout.loads(raw)
        if doc.pop("format") != FORMAT:
            raise ValueError("unknown format")
        record = Record(**doc)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DataError(f"{record_path} is not a prepared-kexec record ({exc})") from exc
    hooks = record.pre_reboot_hooks
    if (not isinstance(record.partition, int) or not isinstance(record.fingerprint, str)
            or not (hooks is None or (isinstance(hooks, list)
                                      and all(isinstance(h, str) for h in hooks)))):  # fmt: skip
        raise DataError(f"{record_path} is not a prepared-kexec record (field types)")
    return records.replace(record, pre_reboot_hooks=None if hooks is None else tuple(hooks))


def kernel_loaded() -> bool:
    return kexec.kernel_loaded(KEXEC_LOADED)


def consume(target: Target) -> Consumed:
    """At shutdown: count the prepared kernel's try, or unload it (module docstring). Never
    leaves a prepared kernel loaded without its try counted: every way out that does not count
    the try unloads the kernel."""
    try:
        record = read_record()
    except DataError as exc:
        _unload()
        forget()
        return Consumed("unloaded", None, reason=exc.message)
    if record is None:
        return Consumed("none", None)
    if not kernel_loaded():
        forget()
        return Consumed("not-loaded", record, reason="no kexec kernel is loaded")
    from updater import signals  # here: only counting a prepared kernel needs it

    try:
        st = state.load(target)
        if fingerprint(st) != record.fingerprint:
            raise _Stale(f"the A/B state changed since {record.label} was prepared")
        planned = st.slot(record.partition)
        with signals.deferred():  # the write is done, or not started, when a signal lands
            outcome = state.change(target, state.by_slots(slots.consume_try, planned))
    except state.GrubenvNotWritten as exc:
        log(exc.message)  # the GPT holds the consumed try: the jump goes on
        outcome = exc.outcome
    except (UpdaterError, OSError, KeyError) as exc:
        _unload()
        forget()
        reason = exc.message if isinstance(exc, UpdaterError) else str(exc)
        return Consumed("unloaded", record, reason=reason)
    forget()
    taken = next(s for s in outcome.after if s.partition == record.partition)
    return Consumed("consumed", record, tries_left=taken.tries)


class _Stale(UpdaterError):
    """The A/B state is not the one the prepared boot was planned from."""


def _unload() -> None:
    failed = kexec.unload_or_say("prepared kexec kernel")
    if failed:
        log(failed)
