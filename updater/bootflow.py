"""The reboot flow: the whole sequence of ``updater kexec`` and ``updater reboot`` in one place.

kexec: plan (``updater.bootplan``) -> stage -> hooks -> load -> consume the try -> jump.

1. plan the boot as GRUB would and stage the kernel and initrd in /run; then, when the request
   carries hooks and the planned slot is a new one, run the pre-reboot hooks
   (``prepared.pre_reboot``: not again when the preparation of this boot ran them); a failing
   one stops the flow before anything is loaded, with the booted slot back on top
   (``updater.hooks.stages``); a dry run only names them;
2. unload any stale kernel and load the new one (``kexec_file_load``, else ``kexec_load`` where
   allowed); a failed load falls back to the firmware path below, with one log line;
3. consume the boot try durably in the GPT (and the grubenv) only now, right before the jump,
   so that a hung or broken new kernel falls back on the next cold boot through the firmware,
   and a failed load leaves the try for GRUB to consume;
4. jump: ``systemctl kexec`` (clean shutdown); without systemd as PID 1, the quiesce of
   ``updater.quiesce`` (stop services, sync, unmount, ``kexec -e``, each step timed, a firmware
   reboot when a step fails or the time is up); with force, ``kexec -e`` right after a sync.

With ``[checkpoint]`` trees selected, they are dumped with CRIU after the load and before the try
is consumed (``updater.quiesce.criu``); a failed dump unloads the kernel and stops the flow with
the workload running, and a failed jump restores them where they were.

Every failure after the load unloads the kernel (a kernel left loaded turns a later plain reboot
into a kexec that consumes no try), and once the try is consumed, gives it back (the slot gets
the try it had, durably) and says so, so that an activation is never lost silently. SIGTERM,
SIGHUP and Ctrl-C count as failures until the jump command runs (one ``signals.guarded()``
block); from the consumption of the try until the jump is announced they are held back, so the
flow always knows whether the try was consumed. During the jump they have their default
effect again: ``systemctl kexec`` shuts the machine down, and the SIGTERM that shutdown sends
this process must not unload the kernel it is about to enter.

Firmware path (``reboot --via firmware``, kexec impossible, or a failed load): run the
pre-reboot hooks for GRUB's choice (unless the kexec path ran them already), refresh the
grubenv from the GPT so that GRUB picks exactly what the GPT says, drop any loaded kernel, and
reboot. GRUB chooses by priority: when a slot was named (``--slot A``) that GRUB would not
boot, the flow refuses rather than boot another one.

This module decides the order and the undo; the rules (``updater.slots``), the plan and the
commands (``updater.kexec``) are elsewhere. It does not print results: it returns a ``Report``
and hands it to ``announce`` right before the jump.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from updater import bootplan, kexec, prepared, slots, state
from updater.bootplan import BootPlan
from updater.config import CheckpointSettings, QuiesceSettings, RebootVia
from updater.errors import SlotError, UpdaterError
from updater.kexec import KexecSupport, Method, Step
from updater.log import log
from updater.records import dataclass, field
from updater.target import Target

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from updater.hooks.prereboot import PreReboot
    from updater.quiesce.checkpoint import Manifest
    from updater.quiesce.plan import QuiescePlan

STAGE_DIR = "/run/updater/kexec"


@dataclass(frozen=True)
class Request:
    """What the command asked for."""

    slot: str = "auto"  # "auto" (GRUB's choice), a PART, or a role: booted, other
    via: RebootVia = RebootVia.KEXEC
    force: bool = False  # no clean shutdown: sync, remount / read-only, kexec -e / reboot -f
    dry_run: bool = False
    quiesce: QuiesceSettings = field(default_factory=QuiesceSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    hooks: PreReboot | None = None  # the pre-reboot hooks to run; None: none (an installer)


@dataclass(frozen=True)
class Report:
    """What the flow did, or would do."""

    method: Method
    steps: tuple[Step, ...]  # the commands, from the unload (or reboot) to the jump
    slot: slots.Slot | None  # the slot booted; None when no slot can boot (firmware path)
    plan: BootPlan | None = None  # None on the firmware path, which plans nothing
    reason: str | None = None  # why the firmware path
    consumed: slots.Slot | None = None  # the slot as written when the kexec took its try
    quiesce: QuiescePlan | None = None  # the jump without systemd: ``steps`` are its commands
    saved: Manifest | None = None  # the checkpoint taken before the jump
    hooks: tuple[str, ...] = ()  # the pre-reboot hooks that ran (a dry run: that would run)

    @property
    def tries_left(self) -> int | None:
        return self.consumed.tries if self.consumed else None


class JumpFailed(UpdaterError):
    """The jump command failed after the try was consumed; what was undone is in the message."""


Announce = Callable[[Report], None]


def reboot(target: Target, request: Request, support: KexecSupport, announce: Announce) -> Report:
    """Reboot into the requested slot (see the module docstring). ``target`` is resolved for
    this reboot: the plan starts from the state it read (``state.as_resolved``); the try is
    consumed under the lock from what the disk holds then."""
    if request.via is RebootVia.FIRMWARE:
        return _firmware(target, request, support, "asked for a firmware reboot")
    st = state.as_resolved(target)  # the state read while resolving the Target: no second read
    plan = bootplan.plan_boot(st, request.slot, target, STAGE_DIR, copy=not request.dry_run)
    assert plan.staged is not None
    for note in plan.notes:
        log(note)
    hooks = prepared.pre_reboot(request.hooks, target, st, plan.slot, dry_run=request.dry_run)
    if request.dry_run:
        blocker = support.blocker()
        if blocker:
            _check_firmware_slot(st, request, blocker)
            steps = kexec.firmware_steps(force=request.force, systemd=support.systemd)
            return Report(Method.FIRMWARE, tuple(steps), plan.slot, plan, reason=blocker,
                          hooks=hooks)  # fmt: skip
        from updater.quiesce import checkpoint

        names = checkpoint.wanted(request.checkpoint)
        if names:
            log(f"would checkpoint {', '.join(names)} into {request.checkpoint.dir}")
        jump, quiesce = _jump_steps(request, support)
        steps = [kexec.UNLOAD, plan.staged.image.load_step(Method.FILE), *jump]
        return Report(Method.FILE, tuple(steps), plan.slot, plan, quiesce=quiesce, hooks=hooks)
    prepared.forget()  # this flow loads and counts its own kernel (updater.prepared)
    report = _take(target, plan, request, support, announce, hooks)
    if isinstance(report, kexec.LoadFailed):
        return _firmware(target, request, support, report.message, hooks)
    _jump(target, report, request.checkpoint)
    return report


def _jump_steps(request: Request, support: KexecSupport) -> tuple[list[Step], QuiescePlan | None]:
    """The jump's commands, and the quiesce plan when the machine has no systemd."""
    if support.systemd or request.force:
        return kexec.exec_steps(force=request.force, systemd=support.systemd), None
    # Here, not at the top: with systemd (the usual case) the jump needs no quiesce plan.
    from updater.quiesce import runner
    from updater.quiesce.plan import plan_quiesce

    quiesce = plan_quiesce(request.quiesce, runner.read_mounts(), (os.getpid(), os.getppid()))
    return [Step(s.argv, s.tolerated) for s in quiesce.steps], quiesce


def _take(
    target: Target, plan: BootPlan, request: Request, support: KexecSupport, announce: Announce,
    hooks: tuple[str, ...],
) -> Report | kexec.LoadFailed:
    """Load the kernel, dump the checkpointed trees, consume the planned slot's try durably,
    and announce the jump, with signals counting as failures (one guard; held from the
    consumption on, so that the write is done or not started when one lands); undo on any
    failure (a failed dump: the kernel unloaded, nothing rebooted). A failed load is returned."""
    # Here, not at the top: a dry run loads, dumps and guards nothing (start-up time).
    from updater import signals
    from updater.quiesce import criu

    taken: slots.Slot | None = None  # the slot as written, once its try is consumed
    saved: Manifest | None = None  # the checkpoint, once taken
    try:
        with signals.guarded() as guard:
            try:
                method = kexec.load(plan.image(), support)
            except kexec.LoadFailed as exc:
                return exc
            saved = criu.dump(request.checkpoint)
            guard.hold()
            known = {plan.facts.letter: plan.facts.usrhash} if plan.facts.usrhash else {}
            try:
                consume = state.change(target, lambda st: slots.consume_try(st.slots, plan.slot),
                                       hashes=known)  # fmt: skip
            except state.GrubenvNotWritten as exc:
                # The try is consumed in the GPT, the truth; only GRUB's copy lags (one more
                # try for GRUB if this boot hangs). Worth a line, not worth stopping the boot.
                log(exc.message)
                consume = exc.outcome
            taken = next(s for s in consume.after if s.partition == plan.slot.partition)
            steps, quiesce = _jump_steps(request, support)
            report = Report(method, tuple(steps), plan.slot, plan, consumed=taken,
                            quiesce=quiesce, saved=saved, hooks=hooks)  # fmt: skip
            announce(report)
    except criu.CheckpointFailed as exc:
        for line in _undo(target, None):
            log(line)
        raise criu.CheckpointFailed(
            f"{exc.message}; not rebooting, the workload keeps running"
        ) from None
    except BaseException:  # a signal while loading too: the kernel may be in by now
        for line in _undo(target, taken, saved, request.checkpoint):
            log(line)
        raise
    return report


def _jump(target: Target, report: Report, settings: CheckpointSettings) -> None:
    """Run the jump with default signal handling (module docstring); undo when it fails."""
    if report.quiesce is not None:

        def before_fallback(why: str) -> None:
            # The firmware boot gets the try back that GRUB will consume; the checkpoint stays
            # on disk for the restore after that boot.
            for line in _undo(target, report.consumed):
                log(line)

        from updater.quiesce import runner

        runner.execute(report.quiesce, before_fallback)
        return
    try:
        kexec.run_steps(report.steps)
    except (UpdaterError, OSError, KeyboardInterrupt) as exc:
        if kexec.stopped_by_shutdown(exc):
            log(f"{exc}: stopped by the shutdown it started; the kernel stays loaded for it")
            return
        undone = "; ".join(_undo(target, report.consumed, report.saved, settings))
        detail = exc.message if isinstance(exc, UpdaterError) else str(exc) or type(exc).__name__
        raise JumpFailed(f"{detail}; {undone}; nothing was rebooted") from exc


def _undo(
    target: Target,
    taken: slots.Slot | None,
    saved: Manifest | None = None,
    settings: CheckpointSettings | None = None,
) -> list[str]:
    """Unload the kernel, give the consumed try back when one was taken, and restore the
    checkpointed trees here when there are some. Never raises: it runs while another failure is
    on its way up, and says what it could not do."""
    from updater import signals
    from updater.quiesce import criu

    said: list[str] = []
    if saved is not None and settings is not None:
        said += criu.undo(saved, settings)
    try:
        kexec.UNLOAD.run()
        said.append("unloaded the kexec kernel")
    except (UpdaterError, OSError) as exc:
        said.append(f"could not unload the kexec kernel ({exc}): run kexec -u before rebooting")
    if taken is None:
        return said
    try:
        with signals.deferred():
            outcome = state.change(target, state.by_slots(slots.give_back_try, taken))
    except (UpdaterError, OSError) as exc:
        return [*said, f"could not give the boot try of {taken.label} back ({exc})"]
    if outcome.transition.empty:
        return [*said, f"left the boot try of {taken.label} consumed: its state changed since"]
    back = next(s for s in outcome.after if s.partition == taken.partition)
    return [*said, f"gave the boot try of {taken.label} back (tries {back.tries})"]


def _check_firmware_slot(st: state.DiskState, request: Request, why: str) -> None:
    """GRUB boots by priority: refuse a named slot that it would not boot."""
    if request.slot in ("", "auto"):
        return
    wanted = st.resolve(request.slot)
    grub = st.next
    if grub is None or grub.partition != wanted.partition:
        would = grub.label if grub else "no slot at all"
        raise SlotError(
            f"{why}; through the firmware GRUB would boot {would}, not {wanted.label}",
            hint=f"run updater prioritize {wanted.letter or wanted.partition} first, or kexec",
        )


def _firmware(target: Target, request: Request, support: KexecSupport, why: str,
              hooks: tuple[str, ...] | None = None) -> Report:  # fmt: skip
    """Reboot through the firmware into GRUB's choice (module docstring). ``hooks``: the
    pre-reboot hooks the kexec path ran already (None: they are this path's to run)."""
    st = state.load(target)
    _check_firmware_slot(st, request, why)
    chosen = st.next
    if hooks is None:
        hooks = prepared.pre_reboot(request.hooks, target, st, chosen, dry_run=request.dry_run)
    steps = kexec.firmware_steps(force=request.force, systemd=support.systemd)
    report = Report(Method.FIRMWARE, tuple(steps), chosen, reason=why, hooks=hooks)
    if request.dry_run:
        return report
    log(f"rebooting through the firmware into {chosen.label if chosen else 'no bootable slot'}: "
        f"{why}")  # fmt: skip
    # The grubenv is refreshed from the GPT first, so that stock GRUB picks exactly what the
    # GPT says; any loaded kexec kernel is dropped by the first step, a prepared one with it.
    prepared.forget()
    state.change(target, state.sync_only)
    kexec.run_steps(report.steps)
    return report
