"""The agent's loop: observe, decide (``machine.decide``), persist, act, absorb the result, persist.

Thin on purpose: every decision is in ``updater.agent.machine``; this module carries actions out
through the seam (``System``), the reboot lock, the health checks and the file store, and reports
(a log line per change on stderr, which the journal keeps; systemd's STATUS; the metrics file).

Crash safety comes from the order: the record ``decide`` returns is written (atomically) before
its action starts, and the result is written right after. A process killed at any point, or a
machine that loses power, restarts into the persisted state, and ``decide`` looks at the slots
before repeating anything.

A clean stop (SIGTERM, SIGINT) takes effect at a safe point: between steps, during a sleep,
between health-check rounds, or at a progress report of a stage (the update flow resumes an
interrupted write). The record then says where to go on.

Modes: ``forever`` (the service), ``once`` (one cycle: check now, go as far as possible without
waiting, then exit), ``verify`` (only what follows a boot: health checks, mark-good or rollback,
releasing the lock; for ``updater-mark-good.service``).
"""

from __future__ import annotations

import contextlib
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from types import FrameType
from typing import Any, Protocol

from updater.agent import machine, metrics
from updater.agent.locking import RebootLock
from updater.agent.machine import Action, Do, Facts, Policy, Result, Step
from updater.agent.notify import Notifier
from updater.agent.record import DESCRIPTIONS, RESTING, Record, State
from updater.agent.schedule import rfc3339
from updater.agent.seam import System
from updater.agent.store import AgentRunning, Store, write_atomic
from updater.errors import ReleaseError, UpdaterError
from updater.records import dataclass, field, replace

REBOOT_REQUIRED_TEXT = b"*** System restart required ***\n"


class Clock(Protocol):
    slice: float  # the longest single sleep: changes (a moved clock, a stop) are seen this soon

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    slice = 30.0

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        self.stop.wait(max(0.0, min(seconds, self.slice)))


class Verifier(Protocol):
    def verify(self, deadline: float, tick: Callable[[], None]) -> str | None:
        """None when the checks passed before ``deadline``, else the last failure."""
        ...


class Mode(StrEnum):
    FOREVER = "forever"
    ONCE = "once"
    VERIFY = "verify"


class Stopping(Exception):
    """A stop was asked for; raised at a safe point to leave the current step."""


# What ``verify`` mode may do: finish what a boot started, never start an update.
_AFTER_BOOT = frozenset({Do.VERIFY, Do.MARK_GOOD, Do.MARK_BAD, Do.RELEASE, Do.SIGNAL})


# The exit status of a run that marked the slot on trial bad (its health checks failed, or
# its first boot failed): ``updater agent verify`` must not report success for a rollback.
EXIT_ROLLED_BACK = 1


def _verdict(judged_bad: bool) -> int:
    return EXIT_ROLLED_BACK if judged_bad else 0


def _verify_may(step: Step) -> bool:
    if step.action.do in _AFTER_BOOT:
        return True
    return step.action.do is Do.REBOOT and step.record.returning


@dataclass
class Agent:
    system: System
    store: Store
    policy: Policy
    channel: str
    pin: str | None
    lock: RebootLock | None
    health: Verifier
    clock: Clock
    stop: threading.Event
    notifier: Notifier = field(default_factory=Notifier)
    metrics_file: str = ""
    reboot_required_file: str = "/run/reboot-required"
    ttl: float = 900.0
    health_timeout: float = 60.0  # the longest single check: the watchdog is stretched by it
    draw: Callable[[], float] = random.random
    # The operator's pin (``updater pin``), read at every check and stage: it wins over ``pin``
    # (the configuration's [agent] version). It may raise (a damaged pin file): the step fails.
    pinned: Callable[[], str | None] = lambda: None
    _said: str = field(default="", init=False)  # the last status reported
    _renewed: float = field(default=0.0, init=False)  # when the lock's lease was last renewed

    # ------------------------------------------------------------------------------ the loop
    def run(self, mode: Mode) -> int:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.store.running())
            except AgentRunning:
                if mode is not Mode.VERIFY:
                    raise
                self.say("the agent is running and verifies the boot itself")
                return 0
            previous = self._signals()
            try:
                return self._loop(mode)
            except Stopping:
                self.say("stopping at a safe point")
                return 0
            finally:
                for sig, old in previous.items():
                    signal.signal(sig, old)
                self.notifier.stopping()

    def _loop(self, mode: Mode) -> int:
        force = mode is Mode.ONCE
        ready = False
        # verify and --once: this run marked the slot on trial bad, its exit status (a running
        # agent handles a rollback and goes on: it exits 0 when asked to stop)
        judged_bad = False
        while not self.stop.is_set():
            facts = Facts(self.clock.now(), self.system.booted(), self.draw(), force)
            with self.store.locked():
                rec = self.store.load()
                step = machine.decide(rec, facts, self.policy)
                if step.record != rec:
                    self._save(step.record)
            self._report(step, rec)
            if not ready:
                self.notifier.ready(self._status(step))
                ready = True
            self.notifier.watchdog()
            self._renew(step.record)
            action = step.action
            if action.do is Do.SLEEP:
                if mode is not Mode.FOREVER:
                    return _verdict(judged_bad)
                self.clock.sleep((action.until or 0) - facts.now)
                continue
            if mode is Mode.VERIFY and not _verify_may(step):
                return _verdict(judged_bad)
            judged_bad = judged_bad or (action.do is Do.MARK_BAD and mode is not Mode.FOREVER)
            result = self._perform(action, step.record, facts)
            if action.do is Do.CHECK:
                force = False
            after = replace(facts, now=self.clock.now())
            with self.store.locked():
                rec = self.store.load()
                new = machine.absorb(rec, action, result, after, self.policy)
                self._save(new)
            if new.state is not rec.state:
                self._report(Step(new, Action(Do.SLEEP)), rec)
        self.say("stopped")
        return _verdict(judged_bad)

    def _save(self, rec: Record) -> None:
        self.store.save(rec)
        if self.metrics_file:
            try:
                write_atomic(self.metrics_file, metrics.render(rec))
            except OSError as exc:
                self.say(f"cannot write {self.metrics_file}: {exc.strerror}")

    # ------------------------------------------------------------------------------ actions
    def _perform(self, action: Action, rec: Record, facts: Facts) -> Result:
        self.say(_describe(action, rec))
        try:
            return self._do(action, rec)
        except Stopping:
            raise
        except UpdaterError as exc:
            message = exc.message
        except OSError as exc:
            message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        self.say(f"{action.do} failed: {message}")
        return machine.Failed(message)

    def _do(self, action: Action, rec: Record) -> Result:
        match action.do:
            case Do.CHECK:
                blocked = rec.blocked_versions()
                pin = self.pinned() or self.pin
                if pin:
                    self.say(f"pinned to release {pin}")
                return machine.Offered(self.system.available(self.channel, pin, blocked))
            case Do.STAGE:
                assert action.offer is not None
                pin = self.pinned()
                if pin and pin != action.offer.version:  # pinned after the check
                    raise ReleaseError(f"this machine is pinned to release {pin}: release "
                                       f"{action.offer.version} is not staged")  # fmt: skip
                self.system.stage(action.offer, self._progress)
            case Do.SIGNAL:
                write_atomic(self.reboot_required_file, REBOOT_REQUIRED_TEXT)
            case Do.ACQUIRE:
                if self.lock is None:
                    raise UpdaterError("no reboot lock is configured")
                got = self.lock.acquire()
                if isinstance(got, tuple):
                    self.say(f"reboot lock busy (held by {', '.join(got) or 'others'})")
                    return machine.Busy(got)
                self.say(f"took the reboot lock of group {got.group} as {got.id}")
                self._renewed = self.clock.now()
                return machine.Taken(got)
            case Do.REBOOT:
                self.system.reboot(action.via or "kexec")
            case Do.VERIFY:
                deadline = action.deadline or self.clock.now() + self.policy.health_deadline
                self.notifier.busy_for(self.health_timeout)
                try:
                    why = self.health.verify(deadline, self._tick)
                finally:
                    self.notifier.watchdog_restore()
                if why is not None:
                    return machine.Unhealthy(why)
            case Do.MARK_GOOD:
                self.system.mark_good()
            case Do.MARK_BAD:
                self.system.mark_bad(action.slot or "")
            case Do.RELEASE:
                assert rec.lock is not None
                if self.lock is None or self.lock.backend != rec.lock.backend:
                    self.say(f"no {rec.lock.backend} lock is configured any more: dropping "
                             "the ticket (an etcd lease runs out by itself)")  # fmt: skip
                else:
                    self.lock.release(rec.lock)
                    self.say(f"released the reboot lock of group {rec.lock.group}")
        return machine.Done()

    def _progress(self, done: int, total: int | None) -> None:
        self.notifier.watchdog()
        if self.stop.is_set():
            raise Stopping()

    def _tick(self) -> None:
        self.notifier.watchdog()
        with self.store.locked():
            rec = self.store.load()
        self._renew(rec)
        if self.stop.is_set():
            raise Stopping()

    def _renew(self, rec: Record) -> None:
        """Keep the reboot lock's lease alive while holding it, also after the reboot."""
        if rec.lock is None or self.lock is None or self.lock.backend != rec.lock.backend:
            return
        now = self.clock.now()
        if now - self._renewed < self.ttl / 3:
            return
        self._renewed = now
        try:
            if not self.lock.refresh(rec.lock):
                self.say("the reboot lock was lost (its lease ran out); going on without it")
                with self.store.locked():
                    self._save(replace(self.store.load(), lock=None))
        except UpdaterError as exc:
            self.say(f"renewing the reboot lock failed: {exc.message}")

    # ------------------------------------------------------------------------------ reporting
    def say(self, message: str) -> None:
        sys.stderr.write(f"updater agent: {message}\n")
        sys.stderr.flush()

    def _status(self, step: Step) -> str:
        rec = step.record
        text = f"{rec.state}: {DESCRIPTIONS[rec.state]}"
        if rec.version and rec.state not in RESTING:
            text += f" (release {rec.version})"
        if step.action.do is Do.SLEEP and step.action.why:
            text += f"; {step.action.why}"
        return text

    def _report(self, step: Step, before: Record) -> None:
        rec = step.record
        if rec.rollbacks > before.rollbacks:  # also when the rules moved on in the same step
            self.say(f"rolled back release {rec.version}: {rec.last_error}")
        elif rec.state is State.FAILED and before.state is not State.FAILED:
            self.say(f"the cycle failed: {rec.last_error}")
        text = self._status(step)
        if text == self._said:
            return
        self._said = text
        if step.action.do is Do.SLEEP and step.action.until:
            text += f" (until {rfc3339(step.action.until)})"
        self.say(text)
        self.notifier.status(self._status(step))

    def _signals(self) -> dict[int, Any]:
        """A stop request instead of dying, while the loop runs; returns the handlers to put
        back (the agent may run inside a longer-lived process, as in tests)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop.set()

        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def _describe(action: Action, rec: Record) -> str:
    what = {
        Do.CHECK: "checking for a release",
        Do.STAGE: f"staging release {rec.version} into slot {rec.target_slot}",
        Do.SIGNAL: "reboot required (strategy off): writing the reboot-required file",
        Do.ACQUIRE: "asking for the reboot lock",
        Do.REBOOT: f"rebooting ({action.via}) into slot "
        f"{rec.from_slot if rec.returning else rec.target_slot}",
        Do.VERIFY: f"running the health checks of release {rec.version}",
        Do.MARK_GOOD: f"marking slot {rec.target_slot} good",
        Do.MARK_BAD: f"marking slot {action.slot} bad",
        Do.RELEASE: "releasing the reboot lock",
    }
    return what.get(action.do, str(action.do))
