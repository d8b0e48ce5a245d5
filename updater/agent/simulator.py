"""A simulated machine behind the agent's seam: a real image-file disk and the real slot engine,
with versions in small files and reboots left to a harness (the multi-machine tests).

Directory ``DIR`` of one machine:
- ``disk.img``: a disk with Flatcar's layout (``updater create-disk``); its GPT is the real A/B
  state, changed only through ``updater.state`` with the decisions of ``updater.slots``;
- ``esp/``: an empty directory used as the ESP, so no grubenv is involved;
- ``booted``: the letter of the booted slot, written by the harness at each simulated boot;
- ``version-A``, ``version-B``: the version each slot holds (missing: the slot is empty);
- ``reboot``: written by ``reboot`` (``{"via": ..., "next": ..., "time": ...}``, the simulated
  time) just before the agent process ends, as a real reboot would end it.

``stage`` makes the inactive slot unbootable, writes its version file (no image), then
``set-active``. Releases come from ``releases.json`` in ``[update] repo`` (an absolute directory):
``{"releases": [{"version": "2", "channel": "stable", "waves": [[512, "2030-01-01T00:00:00Z"]],
"broken": false}]}``; a ``broken`` release fails to stage as a corrupted download would.

A simulated boot is the harness's part, what GRUB does: ``updater --disk DIR/disk.img next``
(consume the chosen slot's try), then write its letter to ``booted`` (``boot`` below does both
in-process). The clock is real time plus the seconds in the file named by
``$UPDATER_SIM_CLOCK`` (read only here), so tests move time without touching the system clock.

It does not write images, verify anything or reboot anything: it is the seam's stand-in for
tests, never a way to update a machine.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from updater import jsonout, layout, slots, state, target
from updater.agent.schedule import parse_waves
from updater.agent.seam import Booted, Offer, Progress, SlotView
from updater.agent.store import write_atomic
from updater.errors import DataError, UsageError, VerificationError

CLOCK_ENV = "UPDATER_SIM_CLOCK"
MAX_FILE = 1 << 20


class SimulatedReboot(SystemExit):
    """Ends the agent process the way a reboot would (exit status 0)."""

    def __init__(self) -> None:
        super().__init__(0)


def _read(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return f.read(MAX_FILE).decode(errors="replace").strip()
    except FileNotFoundError:
        return None


def version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Dotted versions compared part by part, numbers as numbers (the simulator's ordering)."""
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.-]", version))


class Simulator:
    def __init__(self, directory: str, repo: str) -> None:
        self.dir = Path(directory)
        self.disk = str(self.dir / "disk.img")
        self.esp = str(self.dir / "esp")
        self.repo = Path(repo) if repo else None
        if not Path(self.disk).is_file():
            raise UsageError(f"{self.disk}: no simulated disk (see updater.agent.simulator)")

    # ---------------------------------------------------------------------------- the seam
    def _booted_letter(self) -> str:
        letter = _read(self.dir / "booted") or "A"
        if not re.fullmatch(r"[A-Z]", letter):
            raise DataError(f"{self.dir / 'booted'}: not a slot letter")
        return letter

    def _target(self) -> target.Target:
        return target.resolve(self.disk, self._booted_letter(), esp=self.esp)

    def _state(self) -> state.DiskState:
        return state.load(self._target())

    def version(self, letter: str) -> str | None:
        return _read(self.dir / f"version-{letter}") or None

    def booted(self) -> Booted:
        st = self._state()
        assert st.booted is not None
        mine = st.slot(st.booted)
        other = slots.other_slot(st.slots, st.booted)

        def view(s: slots.Slot) -> SlotView:
            letter = s.letter or "?"
            return SlotView(letter, self.version(letter), s.priority, s.tries, s.successful)

        nxt = st.next
        return Booted(view(mine), view(other), nxt.letter if nxt else None)

    def _releases(self) -> list[dict[str, Any]]:
        if self.repo is None:
            raise UsageError("the simulator needs [update] repo: a directory with releases.json")
        text = _read(self.repo / "releases.json")
        try:
            doc = jsonout.loads(text) if text is not None else {"releases": []}
        except ValueError:
            raise DataError(f"{self.repo / 'releases.json'}: not JSON") from None
        found = doc.get("releases") if isinstance(doc, dict) else None
        if not isinstance(found, list) or not all(isinstance(r, dict) for r in found):
            raise DataError(f"{self.repo / 'releases.json'}: no list of releases")
        return found

    def available(self, channel: str, pin: str | None, blocked: frozenset[str]) -> Offer | None:
        booted = self.version(self._booted_letter()) or "0"
        best: dict[str, Any] | None = None
        for rel in self._releases():
            version = str(rel.get("version", ""))
            if rel.get("channel", "stable") != channel or version in blocked or not version:
                continue
            if pin is not None:
                if version == pin and version != booted:
                    best = rel
                continue
            newer = version_key(version) > version_key(booted)
            if newer and (best is None or version_key(version) > version_key(best["version"])):
                best = rel
        if best is None:
            return None
        return Offer(str(best["version"]), parse_waves(best.get("waves", [])))

    def stage(self, offer: Offer, progress: Progress) -> None:
        release = next((r for r in self._releases() if str(r.get("version")) == offer.version),
                       None)  # fmt: skip
        if release is None:
            raise DataError(f"release {offer.version} is not in the repository")
        st = self._state()
        assert st.booted is not None
        other = slots.other_slot(st.slots, st.booted)
        letter = other.letter or "?"
        if self.version(letter) == offer.version and st.next == other and other.tries > 0:
            return  # staged already (a repeated stage after a restart)
        # As the update flow does: the target is unbootable before a byte of it changes.
        self._change(lambda s: slots.mark_bad(s.slots, other.partition))
        progress(0, 2)
        if release.get("broken"):
            raise VerificationError(f"release {offer.version}: the written image does not match "
                                    "its signed hash (simulated)")  # fmt: skip
        write_atomic(self.dir / f"version-{letter}", f"{offer.version}\n".encode())
        progress(1, 2)
        self._change(lambda s: slots.set_active(s.slots, other.partition, booted=s.booted))
        progress(2, 2)

    def reboot(self, via: str) -> None:
        nxt = self._state().next
        doc = {"via": via, "next": nxt.letter if nxt else None, "time": sim_now()}
        write_atomic(self.dir / "reboot", json.dumps(doc).encode())
        raise SimulatedReboot()

    def _change(self, decide: Callable[[state.DiskState], slots.Transition]) -> None:
        state.change(self._target(), decide)

    def mark_good(self) -> None:
        letter = self._booted_letter()
        self._change(lambda s: slots.mark_good(s.slots, slots.resolve(s.slots, letter).partition))

    def mark_bad(self, slot: str) -> None:
        self._change(lambda s: slots.mark_bad(s.slots, slots.resolve(s.slots, slot).partition))


# --------------------------------------------------------------------- the harness's side


def prepare(directory: str, version: str = "1", usr_mib: int = 1) -> None:
    """A fresh simulated machine: USR-A holds ``version``, booted and proven good."""
    path = Path(directory)
    (path / "esp").mkdir(parents=True, exist_ok=True)
    small = layout.flatcar_layout(usr_size=usr_mib * layout.MiB, esp_size=layout.MiB,
                                  oem_size=layout.MiB, root_size=layout.MiB)  # fmt: skip
    layout.create_disk(small, str(path / "disk.img"), overwrite=True)
    write_atomic(path / "version-A", f"{version}\n".encode())
    write_atomic(path / "booted", b"A\n")


def boot(directory: str) -> str:
    """What GRUB does at a (simulated) boot: choose the slot, consume its try, boot it."""
    path = Path(directory)
    chosen: list[slots.Slot] = []

    def decide(st: state.DiskState) -> slots.Transition:
        slot, transition = slots.next_boot(st.slots)
        chosen.append(slot)
        return transition

    state.change(target.resolve(str(path / "disk.img"), None, esp=str(path / "esp")), decide)
    letter = chosen[0].letter or "?"
    write_atomic(path / "booted", f"{letter}\n".encode())
    (path / "reboot").unlink(missing_ok=True)
    return letter


def sim_now() -> float:
    """Real time shifted by the seconds in ``$UPDATER_SIM_CLOCK``'s file (0 when unset)."""
    path = os.environ.get(CLOCK_ENV)
    offset = 0.0
    if path:
        text = _read(Path(path)) or "0"
        try:
            offset = float(text)
        except ValueError:
            raise DataError(f"{path}: not a number of seconds") from None
    return time.time() + offset


class SimClock:
    """``sim_now``, read at every call, so a test moves every simulated machine's clock at
    once by rewriting one file."""

    slice = 0.4  # sleep in short steps so that a moved clock is noticed soon

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def now(self) -> float:
        return sim_now()

    def sleep(self, seconds: float) -> None:
        self.stop.wait(max(0.0, min(seconds, self.slice)))
