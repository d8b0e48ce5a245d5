"""Slot commands: status, next, prioritize, set-active, mark-good, mark-bad, rollback, repair,
create-disk. Each parses arguments, asks ``updater.state`` to read or change the disk with a
decision from ``updater.slots``, and prints the result for humans or as JSON
(``updater.contracts``). PART may also be a role: ``booted`` or ``other``.

What only one command needs is imported in its handler (start-up time: ``status`` reads the
disk and prints, it loads neither the file backend, the reboot flow nor the disk creator)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from updater import contracts, slots, state
from updater.commands import INDEX
from updater.commands.common import emit, file_backend, resolve_target
from updater.commands.common import out as _out
from updater.errors import SlotError, UpdaterError, UsageError

Handler = Callable[[argparse.Namespace], int]


def _format_slots(st: state.DiskState, after: tuple[slots.Slot, ...] | None = None) -> str:
    rows = after if after is not None else st.slots
    nxt = slots.choose_next(rows)
    lines = [f"{'PART':<5}{'LABEL':<10}{'PRIO':>4}{'TRIES':>7}{'GOOD':>6}  BOOTED NEXT  PARTUUID"]
    for s in rows:
        lines.append(
            f"{s.partition:<5}{s.label:<10}{s.priority:>4}{s.tries:>7}"
            f"{'yes' if s.successful else 'no':>6}  {'*' if s.partition == st.booted else '':<7}"
            f"{'*' if nxt and s.partition == nxt.partition else '':<6}{s.partuuid}"
        )
    return "\n".join(lines) + "\n"


def cmd_status(args: argparse.Namespace) -> int:
    from updater.agent import report as agent_report  # status is the only slot command using it

    cfg = file_backend(args)
    if cfg is not None:
        from updater.commands import files

        return files.cmd_status(args, cfg)
    st = state.as_resolved(resolve_target(args))  # the disk as read while resolving: once
    agent = agent_report.status_json(args.config)
    held, held_error = _pin_of(args)
    if args.json:
        emit({**contracts.status(st), "agent": agent, "pin": held, "pin_error": held_error})
        return 0
    t = st.table
    backup = t.backup.problem or ("stale" if t.backup_stale else "valid")
    _out(f"disk {st.disk}  (GPT primary: {t.primary.problem or 'valid'}; backup: {backup})\n")
    _out(_format_slots(st))
    if st.next is None:
        _out("no slot is bootable\n")
    _out(agent_report.status_line(agent))
    if held or held_error:
        _out(f"pinned to release {held} (updater unpin)\n" if held else f"pin: {held_error}\n")
    return 0


def _pin_of(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The pinned version (``updater pin``) and, when the pin cannot be read, why."""
    from updater import config, pin

    try:
        version = pin.load(config.load(args.config).update.state_dir)
    except UpdaterError as exc:
        return None, exc.message
    return (str(version) if version else None), None


def cmd_next(args: argparse.Namespace) -> int:
    chosen: list[slots.Slot] = []

    def decide(st: state.DiskState) -> slots.Transition:
        slot, transition = slots.next_boot(st.slots)
        chosen.append(slot)
        return transition

    outcome = state.change(resolve_target(args), decide, dry_run=args.dry_run)
    slot = chosen[0]
    if args.json:
        emit(contracts.next_boot(slot))
    else:
        left = slots.tries_of(outcome.transition.changes.get(slot.partition, slot.attributes))
        verb = "would boot" if args.dry_run else "boot"
        _out(
            f"{verb} partition {slot.partition} ({slot.label}) hd0,gpt{slot.partition} "
            f"{slot.partuuid}; tries left {left}{', proven good' if slot.successful else ''}\n"
        )
    return 0


def _transition_command(
    decide_for: Callable[[argparse.Namespace, state.DiskState], slots.Transition],
) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        outcome = state.change(
            resolve_target(args), lambda st: decide_for(args, st), dry_run=args.dry_run
        )
        _report(args, outcome)
        return 0

    return handler


def _report(args: argparse.Namespace, o: state.Outcome) -> None:
    dry = args.dry_run
    t = o.transition
    if args.json:
        emit(contracts.transition(o, dry_run=dry))
        return
    for part, attrs in o.consumed.items():
        _out(f"partition {part}: GRUB consumed a boot try (tries now {slots.tries_of(attrs)})\n")
    if o.grubenv_written:
        _out(f"{'would rewrite' if dry else 'rewrote'} the ESP's grubenv from the GPT\n")
    if t.empty:
        _out(f"{t.action}: nothing to change\n")
    for s in o.before.slots:
        if s.partition in t.changes:
            new = s.with_attributes(t.changes[s.partition])
            _out(
                f"{'would change' if dry else 'changed'} {s.label or s.partition}: "
                f"priority {s.priority}->{new.priority} tries {s.tries}->{new.tries} "
                f"successful {int(s.successful)}->{int(new.successful)}\n"
            )
    _out(_format_slots(o.before, o.after))


def _part(st: state.DiskState, spec: str | None) -> int:
    if spec is None:
        if st.booted is None:
            raise UsageError("no PART given and the booted slot is unknown", hint="name a PART")
        return st.booted
    return st.resolve(spec).partition


def _decide_prioritize(args: argparse.Namespace, st: state.DiskState) -> slots.Transition:
    return slots.prioritize_transition(st.slots, _part(st, args.part))


def _decide_set_active(args: argparse.Namespace, st: state.DiskState) -> slots.Transition:
    return slots.set_active(
        st.slots, _part(st, args.part), tries=args.tries, booted=st.booted, force=args.force
    )


def _decide_mark_good(args: argparse.Namespace, st: state.DiskState) -> slots.Transition:
    return slots.mark_good(st.slots, _part(st, args.part))


def cmd_mark_good(args: argparse.Namespace) -> int:
    """mark-good, with the hooks of a commit when it is the booted slot on trial: its pending
    first-boot-of-slot hooks first (a failure refuses), the post-commit hooks after."""
    from updater import config
    from updater.agent.system import read_boot_id
    from updater.hooks import stages

    on_files = file_backend(args)
    if on_files is not None:
        from updater.commands import files

        return files.cmd_mark_good(args, on_files)
    t = resolve_target(args)
    st = state.load(t)
    part = _part(st, args.part)
    trial = part == st.booted and not st.slot(part).successful and not args.dry_run
    cfg = config.load(args.config)
    if trial:
        why = stages.FirstBoot(cfg.hooks, cfg.update.state_dir, lambda: t, read_boot_id, None)()
        if why is not None:
            raise SlotError(f"not marked good: {why}", hint="updater rollback --reboot kexec "
                            "goes back to the previous slot")  # fmt: skip
    outcome = state.change(t, lambda now: _decide_mark_good(args, now), dry_run=args.dry_run)
    _report(args, outcome)
    if trial:
        stages.after_commit(cfg.hooks, t, cfg.update.state_dir)
    return 0


def _decide_mark_bad(args: argparse.Namespace, st: state.DiskState) -> slots.Transition:
    return slots.mark_bad(st.slots, _part(st, args.part), force=args.force)


def _decide_sync(args: argparse.Namespace, st: state.DiskState) -> slots.Transition:
    return slots.Transition("sync", None, {})


def _decide_rollback(args: argparse.Namespace, st: state.DiskState) -> slots.Transition:
    """Prioritize ``other``, after its checks (``slots.rollback``)."""
    from updater import slotimage

    other = st.resolve("other")
    assert st.booted is not None  # resolving "other" needs it
    has_image = slotimage.holds_image(st.disk, st.table, other.partition)
    return slots.rollback(st.slots, st.booted, has_image=has_image, force=args.force)


def cmd_rollback(args: argparse.Namespace) -> int:
    """The switch, reported as every transition is; then, if asked, the reboot into it."""
    cfg = file_backend(args)
    if cfg is not None:
        from updater.commands import files

        return files.cmd_rollback(args, cfg)
    t = resolve_target(args)
    outcome = state.change(t, lambda st: _decide_rollback(args, st), dry_run=args.dry_run)
    _report(args, outcome)
    if args.reboot == "none":
        return 0
    from updater import bootflow, config, kexec
    from updater.config import RebootVia
    from updater.hooks import stages
    from updater.log import log

    cfg = config.load(args.config)
    # The flow decides whether the pre-reboot hooks run, by the rule of every reboot: back to a
    # good slot, none; into a slot never proven good (--force), they do.
    hooks = stages.PreReboot.of(cfg)
    if args.dry_run:
        into = slots.choose_next(outcome.after)
        names = stages.before_reboot(hooks, t, outcome.before, into, dry_run=True)
        if not args.json:
            _out(f"would reboot into {into.label if into else 'no bootable slot'}"
                 + (f"; would run the pre-reboot hooks {', '.join(names)}" if names else "")
                 + "\n")  # fmt: skip
        return 0

    def announce(report: bootflow.Report) -> None:
        log(f"rebooting into {report.slot.label if report.slot else '?'} ({report.method})")

    request = bootflow.Request(slot="auto", via=RebootVia(args.reboot), quiesce=cfg.quiesce,
                               checkpoint=cfg.checkpoint, hooks=hooks)  # fmt: skip
    bootflow.reboot(resolve_target(args), request, kexec.probe_support(), announce)
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from updater import gpt, target

    path = target.resolve_disk(args.disk)
    written = gpt.repair(path)
    if args.json:
        emit(contracts.repair(path, written))
    elif written:
        _out(f"{path}: repaired, {written} sectors written\n")
    else:
        _out(f"{path}: both GPT copies valid, nothing to do\n")
    return 0


def cmd_create_disk(args: argparse.Namespace) -> int:
    from updater import layout

    lay = layout.flatcar_layout(usr_size=args.usr_size * layout.MiB)
    layout.create_disk(lay, args.image, overwrite=args.force)
    st = state.load(resolve_target(args, disk=args.image))
    if args.json:
        emit(contracts.status(st))
    else:
        _out(f"created {args.image} ({lay.size // layout.MiB} MiB, Flatcar layout)\n")
        _out(_format_slots(st))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def add(name: str, func: Handler, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=INDEX[name].help,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--json", action="store_true", help="print a JSON document (README)")
        p.set_defaults(func=func, dry_run=False)
        return p

    add(
        "status",
        cmd_status,
        "Show each slot's priority, tries, successful flag, which one is booted and which one\n"
        "boots next, and the health of both GPT copies.",
    )

    p = add(
        "next",
        cmd_next,
        "Choose the slot GRUB's gptprio.next would boot: the highest priority among slots with\n"
        "tries left or marked successful, lowest partition number on ties. If it has tries\n"
        "left, one is consumed and written durably (backup GPT first). Exit 1 if no slot\n"
        "can boot.",
    )
    p.add_argument("--dry-run", action="store_true", help="decide but write nothing")

    p = add(
        "prioritize",
        _transition_command(_decide_prioritize),
        "Put PART on top; other slots keep their relative order; priority 0 stays 0.",
    )
    p.add_argument("part", metavar="PART")
    p.add_argument("--dry-run", action="store_true", help="decide but write nothing")

    p = add(
        "set-active",
        _transition_command(_decide_set_active),
        "Mark PART not successful with N tries (default 1) and prioritize it, as after writing\n"
        "a new image. Refused for the booted slot, and when no other slot would remain\n"
        "marked good to fall back to (unless --force).",
    )
    p.add_argument("part", metavar="PART")
    p.add_argument(
        "--tries",
        type=int,
        default=slots.DEFAULT_TRIES,
        metavar="N",
        help="boot attempts before falling back (1-15, default 1)",
    )
    p.add_argument("--force", action="store_true", help="skip the safety checks")
    p.add_argument("--dry-run", action="store_true", help="decide but write nothing")

    p = add(
        "mark-good",
        cmd_mark_good,
        "Set successful, clear tries and prioritize the slot (default: the booted one).\n"
        "For the booted slot on trial, its first-boot-of-slot hooks run first if they have not\n"
        "run for this activation (a failure refuses), and the post-commit hooks after.",
    )
    p.add_argument("part", metavar="PART", nargs="?")
    p.add_argument("--dry-run", action="store_true", help="decide but write nothing")

    p = add(
        "mark-bad",
        _transition_command(_decide_mark_bad),
        "Refused when no other slot could boot afterwards, unless --force.",
    )
    p.add_argument("part", metavar="PART")
    p.add_argument("--force", action="store_true", help="allow leaving no bootable slot")
    p.add_argument("--dry-run", action="store_true", help="decide but write nothing")

    p = add(
        "rollback",
        cmd_rollback,
        "Prioritize the slot that is not booted. Refused when it holds no image or never\n"
        "booted successfully, unless --force (which gives a never-good slot one try).\n"
        "--reboot kexec|firmware then reboots into it (kexec falls back to the firmware);\n"
        "default none. A reboot back to a slot marked good runs no pre-reboot hooks; into a\n"
        "never-good slot (--force) they run as before any reboot into a new slot, and a\n"
        "failing one reboots nothing and puts the booted slot back on top (the switch is\n"
        "undone). --dry-run --reboot says where it would reboot and which hooks would run\n"
        "(it runs none). The fleet agent notices the rollback and does not offer the release\n"
        "rolled back from again until `updater agent forget VERSION`.",
    )
    p.add_argument("--force", action="store_true", help="skip the checks on the other slot")
    p.add_argument("--reboot", choices=("kexec", "firmware", "none"), default="none",
                   help="reboot into the other slot after switching (default: none)")
    p.add_argument("--dry-run", action="store_true", help="decide but write nothing")

    p = add(
        "sync",
        _transition_command(_decide_sync),
        "On disks booted by stock GRUB (grub/README.md) the A/B state is mirrored in the ESP's\n"
        "flatcar/grubenv, where GRUB decrements tries. sync carries those decrements back into\n"
        "the GPT (the source of truth) and rewrites the block from it. Every command that\n"
        "changes the state does the same on the way; run sync once after each boot.",
    )
    p.add_argument("--dry-run", action="store_true", help="decide but write nothing")

    add(
        "repair",
        cmd_repair,
        "Like cgpt repair: when one GPT copy is damaged, rebuild it from the other.",
    )

    p = add(
        "create-disk",
        cmd_create_disk,
        "Create IMAGE with EFI-SYSTEM, BIOS-BOOT, USR-A (P1 T0 S1), USR-B (empty), OEM,\n"
        "OEM-CONFIG and ROOT partitions. Filesystems are not created.",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument(
        "--usr-size",
        type=int,
        default=2048,
        metavar="MIB",
        help="size of each USR partition in MiB (default 2048)",
    )
    p.add_argument("--force", action="store_true", help="overwrite IMAGE if it exists")
