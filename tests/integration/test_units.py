"""The systemd units in systemd/, checked by systemd itself (``systemd-analyze verify``), and the
parts of them the agent relies on, read back through ``systemd-analyze`` where it can tell."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, need_tools
from updater import fileprepared
from updater import prepared as flow

# The record's path as the modules define it, taken at import: every test runs with the
# record redirected into a test directory (tests/conftest.py).
RECORDS = (flow.RECORD, fileprepared.RECORD)

pytestmark = pytest.mark.integration

UNITS = sorted((ROOT / "systemd").glob("*.service"))
UPDATER = ROOT / ".venv" / "bin" / "updater"


def _verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", *map(str, paths)],
                          capture_output=True, text=True)  # fmt: skip


def _local_copies(tmp: Path) -> list[Path]:
    """The units with ExecStart pointing at this checkout's updater: verify insists that the
    command exists and is executable, and /usr/bin/updater is not installed on a build host."""
    if not UPDATER.exists():
        pytest.skip(f"needs the project installed in {UPDATER.parent} (bash .ci/setup)")
    out = []
    for unit in UNITS:
        copy = tmp / unit.name
        copy.write_text(unit.read_text().replace("/usr/bin/updater", str(UPDATER)))
        out.append(copy)
    return out


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    need_tools("systemd-analyze")
    broken = tmp_path / "broken" / "x.service"
    broken.parent.mkdir()
    broken.write_text("[Service]\nType=sometimes\nExecStart=relative/path\n")
    assert _verify([broken]).returncode != 0, "systemd-analyze verify catches a broken unit here"
    proc = _verify(_local_copies(tmp_path))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "systemd" / name)
    return parser


def test_what_the_agent_relies_on() -> None:
    assert [u.name for u in UNITS] == [
        "updater-agent.service", "updater-kexec-prepared.service", "updater-mark-good.service",
        "updater-restore.service", "updater-sync.service",
    ]  # fmt: skip
    agent = _unit("updater-agent.service")
    assert agent["Service"]["Type"] == "notify" and agent["Service"]["WatchdogSec"]
    assert agent["Service"]["ExecStart"] == "/usr/bin/updater agent"
    assert "updater-mark-good.service" in agent["Unit"]["After"]
    good = _unit("updater-mark-good.service")
    assert good["Service"]["ExecStart"] == "/usr/bin/updater agent verify"
    assert "boot-complete.target" in good["Unit"]["After"].split()
    assert good["Unit"]["Requires"] == "boot-complete.target"
    restore = _unit("updater-restore.service")
    assert restore["Service"]["ExecStart"] == "/usr/bin/updater checkpoint restore"
    # The restored trees stay behind when the oneshot's own process ends.
    assert restore["Service"]["KillMode"] == "process"
    assert "local-fs.target" in restore["Unit"]["After"].split()
    # The verdict judges a started system and never holds up its start: both wait for
    # multi-user.target (a verdict inside it kept the trial boot's own units from starting).
    assert "multi-user.target" in good["Unit"]["After"].split()
    assert "multi-user.target" in agent["Unit"]["After"].split()
    sync = _unit("updater-sync.service")
    assert sync["Service"]["ExecStart"] == "/usr/bin/updater sync"
    assert sync["Unit"]["DefaultDependencies"] == "no"
    for unit in UNITS:
        service = _unit(unit.name)["Service"]
        # The jobs write block devices and the ESP: nothing may hide /dev or make /boot read-only
        # without handing it back.
        assert "PrivateDevices" not in service and "DevicePolicy" not in service
        if service.get("ProtectSystem") == "strict":
            assert "-/boot" in service["ReadWritePaths"].split()


def test_units_are_installed_in_the_test_image_tree(tmp_path: Path) -> None:
    from images import tree

    tree.install_units(tmp_path)
    for unit in UNITS:
        assert (tmp_path / "usr/lib/systemd/system" / unit.name).read_bytes() == unit.read_bytes()
    enabled = sorted(p.relative_to(tmp_path / "etc/systemd/system").as_posix()
                     for p in (tmp_path / "etc/systemd/system").rglob("*.service"))  # fmt: skip
    # The restore acts only on a checkpoint that updater kexec wrote; the prepared unit only on
    # a kernel that updater kexec --prepare loaded.
    assert enabled == ["kexec.target.wants/updater-kexec-prepared.service",
                       "multi-user.target.wants/updater-restore.service",
                       "sysinit.target.wants/updater-sync.service"], (
        "the agent and mark-good are not enabled in the test image"
    )  # fmt: skip
    link = tmp_path / "etc/systemd/system/sysinit.target.wants/updater-sync.service"
    assert str(link.readlink()) == "/usr/lib/systemd/system/updater-sync.service"
    shutil.rmtree(tmp_path / "usr")


def test_the_prepared_kexec_unit_runs_before_the_kexec_only() -> None:
    prepared = _unit("updater-kexec-prepared.service")
    assert prepared["Service"]["ExecStart"] == "/usr/bin/updater kexec --consume-prepared"
    assert prepared["Unit"]["DefaultDependencies"] == "no"
    before = prepared["Unit"]["Before"].split()
    for unit in ("umount.target", "systemd-kexec.service"):
        assert unit in before
    # a firmware reboot (reboot.target) lets GRUB count the try: counting here too would count
    # it twice
    assert prepared["Install"]["WantedBy"].split() == ["kexec.target"]
    # both backends' records, one file: the unit runs for either
    assert RECORDS == (prepared["Unit"]["ConditionPathExists"],) * 2
