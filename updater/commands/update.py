"""``updater update``: check the release repository, write and activate a release, reboot.

Turns the options into an ``update.Request`` (defaults from ``[update]``), runs the flow, and
shows its events: one JSON object per line with ``--json``, a progress bar on a terminal, plain
log lines otherwise. The reboot after an activation goes through the reboot flow.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from updater import config, jsonout, pin
from updater.commands.common import (
    ProgressBar,
    add_repository_options,
    out,
    resolve_target,
    version_arg,
)
from updater.config import RebootVia, SlotBackend
from updater.errors import UpdaterError
from updater.log import log

T = TypeVar("T")

if TYPE_CHECKING:
    from updater.hooks.prereboot import PreReboot

DESCRIPTION = f"""\
Refresh the release repository's signed metadata (TUF: signatures, thresholds, expiry, rollback,
mix-and-match), choose the release for this machine (the newest of the channel and
architecture that is newer than the booted slot's version; --version pins one; a downgrade
only with --allow-downgrade; a machine held by `updater pin V` takes only V, and --version
another only with --override-pin), then, unless --check:
  0. run the pre-install hooks ([hooks] dir, pre-install.d): a failing one changes nothing;
  1. make the other slot unbootable (priority 0, tries 0, not successful), durably;
  2. stream the image into it (HTTP Range, zstd frames each checked against their signed hash,
     the whole file against the signed length and hash, the dm-verity tree recomputed), then
     read it back bypassing the page cache against the signed verity root hash;
  3. put its kernel (which must carry that root hash) and initrd on the ESP, atomically, then
     run the post-install hooks with the new slot mounted read-only (a failure: not activated);
  4. set it active (top priority, one boot try): the only step that makes it bootable;
  5. with --reboot kexec|firmware, run the pre-reboot hooks (a failure: no reboot, the booted
     slot back on top), then reboot into it (kexec falls back to the firmware); with
     --prepare-kexec, run them and load its kernel now (updater kexec --prepare): the reboot
     that follows runs them no second time.
An interrupted run (killed, power cut) resumes the write where it stopped when rerun.
Defaults: the [update] section of {config.CONFIG_PATH} (updater config --help).
"""

EPILOG = """\
Exit status: 0 updated (written, verified, activated; rebooted if asked) or, with --check, an
update is available; 3 nothing to do; 1 failed or refused (one line on stderr; the booted slot
is never written and the other slot is left unbootable until a rerun completes); 2 bad usage.
--json prints one JSON object per line: {"event": "checking"|"available"|"nothing"|"hooks"|
"downloading"|"verifying"|"boot-files"|"activated"|"rebooting"|"prepared"|"result", ...}
(README).
Examples:
  updater update --check
  updater update --reboot kexec
  updater --disk disk.img --booted A update --repo /media/releases --json
"""


class Display:
    """Events for people: a tqdm bar per phase on a terminal, else a line every 10 %."""

    def __init__(self, tty: bool) -> None:
        self.bar = ProgressBar(tty)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind in ("downloading", "verifying", "boot-files"):
            self.bar.update(kind, data["bytes"], data["total"])
            return
        self.close()
        text = {
            "checking": lambda: (
                f"checking {data['repo']} ({data['channel']}, {data['arch']}); "
                f"booted version {data['booted_version'] or 'unknown'}"
            ),
            "nothing": lambda: f"nothing to do: {data['reason']}",
            "available": lambda: f"release {data['version']}: {data['reason']}",
            "activated": lambda: (
                f"release {data['version']} is staged as {data['image']} "
                f"({data['tries']} boot tries until mark-good)"
                if data["slot"] == "files"
                else f"release {data['version']} is active in USR-{data['slot']} "
                f"(priority {data['priority']}, {data['tries']} boot try)"
                + (" after resuming an interrupted write" if data["resumed"] else "")
            ),
            "rebooting": lambda: (
                f"rebooting into {data.get('image') or 'USR-' + str(data['slot'])} "
                f"({data['method']})"
            ),
            "prepared": lambda: (
                f"prepared the kexec into {data.get('image') or 'USR-' + str(data['slot'])} "
                f"({data['method']}): the next reboot enters it"
            ),
        }.get(kind)
        if text is not None:
            out(text() + "\n")

    def close(self) -> None:
        self.bar.close()


def cmd_update(args: argparse.Namespace) -> int:
    from updater import bootflow, kexec, update
    from updater.fetch.client import open_client
    from updater.fetch.http import HttpPolicy
    from updater.hooks import stages

    cfg = config.load(args.config)
    settings = config.with_overrides(
        cfg, "update", repo=args.repo, trusted_root=args.trusted_root,
        state_dir=args.state_dir, channel=args.channel, reboot=args.reboot,
    ).update  # fmt: skip
    on_files = cfg.boot.backend is SlotBackend.FILES
    target = None if on_files else resolve_target(args)
    pinned = pin.load(settings.state_dir)
    wanted = pin.effective(pinned, args.version, args.override_pin)
    if pinned is not None and wanted == pinned:
        log(f"this machine is pinned to release {pinned} (updater unpin follows the channel)")
    request = update.Request(
        settings=settings, arch=cfg.boot.arch if target is None else target.boot.arch, pin=wanted,
        allow_downgrade=args.allow_downgrade, check_only=args.check, reboot=settings.reboot,
        hooks=cfg.hooks,
    )  # fmt: skip
    display = Display(sys.stderr.isatty())
    last = [0.0]

    def emit(event: update.Event) -> None:
        if not args.json:
            display(event.kind, event.data)
            return
        if event.kind in ("downloading", "verifying"):  # at most a few lines a second
            now = time.monotonic()
            if now - last[0] < 0.5 and event.data["bytes"] < event.data["total"]:
                return
            last[0] = now
        out(jsonout.line({"event": event.kind, **event.data}))

    def result(status: str, **data: Any) -> None:
        if args.json:
            out(jsonout.line({"event": "result", "status": status, **data}))

    try:
        policy = HttpPolicy(timeout=settings.timeout, retries=settings.retries)
        client = open_client(settings.repo, settings.trusted_root, settings.state_dir, policy)
        if target is None:
            from updater import fileupdate

            outcome = fileupdate.run(cfg.boot.images_dir, cfg.boot.tries, request, client, emit)
        else:
            outcome = update.run(target, request, client, emit)
    except UpdaterError as exc:
        display.close()
        result("failed", error=exc.message, exit=exc.exit_code)
        raise
    display.close()
    version = str(outcome.release.version) if outcome.release else None
    result(outcome.status, version=version, reason=outcome.reason, exit=outcome.exit_code)
    if outcome.status == "updated" and request.reboot is not RebootVia.NONE and target is None:
        _reboot_files(cfg, request.reboot, emit)
    elif outcome.status == "updated" and request.reboot is not RebootVia.NONE:
        assert target is not None

        def announce(report: bootflow.Report) -> None:
            slot = report.slot.letter if report.slot else None
            emit(update.Event("rebooting", {"slot": slot, "method": str(report.method)}))

        req = bootflow.Request(slot="auto", via=request.reboot, quiesce=cfg.quiesce,
                               checkpoint=cfg.checkpoint,
                               hooks=stages.PreReboot.of(cfg))  # fmt: skip
        bootflow.reboot(target, req, kexec.probe_support(), announce)
    elif outcome.status == "updated" and args.prepare_kexec and target is None:
        _prepare_kexec_files(cfg, stages.PreReboot.of(cfg), emit)
    elif outcome.status == "updated" and args.prepare_kexec:
        _prepare_kexec(args, stages.PreReboot.of(cfg), emit)
    return outcome.exit_code


def _prepare_kexec(args: argparse.Namespace, hooks: PreReboot, emit: Any) -> None:
    """Run the pre-reboot hooks and load the activated slot's kernel now (updater.prepared)."""
    from updater import kexec, prepared, update

    done = _or_firmware(lambda: prepared.prepare(resolve_target(args), "auto",
                                                 kexec.probe_support(), hooks))  # fmt: skip
    if done is not None:
        plan, record = done
        for note in plan.notes:
            log(note)
        emit(update.Event("prepared", {"slot": plan.slot.letter, "method": record.method}))


def _prepare_kexec_files(cfg: config.Config, hooks: PreReboot, emit: Any) -> None:
    """``_prepare_kexec`` on the file backend (updater.fileprepared): the kernel of
    root-new.img, loaded now; its initrd counts the boot."""
    from updater import bootdisk, filebackend, fileprepared, kexec, update

    record = _or_firmware(lambda: fileprepared.prepare(
        filebackend.read(cfg.boot.images_dir), cfg.boot, bootdisk.read_cmdline("/proc/cmdline"),
        kexec.probe_support(), hooks))  # fmt: skip
    if record is not None:
        emit(update.Event("prepared", {"slot": "files", "image": record.plan.image,
                                       "method": record.method}))  # fmt: skip


def _or_firmware(prepare: Callable[[], T]) -> T | None:
    """A preparation after an update: a failing pre-reboot hook is the update's error, as
    before a reboot (the booted slot, or root.img, boots next again); otherwise the update
    stands, so a failed load is one line (None), and the next reboot goes through the
    firmware."""
    from updater.hooks.runner import HookFailed

    try:
        return prepare()
    except HookFailed:
        raise
    except UpdaterError as exc:
        log(f"could not prepare the kexec reboot ({exc.message}); the next reboot goes "
            "through the firmware")  # fmt: skip
        return None


def _reboot_files(cfg: config.Config, via: RebootVia, emit: Any) -> None:
    from updater import bootdisk, filebackend, fileboot, kexec, update

    def announce(report: fileboot.FileReport) -> None:
        emit(update.Event("rebooting", {"slot": "files", "image": report.plan.image,
                                        "method": str(report.method)}))  # fmt: skip

    from updater.hooks.prereboot import PreReboot

    fileboot.reboot(filebackend.read(cfg.boot.images_dir), cfg.boot,
                    bootdisk.read_cmdline("/proc/cmdline"), via, kexec.probe_support(),
                    announce, hooks=PreReboot.of(cfg))  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "update",
        help="install the newest signed release into the other slot and activate it",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_repository_options(p, "verified metadata and the resume journal")
    p.add_argument("--version", type=version_arg, metavar="V", help="install exactly release V")
    p.add_argument("--override-pin", action="store_true",
                   help="with --version: install it although a pin holds another")  # fmt: skip
    p.add_argument("--allow-downgrade", action="store_true",
                   help="take a release older than the booted one")  # fmt: skip
    p.add_argument(
        "--check",
        action="store_true",
        help="only say whether an update is available (exit 0) or not (exit 3)",
    )
    p.add_argument(
        "--reboot",
        type=config.option("update", "reboot"),
        metavar="kexec|firmware|none",
        help="after activating ([update] reboot)",
    )
    p.add_argument(
        "--prepare-kexec",
        action="store_true",
        help="with --reboot none: load the new slot's kernel right away (kexec --prepare), so "
        "that the next reboot only counts its try and jumps (file backend: root-new.img's "
        "kernel; its initrd counts the boot)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line (README)")
    p.set_defaults(func=cmd_update)
