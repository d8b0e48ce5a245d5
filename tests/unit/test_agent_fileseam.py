"""The agent on the file backend, killed or cut off from power right after each state was
persisted: the real runner and state machine over the real file seam
(``updater.agent.fileseam``) on a directory in ``tmp_path``. Only the download is replaced (an
image file of a few blocks, staged by the rules' own steps) and the reboot (the initrd's
renames, ``fileslots.plan``, carried out as the next boot does). It must end where an
uninterrupted run ends or, where the rules say so (a trial boot that used up its tries), roll
back with the release blocked."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.unit.agentfakes import (
    FakeClock,
    FakeHealth,
    FakeLock,
    FakeSemaphore,
    FileMachine,
    agent,
    drive,
)
from tests.unit.test_agent_runner import HAPPY, WINDOW
from updater import config, filebackend, fileslots, fileupdate
from updater.agent.fileseam import LETTERS_FILE, load_letters, save_letters
from updater.agent.record import Reason, Record, State
from updater.agent.runner import Mode
from updater.agent.seam import Offer
from updater.agent.store import Store
from updater.errors import SlotError
from updater.fileslots import BROKEN, NEW, OLD, PART, ROOT
from updater.update import Outcome


def put(directory: Path, name: str, version: str) -> None:
    h = hashlib.sha256(f"release {version}".encode()).hexdigest()
    trailer = filebackend.Trailer(h, 4096, 8192, version)
    (directory / name).write_bytes(b"\x5a" * 8192 + trailer.encode())


class Machine(FileMachine):
    """Booted from ``root.img`` (version 1); release 2 is offered."""

    def __init__(self, tmp: Path, tries: int, monkeypatch: pytest.MonkeyPatch) -> None:
        images = tmp / "images"
        images.mkdir()
        put(images, ROOT, "1")
        super().__init__(images, config.parse(
            f'[boot]\nbackend = "files"\nimages_dir = "{images}"\ntries = {tries}\n'
            f'[update]\nstate_dir = "{tmp / "state"}"\n', "test.toml",
        ))  # fmt: skip
        monkeypatch.setattr(self.system, "_client", lambda: None)
        monkeypatch.setattr(self.system, "available", self.available)
        monkeypatch.setattr(fileupdate, "run", self.write)

    def available(self, channel: str, pin: str | None, blocked: frozenset[str]) -> Offer | None:
        root = fileupdate.image_version(self.read().images.get(ROOT))
        return Offer("2") if "2" not in blocked and str(root) != "2" else None

    def write(self, images_dir: str, tries: int, request: Any, client: Any,
              emit: Any) -> Outcome:  # fmt: skip
        """The download replaced; the staging steps are the rules' own."""
        assert request.pin is not None
        steps = fileslots.stage(self.read().state, tries)
        put(self.images, PART, str(request.pin))
        filebackend.apply_steps(images_dir, steps)
        return Outcome("updated", "test", None)


def _committed(m: Machine, rec: Record) -> None:
    assert (m.version(ROOT), m.version(OLD)) == ("2", "1")
    assert m.read().state == fileslots.FileState(frozenset({ROOT, OLD}))
    assert (rec.committed_slot, rec.committed_version, rec.blocked) == ("B", "2", ())


def _reverted(m: Machine, rec: Record, reason: Reason) -> None:
    d = m.read()
    assert set(d.images) == {ROOT, BROKEN} and not d.state.revert and d.state.tries is None
    assert (m.version(ROOT), m.version(BROKEN)) == ("1", "2")
    assert [(b.version, b.reason) for b in rec.blocked] == [("2", reason)]
    assert rec.rollbacks == 1 and rec.committed_slot == "A"
    assert not m.system.booted().other.bootable, "the reverted release never boots again"


@pytest.mark.parametrize("tries", [1, 2])
@pytest.mark.parametrize("power_cut", [False, True], ids=["killed", "power-cut"])
@pytest.mark.parametrize("state", HAPPY, ids=str)
def test_crash_in_each_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: State,
                             power_cut: bool, tries: int) -> None:  # fmt: skip
    m, sem = Machine(tmp_path, tries, monkeypatch), FakeSemaphore()
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth(), crash=state, power_cut=power_cut,
                pol=WINDOW)  # fmt: skip
    assert sem.holders == {}, "the lock is never left held"
    if power_cut and state is State.VERIFYING and tries == 1:
        # The trial boot ended before it was verified and its one try is spent: the initrd
        # put root-old.img back; the agent counts that as a failed boot.
        _reverted(m, rec, Reason.BOOT)
        return
    _committed(m, rec)
    before_reboot = (State.STAGED, State.WAITING_FOR_WINDOW, State.WAITING_FOR_LOCK,
                     State.REBOOTING)  # fmt: skip
    if power_cut and state in before_reboot:  # the cut booted the staged image for the agent
        assert m.reboots == []
    else:
        assert m.reboots == [("kexec", NEW, "2")], "exactly one reboot, into the staged image"


@pytest.mark.parametrize("tries", [1, 2])
@pytest.mark.parametrize("power_cut", [False, True], ids=["killed", "power-cut"])
@pytest.mark.parametrize("state", [State.VERIFYING, State.ROLLED_BACK], ids=str)
def test_unhealthy_release_reverts_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        state: State, power_cut: bool,
                                        tries: int) -> None:  # fmt: skip
    m, sem = Machine(tmp_path, tries, monkeypatch), FakeSemaphore()
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth("curl exited 22"), crash=state,
                power_cut=power_cut)  # fmt: skip
    boot_failed = power_cut and state is State.VERIFYING and tries == 1
    _reverted(m, rec, Reason.BOOT if boot_failed else Reason.HEALTH)
    assert sem.holders == {}
    if not power_cut:
        assert m.reboots == [("kexec", NEW, "2"), ("kexec", OLD, "1")]
    # not offered again
    again = drive(tmp_path, m, FakeLock(sem), FakeHealth())
    assert again.state is State.IDLE and m.version(ROOT) == "1" and NEW not in m.read().images


def test_a_manual_rollback_blocks_the_release(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """``updater rollback`` after the agent committed: the release it left is not taken again."""
    m, sem = Machine(tmp_path, 2, monkeypatch), FakeSemaphore()
    _committed(m, drive(tmp_path, m, FakeLock(sem), FakeHealth()))
    filebackend.apply_steps(str(m.images), fileslots.rollback(m.read().state))
    m.power_on()
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth())
    assert m.version(ROOT) == "1" and rec.committed_slot == "A"
    assert [(b.version, b.reason) for b in rec.blocked] == [("2", Reason.MANUAL)]
    assert m.reboots == [("kexec", NEW, "2")]


@pytest.mark.parametrize("data", [b"{", b"[1]", b'{"Z": "x", "A": 5}', b"\xff" * 5000])
def test_a_damaged_letters_file_is_forgotten(tmp_path: Path, data: bytes) -> None:
    (tmp_path / LETTERS_FILE).write_bytes(data)
    assert load_letters(str(tmp_path)) == {}
    save_letters(str(tmp_path), {"A": "1" * 64})
    assert load_letters(str(tmp_path)) == {"A": "1" * 64}


def test_letters_lost_during_the_trial_stop_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the module says of a lost ``file-slots.json``: the release is blocked, mark-bad of
    the image to go back to is refused, and the directory is left as it is."""
    m, sem = Machine(tmp_path, 2, monkeypatch), FakeSemaphore()
    rec = drive(tmp_path, m, FakeLock(sem), FakeHealth(), crash=State.VERIFYING,
                stop_at_crash=True)  # fmt: skip
    assert rec.state is State.VERIFYING and rec.target_slot == "B" and m.version(ROOT) == "2"
    (tmp_path / "state" / LETTERS_FILE).unlink()
    before = m.read()
    a = agent(tmp_path, m.system, lock=FakeLock(sem), health=FakeHealth(), clock=FakeClock())
    assert a.run(Mode.ONCE) == 1  # the trial was judged bad (and the mark-bad refused)
    rec = Store(str(tmp_path / "state")).load()
    assert [(b.version, b.reason) for b in rec.blocked] == [("2", Reason.BOOT)]
    assert "root-old.img, the image to go back to; it is kept" in (rec.last_error or "")
    assert m.read() == before and m.reboots == [("kexec", NEW, "2")]


def test_mark_bad_changes_something_or_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every mark-bad the agent may ask for either leaves the slot unbootable or fails with a
    reason (the agent retries a failure later; a silent no-op would be asked again at once)."""
    m = Machine(tmp_path, 2, monkeypatch)
    with pytest.raises(SlotError, match="no root-old.img to go back to"):
        m.system.mark_bad("A")  # nothing to go back to
    (m.images / fileslots.MARKER).write_bytes(b"")  # a marker alone changes nothing either
    with pytest.raises(SlotError, match="no root-old.img to go back to"):
        m.system.mark_bad("A")
    (m.images / fileslots.MARKER).unlink()
    put(m.images, OLD, "0")
    m.system.mark_bad("A")
    assert not m.system.booted().slot.bootable and m.system.booted().next_slot == "B"
    m.system.mark_bad("A")  # again: already asked for
    assert m.read().state.revert
