"""Boot commands: ``kexec`` (into the chosen slot, consuming its try) and ``reboot``.

Each turns its arguments into a ``bootflow.Request``, runs the flow, and prints its ``Report``
(for a real kexec, right before the jump). The sequence itself is ``updater.bootflow``'s.
"""

from __future__ import annotations

import argparse

from updater import bootflow, config, contracts, kexec
from updater.commands import INDEX
from updater.commands.common import emit, file_backend, out, resolve_target
from updater.config import RebootVia
from updater.errors import UsageError
from updater.log import log


def cmd_kexec(args: argparse.Namespace) -> int:
    if args.prepare or args.consume_prepared:
        if args.dry_run or args.force:
            raise UsageError("--prepare and --consume-prepared take no --dry-run or --force")
        cfg = file_backend(args)
        if cfg is not None:
            from updater.commands import files

            return files.prepare(args, cfg) if args.prepare else files.check_prepared(args, cfg)
        return _prepare(args) if args.prepare else _consume_prepared(args)
    return _reboot(args, RebootVia.KEXEC)


def _prepare(args: argparse.Namespace) -> int:
    from updater import prepared
    from updater.hooks.prereboot import PreReboot

    hooks = PreReboot.of(config.load(args.config))
    plan, record = prepared.prepare(resolve_target(args), args.slot, kexec.probe_support(), hooks)
    for note in plan.notes:
        log(note)
    if args.json:
        emit({"prepared": True, **contracts.prepared_record(record)})
    else:
        out(f"prepared {record.label} ({record.method}); the next reboot or systemctl kexec "
            f"enters it and counts its try\ncmdline {record.cmdline}\n")  # fmt: skip
    return 0


def _consume_prepared(args: argparse.Namespace) -> int:
    from updater import prepared

    done = prepared.consume(resolve_target(args))
    if args.json:
        emit(contracts.prepared_consumed(done))
    elif done.action == "consumed":
        assert done.record is not None
        log(f"counted the boot try of the prepared {done.record.label} "
            f"(tries left {done.tries_left})")  # fmt: skip
    elif done.action == "unloaded":
        log(f"unloaded the prepared kexec kernel: {done.reason}; rebooting through the firmware")
    return 0


def cmd_reboot(args: argparse.Namespace) -> int:
    return _reboot(args, RebootVia(args.via))


def _reboot(args: argparse.Namespace, via: RebootVia) -> int:
    from updater.hooks.prereboot import PreReboot

    cfg = file_backend(args)
    if cfg is not None:
        from updater.commands import files

        return files.reboot(args, cfg, via)
    settings = config.load(args.config)
    request = bootflow.Request(
        slot=args.slot,
        via=via,
        force=args.force,
        dry_run=args.dry_run,
        quiesce=settings.quiesce,
        checkpoint=settings.checkpoint,
        hooks=PreReboot.of(settings),
    )
    support = kexec.probe_support()

    def announce(report: bootflow.Report) -> None:
        if args.json:
            emit(contracts.reboot(report))
        elif report.plan is not None:
            log(
                f"kexec into {report.plan.slot.label} ({report.method}); "
                f"cmdline: {report.plan.cmdline}"
            )

    report = bootflow.reboot(resolve_target(args), request, support, announce)
    if args.dry_run:
        if args.json:
            emit(contracts.reboot(report))
        else:
            out(_describe(report))
    return 0


def _describe(report: bootflow.Report) -> str:
    """The dry run, for humans."""
    name = report.slot.label if report.slot else "no bootable slot"
    hooks = f"would run the pre-reboot hooks {', '.join(report.hooks)}\n" if report.hooks else ""
    plan = report.plan
    if plan is None:
        return f"{hooks}would reboot through the firmware into {name} ({report.reason})\n"
    via = f"the firmware: {report.reason}" if report.reason else "kexec"
    staged = plan.staged
    initrd = " + ".join(staged.initrd_parts) if staged else ""
    lines = [
        f"would boot {plan.slot.label} (partition {plan.slot.partition}) via {via}",
        f"kernel  {staged.kernel if staged else '-'}",
        f"initrd  {initrd or '-'}",
        f"cmdline {plan.cmdline}",
        *("  " + " ".join(argv) for argv in kexec.argvs(list(report.steps))),
    ]
    return hooks + "\n".join(lines) + "\n"


DESCRIPTION = (
    "Choose the slot as GRUB would (or --slot), read its kernel and verity hash from\n"
    "the ESP, the first-boot marker and the OEM settings, build Flatcar's command\n"
    "line, load the kernel (kexec_file_load, else kexec_load where allowed), consume\n"
    "the slot's boot try durably, and jump (systemctl kexec; --force: kexec -e).\n"
    "Without systemd as PID 1 the jump is the [quiesce] sequence: stop commands,\n"
    "killall5, sync, umount -r of every disk filesystem, kexec -e, each step timed\n"
    "and logged; a failed or late step reboots through the firmware instead.\n"
    "With [checkpoint] processes selected, CRIU dumps them before the jump (a failed\n"
    "dump: no reboot, they keep running); updater checkpoint restore brings them back.\n"
    "If kexec is impossible (lockdown, kexec_load_disabled, no kexec tool, a failed\n"
    "load) the machine reboots through the firmware into the same slot instead; a\n"
    "failed jump unloads the kernel and gives the try back.\n"
    "Before a reboot into a new slot (not yet marked good), after the plan and before\n"
    "the load, the pre-reboot hooks run ([hooks] dir, pre-reboot.d; once: not again\n"
    "when --prepare ran them for this boot); a failing one reboots nothing and puts\n"
    "the booted slot back on top. A reboot back to a good slot runs none; --dry-run\n"
    "runs none and names those that would run.\n"
    f"Settings: the [boot] section of {config.CONFIG_PATH} (updater config --help)."
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, func in (("kexec", cmd_kexec), ("reboot", cmd_reboot)):
        p = sub.add_parser(
            name,
            help=INDEX[name].help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            description=DESCRIPTION,
        )
        p.add_argument(
            "--slot",
            default="auto",
            metavar="auto|A|B|booted|other",
            help="slot to boot (default: GRUB's choice)",
        )
        p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
        p.add_argument("--json", action="store_true", help="print the plan as JSON (README)")
        p.add_argument("--force", action="store_true", help="skip the clean shutdown")
        # Also accepted after the command, as before it became a global option.
        p.add_argument(
            "--config", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        if name == "kexec":
            p.add_argument(
                "--prepare",
                action="store_true",
                help="plan, run the pre-reboot hooks (a new slot), stage and load the kernel "
                "now and consume nothing; the next reboot "
                "(systemctl reboot or kexec) enters it, and updater-kexec-prepared.service "
                "counts its try at shutdown (or unloads it if the A/B state changed since); "
                "on the file backend the initrd counts the boot, and the service keeps the "
                "kernel only while the directory still boots its image",
            )
            p.add_argument(
                "--consume-prepared",
                action="store_true",
                help="at shutdown (the service runs it): count the prepared kernel's try, or "
                "unload it when the A/B state changed since it was prepared (file backend: "
                "keep it, or unload it when the directory boots another image now)",
            )
        if name == "reboot":
            p.add_argument(
                "--via",
                choices=("kexec", "firmware"),
                default="kexec",
                help="kexec (default; falls back to the firmware) or firmware (into GRUB's "
                "choice; a --slot GRUB would not boot is refused)",
            )
        p.set_defaults(func=func)
