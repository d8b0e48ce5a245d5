"""The agent's pure rules: one decision or one result at a time, with the A/B facts taken from a
machine run by the real slot rules (``tests.unit.agentfakes.FakeMachine``)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.agentfakes import FakeMachine, policy
from updater import slots
from updater.agent import machine
from updater.agent.machine import Do, Facts
from updater.agent.record import Blocked, LockTicket, Reason, Record, State
from updater.agent.schedule import parse_waves, parse_window
from updater.agent.seam import Booted, Offer, SlotView
from updater.config import RebootStrategy
from updater.records import replace

NOW = 1_700_000_000.0  # Tuesday 2023-11-14 22:13:20 UTC
P = policy()


def facts(m: FakeMachine, now: float = NOW, **kw: object) -> Facts:
    return Facts(now, m.booted(), 0.5, **kw)  # type: ignore[arg-type]


def staged() -> FakeMachine:
    m = FakeMachine()
    m.versions["B"] = "2"
    m._apply(slots.set_active(m.table, 4))
    return m


IN_FLIGHT = Record(state=State.WAITING_FOR_LOCK, version="2", from_slot="A", from_version="1",
                   target_slot="B", committed_slot="A", committed_version="1")  # fmt: skip


def test_first_check_is_due_at_once_and_later_after_the_interval() -> None:
    step = machine.decide(Record(), facts(FakeMachine()), P)
    assert step.action.do is Do.CHECK and step.record.state is State.CHECKING
    assert step.record.committed_slot == "A" and step.record.committed_version == "1"
    rec = machine.absorb(step.record, step.action, machine.Offered(None), facts(FakeMachine()), P)
    assert rec.state is State.IDLE and rec.next_check == NOW + 3600 and rec.last_check == NOW
    step = machine.decide(rec, facts(FakeMachine(), NOW + 10), P)
    assert step.action == machine.Action(Do.SLEEP, until=NOW + 3600, why="next check")
    assert machine.decide(rec, facts(FakeMachine(), NOW + 3600), P).action.do is Do.CHECK
    assert machine.decide(rec, facts(FakeMachine(), NOW + 10, force_check=True), P
                          ).action.do is Do.CHECK  # fmt: skip


def test_a_release_waits_for_its_wave() -> None:
    m = FakeMachine()
    waves = parse_waves([[50, "2023-11-15T00:00:00Z"], [2048, "2023-11-16T00:00:00Z"]])
    checking = machine.decide(Record(), facts(m), P).record
    offer = Offer("2", waves)
    rec = machine.absorb(checking, machine.Action(Do.CHECK), machine.Offered(offer), facts(m), P)
    wave2 = waves[1].start  # seed 100 is in the second wave
    assert rec.state is State.IDLE and rec.available == "2" and rec.wave_start == wave2
    assert rec.next_check == NOW + 3600
    step = machine.decide(rec, facts(m, NOW + 3600), P)
    assert step.action.do is Do.CHECK
    later = machine.absorb(step.record, step.action, machine.Offered(offer), facts(m, wave2), P)
    assert later.state is State.DOWNLOADING and later.target_slot == "B"
    first = machine.absorb(checking, machine.Action(Do.CHECK), machine.Offered(offer), facts(m),
                           policy(seed=10))  # fmt: skip
    assert first.state is State.IDLE and first.wave_start == waves[0].start


def test_a_blocked_release_is_never_taken() -> None:
    m = FakeMachine()
    rec = Record(state=State.CHECKING).block("2", Reason.HEALTH, NOW)
    out = machine.absorb(rec, machine.Action(Do.CHECK), machine.Offered(Offer("2")), facts(m), P)
    assert out.state is State.IDLE and out.available is None


def test_waiting_for_the_window_then_the_lock() -> None:
    m = staged()
    window = parse_window({"days": ["Wed"], "start": "01:00", "minutes": 30})
    p = policy(windows=(window,))
    rec = replace(IN_FLIGHT, state=State.STAGED)
    step = machine.decide(rec, facts(m), p)
    assert step.record.state is State.WAITING_FOR_WINDOW
    assert step.action.do is Do.SLEEP and step.action.until == NOW + 2 * 3600 + 46 * 60 + 40
    step = machine.decide(step.record, facts(m, step.action.until or 0), p)
    assert step.record.state is State.WAITING_FOR_LOCK and step.action.do is Do.ACQUIRE
    # the lock stays busy past the window's end: back to waiting for the next window
    busy = machine.absorb(step.record, step.action, machine.Busy(("m7",)), facts(m), p)
    closed = NOW + 3 * 3600 + 30 * 60
    assert machine.decide(busy, facts(m, closed), p).record.state is State.WAITING_FOR_WINDOW


def test_busy_lock_names_the_holders_and_retries_later() -> None:
    m = staged()
    rec = machine.absorb(IN_FLIGHT, machine.Action(Do.ACQUIRE), machine.Busy(("m7", "m9")),
                         facts(m), P)  # fmt: skip
    step = machine.decide(rec, facts(m, NOW + 30), P)
    assert step.action.do is Do.SLEEP and step.action.until == NOW + 60
    assert step.action.why == "reboot lock held by m7, m9"
    assert machine.decide(rec, facts(m, NOW + 60), P).action.do is Do.ACQUIRE


def test_no_lock_backend_goes_straight_to_the_reboot() -> None:
    step = machine.decide(IN_FLIGHT, facts(staged()), policy(locking=False))
    assert step.record.state is State.REBOOTING and step.action.do is Do.REBOOT
    assert step.action.via == "kexec" and step.record.reboot_attempts == 1


def test_a_failed_reboot_is_retried_then_given_up_and_the_lock_released() -> None:
    m = staged()
    ticket = LockTicket("etcd", "m1", "default", 7)
    rec = replace(IN_FLIGHT, state=State.REBOOTING, lock=ticket)
    now = NOW
    for attempt in range(1, 4):
        step = machine.decide(rec, facts(m, now), P)
        assert step.action.do is Do.REBOOT and step.record.reboot_attempts == attempt
        failed = machine.Failed("inhibited")
        rec = machine.absorb(step.record, step.action, failed, facts(m, now), P)
        assert machine.decide(rec, facts(m, now + 1), P).action.do is Do.SLEEP
        now += 61
    step = machine.decide(rec, facts(m, now), P)
    assert step.record.state is State.FAILED and step.action.do is Do.RELEASE
    assert "no reboot happened after 3 attempts" in (step.record.last_error or "")


def test_a_requested_reboot_gets_time_to_happen() -> None:
    m = staged()
    rec = replace(IN_FLIGHT, state=State.REBOOTING, reboot_attempts=1)
    rec = machine.absorb(rec, machine.Action(Do.REBOOT, via="kexec"), machine.Done(), facts(m), P)
    step = machine.decide(rec, facts(m, NOW + 100), P)
    assert step.action.do is Do.SLEEP and step.action.until == NOW + 300
    assert machine.decide(rec, facts(m, NOW + 300), P).action.do is Do.REBOOT


def test_a_reboot_in_progress_is_not_judged_in_the_boot_that_asked_for_it() -> None:
    """A kexec request consumes the new slot's try and returns; the system goes down a little
    later. Until the boot changes, the spent try says nothing about how the new slot boots."""
    m = staged()
    rec = replace(IN_FLIGHT, state=State.REBOOTING, reboot_attempts=1)
    _, consume = slots.next_boot(m.table)  # what the reboot flow does before the jump
    m._apply(consume)
    assert not m.booted().other.bootable  # what a finished boot on A would show as well
    rec = machine.absorb(rec, machine.Action(Do.REBOOT, via="kexec"), machine.Done(), facts(m), P)
    step = machine.decide(rec, facts(m, NOW + 5), P)
    assert step.action.do is Do.SLEEP and step.record.state is State.REBOOTING
    assert step.record.blocked == () and step.record.rollbacks == 0
    m.booted_letter, m.boot = "B", m.boot + 1  # the jump: the new slot's kernel runs
    assert machine.decide(step.record, facts(m, NOW + 60), P).record.state is State.VERIFYING


def test_a_reboot_that_came_back_to_the_old_slot_is_a_failed_boot() -> None:
    m = staged()
    rec = replace(IN_FLIGHT, state=State.REBOOTING, reboot_attempts=1)
    rec = machine.absorb(rec, machine.Action(Do.REBOOT, via="kexec"), machine.Done(), facts(m), P)
    assert m.power_on() == "B"  # B's try spent, its boot hangs and the machine is reset ...
    assert m.power_on() == "A"  # ... and GRUB falls back to A
    step = machine.decide(rec, facts(m, NOW + 60), P)
    assert step.record.state is State.ROLLED_BACK
    assert step.record.blocked[0].reason is Reason.BOOT


def test_the_new_slot_that_did_not_boot_is_rolled_back_and_blocked() -> None:
    m = staged()
    m.power_on()  # GRUB spends B's try ...
    m.booted_letter = "A"  # ... and the machine comes back on A (B hung and was reset)
    ticket = LockTicket("etcd", "m1", "default", 7)
    rec = replace(IN_FLIGHT, state=State.REBOOTING, lock=ticket, reboot_attempts=1)
    step = machine.decide(rec, facts(m), P)
    assert step.record.state is State.ROLLED_BACK and step.action.do is Do.RELEASE
    assert step.record.blocked[0].reason is Reason.BOOT and step.record.rollbacks == 1


def test_a_staged_release_changed_outside_the_agent_fails_the_cycle() -> None:
    m = staged()
    m._apply(slots.mark_bad(m.table, 4))
    step = machine.decide(replace(IN_FLIGHT, state=State.STAGED), facts(m), P)
    assert step.record.state is State.FAILED
    assert "outside the agent" in (step.record.last_error or "")


def test_strategy_off_signals_once_then_waits() -> None:
    m = staged()
    p = policy(strategy=RebootStrategy.OFF)
    step = machine.decide(replace(IN_FLIGHT, state=State.STAGED), facts(m), p)
    assert step.action.do is Do.SIGNAL
    rec = machine.absorb(step.record, step.action, machine.Done(), facts(m), p)
    step = machine.decide(rec, facts(m), p)
    assert step.action.do is Do.SLEEP and "strategy off" in step.action.why


def test_health_failure_marks_bad_and_reboots_back_holding_the_lock() -> None:
    m = staged()
    m.power_on()
    ticket = LockTicket("etcd", "m1", "default", 7)
    rec = replace(IN_FLIGHT, state=State.VERIFYING, lock=ticket, verify_deadline=NOW + 300)
    step = machine.decide(rec, facts(m), P)
    assert step.action == machine.Action(Do.VERIFY, deadline=NOW + 300)
    rec = machine.absorb(rec, step.action, machine.Unhealthy("unit x is failed"), facts(m), P)
    assert rec.state is State.ROLLED_BACK and rec.returning and rec.lock == ticket
    assert rec.last_error == "health check failed: unit x is failed"
    step = machine.decide(rec, facts(m), P)
    assert step.action == machine.Action(Do.MARK_BAD, slot="B")
    m.mark_bad("B")
    step = machine.decide(step.record, facts(m), P)
    assert step.action.do is Do.REBOOT and step.record.lock == ticket
    m.power_on()
    assert m.booted_letter == "A"
    step = machine.decide(step.record, facts(m), P)
    assert step.action.do is Do.RELEASE and not step.record.returning


def test_adopting_a_trial_boot_skips_blocked_releases() -> None:
    m = staged()
    m.power_on()
    adopted = machine.decide(Record(committed_slot="A", committed_version="1"), facts(m), P)
    assert adopted.record.state is State.VERIFYING and adopted.action.do is Do.VERIFY
    blocked = Record(committed_slot="A").block("2", Reason.HEALTH, NOW)
    step = machine.decide(blocked, facts(m), P)
    assert step.action.do is Do.SLEEP and "not proven good" in step.action.why


def _view(data: tuple[int, int, bool, str | None], letter: str) -> SlotView:
    return SlotView(letter, data[3], data[0], data[1], data[2])


slot_data = st.tuples(st.integers(0, 15), st.integers(0, 15), st.booleans(),
                      st.sampled_from([None, "1", "2"]))  # fmt: skip


@given(
    state=st.sampled_from(list(State)),
    mine=slot_data,
    other=slot_data,
    booted=st.sampled_from(["A", "B"]),
    nxt=st.sampled_from([None, "A", "B"]),
    lock=st.booleans(),
    returning=st.booleans(),
    healthy=st.booleans(),
    strategy=st.sampled_from(list(RebootStrategy)),
    delta=st.floats(-1e5, 1e6),
    same_boot=st.booleans(),
)
def test_decide_always_settles_on_one_action(
    state: State, mine: tuple[int, int, bool, str | None], other: tuple[int, int, bool, str | None],
    booted: str, nxt: str | None, lock: bool, returning: bool, healthy: bool,
    strategy: RebootStrategy, delta: float, same_boot: bool,
) -> None:  # fmt: skip
    """Whatever the record says and whatever the slots show, one action comes out, and a sleep
    never ends in the past of a due step (no busy loop of zero-length sleeps)."""
    letter = "B" if booted == "A" else "A"
    b = Booted(_view(mine, booted), _view(other, letter), nxt, "boot-2")
    rec = Record(state=state, version="2", from_slot="A", target_slot="B", returning=returning,
                 healthy=healthy, lock=LockTicket("etcd", "m", "g", 1) if lock else None,
                 next_check=NOW + delta, next_try=NOW + delta / 10, verify_deadline=NOW,
                 reboot_requested=NOW + delta if delta > 0 else None,
                 reboot_boot="boot-2" if same_boot else "boot-1")  # fmt: skip
    step = machine.decide(rec, Facts(NOW, b, 0.3), policy(strategy=strategy))
    if step.action.do is Do.SLEEP:
        assert step.action.until is not None and step.action.until > NOW


def test_going_back_that_keeps_failing_gives_the_lock_back_first() -> None:
    m = staged()
    m.power_on()
    ticket = LockTicket("etcd", "m1", "default", 7)
    rec = Record(state=State.ROLLED_BACK, version="2", from_slot="A", target_slot="B",
                 returning=True, lock=ticket).block("2", Reason.HEALTH, NOW)  # fmt: skip
    now = NOW
    for _ in range(3):
        step = machine.decide(rec, facts(m, now), P)
        assert step.action == machine.Action(Do.MARK_BAD, slot="B")
        rec = machine.absorb(step.record, step.action, machine.Failed("write error"),
                             facts(m, now), P)  # fmt: skip
        now += 61
    step = machine.decide(rec, facts(m, now), P)
    assert step.action.do is Do.RELEASE, "the fleet is not held up by one stuck machine"
    rec = machine.absorb(step.record, step.action, machine.Done(), facts(m, now), P)
    assert machine.decide(rec, facts(m, now), P).action.do is Do.MARK_BAD, "and it keeps trying"


# --- each transition's whole record (README, "What each state means") ---------------------------


def test_mark_good_commits_the_target_and_clears_the_trial() -> None:
    m = staged()
    m.power_on()
    rec = replace(IN_FLIGHT, state=State.VERIFYING, healthy=True, verify_deadline=NOW + 300,
                  last_error="old")  # fmt: skip
    out = machine.absorb(rec, machine.Action(Do.MARK_GOOD, slot="B"), machine.Done(), facts(m), P)
    assert out == replace(
        rec, state=State.COMMITTED, changed=NOW, committed_slot="B", committed_version="2",
        last_success=NOW, last_error=None, next_check=NOW + 3600, healthy=False,
        verify_deadline=None,
    )  # fmt: skip


def test_a_failed_mark_good_goes_back_holding_the_lock() -> None:
    m = staged()
    m.power_on()
    ticket = LockTicket("etcd", "m1", "default", 7)
    rec = replace(IN_FLIGHT, state=State.VERIFYING, healthy=True, lock=ticket, signalled=True,
                  reboot_attempts=2, reboot_requested=NOW - 5)  # fmt: skip
    out = machine.absorb(rec, machine.Action(Do.MARK_GOOD, slot="B"), machine.Failed("io"),
                         facts(m), P)  # fmt: skip
    assert out == replace(
        rec.block("2", Reason.HEALTH, NOW), state=State.ROLLED_BACK, changed=NOW,
        next_check=NOW + 3600, rollbacks=1, last_error="mark-good failed: io", returning=True,
        healthy=False, signalled=False, reboot_attempts=0, reboot_requested=None,
    )  # fmt: skip


def test_a_failed_check_is_a_failed_cycle() -> None:
    m = FakeMachine()
    rec = Record(state=State.CHECKING, healthy=True, returning=True)
    out = machine.absorb(rec, machine.Action(Do.CHECK), machine.Failed("no network"), facts(m), P)
    assert out == replace(rec, state=State.FAILED, changed=NOW, last_error="no network",
                          next_check=NOW + 3600, healthy=False, returning=False,
                          last_check=NOW)  # fmt: skip


def test_a_failed_mark_bad_counts_as_an_attempt_only_when_going_back() -> None:
    m = staged()
    for returning, attempts in ((True, 2), (False, 1)):
        rec = replace(IN_FLIGHT, state=State.ROLLED_BACK, returning=returning, reboot_attempts=1)
        out = machine.absorb(rec, machine.Action(Do.MARK_BAD, slot="B"), machine.Failed("x"),
                             facts(m), P)  # fmt: skip
        assert out == replace(rec, last_error="mark-bad failed: x", next_try=NOW + 60,
                              reboot_attempts=attempts)  # fmt: skip


def test_going_back_marks_bad_while_the_slot_would_boot_then_reboots_without_a_cap() -> None:
    m = staged()
    m.power_on()  # on B, the slot that failed
    rec = replace(IN_FLIGHT, state=State.ROLLED_BACK, returning=True, reboot_attempts=9)
    step = machine.decide(rec, facts(m), P)
    assert step.action == machine.Action(Do.MARK_BAD, slot="B")
    m.mark_bad("B")
    step = machine.decide(rec, facts(m), P)
    assert step.action == machine.Action(Do.REBOOT, via="kexec")
    assert step.record.reboot_attempts == 10 and step.record.reboot_requested is None
    off = machine.decide(replace(rec, signalled=True), facts(m),
                         policy(strategy=RebootStrategy.OFF))  # fmt: skip
    assert off.action == machine.Action(
        Do.SLEEP, until=NOW + 3600,
        why="going back to the previous slot: waiting for a reboot (strategy off)",
    )


def test_a_requested_reboot_sleeps_with_its_reason() -> None:
    m = staged()
    rec = replace(IN_FLIGHT, state=State.REBOOTING, reboot_attempts=1, reboot_requested=NOW - 100)
    step = machine.decide(rec, facts(m), P)
    assert step.action.until == NOW + 200
    assert step.action.why is not None and step.action.why.endswith(": reboot requested")


def test_giving_up_on_reboots_names_the_last_error() -> None:
    m = staged()
    rec = replace(IN_FLIGHT, state=State.REBOOTING, reboot_attempts=3, last_error="inhibited")
    step = machine.decide(rec, facts(m), P)
    assert step.record.last_error == "no reboot happened after 3 attempts (inhibited)"
    rec = replace(rec, last_error=None)
    step = machine.decide(rec, facts(m), P)
    assert step.record.last_error == (
        "no reboot happened after 3 attempts (the system did not go down)"
    )


def test_the_window_wait_names_the_opening_in_the_configured_zone() -> None:
    m = staged()
    window = parse_window({"days": ["Wed"], "start": "01:00", "minutes": 30})
    p = policy(windows=(window,), zone=ZoneInfo("Europe/Berlin"))
    step = machine.decide(replace(IN_FLIGHT, state=State.STAGED), facts(m), p)
    assert step.action.why == "maintenance window opens Wed 2023-11-15 01:00 CET"


def test_writing_stops_when_the_booted_slot_changed_and_stages_with_the_waves() -> None:
    m = staged()
    waves = parse_waves([[2048, "2023-11-14T00:00:00Z"]])
    rec = replace(IN_FLIGHT, state=State.DOWNLOADING, waves=waves)
    step = machine.decide(rec, facts(m), P)
    assert step.action == machine.Action(Do.STAGE, offer=Offer("2", waves))
    m.booted_letter = "B"
    step = machine.decide(rec, facts(m), P)
    assert step.record.last_error == "the booted slot changed while the release was written"


def test_an_offer_taken_fills_the_record_and_one_refused_clears_it() -> None:
    m = FakeMachine()
    waves = parse_waves([[2048, "2023-11-14T00:00:00Z"]])
    rec = Record(state=State.CHECKING, last_error="old", available="7", wave_start=5.0,
                 reboot_attempts=2, reboot_requested=5.0, healthy=True, returning=True,
                 signalled=True, lock_holders=("m9",), verify_deadline=9.0)  # fmt: skip
    out = machine.absorb(rec, machine.Action(Do.CHECK), machine.Offered(Offer("2", waves)),
                         facts(m), P)  # fmt: skip
    assert out == replace(
        rec, state=State.DOWNLOADING, changed=NOW, last_check=NOW, last_error=None, version="2",
        waves=waves, from_slot="A", from_version="1", target_slot="B", available="2",
        wave_start=waves[0].start, reboot_attempts=0, reboot_requested=None, healthy=False,
        returning=False, signalled=False, lock_holders=(), verify_deadline=None,
    )  # fmt: skip
    none = machine.absorb(rec, machine.Action(Do.CHECK), machine.Offered(None), facts(m), P)
    assert none == replace(rec, state=State.IDLE, changed=NOW, last_check=NOW, last_error=None,
                           available=None, wave_start=None, next_check=NOW + 3600)  # fmt: skip


def test_a_new_slot_that_did_not_boot_leaves_the_whole_record_rolled_back() -> None:
    m = staged()
    m.power_on()
    m.booted_letter = "A"
    rec = replace(IN_FLIGHT, state=State.REBOOTING, reboot_attempts=2, healthy=True,
                  signalled=True)  # fmt: skip
    step = machine.decide(rec, facts(m), policy(locking=False))
    assert step.record == replace(
        rec.block("2", Reason.BOOT, NOW), state=State.ROLLED_BACK, changed=NOW,
        next_check=NOW + 3600, rollbacks=1,
        last_error="release 2 did not boot; the previous slot was booted again",
        returning=False, healthy=False, signalled=False, reboot_attempts=0, booted_version="1",
    )  # fmt: skip


def test_a_reboot_target_changed_outside_the_agent_fails_the_cycle() -> None:
    m = staged()
    m.versions["B"] = "3"  # B still boots next, but holds another release now
    step = machine.decide(replace(IN_FLIGHT, state=State.REBOOTING), facts(m), P)
    assert step.record.state is State.FAILED
    assert step.record.last_error == (
        "release 2 is no longer set to boot next: the A/B state was changed outside the agent"
    )


def test_reboots_still_going_down_are_capped_too() -> None:
    m = staged()
    rec = replace(IN_FLIGHT, state=State.REBOOTING, reboot_attempts=3, reboot_requested=NOW - 400,
                  reboot_boot="boot-1")  # fmt: skip
    step = machine.decide(rec, facts(m), P)
    assert step.record.state is State.FAILED


@pytest.mark.parametrize("going_down", [False, True])
def test_strategy_off_names_what_waits_for_a_reboot(going_down: bool) -> None:
    m = staged()
    rec = replace(IN_FLIGHT, state=State.REBOOTING, signalled=True)
    if going_down:
        rec = replace(rec, reboot_requested=NOW - 400, reboot_boot="boot-1")
    p = policy(strategy=RebootStrategy.OFF)
    why = "rebooting into release 2: waiting for a reboot (strategy off)"
    assert machine.decide(rec, facts(m), p).action == machine.Action(
        Do.SLEEP, until=NOW + 3600, why=why
    )
    staged_rec = replace(IN_FLIGHT, state=State.STAGED, signalled=True)
    assert machine.decide(staged_rec, facts(m), p).action.why == (
        "release 2 staged: waiting for a reboot (strategy off)"
    )


def test_without_a_lock_backend_the_reboot_starts_afresh() -> None:
    m = staged()
    rec = replace(IN_FLIGHT, reboot_attempts=2, reboot_requested=NOW - 10, next_try=NOW - 1)
    step = machine.decide(rec, facts(m), policy(locking=False))
    assert step.action.do is Do.REBOOT and step.record.next_try is None
    assert step.record.reboot_attempts == 1 and step.record.reboot_requested is None


def test_a_reboot_after_the_grace_forgets_the_request() -> None:
    m = staged()
    rec = replace(IN_FLIGHT, state=State.REBOOTING, reboot_attempts=1, reboot_requested=NOW - 300)
    step = machine.decide(rec, facts(m), P)
    assert step.action.do is Do.REBOOT and step.record.reboot_requested is None


def test_windows_are_read_in_the_configured_zone() -> None:
    """Tuesday 23:13 in Berlin (22:13 UTC): a Berlin window Tue 23:00-00:00 is open."""
    m = staged()
    window = parse_window({"days": ["Tue"], "start": "23:00", "minutes": 60})
    p = policy(windows=(window,), zone=ZoneInfo("Europe/Berlin"))
    step = machine.decide(replace(IN_FLIGHT, state=State.STAGED), facts(m), p)
    assert step.action.do is Do.ACQUIRE and step.record.state is State.WAITING_FOR_LOCK


def test_a_release_changed_outside_the_agent_while_waiting_for_the_window() -> None:
    m = staged()
    m._apply(slots.mark_bad(m.table, 4))
    window = parse_window({"days": ["Wed"], "start": "01:00", "minutes": 30})
    rec = replace(IN_FLIGHT, state=State.WAITING_FOR_WINDOW)
    step = machine.decide(rec, facts(m), policy(windows=(window,)))
    assert step.record.state is State.FAILED
    assert step.record.last_error == (
        "release 2 is no longer set to boot next: the A/B state was changed outside the agent"
    )


def test_results_that_move_on_clear_what_they_answer() -> None:
    m = staged()
    stale = replace(IN_FLIGHT, last_error="old", reboot_attempts=2, reboot_requested=5.0,
                    lock_holders=("m9",))  # fmt: skip
    ticket = LockTicket("etcd", "m1", "default", 7)
    f = facts(m)
    staged_rec = machine.absorb(replace(stale, state=State.DOWNLOADING),
                                machine.Action(Do.STAGE), machine.Done(), f, P)  # fmt: skip
    assert staged_rec == replace(stale, state=State.STAGED, changed=NOW, last_error=None)
    taken = machine.absorb(stale, machine.Action(Do.ACQUIRE), machine.Taken(ticket), f, P)
    assert taken == replace(stale, state=State.REBOOTING, changed=NOW, lock=ticket,
                            lock_holders=(), last_error=None, reboot_attempts=0,
                            reboot_requested=None)  # fmt: skip
    busy = machine.absorb(stale, machine.Action(Do.ACQUIRE), machine.Busy(("m7",)), f, P)
    assert busy == replace(stale, lock_holders=("m7",), next_try=NOW + 60, last_error=None)
    healthy = machine.absorb(replace(stale, state=State.VERIFYING), machine.Action(Do.VERIFY),
                             machine.Done(), f, P)  # fmt: skip
    assert healthy == replace(stale, state=State.VERIFYING, healthy=True, last_error=None)


def test_strategy_switched_off_while_waiting_goes_back_to_staged() -> None:
    m = staged()
    rec = replace(IN_FLIGHT, state=State.WAITING_FOR_LOCK, signalled=False)
    step = machine.decide(rec, facts(m), policy(strategy=RebootStrategy.OFF))
    assert step.record.state is State.STAGED and step.record.changed == NOW
    assert step.action.do is Do.SIGNAL


def test_back_on_the_previous_slot_the_going_back_is_over() -> None:
    m = staged()  # booted A, B next
    ticket = LockTicket("etcd", "m1", "default", 7)
    rec = replace(IN_FLIGHT, state=State.ROLLED_BACK, returning=True, signalled=True,
                  reboot_attempts=2, reboot_requested=5.0, lock=ticket)  # fmt: skip
    rec = rec.block("2", Reason.HEALTH, NOW)
    m._apply(slots.mark_bad(m.table, 4))
    step = machine.decide(rec, facts(m), P)
    assert step.action.do is Do.RELEASE
    assert step.record == replace(rec, returning=False, signalled=False, reboot_attempts=0,
                                  reboot_requested=None, booted_version="1")  # fmt: skip


def test_a_rolled_back_release_that_would_still_boot_is_marked_bad() -> None:
    """Only a blocked release, only after a rollback that is not going back any more."""
    m = staged()  # B, holding release 2, is bootable and next
    rolled = replace(IN_FLIGHT, state=State.ROLLED_BACK).block("2", Reason.BOOT, NOW)
    assert machine.decide(rolled, facts(m), P).action == machine.Action(Do.MARK_BAD, slot="B")
    unblocked = replace(IN_FLIGHT, state=State.ROLLED_BACK)
    assert machine.decide(unblocked, facts(m), P).action.do is not Do.MARK_BAD
    failed = replace(rolled, state=State.FAILED)
    assert machine.decide(failed, facts(m), P).action.do is not Do.MARK_BAD


def test_the_new_slot_booted_starts_the_health_check_afresh() -> None:
    m = staged()
    m.power_on()
    rec = replace(IN_FLIGHT, state=State.REBOOTING, healthy=True, reboot_requested=5.0)
    step = machine.decide(rec, facts(m), P)
    assert step.action == machine.Action(Do.VERIFY, deadline=NOW + 300)
    assert step.record.state is State.VERIFYING and step.record.verify_deadline == NOW + 300
    assert step.record.healthy is False and step.record.reboot_requested is None


def test_a_trial_that_ended_before_it_was_verified() -> None:
    m = staged()  # booted A: the trial of B is over
    rec = replace(IN_FLIGHT, state=State.VERIFYING, verify_deadline=NOW + 300)
    step = machine.decide(rec, facts(m), P)
    assert step.record.state is State.ROLLED_BACK and step.record.returning is False
    assert step.record.last_error == (
        "the trial boot of release 2 ended before it was verified; the previous slot was "
        "booted again"
    )


def test_a_released_lock_forgets_its_holders() -> None:
    ticket = LockTicket("etcd", "m1", "default", 7)
    rec = replace(IN_FLIGHT, lock=ticket, lock_holders=("m7",))
    out = machine.absorb(rec, machine.Action(Do.RELEASE), machine.Done(), facts(staged()), P)
    assert out == replace(rec, lock=None, lock_holders=())


def test_a_result_that_does_not_answer_the_action_is_a_bug() -> None:
    with pytest.raises(AssertionError, match="^unexpected result Done.. of check$"):
        machine.absorb(Record(), machine.Action(Do.CHECK), machine.Done(), facts(staged()), P)


def test_a_manual_rollback_blocks_the_release_moved_away_from_at_that_time() -> None:
    m = FakeMachine()  # A good and booted
    rec = Record(committed_slot="B", committed_version="2")
    step = machine.decide(rec, facts(m), P)
    assert step.record.blocked == (Blocked("2", Reason.MANUAL, NOW),)
    assert step.record.committed_slot == "A" and step.record.committed_version == "1"


def _trial(priority: int) -> Booted:
    """Booted B on trial (not successful) with the given priority, A proven good."""
    return Booted(SlotView("B", "2", priority, 0, False), SlotView("A", "1", 1, 0, True), "A",
                  "boot-1")  # fmt: skip


def test_a_trial_boot_is_adopted_while_its_slot_keeps_a_priority() -> None:
    rec = Record(committed_slot="A", committed_version="1")
    adopted = machine.decide(rec, Facts(NOW, _trial(1)), P)
    assert adopted.record.state is State.VERIFYING and adopted.record.version == "2"
    assert (adopted.record.target_slot, adopted.record.from_slot) == ("B", "A")
    assert adopted.record.from_version == "1"
    spent = machine.decide(rec, Facts(NOW, _trial(0)), P)
    assert spent.action.do is Do.SLEEP and spent.record.state is State.IDLE


def test_a_slot_set_to_boot_next_by_someone_else_holds_updates() -> None:
    m = staged()  # A booted and good, B set to boot next outside the agent
    step = machine.decide(Record(committed_slot="A", committed_version="1"), facts(m), P)
    assert step.action.why == (
        "slot B was set to boot next outside the agent; not updating until that reboot"
    )


def test_resting_names_the_wave_it_waits_for_in_the_configured_zone() -> None:
    m = FakeMachine()
    p = policy(zone=ZoneInfo("Europe/Berlin"))
    wave = 1_700_010_000.0  # Wed 2023-11-15 01:00 UTC
    rec = Record(committed_slot="A", committed_version="1", available="2", wave_start=wave,
                 next_check=NOW + 600)  # fmt: skip
    step = machine.decide(rec, facts(m), p)
    assert step.action == machine.Action(
        Do.SLEEP, until=NOW + 600, why="release 2 waits for its wave (Wed 2023-11-15 02:00 CET)"
    )
    now_due = machine.decide(replace(rec, wave_start=NOW), facts(m), p)
    assert now_due.action.why == "next check"


def test_going_back_marks_bad_a_failed_slot_with_priority_one() -> None:
    booted = Booted(SlotView("B", "2", 1, 0, False), SlotView("A", "1", 1, 0, True), "B",
                    "boot-1")  # fmt: skip
    rec = replace(IN_FLIGHT, state=State.ROLLED_BACK, returning=True)
    step = machine.decide(rec, Facts(NOW, booted), P)
    assert step.action == machine.Action(Do.MARK_BAD, slot="B")


def test_a_retry_is_waited_for_only_while_holding_something() -> None:
    m = FakeMachine()
    idle = Record(state=State.IDLE, next_try=NOW + 100)
    assert machine.decide(idle, facts(m), P).action.do is Do.CHECK
    ticket = LockTicket("etcd", "m1", "default", 7)
    failed = Record(state=State.FAILED, lock=ticket, next_try=NOW + 30,
                    last_error="release failed: x")  # fmt: skip
    assert machine.decide(failed, facts(m), P).action == machine.Action(
        Do.SLEEP, until=NOW + 30, why="retrying after: release failed: x"
    )
    assert machine.decide(replace(failed, last_error=None), facts(m), P).action.why == (
        "retrying after: a failed step"
    )
    waiting = replace(IN_FLIGHT, next_try=NOW + 30, last_error="acquire failed: y")
    assert machine.decide(waiting, facts(staged()), P).action.why == (
        "retrying after: acquire failed: y"
    )


def test_rules_that_never_settle_are_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(machine._RULES, State.IDLE, lambda rec, f, p: rec)
    with pytest.raises(AssertionError, match="^the agent's rules did not settle in state idle$"):
        machine.decide(Record(), facts(FakeMachine()), P)
