"""The agent's runner over fakes: whole cycles, and a crash (the agent killed, or the machine's
power cut) right after each state was persisted, then a restart: it must end where an
uninterrupted run ends, or, where the slot rules say so (a trial boot cut before it was
verified), roll back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.agentfakes import (
    FakeClock,
    FakeHealth,
    FakeLock,
    FakeMachine,
    FakeReboot,
    FakeSemaphore,
    agent,
    drive,
    policy,
)
from updater.agent.record import Reason, Record, State
from updater.agent.runner import Mode
from updater.agent.schedule import parse_window
from updater.agent.store import Store
from updater.config import RebootStrategy

# The fake clock starts on a Tuesday at 22:13 UTC; the window opens two hours later, so that
# the agent persists waiting-for-window (with an open window it passes through in one step).
WINDOW = policy(windows=(parse_window({"days": ["Wed"], "start": "00:00", "minutes": 60}),))
HAPPY = [State.IDLE, State.CHECKING, State.DOWNLOADING, State.STAGED, State.WAITING_FOR_WINDOW,
         State.WAITING_FOR_LOCK, State.REBOOTING, State.VERIFYING, State.COMMITTED]  # fmt: skip


def _committed(m: FakeMachine, rec: Record) -> None:
    assert m.booted_letter == "B" and m.versions["B"] == "2"
    assert m.booted().slot.successful and m.booted().next_slot == "B"
    assert rec.committed_version == "2" and rec.committed_slot == "B"
    assert rec.blocked == () and rec.lock is None


def test_uninterrupted_cycle(tmp_path: Path) -> None:
    m, sem, health = FakeMachine(), FakeSemaphore(), FakeHealth()
    rec = drive(tmp_path, m, FakeLock(sem), health)
    _committed(m, rec)
    assert m.reboots == ["kexec"] and sem.taken == ["m1"] and sem.holders == {}
    assert health.rounds == 1
    assert "updater_agent_rollbacks_total 0.0" in (tmp_path / "metrics.prom").read_text()


@pytest.mark.parametrize("state", HAPPY, ids=str)
def test_agent_killed_in_each_state_resumes(tmp_path: Path, state: State) -> None:
    m, sem = FakeMachine(), FakeSemaphore()
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth(), crash=state, pol=WINDOW)
    _committed(m, rec)
    assert m.reboots == ["kexec"], "exactly one reboot into the new slot"
    assert sem.taken == ["m1"] and sem.holders == {}


@pytest.mark.parametrize("state", HAPPY, ids=str)
def test_power_cut_in_each_state(tmp_path: Path, state: State) -> None:
    m, sem = FakeMachine(), FakeSemaphore()
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth(), crash=state, power_cut=True,
                pol=WINDOW)  # fmt: skip
    assert sem.holders == {}, "the lock is never left held"
    if state is State.VERIFYING:
        # The trial boot ended before it was verified: GRUB falls back (its one try is spent)
        # and the agent counts that as a failed boot.
        assert m.booted_letter == "A" and rec.state in (State.ROLLED_BACK, State.IDLE)
        assert [(b.version, b.reason) for b in rec.blocked] == [("2", Reason.BOOT)]
        assert rec.rollbacks == 1
        return
    _committed(m, rec)
    if state in (State.STAGED, State.WAITING_FOR_WINDOW, State.WAITING_FOR_LOCK):
        # The power cut booted the staged slot before the agent asked for the lock.
        assert m.reboots == [] and sem.taken == []
    elif state in (State.IDLE, State.CHECKING, State.DOWNLOADING):
        assert m.reboots == ["kexec"] and sem.taken == ["m1"]


@pytest.mark.parametrize("power_cut", [False, True], ids=["killed", "power-cut"])
@pytest.mark.parametrize("state", [State.VERIFYING, State.ROLLED_BACK], ids=str)
def test_unhealthy_release_rolls_back_once(tmp_path: Path, state: State, power_cut: bool) -> None:
    m, sem = FakeMachine(), FakeSemaphore()
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth("curl exited 22"), crash=state,
                power_cut=power_cut)  # fmt: skip
    assert m.booted_letter == "A" and m.booted().slot.successful
    assert not m.booted().other.bootable, "the bad release never boots again"
    assert rec.rollbacks == 1 and sem.holders == {}
    reason = Reason.BOOT if power_cut and state is State.VERIFYING else Reason.HEALTH
    assert [(b.version, b.reason) for b in rec.blocked] == [("2", reason)]
    assert rec.committed_slot == "A" and rec.committed_version == "1"


def test_unhealthy_release_is_not_offered_again(tmp_path: Path) -> None:
    m, sem = FakeMachine(), FakeSemaphore()
    drive(tmp_path, m, FakeLock(sem), FakeHealth("unit nginx.service is failed"))
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth())
    assert rec.state is State.IDLE and m.booted_letter == "A" and m.reboots == ["kexec"] * 2
    assert m.calls.count("stage") == 1
    m.releases.append(m.releases[0].__class__("3"))
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth())
    assert m.booted_letter == "B" and m.versions["B"] == "3" and rec.committed_version == "3"


@pytest.mark.parametrize("state", [State.CHECKING, State.DOWNLOADING, State.FAILED],
                         ids=str)  # fmt: skip
def test_broken_release_fails_and_retries(tmp_path: Path, state: State) -> None:
    m, sem = FakeMachine(broken={"2"}), FakeSemaphore()
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth(), crash=state)
    assert rec.state is State.FAILED and "does not match" in (rec.last_error or "")
    assert m.booted_letter == "A" and not m.booted().other.bootable and m.reboots == []
    assert sem.taken == [] and rec.blocked == ()


@pytest.mark.parametrize("method", ["available", "stage", "mark_good"])
def test_killed_after_an_action_before_its_result_was_saved(tmp_path: Path, method: str) -> None:
    m, sem = FakeMachine(crash_after=method), FakeSemaphore()
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth())
    _committed(m, rec)
    assert m.reboots == ["kexec"] and sem.holders == {}


def test_killed_after_mark_bad(tmp_path: Path) -> None:
    m, sem = FakeMachine(crash_after="mark_bad"), FakeSemaphore()
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth("boom"))
    assert m.booted_letter == "A" and rec.rollbacks == 1 and sem.holders == {}


def test_busy_lock_waits_and_the_other_holder_releases(tmp_path: Path) -> None:
    m, sem = FakeMachine(), FakeSemaphore(holders={"other": 99})
    clock = FakeClock()
    a = agent(tmp_path, m, lock=FakeLock(sem), health=FakeHealth(), clock=clock)
    assert a.run(Mode.ONCE) == 0
    rec = Store(str(tmp_path / "state")).load()
    assert rec.state is State.WAITING_FOR_LOCK and rec.lock_holders == ("other",)
    assert m.reboots == []
    del sem.holders["other"]
    clock.t += 61
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth(), clock=clock)
    _committed(m, rec)


def test_strategy_off_writes_reboot_required_and_waits(tmp_path: Path) -> None:
    m, sem = FakeMachine(), FakeSemaphore()
    pol = policy(strategy=RebootStrategy.OFF)
    a = agent(tmp_path, m, lock=FakeLock(sem), health=FakeHealth(), clock=FakeClock(), pol=pol)
    a.run(Mode.ONCE)
    rec = Store(str(tmp_path / "state")).load()
    assert rec.state is State.STAGED and rec.signalled
    assert (tmp_path / "reboot-required").read_bytes() == b"*** System restart required ***\n"
    assert m.reboots == [] and sem.taken == []
    m.power_on()  # someone else (kured, an operator) reboots
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth(), pol=pol)
    _committed(m, rec)
    assert m.reboots == []


def test_manual_rollback_blocks_the_release_left(tmp_path: Path) -> None:
    m, sem = FakeMachine(), FakeSemaphore()
    drive(tmp_path, m, FakeLock(sem), FakeHealth())
    # updater rollback + reboot, by hand
    from updater import slots

    booted = next(s for s in m.table if s.letter == "B")
    m._apply(slots.rollback(m.table, booted.partition, has_image=True))
    m.power_on()
    assert m.booted_letter == "A"
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth())
    assert [(b.version, b.reason) for b in rec.blocked] == [("2", Reason.MANUAL)]
    assert m.booted_letter == "A" and m.calls.count("stage") == 1
    assert rec.committed_slot == "A" and rec.committed_version == "1"


def test_a_trial_boot_staged_by_hand_is_verified_and_committed(tmp_path: Path) -> None:
    from updater import slots

    m = FakeMachine(releases=[])
    m.versions["B"] = "5"
    m._apply(slots.set_active(m.table, 4))
    m.power_on()
    rec = drive(tmp_path, m, None, FakeHealth())
    assert rec.state is State.IDLE and rec.committed_version == "5"
    assert m.booted().slot.successful and m.booted_letter == "B"


def test_pending_rollback_by_hand_is_left_alone(tmp_path: Path) -> None:
    """The other slot set to boot next outside the agent: no check, no stage over it."""
    from updater import slots

    m = FakeMachine()
    m.versions["B"] = "0"
    m._apply(slots.set_active(m.table, 4))
    m._apply(slots.mark_good(m.table, 4))
    m._apply(slots.prioritize_transition(m.table, 4))
    a = agent(tmp_path, m, lock=None, health=FakeHealth(), clock=FakeClock())
    a.run(Mode.ONCE)
    assert m.calls == [] and m.versions["B"] == "0"


def test_verify_mode_does_only_what_follows_a_boot(tmp_path: Path) -> None:
    m, sem = FakeMachine(), FakeSemaphore()
    clock = FakeClock()
    assert agent(tmp_path, m, lock=FakeLock(sem), health=FakeHealth(), clock=clock
                 ).run(Mode.VERIFY) == 0  # fmt: skip
    assert m.calls == [], "verify never checks for a release"
    with pytest.raises(FakeReboot):
        agent(tmp_path, m, lock=FakeLock(sem), health=FakeHealth(), clock=clock).run(Mode.ONCE)
    m.power_on()
    assert agent(tmp_path, m, lock=FakeLock(sem), health=FakeHealth(), clock=clock
                 ).run(Mode.VERIFY) == 0  # fmt: skip
    rec = Store(str(tmp_path / "state")).load()
    assert rec.state is State.COMMITTED and rec.lock is None and sem.holders == {}
    assert "available" not in m.calls[m.calls.index("stage"):]


@pytest.mark.parametrize("mode", [Mode.VERIFY, Mode.ONCE])
def test_a_run_that_rolls_the_trial_slot_back_exits_non_zero(tmp_path: Path, mode: Mode) -> None:
    """The boot's verdict is the exit status of `updater agent verify` (and of `--once`): a unit
    or a timer that ran it must not report success for a rollback. With [agent] reboot = off the
    agent marks the slot bad and leaves the reboot back to someone else."""
    m, sem = FakeMachine(), FakeSemaphore()
    with pytest.raises(FakeReboot):
        agent(tmp_path, m, lock=FakeLock(sem), health=FakeHealth(), clock=FakeClock()
              ).run(Mode.ONCE)  # fmt: skip
    m.power_on()
    assert m.booted_letter == "B"
    off = policy(strategy=RebootStrategy.OFF)
    failing = agent(tmp_path, m, lock=FakeLock(sem), health=FakeHealth("curl exited 22"),
                    clock=FakeClock(), pol=off)  # fmt: skip
    assert failing.run(mode) == 1
    b = next(s for s in m.table if s.letter == "B")
    assert b.priority == 0 and not b.successful, "the slot on trial was marked bad"
    # Nothing more to judge: a second run exits 0.
    assert agent(tmp_path, m, lock=FakeLock(sem), health=FakeHealth(), clock=FakeClock(),
                 pol=off).run(Mode.VERIFY) == 0  # fmt: skip


def test_stop_request_leaves_at_a_safe_point(tmp_path: Path) -> None:
    m, sem = FakeMachine(), FakeSemaphore()
    a = agent(tmp_path, m, lock=FakeLock(sem), health=FakeHealth(), clock=FakeClock())
    a.stop.set()
    assert a.run(Mode.FOREVER) == 0
    assert m.calls == []


def test_a_second_agent_is_refused(tmp_path: Path) -> None:
    from updater.errors import UpdaterError

    store = Store(str(tmp_path / "state"))
    with store.running(), pytest.raises(UpdaterError, match="another updater agent is running"):
        with store.running():
            pass


def test_verify_leaves_the_boot_to_a_running_agent(tmp_path: Path) -> None:
    m = FakeMachine()
    a = agent(tmp_path, m, lock=None, health=FakeHealth(), clock=FakeClock())
    with Store(str(tmp_path / "state")).running():
        assert a.run(Mode.VERIFY) == 0
    assert m.calls == []
