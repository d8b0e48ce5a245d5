"""``updater update``: a signed release from the repository into the inactive slot, activated only
when every check has passed, then, if asked, a reboot into it.

1. check: refresh the signed metadata (TUF), read the channel index and choose the release for
   this machine (``release.choose``: newest for the channel and architecture that is newer than
   the booted slot's version, a pinned one, downgrades only when allowed);
   then the ``pre-install`` hooks: a failing one stops here, with nothing written;
2. the other slot is made unbootable (P0 T0 S0), durably, before a byte of it is written: a cut
   anywhere after this leaves a disk that boots the booted slot and never a half-written one;
3. ``deploy``: the image streamed into the slot and read back against the signed root hash, then
   the slot's kernel (carrying that hash) and initrd onto the ESP, atomically;
   then the ``post-install`` hooks with the new slot mounted read-only (a failing one leaves
   the slot unbootable);
4. ``set-active``: the only step that makes the new slot bootable (priority on top, one try);
5. with ``reboot``: the reboot flow (kexec, firmware fallback) into it.

A rerun after a killed process or a power cut resumes the write from the slot writer's journal
(the release and slot must be the same; anything else starts over).

The flow reports what it does as events (``Event``) through a callback: the command turns them
into JSON lines, a progress bar or log lines. It never writes the booted slot (the slot writer
refuses it, and ``slots.make_unbootable`` refuses to disable it), and raises typed errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from updater import bootfs, deploy, gpt, gptformat, inventory, release, slots, state
from updater.config import HooksSettings, RebootVia, UpdateSettings
from updater.errors import SlotError
from updater.hooks import ledger as hook_ledger
from updater.hooks import runner as hooks
from updater.hooks import slotmount
from updater.hooks.rules import Context, Stage
from updater.records import dataclass, field, replace
from updater.release import Release, Version
from updater.slotwrite import Region, clear_journal
from updater.target import Target

if TYPE_CHECKING:
    from updater.fetch.client import ReleaseClient


@dataclass(frozen=True)
class Request:
    settings: UpdateSettings  # the [update] section with the command line's options applied
    arch: str
    pin: Version | None = None
    allow_downgrade: bool = False
    check_only: bool = False
    reboot: RebootVia = RebootVia.NONE
    hooks: HooksSettings | None = None  # None: run no hooks


@dataclass(frozen=True)
class Event:
    """One thing the flow did: ``kind`` is checking, available, nothing, hooks, downloading,
    verifying, boot-files, activated or rebooting; ``data`` its JSON-ready facts."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


Emit = Callable[[Event], None]


@dataclass(frozen=True)
class Outcome:
    status: str  # "updated", "available" (check only), "nothing"
    reason: str
    booted_version: Version | None
    release: Release | None = None
    slot: slots.Slot | None = None  # the slot written and activated
    resumed: bool = False

    @property
    def exit_code(self) -> int:
        """0 updated (or, checking, an update is available); 3 nothing to do."""
        return 3 if self.status == "nothing" else 0


def slot_region(target: Target, table: gptformat.GptTable, slot: slots.Slot) -> Region:
    """Where a slot's bytes are: its partition node on a partitioned block device (which does
    not share the whole disk's page cache), else its byte range of the disk (an image file)."""
    node = bootfs.partition_node(target.disk, slot.partition)
    label = str(slot.partuuid)
    if node is not None:
        return Region(node, 0, None, label)
    entry = gptformat.entries_by_number(table.entries())[slot.partition]
    ss = table.sector_size
    return Region(target.disk, entry.first_lba * ss, (entry.last_lba - entry.first_lba + 1) * ss,
                  label)  # fmt: skip


def choose(client: ReleaseClient, request: Request, booted: Version | None) -> release.Choice:
    from updater.fetch.client import offered

    client.refresh()
    found = offered(client.releases, request.settings.channel, request.arch, request.pin)
    return release.choose(found, arch=request.arch, booted=booted, pin=request.pin,
                          allow_downgrade=request.allow_downgrade)  # fmt: skip


def run(target: Target, request: Request, client: ReleaseClient, emit: Emit) -> Outcome:
    """Check, and unless only checking, write and activate (see the module docstring). The
    reboot is the caller's (``reboot_after``), so that it runs after the result is reported."""
    st = state.load(target)
    if st.booted is None:
        raise SlotError(
            "the booted slot is unknown: an update writes the other one",
            hint="pass --booted PART for an image file",
        )
    booted = st.slot(st.booted)
    other = slots.other_slot(st.slots, st.booted)
    settings = request.settings
    booted_version = inventory.slot_version(
        target, str(booted.partuuid), booted.partition, settings.state_dir
    )
    emit(
        Event(
            "checking",
            {
                "repo": settings.repo,
                "channel": settings.channel,
                "arch": request.arch,
                "booted_version": str(booted_version) if booted_version else None,
            },
        )
    )
    choice = choose(client, request, booted_version)
    rel = choice.release
    if rel is None:
        emit(Event("nothing", {"reason": choice.reason}))
        return Outcome("nothing", choice.reason, booted_version)
    staged = inventory.recorded(settings.state_dir, str(other.partuuid))
    if staged == rel.version and other.priority > booted.priority and other.bootable:
        why = f"release {rel.version} is already staged in {other.label}; reboot to use it"
        emit(Event("nothing", {"reason": why}))
        return Outcome("nothing", why, booted_version, rel, other)
    emit(Event("available", {"version": str(rel.version), "reason": choice.reason,
                             "downgrade": choice.downgrade, "size": rel.image.size,
                             "download": rel.image.usr.length}))  # fmt: skip
    if request.check_only:
        return Outcome("available", choice.reason, booted_version, rel)
    context = Context(Stage.PRE_INSTALL, str(rel.version), other.letter, str(other.partuuid),
                      booted.letter, str(booted_version) if booted_version else None,
                      state_dir=settings.state_dir)  # fmt: skip
    run_hooks(request, context, emit, "nothing was changed")
    if booted_version is not None:
        inventory.record(settings.state_dir, str(booted.partuuid), booted_version)
    letter = other.letter
    if letter is None:
        raise SlotError(f"partition {other.partition} has no USR-<letter> label")
    # 2. never a half-written slot that a boot loader could pick
    state.change(target, state.by_slots(slots.make_unbootable, other.partition,
                                        booted=st.booted))  # fmt: skip
    inventory.record(settings.state_dir, str(other.partuuid), None)
    hook_ledger.forget(settings.state_dir, str(other.partuuid))  # a new first boot to come
    with gpt.locked(target.disk, writable=False) as d:
        table = gpt.read_table(d)
    if target.esp is None:
        raise SlotError(f"{target.disk} has no EFI-SYSTEM partition for the slot's kernel")

    def progress(phase: str, done: int, total: int) -> None:
        kind = {"write": "downloading", "verify": "verifying"}.get(phase, phase)
        emit(Event(kind, {"bytes": done, "total": total}))

    dest = deploy.SlotDestination(letter, slot_region(target, table, other),
                                  slot_region(target, table, booted))  # fmt: skip
    done = deploy.deploy(client, rel, dest, target.esp, state_dir=settings.state_dir,
                         arch=request.arch, progress=progress)  # fmt: skip
    inventory.record(settings.state_dir, str(other.partuuid), rel.version, done.root_hash)
    post = replace(context, stage=Stage.POST_INSTALL)
    if request.hooks is not None and hooks.has_hooks(request.hooks, Stage.POST_INSTALL):
        with slotmount.mounted(dest.region, rel.image.fs_type) as where:
            run_hooks(request, replace(post, mount=where), emit,
                   f"{other.label} stays unbootable")  # fmt: skip
    # 4. the only step that makes the new slot bootable
    outcome = state.change(
        target,
        state.by_slots(slots.set_active, other.partition, booted=st.booted),
        hashes={letter: done.root_hash},
    )
    clear_journal(settings.state_dir)
    activated = next(s for s in outcome.after if s.partition == other.partition)
    emit(Event("activated", {"version": str(rel.version), "slot": letter,
                             "partition": activated.partition, "priority": activated.priority,
                             "tries": activated.tries,
                             "resumed": done.write.first_frame > 0,
                             "whole_file_checked": done.write.whole_file_checked}))  # fmt: skip
    return Outcome("updated", choice.reason, booted_version, rel, activated,
                   done.write.first_frame > 0)  # fmt: skip


def run_hooks(request: Request, ctx: Context, emit: Emit, what: str) -> None:
    """Run a stage's hooks; a failure raises HookFailed saying ``what`` (the state it left)."""
    if request.hooks is None:
        return
    verdict = hooks.require(request.hooks, ctx, what=what)
    if verdict.ran:
        emit(Event("hooks", {"stage": str(ctx.stage), "hooks": list(verdict.ran)}))
