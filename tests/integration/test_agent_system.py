"""The agent's seam on the real update flow: a disk image booted from USR-A, a signed repository
over HTTP, and ``updater agent --once`` with reboots switched off (it stages and asks for a
reboot) and with the seam called directly (versions, blocked releases, pins, marks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, CgptField
from tests.integration.repos import Site
from tests.integration.test_update import A, B, Machine, prio_tries_good
from updater import config, target
from updater.agent.system import UpdateFlowSystem

pytestmark = pytest.mark.integration


def system(m: Machine, site: Site) -> UpdateFlowSystem:
    cfg = config.parse(
        f'[update]\nrepo = "{site.proxy.url}"\ntrusted_root = "{site.trusted_root}"\n'
        f'state_dir = "{m.state}"\ntimeout = 1\nretries = 1\n', "test.toml",
    )  # fmt: skip
    return UpdateFlowSystem(
        cfg, lambda: target.resolve(str(m.disk), "A", esp=str(m.esp), settings=cfg.boot)
    )


def test_seam_reads_offers_stages_and_marks(site: Site, cgpt_field: CgptField) -> None:
    m = Machine(site)
    s = system(m, site)
    b = s.booted()
    assert (b.slot.letter, b.slot.version, b.slot.successful) == ("A", "1", True)
    assert (b.other.letter, b.other.version, b.other.bootable) == ("B", None, False)
    assert b.next_slot == "A" and not b.on_trial
    offer = s.available("stable", None, frozenset())
    assert offer is not None and offer.version == "2" and offer.waves == ()
    assert s.available("stable", None, frozenset({"2"})) is None  # 1 is the booted one
    assert s.available("stable", "1", frozenset()) is None  # pinned to what is running
    pinned = s.available("stable", "2", frozenset({"2"}))  # the operator's pin wins
    assert pinned is not None and pinned.version == "2"
    seen: list[tuple[int, int | None]] = []
    s.stage(offer, lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1]
    s.stage(offer, lambda done, total: None)  # staging it again is a no-op
    b = s.booted()
    assert (b.other.version, b.next_slot) == ("2", "B")
    assert prio_tries_good(cgpt_field, m.disk, B) == (2, 1, 0)
    s.mark_bad("B")
    assert prio_tries_good(cgpt_field, m.disk, B) == (0, 0, 0)
    s.mark_good()
    assert prio_tries_good(cgpt_field, m.disk, A)[2] == 1


def agent_once(site: Site, settings: str, *global_options: str,
               exit: int = 0) -> tuple[Path, subprocess.CompletedProcess[str]]:  # fmt: skip
    """``updater agent --once`` with reboots off, ``settings`` ([boot], [update]) and the
    agent's files in the test's directory, expected to end with ``exit``; returns the
    reboot-required file it was given, and the finished process."""
    required = site.tmp / "reboot-required"
    machine_id = site.tmp / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    conf = site.tmp / "agent.toml"
    conf.write_text(
        f'{settings}[agent]\nreboot = "off"\nreboot_required_file = "{required}"\n'
        f'machine_id_file = "{machine_id}"\nmetrics_file = "{site.tmp / "updater.prom"}"\n'
    )
    exe = ROOT / ".venv" / "bin" / "updater"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "updater"]
    proc = subprocess.run([*argv, "--config", str(conf), *global_options, "agent", "--once"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == exit, proc.stderr
    return required, proc


def test_agent_once_stages_and_asks_for_a_reboot(site: Site, cgpt_field: CgptField) -> None:
    m = Machine(site)
    required, _ = agent_once(
        site,
        f'[update]\nrepo = "{site.proxy.url}"\ntrusted_root = "{site.trusted_root}"\n'
        f'state_dir = "{m.state}"\ntimeout = 1\nretries = 1\n',
        "--disk", str(m.disk), "--booted", "A", "--esp", str(m.esp),
    )  # fmt: skip
    assert required.exists()
    assert prio_tries_good(cgpt_field, m.disk, B) == (2, 1, 0)
    metrics = (site.tmp / "updater.prom").read_text()
    assert "updater_" in metrics
    assert Path(m.esp / "flatcar" / "vmlinuz-b").exists()
