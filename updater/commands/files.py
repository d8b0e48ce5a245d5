"""The slot commands on the file backend (``[boot] backend = "files"``): ``status``,
``mark-good``, ``rollback``, ``kexec`` / ``reboot`` and ``update`` keep their names and options;
each existing command asks ``common.file_backend(args)`` first and hands over to the handler here.

The rules are ``updater.fileslots``; the directory is ``updater.filebackend``; the boot flow is
``updater.fileboot``. Options that name a GPT slot (``PART``, ``--slot``) do not apply: the
file backend has one current image, and the rules decide which file boots next. Whether the
machine uses the file backend is ``commands.common.file_backend``'s to say, so that the commands
import this module only when it does.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from updater import filebackend, fileboot, fileslots, kexec
from updater.commands.common import emit, out
from updater.config import Config, RebootVia
from updater.errors import SlotError, UsageError
from updater.log import log

if TYPE_CHECKING:
    from updater.fileprepared import Record

ROLES = {fileslots.ROOT: "current", fileslots.NEW: "staged", fileslots.OLD: "previous",
         fileslots.BROKEN: "reverted"}  # fmt: skip


def booted_from(d: filebackend.Directory, cmdline: str) -> bool:
    """Whether the running system came up through this directory's ``root.img`` (the initrd
    was told ``updater.images=DIR``), rather than through a USR partition."""
    return fileboot.booted_from(d.path, cmdline)


def status_json(d: filebackend.Directory, booted: bool = True) -> dict[str, Any]:
    """``status --json`` on the file backend: the GPT document's keys (``disk`` and ``gpt``
    null, ``next`` and each slot naming an image file) plus the backend's own facts. ``booted``:
    whether the running system was booted from ``root.img``."""
    nxt = fileslots.boots_next(d.state)
    slots = []
    for name in filebackend.IMAGE_NAMES:
        image = d.images.get(name)
        if image is None:
            continue
        t = image.trailer
        slots.append({"image": name, "role": ROLES[name], "version": t.version if t else None,
                      "root_hash": t.root_hash if t else None, "bytes": image.bytes,
                      "booted": booted and name == fileslots.ROOT,
                      "problem": image.problem})  # fmt: skip
    plan = [_step(s) for s in fileslots.plan(d.state)]
    return {"backend": "files", "disk": None, "gpt": None, "next": nxt, "slots": slots,
            "images_dir": d.path, "tries": d.state.tries, "tries_problem": d.tries_problem,
            "revert": d.state.revert, "plan": plan}  # fmt: skip


def _step(step: fileslots.Step) -> str:
    if step.kind == "rename":
        return f"rename {step.src} {step.dst}"
    if step.kind == "set-tries":
        return f"set-tries {step.value}"
    return "mark-revert" if step.kind == "mark-revert" else f"remove {step.src}"


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    from updater import bootdisk
    from updater.agent import report as agent_report

    d = filebackend.read(cfg.boot.images_dir)
    doc = status_json(d, booted_from(d, bootdisk.read_cmdline("/proc/cmdline")))
    if args.json:
        emit({**doc, "agent": agent_report.status_json(args.config)})
        return 0
    booted = "booted from root.img" if doc["slots"] and doc["slots"][0]["booted"] else (
        "not booted from this directory")
    out(f"images {d.path}  (file backend; {booted})\n")
    out(f"{'IMAGE':<17}{'ROLE':<10}{'VERSION':<10}ROOT HASH\n")
    for s in doc["slots"]:
        out(f"{s['image']:<17}{s['role']:<10}{s['version'] or '?':<10}"
            f"{s['root_hash'] or s['problem']}\n")  # fmt: skip
    tries = "none (marked good)" if d.state.tries is None else str(d.state.tries)
    out(f"tries left: {tries}{'; revert pending' if d.state.revert else ''}\n")
    if d.tries_problem:
        out(f"counter unreadable, read as 0: {d.tries_problem}\n")
    out(f"next boot mounts: {doc['next'] or 'nothing'}"
        f"{' (' + ', '.join(doc['plan']) + ')' if doc['plan'] else ''}\n")  # fmt: skip
    out(agent_report.status_line(agent_report.status_json(args.config)))
    return 0


def _change(args: argparse.Namespace, cfg: Config, action: str) -> int:
    d = filebackend.read(cfg.boot.images_dir)
    decide = {"mark-good": fileslots.mark_good, "rollback": fileslots.rollback}[action]
    try:
        steps = decide(d.state)
    except fileslots.Refused as exc:
        raise SlotError(f"{action}: {exc}") from None
    dry = getattr(args, "dry_run", False)
    if not dry:
        filebackend.apply_steps(d.path, steps)
    after = filebackend.read(d.path) if not dry else d
    if args.json:
        emit({"action": action, "backend": "files", "dry_run": dry,
              "steps": [_step(s) for s in steps], **status_json(after)})  # fmt: skip
    else:
        verb = "would" if dry else "did"
        for step in steps:
            out(f"{verb}: {_step(step)}\n")
        if not steps:
            out(f"{action}: nothing to change\n")
        out(f"next boot mounts: {fileslots.boots_next(after.state) or 'nothing'}\n")
    return 0


def cmd_mark_good(args: argparse.Namespace, cfg: Config) -> int:
    """mark-good of the booted ``root.img``; when it commits an image on trial, its pending
    first-boot-of-slot hooks run first (a failure refuses) and the post-commit hooks after, as
    on partitions."""
    from updater.agent.system import read_boot_id
    from updater.hooks import filestages

    if getattr(args, "part", None) not in (None, "booted"):
        raise UsageError("the file backend marks the booted root.img; PART does not apply")
    d = filebackend.read(cfg.boot.images_dir)
    trial = filestages.on_trial(d) and not getattr(args, "dry_run", False)
    if trial:
        why = filestages.FirstBoot(cfg.hooks, cfg.update.state_dir, d.path, read_boot_id,
                                   None)()  # fmt: skip
        if why is not None:
            raise SlotError(f"not marked good: {why}", hint="updater rollback --reboot kexec "
                            "goes back to the previous image")  # fmt: skip
    status = _change(args, cfg, "mark-good")
    if trial:
        filestages.after_commit(cfg.hooks, d.path, cfg.update.state_dir)
    return status


def cmd_rollback(args: argparse.Namespace, cfg: Config) -> int:
    status = _change(args, cfg, "rollback")
    if args.reboot != "none" and not args.dry_run:
        reboot(args, cfg, RebootVia(args.reboot), quiet=True)
    return status


def reboot(args: argparse.Namespace, cfg: Config, via: RebootVia, *, quiet: bool = False) -> int:
    """``kexec`` / ``reboot`` (and the reboot after ``update`` and ``rollback``)."""
    from updater import bootdisk

    if getattr(args, "slot", "auto") != "auto":
        raise UsageError("--slot does not apply to the file backend: the rules pick the image")
    d = filebackend.read(cfg.boot.images_dir)
    running = bootdisk.read_cmdline("/proc/cmdline")
    dry = getattr(args, "dry_run", False)
    json_out = getattr(args, "json", False) and not quiet

    def announce(report: fileboot.FileReport) -> None:
        if json_out:
            emit(fileboot.report_json(report))
        else:
            log(f"booting {report.plan.image} (version {report.plan.version}) via "
                f"{report.method}; cmdline: {report.plan.cmdline}")  # fmt: skip

    from updater.hooks.prereboot import PreReboot

    report = fileboot.reboot(d, cfg.boot, running, via, kexec.probe_support(), announce,
                             force=getattr(args, "force", False), dry_run=dry,
                             hooks=PreReboot.of(cfg))  # fmt: skip
    if dry:
        if json_out:
            emit(fileboot.report_json(report))
        else:
            p = report.plan
            commands = "".join("  " + " ".join(a) + "\n" for a in kexec.argvs(list(report.steps)))
            if report.hooks:
                out(f"would run the pre-reboot hooks {', '.join(report.hooks)}\n")
            out(f"would boot {p.image} (version {p.version}) via {report.method}"
                f"{': ' + report.reason if report.reason else ''}\n"
                f"kernel  {p.kernel}\ninitrd  {p.initrd or '-'}\ncmdline {p.cmdline}\n"
                + commands)  # fmt: skip
    return 0


def prepare(args: argparse.Namespace, cfg: Config) -> int:
    """``kexec --prepare``: plan, run the pre-reboot hooks, load (updater.fileprepared)."""
    from updater import bootdisk, fileprepared
    from updater.hooks.prereboot import PreReboot

    if getattr(args, "slot", "auto") != "auto":
        raise UsageError("--slot does not apply to the file backend: the rules pick the image")
    d = filebackend.read(cfg.boot.images_dir)
    record = fileprepared.prepare(d, cfg.boot, bootdisk.read_cmdline("/proc/cmdline"),
                                  kexec.probe_support(), PreReboot.of(cfg))  # fmt: skip
    if args.json:
        emit(prepared_json(record))
    else:
        p = record.plan
        out(f"prepared {p.image} (version {p.version}, {record.method}); the next reboot or "
            f"systemctl kexec enters it, and its initrd counts the boot\ncmdline {p.cmdline}\n")
    return 0


def prepared_json(record: Record) -> dict[str, Any]:
    """``kexec --prepare --json`` on the file backend (README)."""
    p = record.plan
    return {"prepared": True, "backend": "files", "image": p.image, "version": p.version,
            "root_hash": p.root_hash, "kernel": p.kernel, "initrd": p.initrd,
            "cmdline": p.cmdline, "method": record.method,
            "pre_reboot_hooks": list(record.pre_reboot_hooks or ())}  # fmt: skip


def check_prepared(args: argparse.Namespace, cfg: Config) -> int:
    """``kexec --consume-prepared`` (at shutdown): keep the prepared kernel while the directory
    still boots its image, else unload it (updater.fileprepared)."""
    from updater import bootdisk, fileprepared

    def plan_now() -> fileboot.FilePlan:
        d = filebackend.read(cfg.boot.images_dir)
        return fileboot.plan(d, cfg.boot, bootdisk.read_cmdline("/proc/cmdline"))

    done = fileprepared.check(plan_now)
    if args.json:
        doc: dict[str, Any] = {"action": done.action, "reason": done.reason, "backend": "files"}
        if done.record is not None:
            doc["image"], doc["version"] = done.record.plan.image, done.record.plan.version
        emit(doc)
    elif done.action == "kept":
        assert done.record is not None
        log(f"the prepared kernel of {done.record.plan.image} stays loaded: the directory "
            "still boots it (its initrd counts the boot)")  # fmt: skip
    elif done.action == "unloaded":
        log(f"unloaded the prepared kexec kernel: {done.reason}; rebooting through the firmware")
    return 0
