"""The hook stages on the file backend (``[boot] backend = "files"``): the same stages, runner,
environment and ledger as on partitions (``updater.hooks.stages``), with the image directory in
place of the A/B state.

What a hook is told (``rules.Context``): ``UPDATER_SLOT`` is the image file the stage is about,
by its name at the time (``root-new.img`` for pre-install, post-install and pre-reboot,
``root.img`` for first-boot-of-slot and post-commit); ``UPDATER_BOOTED_SLOT`` is ``root.img``;
the versions are those of the images' trailers; ``UPDATER_SLOT_PARTUUID`` is empty (an image
file has none). The file names are used, not the agent's letters (``updater.agent.fileview``),
because the letters exist only where the agent keeps them.

What each failure means, as on partitions:
- pre-install: nothing is written (``updater.fileupdate``);
- post-install: ``root-new.img.part`` is left unstaged, so ``root.img`` boots as before;
- pre-reboot: nothing is rebooted, and the staged ``root-new.img`` is dropped with its counter
  (``fileslots.rollback``, what ``updater rollback`` does to a staged image): any boot would
  promote it, so keeping it would let the next reboot, asked for or not, boot it. The next
  update writes it again;
- first-boot-of-slot: the image is not healthy; the ledger keys it by its root hash, so the
  hooks run once per image promoted (an update that writes the same image again forgets it);
- post-commit: logged; the image is committed already.

It does not decide when a flow reaches a stage (the flows do) nor what a hook's status means
(``rules``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from updater import filebackend, fileslots
from updater.config import HooksSettings
from updater.filebackend import Directory
from updater.fileslots import NEW, ROOT
from updater.hooks import ledger, rules
from updater.hooks.rules import Context, Next, Stage
from updater.hooks.runner import HookFailed, discover, run_stage, stage_dir
from updater.hooks.stages import REBOOT_FILE, PreReboot, RebootPending, first_boot_once
from updater.log import log
from updater.records import dataclass


def _version(d: Directory, name: str | None) -> str | None:
    image = d.images.get(name) if name else None
    return image.trailer.version if image is not None and image.trailer is not None else None


def context(stage: Stage, d: Directory, name: str, state_dir: str, *,
            version: str | None = None, **extra: str) -> Context:  # fmt: skip
    """The context of the image file ``name`` (its version from its trailer unless given)."""
    booted = ROOT if ROOT in d.images else None
    return Context(stage, version or _version(d, name), name, None, booted,
                   _version(d, booted), state_dir=state_dir, **extra)  # fmt: skip


def forget(state_dir: str, root_hash: str) -> None:
    """An image with this root hash is about to be staged: its promotion is a new first boot."""
    ledger.forget(state_dir, root_hash)


def before_reboot(hooks: PreReboot, d: Directory, *, dry_run: bool = False) -> tuple[str, ...]:
    """The pre-reboot hooks of a reboot from the directory ``d``, when the next boot promotes
    the staged image (``fileslots.pre_reboot_due``): the names of those that ran (a dry run:
    that would run). A failure drops the staged image and raises HookFailed (module docstring)."""
    if not fileslots.pre_reboot_due(d.state):
        return ()
    if dry_run:
        return tuple(p.name for p in discover(stage_dir(hooks.settings, Stage.PRE_REBOOT)))
    verdict = run_stage(hooks.settings, context(Stage.PRE_REBOOT, d, NEW, hooks.state_dir))
    if verdict.failure is None:
        return verdict.ran
    filebackend.apply_steps(d.path, fileslots.rollback(d.state))
    raise HookFailed(f"{verdict.failure}; not rebooted, and {NEW} was dropped: {ROOT} boots "
                     "next again (the next update writes it again)")  # fmt: skip


def after_commit(settings: HooksSettings, images_dir: str, state_dir: str) -> str | None:
    """The post-commit hooks of the booted ``root.img``; the failure (logged), or None."""
    d = filebackend.read(images_dir)
    if ROOT not in d.images:
        return None
    verdict = run_stage(settings, context(Stage.POST_COMMIT, d, ROOT, state_dir))
    if verdict.failure is not None:
        log(f"{verdict.failure} (the image stays committed)")
    return verdict.failure


def on_trial(d: Directory) -> bool:
    """Whether ``mark-good`` of the booted ``root.img`` would commit it (its counter runs)."""
    st = d.state
    return st.tries is not None and NEW not in st.images and not st.revert


@dataclass
class FirstBoot:
    """``stages.FirstBoot`` for the booted ``root.img``: its first-boot-of-slot hooks at most
    once per image (the ledger's key is its root hash). A reboot a hook asks for first gives an
    image on trial one more try (``fileslots.one_more_try``)."""

    settings: HooksSettings
    state_dir: str
    images_dir: str
    boot_id: Callable[[], str]
    reboot: Callable[[], None] | None  # None: the caller tells someone to reboot

    def __call__(self, tick: Callable[[], None] | None = None) -> str | None:
        d = filebackend.read(self.images_dir)
        image = d.images.get(ROOT)
        if image is None or image.trailer is None:
            return f"first-boot-of-slot hooks: {d.file(ROOT)} has no trailer to name it"
        key = image.trailer.root_hash
        ctx = context(Stage.FIRST_BOOT, d, ROOT, self.state_dir,
                      reboot_file=str(Path(self.state_dir, REBOOT_FILE)))  # fmt: skip
        step, detail = first_boot_once(self.settings, self.state_dir, key,
                                       rules.image_key(ctx.version, key), ctx, self.boot_id(),
                                       ROOT, tick)  # fmt: skip
        if step is Next.DONE:
            return None
        if step is Next.FAILED:
            return detail
        filebackend.apply_steps(d.path, fileslots.one_more_try(filebackend.read(d.path).state))
        if self.reboot is None:
            raise RebootPending(f"a first-boot-of-slot hook asked for one more reboot: reboot "
                                f"{ROOT} (updater reboot), then mark it good")  # fmt: skip
        log(f"first-boot-of-slot: a hook asked for one more reboot; rebooting {ROOT}")
        self.reboot()
        raise RebootPending(f"rebooting {ROOT} once more, as a first-boot-of-slot hook asked")
