"""The health checks of a slot booted on trial: commands that must exit 0 and systemd units that
must be active, all passing in one round before a deadline; first, once per newly activated
slot, the first-boot-of-slot hooks, whose failure fails the check.

Checks that fail are retried every ``interval`` seconds until the deadline, because right after a
boot a service may still be starting; the release is judged bad only when the deadline passes
without one round in which every check passed. Commands run through ``updater.run`` (argument
lists, no shell, each bounded by ``timeout``). This module does not mark slots or reboot.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Protocol

from updater.config import HealthSettings
from updater.errors import UpdaterError
from updater.run import run


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


def _tail(data: bytes | None) -> str:
    lines = (data or b"").decode(errors="replace").strip().splitlines()
    return lines[-1][:200] if lines else ""


# The first-boot-of-slot hooks of the booted slot: None, or why the slot is not healthy. The
# argument runs between hooks (the agent's ``tick``).
FirstBootCheck = Callable[[Callable[[], None]], str | None]


class HealthChecks:
    def __init__(self, settings: HealthSettings, clock: Clock,
                 first_boot: FirstBootCheck | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.clock = clock
        # The first-boot-of-slot hooks (``updater.hooks.stages.FirstBoot``): they run once,
        # before the first round; their failure is final, never retried.
        self.first_boot = first_boot

    def _command(self, argv: tuple[str, ...], timeout: float) -> str | None:
        try:
            proc = run(argv, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"{argv[0]} did not finish within {timeout:g} s"
        except UpdaterError as exc:
            return exc.message
        if proc.returncode != 0:
            detail = _tail(proc.stderr) or _tail(proc.stdout)
            return f"{argv[0]} exited {proc.returncode}" + (f": {detail}" if detail else "")
        return None

    def _unit(self, unit: str, timeout: float) -> str | None:
        try:
            proc = run(["systemctl", "is-active", unit], check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"systemctl is-active {unit} did not answer within {timeout:g} s"
        except UpdaterError as exc:
            return exc.message
        state = _tail(proc.stdout) or "unknown"
        return None if proc.returncode == 0 and state == "active" else f"unit {unit} is {state}"

    def round(self, deadline: float) -> str | None:
        """One round: the first failure, or None when every check passed."""
        for unit in self.settings.units:
            why = self._unit(unit, self._timeout(deadline))
            if why:
                return why
        for argv in self.settings.commands:
            why = self._command(argv, self._timeout(deadline))
            if why:
                return why
        return None

    def _timeout(self, deadline: float) -> float:
        return max(1.0, min(self.settings.timeout, deadline - self.clock.now()))

    def verify(self, deadline: float, tick: Callable[[], None]) -> str | None:
        """Rounds until one passes (None) or ``deadline`` passes (the last failure). ``tick``
        runs between rounds (watchdog, lock renewal; it may raise to stop). A failed
        first-boot-of-slot hook fails the check at once."""
        if self.first_boot is not None:
            why = self.first_boot(tick)
            if why is not None:
                return why
        while True:
            why = self.round(deadline)
            if why is None:
                return None
            left = deadline - self.clock.now()
            if left <= 0:
                return why
            tick()
            self.clock.sleep(min(self.settings.interval, left))
