"""The agent's ``System`` on the file backend (``[boot] backend = "files"``): the seam
(``updater.agent.seam``) carried out by the file backend's flows, so that the agent's state
machine runs unchanged on a machine whose OS lives in image files.

- ``booted``: refused unless the running kernel was started for this directory
  (``updater.images=DIR``); the image directory (``updater.filebackend.read``) as two slots
  (``updater.agent.fileview``): ``root.img`` booted, the other slot the file that boots next or
  the one to go back to; versions from the images' trailers; the kernel's boot id;
- ``available``: the TUF client, the channel index and ``release.choose``, as on partitions,
  against the version in ``root.img``'s trailer;
- ``stage``: ``updater.fileupdate.run`` for exactly that version: ``root-new.img`` written,
  verified and staged with ``[boot] tries`` boots to prove itself (a release already staged is
  recognised; an interrupted write resumes);
- ``reboot``: ``updater.fileboot.reboot``, the kernel of the file the next boot mounts, by kexec
  or through the firmware; the initrd then promotes or reverts and counts the try;
- ``mark_good``: ``fileslots.mark_good`` (the counter goes: the commit);
- ``mark_bad``: of the booted image, ``fileslots.rollback`` (the revert marker: the next boot
  puts ``root-old.img`` back); of a staged image that never booted, the same rule drops it.

The letters the agent sees are remembered in the state directory (``file-slots.json``, see
``fileview``), beside the agent's own record. Lost between updates, the slots are named afresh
at no cost; lost during a trial boot, the booted image may come back under the other letter,
which the agent takes for a trial that ended: it blocks the release and then asks to mark
``root-old.img`` bad, which is refused (the reason in its ``last_error``), so it changes nothing
and waits for an operator (``updater rollback`` or ``mark-good``).

Hooks (``updater.hooks.filestages``) run as on partitions: pre-install and post-install in
``stage`` (the update flow), pre-reboot in ``reboot`` when the next boot promotes the staged
image (a failure: no reboot, the staged image dropped), post-commit after ``mark_good``; the
first-boot-of-slot hooks run in the health check (``updater.commands.agent``). This module
decides nothing; the agent's state machine does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from updater import atomicfile, bootdisk, filebackend, fileboot, fileslots, jsonout, kexec, release
from updater.agent import fileview
from updater.agent.seam import Booted, Offer, Progress
from updater.agent.system import choose_offer, read_boot_id, release_client
from updater.config import Config, RebootVia, with_overrides
from updater.errors import SlotError
from updater.fileslots import NEW, ROOT
from updater.log import log

if TYPE_CHECKING:
    from updater.fetch.client import ReleaseClient
    from updater.update import Event

LETTERS_FILE = "file-slots.json"

# fileboot.reboot, with the directory, settings, running command line, way and kexec support
# already chosen; tests put a simulated boot in its place.
Reboot = Callable[[filebackend.Directory, RebootVia], None]


def load_letters(state_dir: str) -> dict[str, str]:
    """The remembered letter -> root hash table; an unreadable one is forgotten (logged)."""
    path = os.path.join(state_dir, LETTERS_FILE)
    try:
        with open(path, "rb") as f:
            doc = jsonout.loads(f.read(4096))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log(f"{path}: unreadable, the slots are named afresh ({exc})")
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: v for k, v in doc.items()
            if k in fileview.LETTERS and isinstance(v, str)}  # fmt: skip


def save_letters(state_dir: str, table: dict[str, str]) -> None:
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    data = json.dumps(table, sort_keys=True).encode() + b"\n"
    atomicfile.write(os.path.join(state_dir, LETTERS_FILE), data, 0o644)


class FileBackendSystem:
    def __init__(self, cfg: Config, boot_id: Callable[[], str] = read_boot_id,
                 reboot_flow: Reboot | None = None,
                 cmdline: Callable[[], str] = bootdisk.read_cmdline) -> None:  # fmt: skip
        self.cfg = cfg
        self.images_dir = cfg.boot.images_dir
        self.state_dir = cfg.update.state_dir
        self.boot_id = boot_id
        self.reboot_flow = reboot_flow or self._fileboot
        self.cmdline = cmdline  # the running kernel's command line

    # ------------------------------------------------------------------------------ reading
    def _remember(self, d: filebackend.Directory) -> dict[str, str]:
        """The letters for ``d``, written down when they changed (the slots keep their names
        through the next promotion or revert)."""
        known = load_letters(self.state_dir)
        table = fileview.letters(d, known)
        if table and table != known:
            try:
                save_letters(self.state_dir, table)
            except OSError as exc:
                log(f"cannot remember the slot letters in {self.state_dir}: {exc.strerror}")
        return table

    def booted(self) -> Booted:
        d = filebackend.read(self.images_dir)
        if not fileboot.booted_from(d.path, self.cmdline()):
            # The health checks judge the running system: they say nothing about root.img
            # unless it is what runs.
            raise SlotError(f"this system was not booted from {d.file(ROOT)} (no "
                            f"updater.images={d.path} on the kernel command line): the agent "
                            "runs on the system it updates")  # fmt: skip
        return fileview.booted(d, self._remember(d), self.boot_id())

    def _client(self) -> ReleaseClient:
        return release_client(self.cfg)

    def available(self, channel: str, pin: str | None, blocked: frozenset[str]) -> Offer | None:
        from updater.fileupdate import image_version

        booted_version = image_version(filebackend.read(self.images_dir).images.get(ROOT))
        return choose_offer(self._client(), channel, self.cfg.boot.arch, booted_version, pin,
                            blocked)  # fmt: skip

    # ------------------------------------------------------------------------------ acting
    def stage(self, offer: Offer, progress: Progress) -> None:
        from updater import fileupdate, update

        settings = with_overrides(self.cfg, "update", reboot=RebootVia.NONE).update
        request = update.Request(settings=settings, arch=self.cfg.boot.arch,
                                 pin=release.parse_version(offer.version),
                                 allow_downgrade=True, hooks=self.cfg.hooks)  # fmt: skip

        def emit(event: Event) -> None:
            if event.kind in ("downloading", "verifying"):
                progress(int(event.data["bytes"]), int(event.data["total"]))
            elif event.kind in ("available", "nothing", "activated"):
                log(f"stage: {event.kind} {event.data}")

        before = filebackend.read(self.images_dir)
        self._remember(before)  # root.img keeps its letter; the staged image takes the other
        outcome = fileupdate.run(self.images_dir, self.cfg.boot.tries, request, self._client(),
                                 emit)  # fmt: skip
        after = filebackend.read(self.images_dir)
        staged = fileupdate.image_version(after.images.get(NEW))
        if str(staged) != offer.version or after.state.tries is None:
            raise SlotError(f"release {offer.version} was not staged: {outcome.reason}")
        self._remember(after)

    def _fileboot(self, d: filebackend.Directory, via: RebootVia) -> None:
        def announce(report: fileboot.FileReport) -> None:
            log(f"rebooting into {report.plan.image} (version {report.plan.version}, "
                f"{report.method})")  # fmt: skip

        fileboot.reboot(d, self.cfg.boot, self.cmdline(), via, kexec.probe_support(),
                        announce)  # fmt: skip

    def reboot(self, via: str) -> None:
        from updater.hooks import filestages
        from updater.hooks.prereboot import PreReboot

        d = filebackend.read(self.images_dir)
        self._remember(d)
        # Here rather than in the reboot flow, so that a simulated boot runs them as well; the
        # flow is then called without hooks (they ran once, for this reboot).
        if filestages.before_reboot(PreReboot.of(self.cfg), d):
            d = filebackend.read(self.images_dir)
        self.reboot_flow(d, RebootVia(via))

    def _change(self, d: filebackend.Directory, steps: list[fileslots.Step]) -> None:
        self._remember(d)
        filebackend.apply_steps(d.path, steps)

    def mark_good(self) -> None:
        d = filebackend.read(self.images_dir)
        try:
            steps = fileslots.mark_good(d.state)
        except fileslots.Refused as exc:
            raise SlotError(f"mark-good: {exc}") from None
        self._change(d, steps)
        from updater.hooks import filestages

        filestages.after_commit(self.cfg.hooks, self.images_dir, self.state_dir)

    def mark_bad(self, slot: str) -> None:
        d = filebackend.read(self.images_dir)
        mine = fileview.root_letter(d, load_letters(self.state_dir))
        other = fileview.other_name(d)
        if slot == mine and NEW in d.images:
            raise SlotError(f"mark-bad: {ROOT} is booted with {NEW} staged: drop the staged "
                            "image first (updater rollback)")  # fmt: skip
        if slot != mine and other == fileslots.OLD:
            # The image to go back to is never given up: a request for it means the letters
            # were lost (see the module docstring). Refused, so that the agent retries slowly
            # with the reason in its last_error instead of changing the directory.
            raise SlotError(f"mark-bad: slot {slot} is {fileslots.OLD}, the image to go back "
                            f"to; it is kept (were the slot letters, {LETTERS_FILE}, lost?)")
        if slot != mine and other != NEW:
            log(f"mark-bad: slot {slot} ({other or 'no image'}) never boots again: nothing to "
                "change")  # fmt: skip
            return
        if slot == mine and fileslots.OLD not in d.images:
            # A revert marker alone would be dropped by the next boot (nothing to go back to).
            raise SlotError(f"mark-bad: no {fileslots.OLD} to go back to: {ROOT} stays")
        try:
            steps = fileslots.rollback(d.state)
        except fileslots.Refused as exc:
            raise SlotError(f"mark-bad: {exc}") from None
        self._change(d, steps)
