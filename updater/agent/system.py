"""The agent's ``System`` on a real machine: the seam (``updater.agent.seam``) carried out by the
update flow, the slot rules and the reboot flow.

- ``booted``: the A/B state of the target's disk (``updater.state``), each slot's version from the
  running /usr's os-release or the state directory's record (``updater.inventory``), and the
  kernel's boot id (a reboot asked for has happened once it changes);
- ``available``: the TUF client refreshes, the channel index is read, and ``release.choose``
  picks among the releases that are not blocked (a pin may be older: the operator asked);
- ``stage``: ``updater.update.run`` for exactly that version (it recognises a release already
  staged, and resumes an interrupted write);
- ``reboot``: ``updater.bootflow.reboot`` into the slot that boots next, with the pre-reboot
  hooks (which the flow runs when that slot is a new one, ``updater.hooks.stages``);
- ``mark_good`` / ``mark_bad``: ``state.change`` with ``slots.mark_good`` / ``slots.mark_bad``;
  after ``mark_good``, the post-commit hooks.

The disk is resolved anew for every call (``target``): the agent runs for weeks, across
reboots and state changes made by operators. This module decides nothing; the agent's state
machine does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from updater import bootflow, inventory, kexec, release, slots, state
from updater.agent.schedule import parse_waves
from updater.agent.seam import Booted, Offer, Progress, SlotView
from updater.config import Config, RebootVia, with_overrides
from updater.errors import SlotError
from updater.log import log
from updater.target import Target

if TYPE_CHECKING:
    from updater.fetch.client import ReleaseClient
    from updater.update import Event


BOOT_ID = "/proc/sys/kernel/random/boot_id"
_BOOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def read_boot_id(path: str = BOOT_ID) -> str:
    """This boot's id, or "" where the kernel gives none (or something that is not one)."""
    try:
        with open(path, "rb") as f:
            text = f.read(64).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if _BOOT_ID.fullmatch(text) else ""


def release_client(cfg: Config) -> ReleaseClient:
    from updater.fetch.client import open_client
    from updater.fetch.http import HttpPolicy

    u = cfg.update
    policy = HttpPolicy(timeout=u.timeout, retries=u.retries)
    return open_client(u.repo, u.trusted_root, u.state_dir, policy)


def choose_offer(client: ReleaseClient, channel: str, arch: str,
                 booted: release.Version | None, pin: str | None,
                 blocked: frozenset[str]) -> Offer | None:  # fmt: skip
    """``available`` of the seam, on either backend: refresh the verified metadata, then the
    newest release of ``channel`` that is not blocked (or exactly ``pin``, even if older)."""
    from updater.fetch.client import offered

    client.refresh()
    wanted = release.parse_version(pin) if pin else None
    found = offered(client.releases, channel, arch, wanted)
    if wanted is None:
        found = [r for r in found if str(r.version) not in blocked]
    choice = release.choose(found, arch=arch, booted=booted, pin=wanted,
                            allow_downgrade=wanted is not None)  # fmt: skip
    if choice.release is None:
        return None
    waves = parse_waves([list(w) for w in choice.release.image.waves])
    return Offer(str(choice.release.version), waves)


class UpdateFlowSystem:
    def __init__(
        self, cfg: Config, target: Callable[[], Target], boot_id: Callable[[], str] = read_boot_id
    ) -> None:
        self.cfg = cfg
        self.target = target
        self.boot_id = boot_id

    # ------------------------------------------------------------------------------ reading
    def _view(self, t: Target, s: slots.Slot) -> SlotView:
        version = inventory.slot_version(t, str(s.partuuid), s.partition, self.cfg.update.state_dir)
        return SlotView(s.letter or str(s.partition), str(version) if version else None,
                        s.priority, s.tries, s.successful)  # fmt: skip

    def booted(self) -> Booted:
        t = self.target()
        st = state.load(t)
        if st.booted is None:
            raise SlotError("the booted slot is unknown: the agent runs on the booted system")
        mine = st.slot(st.booted)
        other = slots.other_slot(st.slots, st.booted)
        nxt = st.next
        letter = nxt.letter if nxt else None
        return Booted(self._view(t, mine), self._view(t, other), letter, self.boot_id())

    def _client(self) -> ReleaseClient:
        return release_client(self.cfg)

    def available(self, channel: str, pin: str | None, blocked: frozenset[str]) -> Offer | None:
        t = self.target()
        st = state.load(t)
        booted_version = None
        if st.booted is not None:
            b = st.slot(st.booted)
            booted_version = inventory.slot_version(
                t, str(b.partuuid), b.partition, self.cfg.update.state_dir
            )
        return choose_offer(self._client(), channel, t.boot.arch, booted_version, pin, blocked)

    # ------------------------------------------------------------------------------ acting
    def stage(self, offer: Offer, progress: Progress) -> None:
        from updater import update

        t = self.target()
        settings = with_overrides(self.cfg, "update", reboot=RebootVia.NONE).update
        request = update.Request(settings=settings, arch=t.boot.arch,
                                 pin=release.parse_version(offer.version),
                                 allow_downgrade=True, hooks=self.cfg.hooks)  # fmt: skip

        def emit(event: Event) -> None:
            if event.kind in ("downloading", "verifying"):
                progress(int(event.data["bytes"]), int(event.data["total"]))
            elif event.kind in ("available", "nothing", "hooks", "activated"):
                log(f"stage: {event.kind} {event.data}")

        outcome = update.run(t, request, self._client(), emit)
        if outcome.status != "updated" and outcome.slot is None:
            raise SlotError(f"release {offer.version} was not staged: {outcome.reason}")

    def reboot(self, via: str) -> None:
        from updater.hooks import stages

        def announce(report: bootflow.Report) -> None:
            slot = report.slot.label if report.slot else "no slot"
            log(f"rebooting into {slot} ({report.method})")

        request = bootflow.Request(slot="auto", via=RebootVia(via), quiesce=self.cfg.quiesce,
                                   checkpoint=self.cfg.checkpoint,
                                   hooks=stages.PreReboot.of(self.cfg))  # fmt: skip
        bootflow.reboot(self.target(), request, kexec.probe_support(), announce)

    def mark_good(self) -> None:
        t = self.target()
        if t.booted is None:
            raise SlotError("the booted slot is unknown")
        state.change(t, state.by_slots(slots.mark_good, t.booted))
        from updater.hooks import stages

        stages.after_commit(self.cfg.hooks, t, self.cfg.update.state_dir)

    def mark_bad(self, slot: str) -> None:
        state.change(self.target(), lambda st: slots.mark_bad(st.slots, st.resolve(slot).partition))
