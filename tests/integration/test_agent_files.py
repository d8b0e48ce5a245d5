"""The agent on the file backend: its seam (``updater.agent.fileseam``) on a real image
directory and a signed repository over HTTP, driven by the real agent (state machine, runner,
store) through stage -> reboot -> verify -> commit, and through a failed health check -> revert
-> reboot back with the release blocked. The reboot is simulated: the kernel the file boot flow
would load is looked up (``fileboot.plan``), then the initrd's renames (``fileslots.plan``)
are carried out on the directory, as the next boot's initrd does."""

from __future__ import annotations

import pytest

from tests.integration.repos import Site
from tests.integration.test_agent_system import agent_once
from tests.integration.test_filebackend import put_image, tag_hash
from tests.unit.agentfakes import (
    FakeHealth,
    FakeLock,
    FakeReboot,
    FakeSemaphore,
    FileMachine,
    drive,
)
from updater import config, filebackend, fileboot, fileslots
from updater.agent.fileseam import LETTERS_FILE
from updater.agent.record import Reason, State
from updater.config import RebootVia
from updater.fileslots import BROKEN, NEW, OLD, ROOT

pytestmark = pytest.mark.integration


class Machine(FileMachine):
    """Booted from ``root.img`` (version 1, with a kernel); the repository offers 2."""

    def __init__(self, site: Site) -> None:
        images = site.tmp / "images"
        images.mkdir()
        put_image(images, ROOT)  # version 1, as its trailer says
        filebackend.write_boot_files(str(images), tag_hash(ROOT), b"kernel 1", None)
        super().__init__(images, config.parse(
            f'[boot]\nbackend = "files"\nimages_dir = "{images}"\ntries = 2\n'
            f'[update]\nrepo = "{site.proxy.url}"\ntrusted_root = "{site.trusted_root}"\n'
            f'state_dir = "{site.state}"\ntimeout = 1\nretries = 1\n', "test.toml",
        ))  # fmt: skip

    def reboot(self, d: filebackend.Directory, via: RebootVia) -> None:
        fileboot.plan(d, self.cfg.boot, "console=ttyS0")  # the kernel kexec would load is there
        super().reboot(d, via)


def test_seam_reads_offers_stages_and_marks(site: Site) -> None:
    m = Machine(site)
    s = m.system
    b = s.booted()
    assert (b.slot.letter, b.slot.version, b.slot.successful) == ("A", "1", True)
    assert (b.other.letter, b.other.version, b.other.bootable, b.next_slot) == ("B", None,
                                                                                False, "A")
    offer = s.available("stable", None, frozenset())
    assert offer is not None and offer.version == "2"
    assert s.available("stable", None, frozenset({"2"})) is None
    pinned = s.available("stable", "2", frozenset({"2"}))  # the operator's pin wins
    assert pinned is not None and pinned.version == "2"
    seen: list[tuple[int, int | None]] = []
    s.stage(offer, lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1]
    s.stage(offer, lambda done, total: None)  # staging it again is a no-op
    d = m.read()
    assert d.state == fileslots.FileState(frozenset({ROOT, NEW}), tries=2)
    b = s.booted()
    assert (b.other.letter, b.other.version, b.next_slot) == ("B", "2", "B")
    # mark-bad of the staged image: it is dropped with its counter
    s.mark_bad("B")
    assert m.read().state == fileslots.FileState(frozenset({ROOT}))
    assert s.booted().next_slot == "A"
    s.stage(offer, lambda done, total: None)
    with pytest.raises(FakeReboot):
        s.reboot("kexec")
    assert m.reboots == [("kexec", NEW, "2")]
    m.power_on()
    b = s.booted()
    assert (b.slot.letter, b.slot.version, b.on_trial, b.slot.tries) == ("B", "2", True, 1)
    assert (b.other.letter, b.other.version) == ("A", "1")
    s.mark_good()
    assert m.read().state == fileslots.FileState(frozenset({ROOT, OLD}))
    assert s.booted().slot.successful
    assert (site.state / LETTERS_FILE).exists()


def test_agent_updates_and_commits(site: Site) -> None:
    m = Machine(site)
    sem = FakeSemaphore()
    rec = drive(site.tmp, m, FakeLock(sem), FakeHealth())
    # committed, then (--once checks at once) nothing newer to take
    assert rec.state in (State.COMMITTED, State.IDLE) and rec.last_success, rec.last_error
    assert (rec.committed_slot, rec.committed_version, rec.blocked) == ("B", "2", ())
    assert m.reboots == [("kexec", NEW, "2")], "one reboot, into the staged image"
    d = m.read()
    assert d.state == fileslots.FileState(frozenset({ROOT, OLD}))  # counter gone: committed
    assert (m.version(ROOT), m.version(OLD)) == ("2", "1")
    assert sem.taken == ["m1"] and sem.holders == {}, "the lock was taken once and given back"


def test_failed_health_check_reverts_and_blocks_the_release(site: Site) -> None:
    m = Machine(site)
    sem = FakeSemaphore()
    health = FakeHealth(failure="app.service is failed")
    rec = drive(site.tmp, m, FakeLock(sem), health)
    # rolled back, then (--once checks at once) release 2 not offered again
    assert rec.state in (State.ROLLED_BACK, State.IDLE) and rec.rollbacks == 1
    assert rec.last_success is None and rec.available is None
    assert [(b.version, b.reason) for b in rec.blocked] == [("2", Reason.HEALTH)]
    # into the new image, then back: the revert marker made the next boot put root-old.img back
    assert m.reboots == [("kexec", NEW, "2"), ("kexec", OLD, "1")]
    d = m.read()
    assert set(d.images) == {ROOT, BROKEN} and not d.state.revert and d.state.tries is None
    assert (m.version(ROOT), m.version(BROKEN)) == ("1", "2")
    assert health.rounds == 1 and sem.holders == {} and len(sem.taken) == 1
    b = m.system.booted()
    assert (b.slot.letter, b.slot.successful, b.other.bootable) == ("A", True, False)
    # the blocked release is not offered again: the next checks rest
    again = drive(site.tmp, m, FakeLock(sem), FakeHealth())
    assert again.state is State.IDLE and again.available is None
    assert m.reboots[2:] == [] and set(m.read().images) == {ROOT, BROKEN}


def test_agent_once_on_the_file_backend_stages_and_asks_for_a_reboot(site: Site) -> None:
    """``updater agent --once`` picks the file seam from ``[boot] backend``; ``--booted root.img``
    stands for a kernel started from the directory."""
    m = Machine(site)
    hook = site.tmp / "hooks" / "pre-reboot.d" / "10-drain"
    hook.parent.mkdir(parents=True)
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    settings = (
        f'[boot]\nbackend = "files"\nimages_dir = "{m.images}"\ntries = 2\n'
        f'[update]\nrepo = "{site.proxy.url}"\ntrusted_root = "{site.trusted_root}"\n'
        f'state_dir = "{site.state}"\ntimeout = 1\nretries = 1\n'
        f'[hooks]\ndir = "{site.tmp / "hooks"}"\n'
    )
    # this host did not boot from the directory: one line, nothing written
    _, proc = agent_once(site, settings, exit=1)
    assert proc.stderr.splitlines()[-1] == (
        f"updater: error: this system was not booted from {m.images}/root.img (no "
        f"updater.images={m.images} on the kernel command line): the agent runs on the system "
        "it updates")  # fmt: skip
    _, proc = agent_once(site, settings, "--booted", "B", exit=2)
    assert "only root.img can be the booted image" in proc.stderr
    assert sorted(p.name for p in m.images.iterdir()) == ["boot", ROOT]
    required, proc = agent_once(site, settings, "--booted", ROOT)
    assert "runs no hooks" not in proc.stderr  # they run on this backend too (no reboot here)
    assert required.exists()
    assert m.read().state == fileslots.FileState(frozenset({ROOT, NEW}), tries=2)
    assert m.version(NEW) == "2"
