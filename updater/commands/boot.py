"""Boot commands: ``kexec`` (into the chosen slot, consuming its try) and ``reboot``."""

from __future__ import annotations

import argparse
import sys

from updater import bootdisk, bootflow, bootfs, config, jsonout, kexec, state
from updater.errors import UpdaterError
from updater.run import run


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _plan(args: argparse.Namespace, directory: str, *, copy: bool) -> bootflow.BootPlan:
    settings = config.load(args.config).boot
    st = state.load(args.disk, args.booted, args.esp)
    running = args.disk is None
    esp = bootfs.locate_esp(st.disk, st.table, args.esp, running)
    oem = bootfs.locate_oem(st.disk, st.table, args.oem, running)
    plan = bootflow.plan_boot(st, args.slot, esp, oem, settings, bootdisk.read_cmdline())
    return bootflow.stage(plan, esp, directory, copy=copy)


def cmd_kexec(args: argparse.Namespace) -> int:
    support = kexec.probe_support()
    via_firmware = getattr(args, "via", "kexec") == "firmware"
    if via_firmware:
        return _firmware(args, support, "asked for a firmware reboot")
    if args.dry_run:
        plan = _plan(args, bootflow.STAGE_DIR, copy=False)
        method = kexec.first_method(support)
        commands = [kexec.UNLOAD, plan.image().load_argv(kexec.Method.FILE)]
        if method is kexec.Method.FIRMWARE:
            commands = kexec.firmware_argvs(force=args.force, systemd=support.systemd)
        else:
            commands += kexec.exec_argvs(force=args.force, systemd=support.systemd)
        doc = bootflow.plan_json(plan, commands, str(method))
        if args.json:
            _out(jsonout.dumps(doc))
        else:
            blocker = support.blocker()
            _out(
                f"would boot {plan.slot.label} (partition {plan.slot.partition}) via "
                f"{'the firmware: ' + blocker if blocker else 'kexec'}\n"
                f"kernel  {doc['kernel']}\ninitrd  {' + '.join(doc['initrd']) or '-'}\n"
                f"cmdline {plan.cmdline}\n"
            )
            for argv in commands:
                _out("  " + " ".join(argv) + "\n")
        return 0
    plan = _plan(args, bootflow.STAGE_DIR, copy=True)
    try:
        method = kexec.load(plan.image(), support)
    except kexec.LoadFailed as exc:
        return _firmware(args, support, exc.message)
    # The try is consumed only now, durably, right before the jump (see bootflow).
    known = {plan.facts.letter: plan.facts.usrhash} if plan.facts.usrhash else {}
    outcome = state.change(
        args.disk, args.booted, bootflow.consume_try(plan.slot), esp=args.esp, hashes=known
    )
    left = outcome.after
    if args.json:
        doc = bootflow.plan_json(
            plan, kexec.exec_argvs(force=args.force, systemd=support.systemd), str(method)
        )
        doc["tries_left"] = next(s.tries for s in left if s.partition == plan.slot.partition)
        _out(jsonout.dumps(doc))
    else:
        bootflow.log(f"kexec into {plan.slot.label} ({method}); cmdline: {plan.cmdline}")
    try:
        for argv in kexec.exec_argvs(force=args.force, systemd=support.systemd):
            run(argv, check=argv[0] != "mount")
    except UpdaterError:
        run(kexec.UNLOAD, check=False)
        raise
    return 0


def _firmware(args: argparse.Namespace, support: kexec.KexecSupport, why: str) -> int:
    st = state.load(args.disk, args.booted, args.esp)
    target = st.next
    name = target.label if target else "no bootable slot"
    if args.dry_run:
        commands = kexec.firmware_argvs(force=args.force, systemd=support.systemd)
        if args.json:
            _out(
                jsonout.dumps(
                    {
                        "slot": target.letter if target else None,
                        "partition": target.partition if target else None,
                        "method": "firmware",
                        "commands": commands,
                    }
                )
            )
        else:
            _out(f"would reboot through the firmware into {name} ({why})\n")
        return 0
    bootflow.log(f"rebooting through the firmware into {name}: {why}")
    bootflow.firmware_reboot(args.disk, args.booted, args.esp, args.force, support)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, help_text in (
        ("kexec", "boot the chosen slot now with kexec, consuming its try (firmware fallback)"),
        ("reboot", "reboot into the chosen slot: kexec by default, or through the firmware"),
    ):
        p = sub.add_parser(
            name,
            help=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            description=(
                "Choose the slot as GRUB would (or --slot), read its kernel and verity hash from\n"
                "the ESP, the first-boot marker and the OEM settings, build Flatcar's command\n"
                "line, load the kernel (kexec_file_load, else kexec_load where allowed), consume\n"
                "the slot's boot try durably, and jump (systemctl kexec; --force: kexec -e).\n"
                "If kexec is impossible (lockdown, kexec_load_disabled, no kexec tool, a failed\n"
                "load) the machine reboots through the firmware into the same slot instead.\n"
                f"Settings: the [boot] section of {config.CONFIG_PATH} (updater config --help)."
            ),
        )
        p.add_argument("--slot", default="auto", metavar="auto|A|B", help="slot to boot")
        p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
        p.add_argument("--json", action="store_true", help="print the plan as JSON (README)")
        p.add_argument("--force", action="store_true", help="skip the clean shutdown")
        # Also accepted after the command, as before it became a global option.
        p.add_argument(
            "--config", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        if name == "reboot":
            p.add_argument(
                "--via",
                choices=("kexec", "firmware"),
                default="kexec",
                help="kexec (default; falls back to the firmware) or firmware",
            )
        p.set_defaults(func=cmd_kexec)
