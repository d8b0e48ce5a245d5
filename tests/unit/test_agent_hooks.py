"""The agent with first-boot-of-slot hooks and a version pin, over the fakes: a failing hook
fails the health check and the release is rolled back; the hooks run once per activation
across agent restarts; a hook's reboot request boots the slot once more before it is
committed; a pin holds the machine at its release."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.agentfakes import (
    FakeClock,
    FakeFirstBoot,
    FakeLock,
    FakeMachine,
    FakeSemaphore,
    drive,
)
from updater.agent.health import HealthChecks
from updater.agent.record import Reason, Record, State
from updater.agent.seam import Offer
from updater.config import HealthSettings
from updater.errors import DataError
from updater.hooks.rules import Verdict


def settle(tmp: Path, m: FakeMachine, health: HealthChecks, clock: FakeClock,
           pinned: Callable[[], str | None] = lambda: None) -> Record:  # fmt: skip
    return drive(tmp, m, FakeLock(FakeSemaphore()), health, clock=clock, pinned=pinned)


def checks(first_boot: FakeFirstBoot, clock: FakeClock) -> HealthChecks:
    """The real health checks (no commands or units configured) with the first-boot hooks."""
    return HealthChecks(HealthSettings(deadline=300, interval=10), clock, first_boot)


def test_a_failing_first_boot_hook_rolls_the_release_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m, clock = FakeMachine(), FakeClock()
    fb = FakeFirstBoot(m, {"2": Verdict("first-boot-of-slot hook 10-dkms exited 1")})
    rec = settle(tmp_path, m, checks(fb, clock), clock)
    assert rec.rollbacks == 1 and rec.committed_version == "1"
    assert ("updater agent: rolled back release 2: health check failed: first-boot-of-slot "
            "hook 10-dkms exited 1") in capsys.readouterr().err.splitlines()  # fmt: skip
    assert [(b.version, b.reason) for b in rec.blocked] == [("2", Reason.HEALTH)]
    assert m.booted_letter == "A" and m.booted().slot.successful
    assert not m.booted().other.bootable, "the failed slot never boots again"
    assert fb.runs == ["2"], "the hooks ran once; the rollback did not run them again"


def test_first_boot_hooks_run_once_across_a_restart(tmp_path: Path) -> None:
    m, clock = FakeMachine(), FakeClock()
    fb = FakeFirstBoot(m, crash_after_run=True)  # killed right after the hooks ran
    rec = settle(tmp_path, m, checks(fb, clock), clock)
    assert rec.rollbacks == 0 and rec.committed_version == "2"
    assert m.booted_letter == "B" and m.booted().slot.successful
    assert fb.runs == ["2"]


def test_a_reboot_asked_for_by_a_hook_comes_before_the_commit(tmp_path: Path) -> None:
    m, clock = FakeMachine(), FakeClock()
    fb = FakeFirstBoot(m, {"2": Verdict(reboot=True)})
    rec = settle(tmp_path, m, checks(fb, clock), clock)
    assert rec.rollbacks == 0 and rec.committed_version == "2"
    assert m.reboots == ["kexec", "kexec"], "into the new slot, then once more into it"
    assert m.booted_letter == "B" and m.booted().slot.successful
    assert fb.runs == ["2"]


def test_the_next_release_has_its_own_first_boot(tmp_path: Path) -> None:
    m, clock = FakeMachine(releases=[Offer("2")]), FakeClock()
    fb = FakeFirstBoot(m)
    settle(tmp_path, m, checks(fb, clock), clock)
    m.releases.append(Offer("3"))
    clock.t += 86400
    rec = settle(tmp_path, m, checks(fb, clock), clock)
    assert rec.committed_version == "3" and fb.runs == ["2", "3"]


def test_a_pin_holds_the_machine_at_its_release(tmp_path: Path) -> None:
    m, clock = FakeMachine(releases=[Offer("2"), Offer("3")]), FakeClock()
    fb = FakeFirstBoot(m)
    held: list[str | None] = ["2"]
    rec = settle(tmp_path, m, checks(fb, clock), clock, lambda: held[0])
    assert rec.committed_version == "2" and m.versions == {"A": "1", "B": "2"}
    clock.t += 86400  # the next checks: 3 is offered, the pin holds
    rec = settle(tmp_path, m, checks(fb, clock), clock, lambda: held[0])
    assert rec.committed_version == "2" and m.booted().slot.version == "2"
    assert "3" not in m.versions.values()
    held[0] = None  # updater unpin
    clock.t += 86400
    rec = settle(tmp_path, m, checks(fb, clock), clock, lambda: held[0])
    assert rec.committed_version == "3"


def test_a_pin_set_after_the_check_stops_the_stage(tmp_path: Path) -> None:
    m, clock = FakeMachine(releases=[Offer("3")]), FakeClock()
    answers = iter([None, "2"])  # the check sees no pin, the stage sees one
    rec = settle(tmp_path, m, checks(FakeFirstBoot(m), clock), clock,
                 lambda: next(answers, "2"))  # fmt: skip
    assert rec.state is State.FAILED
    assert rec.last_error == "this machine is pinned to release 2: release 3 is not staged"
    assert "stage" not in m.calls and m.versions == {"A": "1"}


def test_a_damaged_pin_stops_updates(tmp_path: Path) -> None:
    m, clock = FakeMachine(), FakeClock()

    def damaged() -> str | None:
        raise DataError("/var/lib/updater/pin.json: not JSON")

    rec = settle(tmp_path, m, checks(FakeFirstBoot(m), clock), clock, damaged)
    assert rec.state is State.FAILED and rec.last_error == "/var/lib/updater/pin.json: not JSON"
    assert "available" not in m.calls and "stage" not in m.calls
