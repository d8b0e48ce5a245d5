"""Fakes for the agent's unit tests: a machine whose A/B state is decided by the real slot rules
(``updater.slots``) in memory, a reboot lock with a holder limit, scripted health checks and a
clock that sleeps by moving time forward."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Protocol

from updater import config, filebackend, fileslots, slots
from updater.agent.fileseam import FileBackendSystem
from updater.agent.machine import Policy
from updater.agent.notify import Notifier
from updater.agent.record import RESTING, LockTicket, Record, State
from updater.agent.runner import Agent, Mode, Verifier
from updater.agent.seam import Booted, Offer, Progress, SlotView, System
from updater.agent.store import Store
from updater.config import RebootStrategy, RebootVia
from updater.errors import TransportError, VerificationError
from updater.guid import Guid
from updater.hooks import rules
from updater.hooks.rules import LedgerEntry, Next, Verdict

GOOD = slots.encode(0, priority=1, tries=0, successful=True)


class FakeReboot(BaseException):
    """The process ends with the reboot (as the simulator's SystemExit does)."""


class Crash(BaseException):
    """The process dies here (kill -9, power cut)."""


@dataclass
class FakeMachine:
    table: list[slots.Slot] = field(default_factory=lambda: [
        slots.Slot(3, "USR-A", Guid(bytes=os.urandom(16)), GOOD),
        slots.Slot(4, "USR-B", Guid(bytes=os.urandom(16)), 0)])
    booted_letter: str = "A"
    versions: dict[str, str] = field(default_factory=lambda: {"A": "1"})
    releases: list[Offer] = field(default_factory=lambda: [Offer("2")])
    broken: set[str] = field(default_factory=set)
    offline: bool = False
    reboots: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    crash_after: str | None = None  # a method name: crash right after it did its work
    boot: int = 1  # the boot's number: its boot id changes with every power-on

    def _slot(self, letter: str) -> slots.Slot:
        return next(s for s in self.table if s.letter == letter)

    def _apply(self, t: slots.Transition) -> None:
        self.table = slots.apply(self.table, t.changes)

    def _done(self, name: str) -> None:
        self.calls.append(name)
        if self.crash_after == name:
            self.crash_after = None
            raise Crash(name)

    def booted(self) -> Booted:
        def view(s: slots.Slot) -> SlotView:
            letter = s.letter or "?"
            return SlotView(letter, self.versions.get(letter), s.priority, s.tries, s.successful)

        mine = self._slot(self.booted_letter)
        other = slots.other_slot(self.table, mine.partition)
        nxt = slots.choose_next(self.table)
        return Booted(view(mine), view(other), nxt.letter if nxt else None, f"boot-{self.boot}")

    def available(self, channel: str, pin: str | None, blocked: frozenset[str]) -> Offer | None:
        if self.offline:
            raise TransportError("repository unreachable")
        mine = int(self.versions[self.booted_letter])
        self._done("available")
        if pin is not None:  # exactly the pinned one, even if older (the seam's contract)
            exact = [o for o in self.releases if o.version == pin and o.version != str(mine)]
            return exact[0] if exact else None
        newer = [o for o in self.releases if int(o.version) > mine and o.version not in blocked]
        return max(newer, key=lambda o: int(o.version)) if newer else None

    def stage(self, offer: Offer, progress: Progress) -> None:
        other = slots.other_slot(self.table, self._slot(self.booted_letter).partition)
        self._apply(slots.mark_bad(self.table, other.partition))
        progress(0, 1)
        if offer.version in self.broken:
            raise VerificationError(f"release {offer.version} does not match its hash")
        self.versions[other.letter or "?"] = offer.version
        self._apply(slots.set_active(self.table, other.partition))
        self._done("stage")

    def reboot(self, via: str) -> None:
        self.reboots.append(via)
        self.calls.append("reboot")
        raise FakeReboot(via)

    def mark_good(self) -> None:
        self._apply(slots.mark_good(self.table, self._slot(self.booted_letter).partition))
        self._done("mark_good")

    def mark_bad(self, slot: str) -> None:
        self._apply(slots.mark_bad(self.table, self._slot(slot).partition))
        self._done("mark_bad")

    @property
    def system(self) -> System:
        """The seam the agent drives: the fake machine is its own."""
        return self

    def power_on(self) -> str:
        """GRUB: choose the slot, consume its try, boot it."""
        chosen, t = slots.next_boot(self.table)
        self._apply(t)
        self.booted_letter = chosen.letter or "?"
        self.boot += 1
        return self.booted_letter


@dataclass
class FakeSemaphore:
    max: int = 1
    holders: dict[str, int] = field(default_factory=dict)  # id -> lease
    taken: list[str] = field(default_factory=list)
    leases: int = 0


@dataclass
class FakeLock:
    sem: FakeSemaphore
    holder: str = "m1"
    group: str = "default"
    backend: str = "etcd"

    def acquire(self) -> LockTicket | tuple[str, ...]:
        if self.holder in self.sem.holders:
            return LockTicket("etcd", self.holder, self.group, self.sem.holders[self.holder])
        if len(self.sem.holders) >= self.sem.max:
            return tuple(self.sem.holders)
        self.sem.leases += 1
        self.sem.holders[self.holder] = self.sem.leases
        self.sem.taken.append(self.holder)
        return LockTicket("etcd", self.holder, self.group, self.sem.leases)

    def refresh(self, ticket: LockTicket) -> bool:
        return self.sem.holders.get(ticket.id) == ticket.lease

    def release(self, ticket: LockTicket) -> None:
        if self.sem.holders.get(ticket.id) == ticket.lease:
            del self.sem.holders[ticket.id]


@dataclass
class FakeHealth:
    failure: str | None = None
    rounds: int = 0

    def verify(self, deadline: float, tick: Callable[[], None]) -> str | None:
        self.rounds += 1
        tick()
        return self.failure


class FakeClock:
    slice = 3600.0

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 0.001)


def policy(**changes: object) -> Policy:
    values: dict[str, object] = dict(
        interval=3600.0, jitter=0.0, strategy=RebootStrategy.KEXEC, windows=(), zone=UTC,
        locking=True, retry=60.0, health_deadline=300.0, seed=100)  # fmt: skip
    values.update(changes)
    return Policy(**values)  # type: ignore[arg-type]


def agent(tmp: Path, system: System, *, lock: FakeLock | None, health: Verifier,
          clock: FakeClock, pol: Policy | None = None, store: Store | None = None,
          pinned: Callable[[], str | None] = lambda: None) -> Agent:  # fmt: skip
    """The agent over ``system`` (a FakeMachine, or a FileMachine's real file seam), its state
    in ``tmp/state`` unless ``store`` is given."""
    return Agent(
        system=system, store=store or Store(str(tmp / "state")),
        policy=pol or policy(locking=lock is not None),
        channel="stable", pin=None, lock=lock, health=health, clock=clock,
        stop=threading.Event(), notifier=Notifier(env={}),
        metrics_file=str(tmp / "metrics.prom"),
        reboot_required_file=str(tmp / "reboot-required"), draw=lambda: 0.5, pinned=pinned,
    )  # fmt: skip


class CrashingStore(Store):
    """Dies right after persisting a record in ``state`` (once)."""

    def __init__(self, state_dir: str, crash: list[State]) -> None:
        super().__init__(state_dir)
        self.crash = crash

    def save(self, rec: Record) -> None:
        super().save(rec)
        if self.crash and rec.state is self.crash[0]:
            self.crash.clear()
            raise Crash(str(rec.state))


class Bootable(Protocol):
    """A simulated machine: the seam the agent drives, and the next boot of the machine (a
    reboot or a power cut: GRUB's choice on a FakeMachine, the initrd's renames on a
    FileMachine)."""

    @property
    def system(self) -> System: ...

    def power_on(self) -> object: ...


def drive(tmp: Path, m: Bootable, lock: FakeLock | None, health: Verifier,
          *, crash: State | None = None, power_cut: bool = False, pol: Policy | None = None,
          clock: FakeClock | None = None, pinned: Callable[[], str | None] = lambda: None,
          stop_at_crash: bool = False) -> Record:  # fmt: skip
    """Run the agent as systemd and the machine would: restart it after each reboot or crash
    (a power cut also boots the machine: ``m.power_on``), until it rests with nothing pending.
    ``crash``: the agent dies once, right after it persisted that state (the run must get
    there); ``stop_at_crash``: return the record persisted at that crash instead of going on."""
    clock = clock or FakeClock()
    pending = [crash] if crash else []
    store = CrashingStore(str(tmp / "state"), pending)
    for _ in range(30):
        a = agent(tmp, m.system, lock=lock, health=health, clock=clock, pol=pol, store=store,
                  pinned=pinned)  # fmt: skip
        try:
            a.run(Mode.ONCE)
        except FakeReboot:
            m.power_on()
            continue
        except Crash:
            if stop_at_crash:
                return store.load()
            if power_cut:
                m.power_on()
            continue
        rec = store.load()
        if rec.state in RESTING and rec.lock is None and not rec.returning:
            assert not pending, f"the run never reached {crash}"
            return rec
        clock.t += 3600
    raise AssertionError("the agent did not settle")


@dataclass
class FakeFirstBoot:
    """``updater.hooks.stages.FirstBoot`` over the fake machine: the real ledger rules
    (``updater.hooks.rules``) on a ledger kept outside the agent (as its file survives restarts
    and reboots), hook verdicts scripted by version, and the reboot a hook asks for done the
    same way: one more try for the booted slot, then the machine's reboot."""

    m: FakeMachine
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # by version; default: passed
    ledger: dict[str, LedgerEntry] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)  # the versions whose hooks ran, in order
    crash_after_run: bool = False

    def __call__(self, tick: Callable[[], None] | None = None) -> str | None:
        b = self.m.booted()
        slot = self.m._slot(b.slot.letter)
        uuid, image = str(slot.partuuid), rules.image_key(b.slot.version, "")
        step = rules.next_step(self.ledger, uuid, image, b.boot_id)
        if step is Next.RUN:
            verdict = self.verdicts.get(b.slot.version or "", Verdict())
            self.runs.append(b.slot.version or "")
            self.ledger = rules.recorded(self.ledger, uuid, image, verdict, b.boot_id)
            if self.crash_after_run:
                self.crash_after_run = False
                raise Crash("first boot")
            step = rules.next_step(self.ledger, uuid, image, b.boot_id)
        if step is Next.DONE:
            self.ledger = rules.rebooted(self.ledger, uuid)
            return None
        if step is Next.FAILED:
            return self.ledger[uuid.lower()].detail
        self.m._apply(slots.set_active(self.m.table, slot.partition, booted=slot.partition,
                                       force=True))  # fmt: skip
        self.m.reboot("kexec")
        raise AssertionError("the reboot returned")


class FileMachine:
    """A machine on the file backend: an image directory booted from ``root.img``, the real
    file seam on it, and its reboots simulated: ``reboot`` ends the agent's process
    (FakeReboot), ``power_on`` does the initrd's part of the next boot (the renames of
    ``fileslots.plan``, the try counted) under a new boot id."""

    def __init__(self, images: Path, cfg: config.Config) -> None:
        self.images = images
        self.cfg = cfg
        self.boot = 1
        self.reboots: list[tuple[str, str | None, str | None]] = []  # (via, image, version)
        self.system = FileBackendSystem(cfg, boot_id=self.boot_id, reboot_flow=self.reboot,
                                        cmdline=self.cmdline)  # fmt: skip

    def cmdline(self) -> str:
        """Booted from the directory, as the file backend's kexec starts its kernels."""
        return f"console=ttyS0 updater.images={self.images}"

    def boot_id(self) -> str:
        return f"00000000-0000-4000-8000-{self.boot:012x}"

    def reboot(self, d: filebackend.Directory, via: RebootVia) -> None:
        image = d.next_image
        version = image.trailer.version if image and image.trailer else None
        self.reboots.append((str(via), image.name if image else None, version))
        raise FakeReboot(str(via))

    def power_on(self) -> None:
        filebackend.apply_steps(str(self.images), fileslots.plan(self.read().state))
        self.boot += 1

    def read(self) -> filebackend.Directory:
        return filebackend.read(str(self.images))

    def version(self, name: str) -> str | None:
        image = self.read().images.get(name)
        return image.trailer.version if image and image.trailer else None
