"""Prepared kexec reboots on the file backend (``[boot] backend = "files"``): the kernel of the
image that boots next, loaded ahead of time, and kept at shutdown only while the directory
still boots that image.

``prepare`` does what takes time in ``updater kexec`` on this backend (``updater.fileboot``):
plan the boot (the file the next boot's initrd makes ``root.img``, its kernel and initrd by root
hash, the command line), run the pre-reboot hooks when the next boot promotes the staged image,
and load the kernel; it records in /run what it loaded. Nothing is consumed, now or later: on
this backend the next boot's initrd counts the boots of an image on trial, on a kexec exactly as
on a cold boot, so a prepared kernel entered by any path (``systemctl kexec``, a plain
``systemctl reboot`` with a kernel loaded, ``kexec -e`` by hand) is counted all the same.

What can go wrong is a stale kernel: the directory changed after the preparation (a rollback
dropped ``root-new.img`` or marked a revert, another release was staged). ``check`` runs at
shutdown (``updater kexec --consume-prepared``, from updater-kexec-prepared.service, as on the
GPT backend): it plans the boot again from the directory as it is then, and unloads the kernel
unless the plan is the recorded one, so that the reboot goes through the firmware and GRUB's
``loopback`` menu chooses by the same rules.

The record lives where ``updater.prepared`` keeps its own (one prepared kernel at a time); each
backend's reader refuses the other's record, and a record it refuses unloads the kernel. A later
``updater kexec`` or ``reboot`` drops the record (it loads its own kernel) and does not run the
pre-reboot hooks again when the preparation of the very same boot ran them (``hooks_ran``).
"""

from __future__ import annotations

import json
from pathlib import Path

from updater import fileboot, jsonout, kexec
from updater.config import BootSettings
from updater.errors import DataError, UpdaterError
from updater.filebackend import Directory
from updater.fileboot import FilePlan
from updater.kexec import KexecSupport
from updater.log import log
from updater.records import asdict, dataclass, fields

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable

    from updater.hooks.prereboot import PreReboot

RECORD = "/run/updater/kexec-prepared.json"  # updater.prepared.RECORD: one prepared kernel
KEXEC_LOADED = kexec.KEXEC_LOADED
MAX_RECORD = 64 * 1024
FORMAT = "files-1"


@dataclass(frozen=True)
class Record:
    """What ``prepare`` loaded: the boot it planned, how it loaded the kernel, and the
    pre-reboot hooks that ran and passed (empty: none were due; None: none were asked for)."""

    plan: FilePlan
    method: str
    pre_reboot_hooks: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, object]:
        hooks = None if self.pre_reboot_hooks is None else list(self.pre_reboot_hooks)
        return {"format": FORMAT, "plan": asdict(self.plan), "method": self.method,
                "pre_reboot_hooks": hooks}  # fmt: skip


@dataclass(frozen=True)
class Checked:
    """What ``check`` did at shutdown."""

    action: str  # "kept", "unloaded", "not-loaded", "none" (nothing was prepared)
    record: Record | None
    reason: str | None = None


def prepare(directory: Directory, settings: BootSettings, running: str, support: KexecSupport,
            hooks: PreReboot | None = None) -> Record:  # fmt: skip
    """Plan, run the pre-reboot hooks (with ``hooks``), load and record (module docstring).
    Raises ``kexec.LoadFailed`` when no kernel can be loaded, HookFailed when a hook failed
    (nothing is loaded or recorded then, and the staged image is dropped)."""
    kexec.require_possible(support)  # where no kexec works, the reboot itself runs the hooks
    chosen = fileboot.plan(directory, settings, running)
    ran: tuple[str, ...] | None = None
    if hooks is not None:
        from updater.hooks import filestages

        # Before the old record goes: a failing hook drops the staged image, and a kernel
        # prepared earlier for it no longer matches the plan, so the shutdown unloads it.
        ran = filestages.before_reboot(hooks, directory)
    forget()
    method = kexec.load(kexec.KexecImage(chosen.kernel, chosen.initrd, chosen.cmdline), support)
    record = Record(chosen, str(method), ran)
    try:
        from updater import atomicfile  # only --prepare writes (start-up time of the rest)

        Path(RECORD).parent.mkdir(parents=True, exist_ok=True)
        atomicfile.write(RECORD, json.dumps(record.to_json(), sort_keys=True).encode())
    except BaseException:
        kexec.UNLOAD.run()  # a loaded kernel without its record would never be checked
        raise
    return record


def forget() -> None:
    """Drop the record (the kernel itself is unloaded by whoever loads the next one)."""
    Path(RECORD).unlink(missing_ok=True)


def read_record() -> Record | None:
    """The record, None when there is none; DataError when it is not one of this backend's."""
    raw = jsonout.read_bounded(RECORD, MAX_RECORD)
    if raw is None:
        return None
    why = "not a prepared-kexec record of the file backend"
    try:
        doc = jsonout.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("another format")
        plan_doc, method, hooks = doc["plan"], doc["method"], doc["pre_reboot_hooks"]
        names = {f.name for f in fields(FilePlan)}
        if not isinstance(plan_doc, dict) or set(plan_doc) != names:
            raise ValueError("the plan's fields")
        if not all(isinstance(v, str) or (k == "initrd" and v is None)
                   for k, v in plan_doc.items()):  # fmt: skip
            raise ValueError("the plan's field types")
        if not isinstance(method, str) or not (
            hooks is None or (isinstance(hooks, list) and all(isinstance(h, str) for h in hooks))
        ):
            raise ValueError("field types")
    except (ValueError, KeyError) as exc:
        raise DataError(f"{RECORD} is {why} ({exc})") from None
    return Record(FilePlan(**plan_doc), method, None if hooks is None else tuple(hooks))


def hooks_ran(chosen: FilePlan) -> bool:
    """Whether the preparation of the boot ``chosen`` ran the pre-reboot hooks (passed, or
    none were due): a reboot of that very boot runs them no second time. A damaged record
    counts as not."""
    try:
        record = read_record()
    except DataError:
        return False
    return record is not None and record.pre_reboot_hooks is not None and record.plan == chosen


def check(plan_now: Callable[[], FilePlan]) -> Checked:
    """At shutdown: keep the prepared kernel when ``plan_now()`` (the boot planned from the
    directory as it is now) is the recorded plan, else unload it. Never leaves a kernel loaded
    whose plan it could not confirm: every way out but "kept", "none" and "not-loaded" unloads."""
    record: Record | None = None
    try:
        record = read_record()  # a record it cannot read: unloaded below, with no record
        if record is None:
            return Checked("none", None)
        if not kexec.kernel_loaded(KEXEC_LOADED):
            forget()
            return Checked("not-loaded", record, reason="no kexec kernel is loaded")
        now, was = plan_now(), record.plan
        if now != was:
            raise UpdaterError(f"the directory boots {now.image} (version {now.version}) now, "
                               f"not the prepared {was.image} (version {was.version})")
    except (UpdaterError, OSError) as exc:
        failed = kexec.unload_or_say("prepared kexec kernel")
        if failed:
            log(failed)
        forget()
        reason = exc.message if isinstance(exc, UpdaterError) else str(exc)
        return Checked("unloaded", record, reason=reason)
    forget()
    return Checked("kept", record)
