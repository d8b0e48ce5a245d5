"""The agent's state machine: what to do next, and what the result of doing it means.

Pure: ``decide(record, facts, policy)`` returns the record to persist and the one action to carry
out; ``absorb(record, action, result, facts, policy)`` returns the record after that action's
result. The runner (``updater.agent.runner``) persists the record returned by ``decide`` before
it acts, so a restart after a crash or a power cut at any point decides again from the persisted
state and what the system shows now (``Facts.booted``): every action is safe to repeat, and
states whose action may have completed unrecorded (rebooting, verifying) first look at the slots.

The cycle (README, "What each state means"): idle -> checking -> downloading -> staged ->
waiting-for-window -> waiting-for-lock -> rebooting -> verifying -> committed | rolled-back |
failed. idle, committed, rolled-back and failed are resting states from which the next check
starts. This module does not run anything and does not know the lock backend or the seam's
implementation.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from enum import StrEnum

from updater.agent import schedule
from updater.agent.record import RESTING, LockTicket, Reason, Record, State
from updater.agent.seam import Booted, Offer
from updater.config import RebootStrategy
from updater.records import dataclass, replace


@dataclass(frozen=True)
class Policy:
    """What the decisions need from the configuration."""

    interval: float
    jitter: float
    strategy: RebootStrategy
    windows: tuple[schedule.Window, ...]
    zone: tzinfo
    locking: bool  # a lock backend is configured
    retry: float  # seconds between attempts at the lock, a reboot, a failed step
    health_deadline: float
    seed: int
    max_reboot_attempts: int = 3
    reboot_grace: float = 300.0  # how long a requested reboot may take to stop the agent


@dataclass(frozen=True)
class Facts:
    now: float
    booted: Booted
    fraction: float = 0.5  # random in [0, 1), for the poll jitter
    force_check: bool = False  # --once: check now, whatever the schedule says


class Do(StrEnum):
    SLEEP = "sleep"
    CHECK = "check"
    STAGE = "stage"
    SIGNAL = "signal-reboot-required"
    ACQUIRE = "acquire-lock"
    REBOOT = "reboot"
    VERIFY = "verify"
    MARK_GOOD = "mark-good"
    MARK_BAD = "mark-bad"
    RELEASE = "release-lock"


@dataclass(frozen=True)
class Action:
    do: Do
    until: float | None = None  # SLEEP
    why: str = ""  # SLEEP: what it waits for, in words
    slot: str | None = None  # MARK_BAD
    via: str | None = None  # REBOOT: kexec | firmware
    offer: Offer | None = None  # STAGE
    deadline: float | None = None  # VERIFY


@dataclass(frozen=True)
class Step:
    record: Record  # persist it before carrying out the action
    action: Action


# Results of actions, as the runner reports them.
@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Failed:
    message: str


@dataclass(frozen=True)
class Offered:
    offer: Offer | None


@dataclass(frozen=True)
class Busy:
    holders: tuple[str, ...]


@dataclass(frozen=True)
class Taken:
    ticket: LockTicket


@dataclass(frozen=True)
class Unhealthy:
    reason: str


Result = Done | Failed | Offered | Busy | Taken | Unhealthy


def _to(rec: Record, state: State, f: Facts, **changes: object) -> Record:
    return replace(rec, state=state, changed=f.now, next_try=None, **changes)


def _sleep(rec: Record, until: float, why: str) -> Step:
    return Step(rec, Action(Do.SLEEP, until=until, why=why))


def _next_check(f: Facts, p: Policy) -> float:
    return f.now + schedule.jittered(p.interval, p.jitter, f.fraction)


def _local(epoch: float, zone: tzinfo) -> str:
    return datetime.fromtimestamp(epoch, zone).strftime("%a %Y-%m-%d %H:%M %Z")


def _fail(rec: Record, f: Facts, p: Policy, message: str) -> Record:
    return _to(rec, State.FAILED, f, last_error=message, next_check=_next_check(f, p),
               healthy=False, returning=False)  # fmt: skip


def _rollback(rec: Record, f: Facts, p: Policy, reason: Reason, message: str, *,
              returning: bool) -> Record:  # fmt: skip
    # The next check waits for the interval, so that rolled-back and its reason stay visible.
    return _to(rec.block(rec.version, reason, f.now), State.ROLLED_BACK, f,
               next_check=_next_check(f, p),
               rollbacks=rec.rollbacks + 1, last_error=message, returning=returning,
               healthy=False, signalled=False, reboot_attempts=0,
               reboot_requested=None)  # fmt: skip


def _verifying(rec: Record, f: Facts, p: Policy) -> Record:
    return _to(rec, State.VERIFYING, f, verify_deadline=f.now + p.health_deadline, healthy=False,
               reboot_requested=None)  # fmt: skip


# ----------------------------------------------------------------------------- the rules
# Each returns a Step (act) or a Record (a change that needs no action: decide again).


def _reboot(rec: Record, f: Facts, p: Policy, *, why: str, capped: bool) -> Step | Record:
    """Reboot into what boots next (the new slot, or back to the previous one)."""
    if p.strategy is RebootStrategy.OFF:
        if not rec.signalled:
            return Step(rec, Action(Do.SIGNAL))
        return _sleep(rec, f.now + p.interval, f"{why}: waiting for a reboot (strategy off)")
    if rec.reboot_requested is not None and f.now < rec.reboot_requested + p.reboot_grace:
        return _sleep(rec, rec.reboot_requested + p.reboot_grace, f"{why}: reboot requested")
    if capped and rec.reboot_attempts >= p.max_reboot_attempts:
        return _fail(rec, f, p, f"no reboot happened after {rec.reboot_attempts} attempts "
                                f"({rec.last_error or 'the system did not go down'})")  # fmt: skip
    nxt = replace(rec, reboot_attempts=rec.reboot_attempts + 1, reboot_requested=None)
    return Step(nxt, Action(Do.REBOOT, via=str(p.strategy)))


def _go_back(rec: Record, f: Facts, p: Policy) -> Step:
    """Still on the slot that failed: mark it bad, then reboot into the previous one."""
    if f.booted.slot.priority > 0:
        return Step(rec, Action(Do.MARK_BAD, slot=rec.target_slot))
    out = _reboot(rec, f, p, why="going back to the previous slot", capped=False)
    assert isinstance(out, Step)  # uncapped: never gives up
    return out


def _resting(rec: Record, f: Facts, p: Policy) -> Step | Record:
    b = f.booted
    if rec.returning and b.slot.letter != rec.target_slot:  # back on the previous slot
        return replace(rec, returning=False, signalled=False, reboot_attempts=0,
                       reboot_requested=None)  # fmt: skip
    if rec.returning and (rec.lock is None or rec.reboot_attempts < p.max_reboot_attempts):
        return _go_back(rec, f, p)
    if rec.state is State.ROLLED_BACK and not rec.returning and b.other.bootable and (
            b.other.letter == rec.target_slot and rec.version in rec.blocked_versions()):
        return Step(rec, Action(Do.MARK_BAD, slot=rec.target_slot))  # it must never boot again
    if rec.lock is not None:
        return Step(rec, Action(Do.RELEASE))
    if rec.returning:  # going back keeps failing: keep trying, without the fleet's lock
        return _go_back(rec, f, p)
    if b.slot.successful and rec.committed_slot != b.slot.letter:
        # A good slot the agent did not commit is booted: a manual rollback (or the first run).
        # The release it moved away from is not offered again until an operator says so.
        if rec.committed_slot is not None and rec.committed_version not in (None, b.slot.version):
            rec = rec.block(rec.committed_version, Reason.MANUAL, f.now)
        return replace(rec, committed_slot=b.slot.letter, committed_version=b.slot.version)
    if not b.slot.successful:
        if b.on_trial and b.slot.priority > 0 and b.slot.version not in rec.blocked_versions():
            # Booted on trial by someone else (a manual update): verify and commit it too.
            return _verifying(replace(rec, version=b.slot.version, target_slot=b.slot.letter,
                                      from_slot=b.other.letter, from_version=b.other.version,
                                      lock=None), f, p)  # fmt: skip
        return _sleep(rec, f.now + p.interval,
                      f"slot {b.slot.letter} is booted but not proven good; not updating")
    if b.next_slot not in (None, b.slot.letter):
        return _sleep(rec, _next_check(f, p),
                      f"slot {b.next_slot} was set to boot next outside the agent; "
                      "not updating until that reboot")  # fmt: skip
    if f.force_check or rec.next_check is None or f.now >= rec.next_check:
        return _to(rec, State.CHECKING, f)
    if rec.available and rec.wave_start and rec.wave_start > f.now:
        why = f"release {rec.available} waits for its wave ({_local(rec.wave_start, p.zone)})"
    else:
        why = "next check"
    return _sleep(rec, rec.next_check, why)


def _staged_guard(rec: Record, f: Facts, p: Policy) -> Record | None:
    """Staged and not yet rebooted: still what the agent left?"""
    b = f.booted
    if b.slot.letter == rec.target_slot:  # someone rebooted for us (strategy off, an operator)
        return _verifying(rec, f, p)
    if b.next_slot != rec.target_slot or b.other.version != rec.version:
        return _fail(rec, f, p, f"release {rec.version} is no longer set to boot next: the A/B "
                                "state was changed outside the agent")  # fmt: skip
    if p.strategy is RebootStrategy.OFF and rec.state is not State.STAGED:
        return _to(rec, State.STAGED, f)  # switched off meanwhile: someone else reboots
    return None


def _checking(rec: Record, f: Facts, p: Policy) -> Step | Record:
    return Step(rec, Action(Do.CHECK))


def _downloading(rec: Record, f: Facts, p: Policy) -> Step | Record:
    if f.booted.slot.letter != rec.from_slot:
        return _fail(rec, f, p, "the booted slot changed while the release was written")
    return Step(rec, Action(Do.STAGE, offer=Offer(rec.version or "", rec.waves)))


def _staged(rec: Record, f: Facts, p: Policy) -> Step | Record:
    changed = _staged_guard(rec, f, p)
    if changed is not None:
        return changed
    if p.strategy is RebootStrategy.OFF:
        return _reboot(rec, f, p, why=f"release {rec.version} staged", capped=False)
    return _to(rec, State.WAITING_FOR_WINDOW, f)


def _waiting_for_window(rec: Record, f: Facts, p: Policy) -> Step | Record:
    changed = _staged_guard(rec, f, p)
    if changed is not None:
        return changed
    opening = schedule.next_opening(p.windows, f.now, p.zone)
    if opening is not None and opening <= f.now:
        return _to(rec, State.WAITING_FOR_LOCK, f)
    until = opening if opening is not None else f.now + p.interval
    return _sleep(rec, until, f"maintenance window opens {_local(until, p.zone)}")


def _waiting_for_lock(rec: Record, f: Facts, p: Policy) -> Step | Record:
    changed = _staged_guard(rec, f, p)
    if changed is not None:
        return changed
    if not schedule.window_open(p.windows, f.now, p.zone):
        return _to(rec, State.WAITING_FOR_WINDOW, f)
    if not p.locking:
        return _to(rec, State.REBOOTING, f, reboot_attempts=0, reboot_requested=None)
    return Step(rec, Action(Do.ACQUIRE))


def _still_going_down(rec: Record, f: Facts) -> bool:
    """The reboot was asked for in this very boot: the system has not gone down yet, and what
    the slots show (a try already consumed) says nothing about how the new slot boots."""
    return (
        rec.reboot_requested is not None
        and rec.reboot_boot is not None
        and rec.reboot_boot == f.booted.boot_id
    )


def _rebooting(rec: Record, f: Facts, p: Policy) -> Step | Record:
    b = f.booted
    if _still_going_down(rec, f):
        return _reboot(rec, f, p, why=f"rebooting into release {rec.version}", capped=True)
    if b.slot.letter == rec.target_slot:
        return _verifying(rec, f, p)
    if b.other.letter == rec.target_slot and not b.other.bootable:
        # Its one try is spent and the previous slot is booted: the new slot did not come up
        # (a failed or hung boot, a reset); GRUB fell back, as designed.
        return _rollback(rec, f, p, Reason.BOOT, f"release {rec.version} did not boot; the "
                         "previous slot was booted again", returning=False)  # fmt: skip
    if b.next_slot != rec.target_slot or b.other.version != rec.version:
        return _fail(rec, f, p, f"release {rec.version} is no longer set to boot next: the A/B "
                                "state was changed outside the agent")  # fmt: skip
    return _reboot(rec, f, p, why=f"rebooting into release {rec.version}", capped=True)


def _verifying_rule(rec: Record, f: Facts, p: Policy) -> Step | Record:
    b = f.booted
    if b.slot.letter != rec.target_slot:
        return _rollback(rec, f, p, Reason.BOOT, f"the trial boot of release {rec.version} ended "
                         "before it was verified; the previous slot was booted again",
                         returning=False)  # fmt: skip
    if b.slot.successful:  # marked good already (the record was not written before a crash)
        return _commit(rec, f, p)
    if rec.healthy:
        return Step(rec, Action(Do.MARK_GOOD))
    return Step(rec, Action(Do.VERIFY, deadline=rec.verify_deadline))


def _commit(rec: Record, f: Facts, p: Policy) -> Record:
    return _to(rec, State.COMMITTED, f, committed_slot=rec.target_slot,
               committed_version=rec.version, last_success=f.now, last_error=None,
               next_check=_next_check(f, p), healthy=False, verify_deadline=None)  # fmt: skip


_RULES = {
    State.IDLE: _resting,
    State.COMMITTED: _resting,
    State.ROLLED_BACK: _resting,
    State.FAILED: _resting,
    State.CHECKING: _checking,
    State.DOWNLOADING: _downloading,
    State.STAGED: _staged,
    State.WAITING_FOR_WINDOW: _waiting_for_window,
    State.WAITING_FOR_LOCK: _waiting_for_lock,
    State.REBOOTING: _rebooting,
    State.VERIFYING: _verifying_rule,
}


def decide(rec: Record, f: Facts, p: Policy) -> Step:
    """The record to persist and the next action, from the persisted record and the facts."""
    rec = replace(rec, booted_version=f.booted.slot.version)
    for _ in range(16):
        holding = rec.state not in RESTING or rec.lock is not None or rec.returning
        if rec.next_try is not None and f.now < rec.next_try and holding:
            if rec.lock_holders and rec.state is State.WAITING_FOR_LOCK:
                why = f"reboot lock held by {', '.join(rec.lock_holders)}"
            else:
                why = f"retrying after: {rec.last_error or 'a failed step'}"
            return _sleep(rec, rec.next_try, why)
        out = _RULES[rec.state](rec, f, p)
        if isinstance(out, Step):
            return out
        rec = out
    raise AssertionError(f"the agent's rules did not settle in state {rec.state}")


def absorb(rec: Record, action: Action, result: Result, f: Facts, p: Policy) -> Record:
    """The record after ``action`` ended with ``result``."""
    if isinstance(result, Failed):
        return _failed(rec, action, result.message, f, p)
    match action.do, result:
        case Do.CHECK, Offered(offer):
            return _offered(rec, offer, f, p)
        case Do.STAGE, Done():
            return _to(rec, State.STAGED, f, last_error=None)
        case Do.SIGNAL, Done():
            return replace(rec, signalled=True)
        case Do.ACQUIRE, Taken(ticket):
            return _to(rec, State.REBOOTING, f, lock=ticket, lock_holders=(), last_error=None,
                       reboot_attempts=0, reboot_requested=None)  # fmt: skip
        case Do.ACQUIRE, Busy(holders):
            return replace(rec, lock_holders=holders, next_try=f.now + p.retry, last_error=None)
        case Do.REBOOT, Done():
            return replace(rec, reboot_requested=f.now, reboot_boot=f.booted.boot_id or None)
        case Do.VERIFY, Done():
            return replace(rec, healthy=True, last_error=None)
        case Do.VERIFY, Unhealthy(reason):
            return _rollback(rec, f, p, Reason.HEALTH, f"health check failed: {reason}",
                             returning=True)  # fmt: skip
        case Do.MARK_GOOD, Done():
            return _commit(rec, f, p)
        case Do.MARK_BAD, Done():
            return rec
        case Do.RELEASE, Done():
            return replace(rec, lock=None, lock_holders=())
    raise AssertionError(f"unexpected result {result!r} of {action.do}")


def _failed(rec: Record, action: Action, message: str, f: Facts, p: Policy) -> Record:
    if action.do in (Do.CHECK, Do.STAGE):
        return replace(_fail(rec, f, p, message), last_check=f.now)
    if action.do is Do.MARK_GOOD:
        # A slot that cannot be marked good would fall back at the next boot anyway; go back
        # now, in a controlled way, holding the lock.
        return _rollback(rec, f, p, Reason.HEALTH, f"mark-good failed: {message}", returning=True)
    attempts = rec.reboot_attempts + (action.do is Do.MARK_BAD and rec.returning)
    return replace(rec, last_error=f"{action.do} failed: {message}", next_try=f.now + p.retry,
                   reboot_attempts=attempts)  # fmt: skip


def _offered(rec: Record, offer: Offer | None, f: Facts, p: Policy) -> Record:
    checked = replace(rec, last_check=f.now, last_error=None)
    if offer is None or offer.version in rec.blocked_versions():
        return _to(checked, State.IDLE, f, available=None, wave_start=None,
                   next_check=_next_check(f, p))  # fmt: skip
    start = schedule.wave_start(offer.waves, p.seed)
    if start is not None and start > f.now:
        return _to(checked, State.IDLE, f, available=offer.version, wave_start=start,
                   next_check=min(_next_check(f, p), start))  # fmt: skip
    b = f.booted
    return _to(checked, State.DOWNLOADING, f, version=offer.version, waves=offer.waves,
               from_slot=b.slot.letter, from_version=b.slot.version, target_slot=b.other.letter,
               available=offer.version, wave_start=start, reboot_attempts=0,
               reboot_requested=None, healthy=False, returning=False, signalled=False,
               lock_holders=(), verify_deadline=None)  # fmt: skip
