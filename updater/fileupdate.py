"""``updater update`` on the file backend: a signed release into ``root-new.img``, staged for
the initrd to promote at the next boot.

1. check: the same choice as the GPT flow (``update.choose``); the booted version is the one in
   ``root.img``'s trailer, the staged one that of ``root-new.img``;
2. refuse what the rules refuse (``fileslots.stage``: a revert pending, ``root.img`` still on
   trial) before a byte is written;
   then the ``pre-install`` hooks (``UPDATER_SLOT=root-new.img``): a failing one stops here,
   with nothing written;
3. write ``root-new.img.part`` through the slot writer (frames against their signed hashes, the
   read-back against the signed verity root hash, resumable after a cut), then its trailer,
   fsync of file and directory (``filebackend.write_new``);
4. the kernel (which must carry the image's root hash) and initrd beside the images, by hash;
   then the ``post-install`` hooks with the new image's filesystem mounted read-only (a
   failing one leaves ``root-new.img.part`` unstaged: ``root.img`` boots as before);
5. the staging steps, each durable: drop ``root-old.img``, the tries counter, and the rename to
   ``root-new.img``: the only step that makes the next boot take the new image.

A cut anywhere before step 5's rename leaves ``root.img`` booting as before (tested at every
step). The booted image is never opened for writing: the slot writer refuses a destination that
shares its inode. It does not reboot; the command does, through the file backend's kexec.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from updater import deploy, filebackend, fileslots
from updater.errors import SlotError
from updater.hooks import filestages, slotmount
from updater.hooks import runner as hooks
from updater.hooks.rules import Stage
from updater.records import replace
from updater.release import Version, parse_version
from updater.slotwrite import Region, clear_journal, write_image
from updater.update import Emit, Event, Outcome, Request, choose, run_hooks

if TYPE_CHECKING:
    from updater.fetch.client import ReleaseClient


def image_version(image: filebackend.Image | None) -> Version | None:
    if image is None or image.trailer is None:
        return None
    try:
        return parse_version(image.trailer.version)
    except ValueError:
        return None


def run(images_dir: str, tries: int, request: Request, client: ReleaseClient,
        emit: Emit) -> Outcome:  # fmt: skip
    """Check, and unless only checking, write and stage (see the module docstring)."""
    directory = filebackend.read(images_dir)
    booted_version = image_version(directory.images.get(fileslots.ROOT))
    settings = request.settings
    booted_text = str(booted_version) if booted_version else None
    emit(Event("checking", {"repo": settings.repo, "channel": settings.channel,
                            "arch": request.arch, "booted_version": booted_text}))  # fmt: skip
    choice = choose(client, request, booted_version)
    rel = choice.release
    if rel is None:
        emit(Event("nothing", {"reason": choice.reason}))
        return Outcome("nothing", choice.reason, booted_version)
    staged = directory.images.get(fileslots.NEW)
    if image_version(staged) == rel.version and directory.state.tries is not None:
        why = f"release {rel.version} is already staged in {fileslots.NEW}; reboot to use it"
        emit(Event("nothing", {"reason": why}))
        return Outcome("nothing", why, booted_version, rel)
    emit(Event("available", {"version": str(rel.version), "reason": choice.reason,
                             "downgrade": choice.downgrade, "size": rel.image.size,
                             "download": rel.image.usr.length}))  # fmt: skip
    if request.check_only:
        return Outcome("available", choice.reason, booted_version, rel)
    try:
        steps = fileslots.stage(directory.state, tries)
    except fileslots.Refused as exc:
        raise SlotError(f"{images_dir}: {exc}") from None

    def progress(phase: str, done: int, total: int) -> None:
        kind = {"write": "downloading", "verify": "verifying"}.get(str(phase), str(phase))
        emit(Event(kind, {"bytes": done, "total": total}))

    context = filestages.context(Stage.PRE_INSTALL, directory, fileslots.NEW,
                                 settings.state_dir, version=str(rel.version))  # fmt: skip
    run_hooks(request, context, emit, "nothing was changed")
    usr = client.target(rel.image.usr.path)
    if usr is None or usr.length != rel.image.usr.length:
        raise SlotError(f"the repository no longer signs {rel.image.usr.path} as listed")
    size = rel.image.size
    part = filebackend.prepare_part(images_dir, size)
    written = write_image(
        client.source(usr), deploy.image_facts(rel),
        Region(part, 0, size, f"files:{os.path.realpath(part)}"),
        booted=Region(directory.file(fileslots.ROOT)), state_dir=settings.state_dir,
        progress=progress,
    )  # fmt: skip
    root_hash = rel.image.verity.root_hash
    filestages.forget(settings.state_dir, root_hash)  # its promotion: a new first boot
    filebackend.finish_part(images_dir, filebackend.Trailer(
        root_hash, rel.image.verity.hash_offset, size, str(rel.version)))  # fmt: skip
    kernel = deploy.fetch_target(client, rel.kernel.path)
    deploy.check_kernel(kernel, rel, request.arch)
    initrd = deploy.fetch_target(client, rel.initrd.path) if rel.initrd is not None else None
    filebackend.write_boot_files(images_dir, root_hash, kernel, initrd)
    emit(Event("boot-files", {"bytes": 1, "total": 1}))
    if request.hooks is not None and hooks.has_hooks(request.hooks, Stage.POST_INSTALL):
        # The filesystem alone, read-only: the verity tree and the trailer follow it in the file.
        fs = Region(part, 0, rel.image.verity.hash_offset, f"files:{fileslots.PART}")
        with slotmount.mounted(fs, rel.image.fs_type) as where:
            run_hooks(request, replace(context, stage=Stage.POST_INSTALL, mount=where), emit,
                      f"{fileslots.PART} is not staged: {fileslots.ROOT} boots as before")
    filebackend.apply_steps(images_dir, steps)  # the last one makes it the next boot's image
    clear_journal(settings.state_dir)
    filebackend.prune_boot_files(filebackend.read(images_dir))
    emit(Event("activated", {"version": str(rel.version), "slot": "files",
                             "image": fileslots.NEW, "tries": tries,
                             "resumed": written.first_frame > 0,
                             "whole_file_checked": written.whole_file_checked}))  # fmt: skip
    return Outcome("updated", choice.reason, booted_version, rel, None, written.first_frame > 0)
