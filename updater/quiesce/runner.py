"""Carry out a quiesce plan (``updater.quiesce.plan``): each step through ``updater.run`` with
its timeout, timed and logged (``quiesce: sync 0.03 s``), the plan's budget checked before each
step. A step that fails (unless tolerated), outlives its timeout, or starts past the budget
ends the plan (a tolerated step's failure or timeout is logged and the plan goes on; the
budget still bounds it): ``before_fallback`` runs (the reboot flow gives the boot try back
there), then the firmware reboot. The jump and the fallback do not return when they work;
when even the fallback fails, ``QuiesceFailed`` says what was done.

Timing uses the monotonic clock; the lines go to stderr (the console) as each step ends, since
the last one never returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from updater.errors import UpdaterError
from updater.log import log
from updater.quiesce.plan import Mount, QStep, QuiescePlan, parse_mounts
from updater.records import dataclass, field
from updater.run import run


def read_mounts(path: str = "/proc/self/mounts") -> list[Mount]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_mounts(f.read(1 << 20))
    except OSError as exc:
        raise QuiesceFailed(f"cannot read the mount table {path}: {exc.strerror}") from None


class QuiesceFailed(UpdaterError):
    """The quiesce stopped and even the firmware reboot did not happen."""


@dataclass
class Timings:
    """What ran, and how long each step took, in order."""

    steps: list[tuple[QStep, float, str]] = field(default_factory=list)  # step, seconds, outcome

    def total(self) -> float:
        return sum(s for _, s, _ in self.steps)


Clock = Callable[[], float]


class _StepFailed(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _say(step: QStep, took: float, failure: str | None) -> None:
    """One line per step: ``quiesce: PHASE COMMAND SECONDS s`` and what went wrong, if anything."""
    line = f"quiesce: {step.phase} {step.what} {took:.2f} s"
    if failure is not None:
        line += f" ({'tolerated' if step.tolerated else 'failed'}: {failure})"
    log(line)


def _run_step(step: QStep, timeout: float, clock: Clock, timings: Timings) -> None:
    import subprocess  # here: planning the quiesce runs nothing (kexec --dry-run)

    start = clock()
    try:
        proc = run(step.argv, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        took = clock() - start
        timings.steps.append((step, took, "timeout"))
        _say(step, took, f"timed out after {timeout:g} s")
        if not step.tolerated:
            raise _StepFailed(f"{step.what} timed out after {timeout:g} s") from None
        return
    except UpdaterError as exc:  # the tool is missing
        took = clock() - start
        timings.steps.append((step, took, "failed"))
        _say(step, took, exc.message)
        if not step.tolerated:
            raise _StepFailed(exc.message) from None
        return
    took = clock() - start
    if proc.returncode in step.ok:
        timings.steps.append((step, took, "ok"))
        _say(step, took, None)
        return
    err = proc.stderr.decode(errors="replace").strip().splitlines() if proc.stderr else []
    detail = err[-1] if err else f"exit status {proc.returncode}"
    timings.steps.append((step, took, "failed"))
    _say(step, took, detail)
    if not step.tolerated:
        raise _StepFailed(f"{step.what} failed: {detail}")


def execute(
    plan: QuiescePlan,
    before_fallback: Callable[[str], None],
    clock: Clock = time.monotonic,
) -> Timings:
    """Run ``plan`` (module docstring). Returns only when the jump command itself returned
    success without jumping (a test double) ; raises QuiesceFailed when the fallback failed."""
    timings = Timings()
    start = clock()
    try:
        for step in plan.steps:
            left = plan.budget - (clock() - start)
            if left <= 0:
                raise _StepFailed(f"the quiesce budget of {plan.budget:g} s ran out "
                                  f"before {step.what}")  # fmt: skip
            _run_step(step, min(step.timeout, left), clock, timings)
        return timings
    except _StepFailed as exc:
        why = exc.why
    log(f"quiesce: {why}; rebooting through the firmware "
        f"({clock() - start:.2f} s after the quiesce began)")  # fmt: skip
    before_fallback(why)
    try:
        for step in plan.fallback:
            _run_step(step, step.timeout, clock, timings)
    except _StepFailed as exc:
        raise QuiesceFailed(f"{why}; then the firmware reboot failed too: {exc.why}") from None
    raise QuiesceFailed(f"{why}; reboot -f returned without rebooting")
