"""The health checks with real commands: exit statuses, timeouts, missing programs, retries
until the deadline, and systemd units (through systemctl, where there is a systemd to ask)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from updater.agent.health import HealthChecks
from updater.config import HealthSettings

pytestmark = pytest.mark.integration


class RealClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def checks(*commands: tuple[str, ...], units: tuple[str, ...] = (), timeout: float = 5,
           interval: float = 0.1) -> HealthChecks:  # fmt: skip
    return HealthChecks(HealthSettings(commands=commands, units=units, timeout=timeout,
                                       interval=interval), RealClock())  # fmt: skip


def test_passing_and_failing_commands() -> None:
    ok = checks(("true",), ("sh", "-c", "exit 0"))
    assert ok.verify(time.time() + 5, lambda: None) is None
    failing = checks(("true",), ("sh", "-c", "echo 'disk almost full' >&2; exit 3"))
    assert failing.round(time.time() + 5) == "sh exited 3: disk almost full"
    ticks: list[float] = []
    why = failing.verify(time.time() + 0.5, lambda: ticks.append(time.time()))
    assert why == "sh exited 3: disk almost full" and len(ticks) >= 2, "retried until the deadline"


def test_a_hung_command_is_bounded_by_its_timeout() -> None:
    start = time.monotonic()
    why = checks(("sleep", "30"), timeout=1).round(time.time() + 60)
    assert why == "sleep did not finish within 1 s"
    assert time.monotonic() - start < 20


def test_a_missing_program() -> None:
    assert checks(("/nonexistent/health-probe",)).round(time.time() + 5) == (
        "/nonexistent/health-probe is not installed"
    )


def test_checks_that_pass_later_pass(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    threading.Timer(0.5, flag.touch).start()
    assert checks(("test", "-e", str(flag))).verify(time.time() + 20, lambda: None) is None


def test_units_through_systemctl() -> None:
    if shutil.which("systemctl") is None:
        pytest.skip("needs systemctl (systemd)")
    probe = subprocess.run(["systemctl", "is-system-running"], capture_output=True, text=True)
    if "offline" in probe.stdout or "not been booted with systemd" in probe.stderr:
        # No systemd manager here: systemctl answers for every unit that it is not active.
        why = checks(units=("ssh.service",)).round(time.time() + 5)
        assert why is not None and why.startswith("unit ssh.service is ")
        pytest.skip("no running systemd here to hold an active unit (only the failure checked)")
    why = checks(units=("-.mount",)).round(time.time() + 5)
    assert why is None, "the root mount unit is active on every systemd machine"
    why = checks(units=("updater-no-such-unit.service",)).round(time.time() + 5)
    assert why == "unit updater-no-such-unit.service is inactive"
