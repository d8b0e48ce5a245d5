"""Prepared kexec reboots: the slow part of ``updater kexec`` ahead of time, the try at shutdown.

``prepare`` does everything of the kexec flow (``updater.bootflow``) that takes time (plan the
boot, read the slot's files, stage them, load the kernel) and records in /run what it loaded:
the slot, the hashes of the staged kernel and initrd, the command line, and a fingerprint of
the A/B state it planned from. It consumes no try: the machine keeps running as before.

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

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from updater import atomicfile, bootplan, kexec, signals, slots, state
from updater.bootplan import BootPlan
from updater.errors import DataError, UpdaterError
from updater.kexec import KexecSupport
from updater.log import log
from updater.target import Target

RECORD = "/run/updater/kexec-prepared.json"
STAGE_DIR = "/run/updater/kexec-prepared"
KEXEC_LOADED = "/sys/kernel/kexec_loaded"
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
    rows = sorted((s.partition, str(s.partuuid), s.attributes) for s in st.slots)
    return hashlib.sha256(json.dumps([st.disk, rows]).encode()).hexdigest()


def _sha256(path: str | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def prepare(target: Target, spec: str, support: KexecSupport) -> tuple[BootPlan, Record]:
    """Plan, stage and load the boot of ``spec`` (``auto``: GRUB's choice), and record it.
    Raises ``kexec.LoadFailed`` when no kernel can be loaded (nothing is recorded then)."""
    forget()
    st = state.load(target)
    plan = bootplan.plan_boot(st, spec, target, STAGE_DIR, copy=True)
    image = plan.image()
    method = kexec.load(image, support)
    try:
        record = Record(
            disk=st.disk, partition=plan.slot.partition, label=plan.slot.label,
            kernel_sha256=_sha256(image.kernel) or "", initrd_sha256=_sha256(image.initrd),
            cmdline=image.cmdline, method=str(method), fingerprint=fingerprint(st),
        )  # fmt: skip
        Path(RECORD).parent.mkdir(parents=True, exist_ok=True)
        atomicfile.write(RECORD, json.dumps(record.to_json(), sort_keys=True).encode())
    except BaseException:
        kexec.UNLOAD.run()  # a loaded kernel without its record would kexec uncounted
        raise
    return plan, record


def forget() -> None:
    """Drop the record (the kernel itself is unloaded by whoever loads the next one)."""
    Path(RECORD).unlink(missing_ok=True)


def read_record() -> Record | None:
    """The record, None when there is none; DataError when it is not one of ours."""
    record_path = RECORD
    try:
        with open(record_path, "rb") as f:
            raw = f.read(MAX_RECORD + 1)
    except FileNotFoundError:
        return None
    if len(raw) > MAX_RECORD:
        raise DataError(f"{record_path} is larger than {MAX_RECORD} bytes")
    try:
        doc = json.loads(raw)
        if doc.pop("format") != FORMAT:
            raise ValueError("unknown format")
        record = Record(**doc)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DataError(f"{record_path} is not a prepared-kexec record ({exc})") from exc
    if not isinstance(record.partition, int) or not isinstance(record.fingerprint, str):
        raise DataError(f"{record_path} is not a prepared-kexec record (field types)")
    return record


def kernel_loaded() -> bool:
    try:
        return Path(KEXEC_LOADED).read_text().strip() == "1"
    except OSError:
        return False


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
    try:
        kexec.UNLOAD.run()
    except (UpdaterError, OSError) as exc:
        log(f"could not unload the prepared kexec kernel ({exc})")
