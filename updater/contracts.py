"""Every ``--json`` document of the slot and boot commands, built from values in one place.

Each function returns the JSON-ready value of one contract documented in the README; the
commands print it with ``updater.jsonout``. Pure: no I/O, no decisions. A change here is a
change of a stable contract.

The boot flow's types are named for the type checker only: ``status`` prints slot documents
without importing the reboot flow (start-up time; ``updater.bootflow`` imports the planner, the
quiesce sequence and the prepared-kexec record).
"""

from __future__ import annotations

from updater import slots

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from updater.bootflow import Report
    from updater.prepared import Consumed, Record
    from updater.state import DiskState, Outcome


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


def gpt_health(st: DiskState) -> dict[str, Any]:
    t = st.table
    return {
        "sector_size": t.sector_size,
        "source": t.source,
        "primary": t.primary.problem or "valid",
        "backup": t.backup.problem or ("stale" if t.backup_stale else "valid"),
    }


def status(st: DiskState) -> dict[str, Any]:
    """``status --json``: disk, slots, next, gpt health."""
    nxt = st.next
    return {
        "backend": "gpt",
        "disk": st.disk,
        "next": nxt.partition if nxt else None,
        "slots": [slot_json(s, st.booted) for s in st.slots],
        "gpt": gpt_health(st),
    }


def next_boot(slot: slots.Slot) -> dict[str, Any]:
    """``next --json``: the slot chosen (its try consumed unless --dry-run)."""
    return {"partition": slot.partition, "partuuid": str(slot.partuuid), "label": slot.label}


def transition(o: Outcome, *, dry_run: bool) -> dict[str, Any]:
    """``prioritize``, ``set-active``, ``mark-good``, ``mark-bad``, ``rollback``, ``sync``."""
    nxt = slots.choose_next(o.after)
    t = o.transition
    return {
        "action": t.action,
        "target": t.target,
        "dry_run": dry_run,
        "changed": sorted(t.changes),
        "sectors_written": o.sectors_written,
        "grubenv_written": o.grubenv_written,
        "grub_consumed": sorted(o.consumed),
        "next": nxt.partition if nxt else None,
        "slots": [slot_json(s, o.before.booted) for s in o.after],
    }


def repair(disk: str, written: int) -> dict[str, Any]:
    return {"disk": disk, "sectors_written": written}


def reboot(report: Report) -> dict[str, Any]:
    """``kexec --json`` / ``reboot --json`` (dry run, or printed right before the jump)."""
    from updater.kexec import argvs  # loaded already by the flow that made the report

    commands = argvs(list(report.steps))
    plan = report.plan
    if plan is None:  # the firmware path: no kernel of ours
        chosen = report.slot
        return {
            "slot": chosen.letter if chosen else None,
            "partition": chosen.partition if chosen else None,
            "method": str(report.method),
            "commands": commands,
            "pre_reboot_hooks": list(report.hooks),
        }
    staged = plan.staged
    doc: dict[str, Any] = {
        "slot": plan.slot.letter,
        "partition": plan.slot.partition,
        "kernel": staged.kernel if staged else None,
        "initrd": staged.initrd_parts if staged else [],
        "cmdline": plan.cmdline,
        "delivery": str(plan.delivery),
        "method": str(report.method),
        "commands": commands,
        "pre_reboot_hooks": list(report.hooks),
    }
    if report.tries_left is not None:
        doc["tries_left"] = report.tries_left
    return doc


def prepared_record(record: Record) -> dict[str, Any]:
    """``kexec --prepare --json`` (with ``"prepared": true``): what was loaded, and from which
    A/B state."""
    return {
        "slot": record.label,
        "partition": record.partition,
        "kernel_sha256": record.kernel_sha256,
        "initrd_sha256": record.initrd_sha256,
        "cmdline": record.cmdline,
        "method": record.method,
        "pre_reboot_hooks": list(record.pre_reboot_hooks or ()),
    }


def prepared_consumed(done: Consumed) -> dict[str, Any]:
    """``kexec --consume-prepared --json``: ``action`` is consumed, unloaded, not-loaded or
    none (nothing was prepared)."""
    doc: dict[str, Any] = {"action": done.action, "reason": done.reason}
    if done.record is not None:
        doc["slot"] = done.record.label
        doc["partition"] = done.record.partition
    if done.tries_left is not None:
        doc["tries_left"] = done.tries_left
    return doc
