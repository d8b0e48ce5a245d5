"""``updater agent``: the fleet update agent (long-running, ``--once``, ``verify``), and the
operator's ``forget`` and ``status``. Settings: ``[agent]``, ``[lock]``, ``[health]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from updater import config, jsonout
from updater.agent import report
from updater.agent.store import Store
from updater.errors import UpdaterError, UsageError
from updater.records import replace

if TYPE_CHECKING:
    from updater.agent.runner import Mode
    from updater.agent.seam import System
    from updater.hooks.filestages import FirstBoot as FileFirstBoot
    from updater.hooks.stages import FirstBoot
    from updater.target import Target

# The agent's machinery (requests, prometheus_client) is imported when the agent runs, not when
# any other command starts: start-up time counts on small machines.


def update_flow_system(args: argparse.Namespace, cfg: config.Config) -> System:
    """The seam on top of the update flow, on the disk of the global options (default: the
    disk holding the booted /usr), resolved anew for each call."""
    from updater.agent.system import UpdateFlowSystem

    return UpdateFlowSystem(cfg, _resolver(args, cfg))


def file_backend_system(args: argparse.Namespace, cfg: config.Config) -> System:
    """The seam on the file backend's flows. ``--booted root.img`` treats the directory's
    ``root.img`` as the running system (image files in tests), as ``--booted`` names the booted
    slot of a disk image; otherwise the kernel's command line must say it booted from there."""
    from updater import bootdisk
    from updater.agent.fileseam import FileBackendSystem
    from updater.fileslots import ROOT

    if args.booted not in (None, ROOT):
        raise UsageError(f"--booted {args.booted}: on the file backend only {ROOT} can be "
                         "the booted image")  # fmt: skip
    word = f"updater.images={cfg.boot.images_dir}"
    cmdline = (lambda: word) if args.booted else bootdisk.read_cmdline
    return FileBackendSystem(cfg, cmdline=cmdline)


def _resolver(args: argparse.Namespace, cfg: config.Config) -> Callable[[], Target]:
    from updater import target

    def resolve() -> Target:
        return target.resolve(args.disk, args.booted, esp=args.esp, oem=args.oem,
                              settings=cfg.boot)  # fmt: skip

    return resolve


def _system(args: argparse.Namespace, cfg: config.Config) -> tuple[System, bool]:
    if args.simulate:
        from updater.agent.simulator import Simulator

        return Simulator(args.simulate, cfg.update.repo), True
    if cfg.boot.backend is config.SlotBackend.FILES:
        return file_backend_system(args, cfg), False
    return update_flow_system(args, cfg), False


def _run(args: argparse.Namespace, mode: Mode) -> int:
    from updater.agent import build

    cfg = config.load(args.config)
    system, simulated = _system(args, cfg)
    if simulated:
        import threading

        from updater.agent.simulator import SimClock

        stop = threading.Event()
        return build.agent(cfg, system, SimClock(stop), stop).run(mode)
    if cfg.boot.backend is config.SlotBackend.FILES:
        return build.agent(cfg, system, first_boot=file_first_boot(cfg, system)).run(mode)
    return build.agent(cfg, system, first_boot=first_boot(args, cfg, system)).run(mode)


def first_boot(args: argparse.Namespace, cfg: config.Config, system: System) -> FirstBoot:
    """The first-boot-of-slot hooks of the booted slot, for the health check; a reboot a hook
    asks for goes the way the agent reboots ([agent] reboot; with ``off``, someone else's)."""
    from updater.agent.system import read_boot_id
    from updater.hooks.stages import FirstBoot

    via = str(cfg.agent.reboot)
    reboot = None if via == "off" else (lambda: system.reboot(via))
    return FirstBoot(cfg.hooks, cfg.update.state_dir, _resolver(args, cfg), read_boot_id, reboot)


def file_first_boot(cfg: config.Config, system: System) -> FileFirstBoot:
    """``first_boot`` on the file backend: the booted ``root.img``'s hooks, once per image."""
    from updater.agent.system import read_boot_id
    from updater.hooks.filestages import FirstBoot

    via = str(cfg.agent.reboot)
    reboot = None if via == "off" else (lambda: system.reboot(via))
    return FirstBoot(cfg.hooks, cfg.update.state_dir, cfg.boot.images_dir, read_boot_id, reboot)


def cmd_agent(args: argparse.Namespace) -> int:
    from updater.agent.runner import Mode

    return _run(args, Mode.ONCE if args.once else Mode.FOREVER)


def cmd_verify(args: argparse.Namespace) -> int:
    from updater.agent.runner import Mode

    return _run(args, Mode.VERIFY)


def cmd_forget(args: argparse.Namespace) -> int:
    if not args.all and not args.versions:
        raise UpdaterError("name the VERSIONs to forget, or pass --all")
    store = Store(config.load(args.config).update.state_dir)
    with store.locked():
        rec = store.load()
        wanted = None if args.all else frozenset(args.versions)
        after = rec.forget(wanted)
        if after.blocked != rec.blocked:
            # Check soon: a running agent reads the record again at its next step.
            after = replace(after, next_check=None)
        store.save(after)
    gone = sorted(rec.blocked_versions() - after.blocked_versions())
    for version in args.versions:
        if version not in gone:
            sys.stdout.write(f"release {version} was not blocked\n")
    for version in gone:
        sys.stdout.write(f"release {version} may be offered again\n")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    doc = report.status_json(args.config)
    if args.json:
        sys.stdout.write(jsonout.dumps(doc))
    else:
        sys.stdout.write(report.status_line(doc))
        for b in (doc or {}).get("blocked", []):
            sys.stdout.write(f"  blocked: release {b['version']} ({b['reason']}, {b['since']})\n")
    return 0


DESCRIPTION = f"""\
Unattended updates: check the repository every [agent] interval, stage a release into the
inactive slot, wait for a maintenance window and the fleet's reboot lock, reboot (kexec by
default), run the [health] checks on the new slot, then mark it good or roll back. The state
is kept in the [update] state_dir (agent.json) and survives restarts and reboots.
Settings: [agent], [lock] and [health] in {config.CONFIG_PATH} (updater config --help).
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "agent",
        help="the fleet update agent (unattended updates, health-gated commit, rollback)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--once", action="store_true", help="one cycle (check now), then exit")
    p.add_argument("--simulate", metavar="DIR", help="run against a simulated machine (tests)")
    p.set_defaults(func=cmd_agent)
    actions = p.add_subparsers(dest="agent_command", metavar="ACTION")
    v = actions.add_parser(
        "verify",
        help="verify a slot booted on trial: health checks, then mark good or roll back",
        description="What follows a boot and nothing else (updater-mark-good.service): run the\n"
        "health checks of a slot booted on trial, mark it good or roll back, release the lock.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("--simulate", metavar="DIR", help="run against a simulated machine (tests)")
    v.set_defaults(func=cmd_verify)
    f = actions.add_parser(
        "forget",
        help="offer blocked releases again (after a failed health check or a manual rollback)",
    )
    f.add_argument("versions", metavar="VERSION", nargs="*")
    f.add_argument("--all", action="store_true", help="forget every blocked release")
    f.set_defaults(func=cmd_forget)
    s = actions.add_parser("status", help="the agent's state (the agent object of status)")
    s.add_argument("--json", action="store_true", help="the agent object of status --json")
    s.set_defaults(func=cmd_status)
