"""The hook stages that follow an activation, on a real disk: ``pre-reboot`` before rebooting
into a new slot, ``first-boot-of-slot`` once per newly activated slot (for the health check),
``post-commit`` after a slot was marked good. The update flow runs ``pre-install`` and
``post-install`` itself (``updater.update``). The same stages on the file backend are
``updater.hooks.filestages``, which shares the first-boot ledger's logic (``first_boot_once``).

``pre-reboot`` is run by the reboot flows (``updater.bootflow``, and ``updater.prepared`` when
a kexec is prepared ahead of time), which take a ``PreReboot`` in their request: every command
that reboots (``update --reboot``, ``reboot``, ``kexec``, ``rollback --reboot``, the agent)
goes through them, so the hooks run once per reboot, after the boot was planned and before
anything irreversible (the kernel loaded, a try consumed, the firmware reboot).

What each failure means is decided here, once for the command line and the agent:
- pre-reboot: nothing is rebooted, and the booted slot is put back on top, so that no later
  reboot boots the new slot unasked (the new slot keeps its verified image; the next update
  writes it again);
- first-boot-of-slot: the slot is not healthy (the caller's health check fails with the hook's
  line); the result is kept in the ledger, so the hooks never run twice for one activation;
- post-commit: logged; the slot is committed already.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from updater import inventory, slots, state
from updater.config import HooksSettings
from updater.errors import DataError, UpdaterError
from updater.hooks import ledger, rules
from updater.hooks.prereboot import PreReboot as PreReboot  # re-exported for the flows
from updater.hooks.rules import Context, FirstBootStatus, Next, Stage
from updater.hooks.runner import HookFailed, discover, run_stage, stage_dir
from updater.log import log
from updater.records import dataclass
from updater.target import Target

REBOOT_FILE = "first-boot-reboot"  # in the state directory: $UPDATER_REBOOT_FILE


class RebootPending(UpdaterError):
    """A first-boot-of-slot hook asked for one more reboot, which was requested (or has to be
    done by someone else): the slot is neither healthy nor unhealthy yet."""


def _context(stage: Stage, target: Target, st: state.DiskState, slot: slots.Slot,
             state_dir: str, **extra: str) -> Context:  # fmt: skip
    def version(s: slots.Slot) -> str | None:
        v = inventory.slot_version(target, str(s.partuuid), s.partition, state_dir)
        return str(v) if v else None

    booted = st.slot(st.booted) if st.booted is not None else None
    return Context(stage, version(slot), slot.letter, str(slot.partuuid),
                   booted.letter if booted else None, version(booted) if booted else None,
                   state_dir=state_dir, **extra)  # fmt: skip


def before_reboot(
    hooks: PreReboot,
    target: Target,
    st: state.DiskState,
    into: slots.Slot | None,
    *,
    dry_run: bool = False,
) -> tuple[str, ...]:
    """The pre-reboot hooks of a reboot from the A/B state ``st`` into ``into``, when it is a
    new slot (``rules.pre_reboot_due``; a reboot back to a good slot runs none): the names of
    the hooks that ran. A dry run runs none and returns the names of those that would run. A
    failure puts the booted slot back on top and raises HookFailed (the module docstring)."""
    if into is None or not rules.pre_reboot_due(into.partition, st.booted, into.successful):
        return ()
    if dry_run:
        return tuple(p.name for p in discover(stage_dir(hooks.settings, Stage.PRE_REBOOT)))
    ctx = _context(Stage.PRE_REBOOT, target, st, into, hooks.state_dir)
    verdict = run_stage(hooks.settings, ctx)
    if verdict.failure is None:
        return verdict.ran
    assert st.booted is not None  # pre_reboot_due
    booted = st.slot(st.booted)
    state.change(target, state.by_slots(slots.prioritize_transition, st.booted))
    raise HookFailed(f"{verdict.failure}; not rebooted, and {booted.label} boots next again")


def after_commit(settings: HooksSettings, target: Target, state_dir: str) -> str | None:
    """The post-commit hooks of the booted slot; the failure (logged), or None."""
    st = state.load(target)
    if st.booted is None:
        return None
    ctx = _context(Stage.POST_COMMIT, target, st, st.slot(st.booted), state_dir)
    verdict = run_stage(settings, ctx)
    if verdict.failure is not None:
        log(f"{verdict.failure} (the slot stays committed)")
    return verdict.failure


@dataclass
class FirstBoot:
    """The first-boot-of-slot hooks of the booted slot, at most once per activation: called
    from the health check, it returns None (they passed, now or in an earlier run) or the line
    of the hook that failed (now or earlier: a failed first boot stays failed). When a hook
    asked for one more reboot, the booted slot gets one more boot try, ``reboot`` is called and
    RebootPending is raised; in the boot after it the hooks count as passed."""

    settings: HooksSettings
    state_dir: str
    target: Callable[[], Target]
    boot_id: Callable[[], str]
    reboot: Callable[[], None] | None  # None: the caller tells someone to reboot

    def __call__(self, tick: Callable[[], None] | None = None) -> str | None:
        """``tick`` runs before each hook (the agent's watchdog and lock renewal)."""
        t = self.target()
        st = state.load(t)
        if st.booted is None:
            return "first-boot-of-slot hooks: the booted slot is unknown"
        slot = st.slot(st.booted)
        uuid = str(slot.partuuid)
        ctx = _context(Stage.FIRST_BOOT, t, st, slot, self.state_dir,
                       reboot_file=str(Path(self.state_dir, REBOOT_FILE)))  # fmt: skip
        image = rules.image_key(ctx.version, inventory.recorded_root_hash(self.state_dir, uuid))
        step, detail = first_boot_once(self.settings, self.state_dir, uuid, image, ctx,
                                       self.boot_id(), slot.label, tick)  # fmt: skip
        if step is Next.DONE:
            return None
        if step is Next.FAILED:
            return detail
        # One more try for the booted slot (still on trial, on top): if the reboot does not
        # come back, GRUB falls back to the previous slot as for any trial boot.
        state.change(t, state.by_slots(slots.set_active, st.booted, booted=st.booted,
                                       force=True))  # fmt: skip
        if self.reboot is None:
            raise RebootPending(f"a first-boot-of-slot hook asked for one more reboot: "
                                f"{slot.label} has one more boot try; reboot it "
                                "(updater reboot), then mark it good")  # fmt: skip
        log(f"first-boot-of-slot: a hook asked for one more reboot; rebooting {slot.label}")
        self.reboot()
        raise RebootPending(f"rebooting {slot.label} once more, as a first-boot-of-slot hook "
                            "asked")  # fmt: skip


def first_boot_once(settings: HooksSettings, state_dir: str, key: str, image: str, ctx: Context,
                    boot: str, label: str,
                    tick: Callable[[], None] | None = None) -> tuple[Next, str]:  # fmt: skip
    """The first-boot-of-slot hooks of the slot the ledger knows as ``key`` (a PARTUUID, or an
    image file's root hash on the file backend), holding ``image`` (``rules.image_key``), unless
    they ran for it already: what comes next (DONE, FAILED, or REBOOT: the reboot a hook asked
    for is still to happen) and, for FAILED, the failing hook's line. Backend-neutral: the
    caller builds ``ctx`` and gives the slot its one more try."""
    with ledger.locked(state_dir):
        try:
            led = ledger.load(state_dir)
        except DataError as exc:  # whether the hooks ran is unknown: not proven healthy
            return Next.FAILED, f"first-boot-of-slot: {exc.message}"
        step = rules.next_step(led, key, image, boot)
        if step is Next.RUN:
            flag = Path(ctx.reboot_file or "")
            flag.unlink(missing_ok=True)
            verdict = run_stage(settings, ctx, tick)
            with contextlib.suppress(OSError):
                flag.unlink(missing_ok=True)
            led = rules.recorded(led, key, image, verdict, boot)
            ledger.save(state_dir, led)
            step = Next.FAILED if verdict.failure else Next.REBOOT if verdict.reboot else (
                Next.DONE)  # fmt: skip
        elif step is Next.DONE and led[key.lower()].status is FirstBootStatus.REBOOT:
            ledger.save(state_dir, rules.rebooted(led, key))
            log(f"first-boot-of-slot: {label} came back from the reboot its hooks asked for")
    if step is Next.FAILED:
        return step, led[key.lower()].detail or "a first-boot-of-slot hook failed"
    return step, ""
