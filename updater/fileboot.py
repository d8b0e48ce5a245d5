"""``updater kexec`` / ``reboot`` on the file backend: boot the image the initrd will mount.

The next boot's initrd runs the rename plan of ``updater.fileslots`` and mounts ``root.img``; so
the kernel to load is that of the file the plan ends with (``fileslots.boots_next``), found by
the root hash in its trailer (``filebackend.boot_files``). Unlike the GPT path there is no try to
consume here: the initrd itself counts the boots of an image on trial (the ``tries`` file), on a
kexec exactly as on a cold boot, so a hung kexec'd kernel and a failing new image fall back the
same way.

Command line (pure, ``build_cmdline``): Flatcar's fixed words, the running kernel's consoles,
``panic=``, ``[boot] extra_args`` and ``updater.images=DIR``, which tells the initrd hook where
the images are on the root filesystem (``root=LABEL=ROOT``). No slot, partition or hash is named
on it: the initrd reads the hash from the image it mounts.

Before anything irreversible (the kernel loaded, the firmware reboot), a reboot whose next boot
promotes ``root-new.img`` runs the pre-reboot hooks (``updater.hooks.filestages.before_reboot``;
a failure: nothing rebooted, the staged image dropped), not again when ``kexec --prepare``
ran them for this very boot (``updater.fileprepared``); every command that reboots on this
backend (``update --reboot``, ``reboot``, ``kexec``, ``rollback --reboot``, the agent) comes
through here with its ``PreReboot``.

When kexec is impossible or the load fails, the machine reboots through the firmware; the GRUB
``loopback`` menu (``grub/grub-files.cfg``) then picks the same file by the same rules.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from updater import kexec, signals
from updater.cmdline import split_cmdline
from updater.config import BootSettings, RebootVia
from updater.errors import SlotError
from updater.filebackend import Directory, boot_files
from updater.kexec import KexecSupport, Method, Step
from updater.log import log
from updater.records import dataclass

if TYPE_CHECKING:
    from updater.hooks.prereboot import PreReboot

BASE_WORDS = ("rootflags=rw", "mount.usrflags=ro", "consoleblank=0", "root=LABEL=ROOT")
DEFAULT_CONSOLES = ("console=ttyS0,115200n8", "console=tty0")


def build_cmdline(settings: BootSettings, images_dir: str, running: str) -> str:
    consoles = tuple(w for w in split_cmdline(running) if w.startswith("console="))
    words = (*BASE_WORDS, f"panic={settings.panic}", *(consoles or DEFAULT_CONSOLES),
             *settings.extra_args, f"updater.images={images_dir}")  # fmt: skip
    return " ".join(words)


def booted_from(images_dir: str, running: str) -> bool:
    """Whether the running kernel was started for this directory's ``root.img`` (the
    ``updater.images=DIR`` word ``build_cmdline`` puts on its command line), rather than
    through a USR partition."""
    return f"updater.images={images_dir}" in split_cmdline(running)


@dataclass(frozen=True)
class FilePlan:
    image: str  # the file that becomes root.img at the next boot
    version: str
    root_hash: str
    kernel: str
    initrd: str | None
    cmdline: str


@dataclass(frozen=True)
class FileReport:
    plan: FilePlan
    method: Method
    steps: tuple[Step, ...]
    reason: str | None = None  # why the firmware path
    hooks: tuple[str, ...] = ()  # the pre-reboot hooks that ran (a dry run: that would run)


def plan(directory: Directory, settings: BootSettings, running: str) -> FilePlan:
    image = directory.next_image
    if image is None:
        raise SlotError(f"{directory.path}: no image would boot")
    if image.trailer is None:
        raise SlotError(f"{directory.path}/{image.name}: {image.problem}")
    kernel, initrd = boot_files(directory.path, image.trailer.root_hash)
    if not os.path.isfile(kernel):
        raise SlotError(f"no kernel for {image.name} ({kernel} is missing)")
    return FilePlan(image.name, image.trailer.version, image.trailer.root_hash, kernel,
                    initrd if os.path.isfile(initrd) else None,
                    build_cmdline(settings, directory.path, running))  # fmt: skip


def reboot(
    directory: Directory,
    settings: BootSettings,
    running: str,
    via: RebootVia,
    support: KexecSupport,
    announce: Callable[[FileReport], None],
    *,
    force: bool = False,
    dry_run: bool = False,
    hooks: PreReboot | None = None,
) -> FileReport:
    """Load and jump (or reboot through the firmware); ``announce`` runs right before. With
    ``hooks``, the pre-reboot hooks run first when the next boot promotes the staged image."""
    chosen = plan(directory, settings, running)
    image = kexec.KexecImage(chosen.kernel, chosen.initrd, chosen.cmdline)
    reason = support.blocker() if via is RebootVia.KEXEC else "asked for the firmware"
    method = Method.FIRMWARE if reason else Method.FILE
    ran: tuple[str, ...] = ()
    from updater import fileprepared  # (it imports this module)

    if hooks is not None and fileprepared.hooks_ran(chosen):
        log(f"the pre-reboot hooks ran when the boot of {chosen.image} was prepared: not again")
    elif hooks is not None:
        from updater.hooks import filestages

        ran = filestages.before_reboot(hooks, directory, dry_run=dry_run)
    if dry_run:
        steps = _steps(image, method, support, force)
        return FileReport(chosen, method, tuple(steps), reason, ran)
    fileprepared.forget()  # this flow loads its own kernel (updater.fileprepared)
    # From the load to the jump, SIGTERM and SIGHUP raise, so that the kernel is unloaded: one
    # left loaded would turn a later plain reboot into a kexec into a stale choice. During the
    # jump they have their default effect again (systemctl kexec's shutdown sends SIGTERM).
    with signals.raising():
        try:
            if method is not Method.FIRMWARE:
                try:
                    method = kexec.load(image, support)
                except kexec.LoadFailed as exc:
                    log(f"kexec load failed, rebooting through the firmware: {exc.message}")
                    method, reason = Method.FIRMWARE, exc.message
            jump = (kexec.firmware_steps(force=force, systemd=support.systemd)
                    if method is Method.FIRMWARE
                    else kexec.exec_steps(force=force, systemd=support.systemd))  # fmt: skip
            report = FileReport(chosen, method, tuple(jump), reason, ran)
            announce(report)
        except BaseException:
            _unload(method)
            raise
    try:
        for step in jump:
            step.run()
    except Exception as exc:
        if method is not Method.FIRMWARE and kexec.stopped_by_shutdown(exc):
            log(f"{exc}: the shutdown is under way; the kernel stays loaded for it")
            return report
        _unload(method)
        raise
    return report


def _unload(method: Method) -> None:
    if method is not Method.FIRMWARE:
        kexec.UNLOAD.run()


def _steps(image: kexec.KexecImage, method: Method, support: KexecSupport,
           force: bool) -> list[Step]:  # fmt: skip
    if method is Method.FIRMWARE:
        return kexec.firmware_steps(force=force, systemd=support.systemd)
    return [kexec.UNLOAD, image.load_step(method),
            *kexec.exec_steps(force=force, systemd=support.systemd)]  # fmt: skip


def report_json(report: FileReport) -> dict[str, object]:
    """``kexec --json`` / ``reboot --json`` on the file backend (README)."""
    p = report.plan
    return {
        "backend": "files", "image": p.image, "version": p.version, "root_hash": p.root_hash,
        "kernel": p.kernel, "initrd": [p.initrd] if p.initrd else [], "cmdline": p.cmdline,
        "method": str(report.method), "reason": report.reason,
        "commands": kexec.argvs(list(report.steps)), "pre_reboot_hooks": list(report.hooks),
    }  # fmt: skip
