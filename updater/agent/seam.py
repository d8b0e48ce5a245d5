"""What the agent needs from the rest of the system, and nothing more: the ``System`` protocol.

The agent decides (``updater.agent.machine``) and a runner carries the decisions out through
this seam. Two implementations exist: the simulator (``updater.agent.simulator``, image-file
disks and the real slot engine, for tests) and the real one on top of the update flow. This
module holds only the protocol and its plain values; it does no I/O.

Contract of each call (the real implementation must keep it):

- ``booted()``: the A/B state as seen now: the booted slot and the other one, each with its
  letter, its GPT bits and the version in it (os-release ``VERSION_ID``; None for a slot that
  holds no image), and the slot that boots next by GRUB's rule. Reads only.
- ``available(channel, pin, blocked)``: the newest release of ``channel`` for this machine that
  is newer than the booted version and not in ``blocked`` (or exactly ``pin`` when given, even
  if older); None when there is none. Verified metadata only (TUF); raises TransportError or
  VerificationError. Does not download the image.
- ``stage(offer, progress)``: download, write, verify and activate ``offer.version`` in the
  inactive slot (``set-active``: tries 1, on top), resuming an interrupted earlier attempt.
  Idempotent: staging a version that is already staged succeeds. Never reboots. ``progress`` is
  called now and then with (bytes done, bytes total or None); it may raise to stop the stage at
  that point (the agent's clean stop), which must leave the slot unbootable or resumable.
- ``reboot(via)``: reboot into the slot that boots next, by ``kexec`` (falling back to the
  firmware when kexec is impossible, as ``updater reboot`` does) or ``firmware``. On a real
  machine it returns once the shutdown has begun (the agent then waits to be stopped).
- ``mark_good()``: mark the booted slot good (``mark-good``).
- ``mark_bad(slot)``: never boot ``slot`` again until it is set active (``mark-bad``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from updater.agent.schedule import Wave
from updater.records import dataclass, field

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class SlotView:
    letter: str  # "A", "B"
    version: str | None  # None: no image in it
    priority: int
    tries: int
    successful: bool

    @property
    def bootable(self) -> bool:
        """GRUB would consider it (non-zero priority, and a try left or proven good)."""
        return self.priority > 0 and (self.tries > 0 or self.successful)


@dataclass(frozen=True)
class Booted:
    slot: SlotView  # the booted one
    other: SlotView
    next_slot: str | None  # letter of the slot GRUB's rule boots next; None: none can boot
    # This boot's identity (the kernel's random boot_id); "" where it is unknown. A reboot that
    # was asked for has not happened while it is unchanged: a kexec or a shutdown takes a while
    # after the request returns, and the slots already show the try it consumed.
    boot_id: str = ""

    @property
    def on_trial(self) -> bool:
        """Booted on trial: not proven good yet, while its partner is (after an update)."""
        return not self.slot.successful and self.other.successful


@dataclass(frozen=True)
class Offer:
    """A release this machine may take: its version and its rollout waves (maybe none)."""

    version: str
    waves: tuple[Wave, ...] = field(default=())


class System(Protocol):
    def booted(self) -> Booted: ...

    def available(self, channel: str, pin: str | None, blocked: frozenset[str]) -> Offer | None:
        ...

    def stage(self, offer: Offer, progress: Progress) -> None: ...

    def reboot(self, via: str) -> None: ...

    def mark_good(self) -> None: ...

    def mark_bad(self, slot: str) -> None: ...
