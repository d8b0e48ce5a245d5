"""``updater install``: the command line of the install flow (``updater.install.flow``), its
progress for people or as JSON lines, the question before erasing, and what comes after.

The flow does the work; this module reads options (and, with ``--kernel-cmdline``, the
``updater.install.*`` kernel parameters), renders events, asks, and runs ``--then``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from updater import bootdisk, config, jsonout
from updater.commands import INDEX
from updater.commands.common import ProgressBar, out, resolve_target
from updater.config import RebootVia
from updater.errors import UpdaterError, UsageError
from updater.install import events, params
from updater.install.plan import DiskFacts
from updater.log import log
from updater.release import Release

if TYPE_CHECKING:
    from updater.install.flow import Confirm

THEN = ("kexec", "reboot", "poweroff", "none")

DESCRIPTION = f"""\
Install the OS on a blank disk: Flatcar's partition layout (aligned by libparted), the ESP with
GRUB and the project's grub.cfg, OEM and ROOT, the release written into USR-A (and USR-B with
--both-slots) by the same verified streaming writer as updates, the slot's kernel and initrd,
the first-boot marker; USR-A becomes the proven slot (priority 1, tries 0, successful). The
partition table is written last: a disk cut off before it has none and boots nothing. The
result is read back and checked; then --then decides what happens (kexec boots the installed
OS with the command line GRUB would build, without the firmware).

The release comes from --repo (an http(s) URL or a directory holding a copy of a repository;
default: [update] repo) or --image (an uncompressed tar of such a copy: tar -cf release.tar -C
REPO metadata targets), verified against [update] trusted_root exactly as updates are.
GRUB, the initial ROOT and the OEM files come from [install] assets ({config.CONFIG_PATH}).
"""

EPILOG = """\
A disk that holds a partition table, a filesystem or any other signature is refused unless
--wipe; a disk the running system uses, a mounted one and a partition are always refused.
Without --yes the disk's model, serial and size are shown and "yes" is asked for on a terminal;
elsewhere --yes is required. --json prints one JSON object per line: {"event": "installing"|
"step"|"downloading"|"verifying"|"boot-files"|"rebooting"|"result", ...} (README).
Exit status 0 installed, 1 refused or failed, 2 bad usage.
"""


def cmd_install(args: argparse.Namespace) -> int:
    from updater.install import flow

    if args.kernel_cmdline:
        _from_kernel(args)
    args.install_disk = args.install_disk or args.disk  # also before the command, as elsewhere
    if not args.install_disk:
        raise UsageError("no disk to install on", hint="pass --disk DEV")
    cfg = config.load(args.config)
    repo = args.repo if args.repo is not None else (None if args.image else cfg.update.repo)
    if not args.image and not repo:
        raise UsageError("no release to install", hint="pass --repo URL|DIR or --image FILE")
    req = flow.Request(
        disk=args.install_disk, repo=repo, image=args.image,
        channel=args.channel or cfg.update.channel, version=args.version,
        arch=cfg.boot.arch, trusted_root=args.trusted_root or cfg.update.trusted_root,
        assets=args.assets or cfg.install.assets, oem_id=args.oem_id, oem_dir=args.oem_dir,
        both_slots=args.both_slots, wipe=args.wipe, timeout=cfg.update.timeout,
        retries=cfg.update.retries, panic=cfg.boot.panic,
    )  # fmt: skip
    show = Show(args.json, sys.stderr.isatty())
    try:
        done = flow.install(req, show, _confirm(args.yes))
    except UpdaterError as exc:
        if not show.failed:  # the flow reports the failures after the disk changed itself
            show(events.Failed(exc.message, None, exit=exc.exit_code))
        raise
    finally:
        show.close()
    show(done)
    then = args.then or "none"
    if then != "none":
        _then(then, args, show)
    return 0


def _from_kernel(args: argparse.Namespace) -> None:
    """Options from ``updater.install.*`` kernel parameters, where the command line gives none;
    the parameters are the operator's consent (``--yes``)."""
    given = argparse.ArgumentParser(prog="kernel command line", add_help=False)
    _options(given)
    try:
        found = given.parse_args(params.arguments(bootdisk.read_cmdline(args.kernel_cmdline)))
    except SystemExit:
        raise UsageError("the updater.install.* kernel parameters are not valid") from None
    for key, value in vars(found).items():
        if getattr(args, key, None) in (None, False) and value not in (None, False):
            setattr(args, key, value)
    args.yes = True


def _confirm(yes: bool) -> Confirm:
    def ask(facts: DiskFacts, rel: Release) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError(
                f"refusing to erase {facts.path} without --yes (there is no terminal to ask on)"
            )
        sys.stderr.write(
            f"This erases {facts.describe()}\nand installs release {rel.version}. "
            "Type yes to go on: "
        )
        sys.stderr.flush()
        return sys.stdin.readline().strip() == "yes"

    return ask


class Show:
    """Events as JSON lines (progress at most twice a second), or for people: a progress bar
    on a terminal, else lines (progress every 10 %); a failure only when the disk was written
    to, since the CLI's error line says the rest."""

    def __init__(self, as_json: bool, tty: bool) -> None:
        self.as_json = as_json
        self.bar = ProgressBar(tty)
        self.failed = False
        self._last = 0.0

    def __call__(self, event: events.Event) -> None:
        self.failed = self.failed or isinstance(event, events.Failed)
        if self.as_json:
            if isinstance(event, events.Progress) and event.done < event.total:
                now = time.monotonic()
                if now - self._last < 0.5:
                    return
                self._last = now
            out(jsonout.line(events.to_json(event)))
        elif isinstance(event, events.Progress):
            self.bar.update(f"USR-{event.slot} {event.kind}", event.done, event.total)
        elif not isinstance(event, events.Failed) or event.disk_changed:
            self.bar.close()
            out(event.text() + "\n")

    def close(self) -> None:
        self.bar.close()


def _then(then: str, args: argparse.Namespace, show: Show) -> None:
    """Boot the installed disk the way a cold boot would (``kexec``: the reboot flow with the
    command line GRUB builds from that disk, no firmware; ``reboot``: through the firmware), or
    power off."""
    from updater import bootflow, kexec
    from updater.run import run

    support = kexec.probe_support()
    if then == "poweroff":
        run(["systemctl", "poweroff"] if support.systemd else ["poweroff", "-f"])
        return

    def announce(report: bootflow.Report) -> None:
        slot = report.slot.letter if report.slot else None
        show(events.Rebooting(slot, str(report.method)))
        if report.plan is not None and not args.json:
            log(f"kexec cmdline: {report.plan.cmdline}")

    target = resolve_target(args, disk=args.install_disk)
    via = RebootVia.KEXEC if then == "kexec" else RebootVia.FIRMWARE
    bootflow.reboot(target, bootflow.Request(slot="auto", via=via), support, announce)


def _options(p: argparse.ArgumentParser) -> None:
    """The options of the install itself (also what the kernel parameters may give)."""
    p.add_argument("--disk", dest="install_disk", metavar="DEV", default=None,
                   help="the disk to install on (a whole disk, or an image file)")  # fmt: skip
    source = p.add_mutually_exclusive_group()
    source.add_argument("--repo", type=config.option("update", "repo"), metavar="URL|DIR",
                        help="release repository (default: [update] repo)")  # fmt: skip
    source.add_argument("--image", metavar="FILE",
                        help="an uncompressed tar of a copy of the repository")  # fmt: skip
    p.add_argument("--channel", type=config.option("update", "channel"), metavar="C",
                   help="release channel ([update] channel)")  # fmt: skip
    p.add_argument("--version", metavar="V", help="this release (default: the newest)")
    p.add_argument("--oem", dest="oem_id", metavar="ID", help="OEM settings from assets/oem/ID")
    p.add_argument("--oem-dir", metavar="DIR", help="the OEM partition's files, from DIR")
    p.add_argument("--both-slots", action="store_true", help="write the release into USR-B too")
    p.add_argument("--wipe", action="store_true", help="erase a disk that is not empty")
    p.add_argument("--then", choices=THEN, default=None, help="after the install (default none)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "install",
        help=INDEX["install"].help,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _options(p)
    p.add_argument("--trusted-root", type=config.option("update", "trusted_root"),
                   metavar="FILE", help="root metadata to start trust from")  # fmt: skip
    p.add_argument("--assets", type=config.option("install", "assets"), metavar="DIR",
                   help="GRUB, ROOT and OEM files (default: [install] assets)")  # fmt: skip
    p.add_argument("--yes", action="store_true", help="do not ask before erasing the disk")
    p.add_argument("--json", action="store_true", help="one JSON event per line (README)")
    p.add_argument(
        "--kernel-cmdline", nargs="?", const="/proc/cmdline", metavar="FILE",
        help="options from updater.install.* kernel parameters (implies --yes)",
    )  # fmt: skip
    p.set_defaults(func=cmd_install)
