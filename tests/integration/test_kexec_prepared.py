"""Prepared kexec reboots on a real disk image (FAT ESP, ext4 OEM), with the fake kexec and
systemctl of test_kexec_commands: `kexec --prepare` loads and counts nothing, `--consume-prepared`
counts the try exactly once or unloads when the A/B state moved, and `updater kexec` drops a
prepared record so that its own jump is not counted twice. cgpt reads the tries back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import CgptField
from tests.integration.test_kexec_commands import (  # noqa: F401 (fixtures)
    HASH_B,
    OK,
    boot_disk,
    fakes,
    logged,
    run_cli,
    use,
)
from updater import prepared

pytestmark = pytest.mark.integration


@pytest.fixture
def run_dir(fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The record, staging directory and the kernel's kexec_loaded flag under a test directory."""
    run = fast_tmp / "run"
    run.mkdir()
    monkeypatch.setattr(prepared, "RECORD", str(run / "kexec-prepared.json"))
    monkeypatch.setattr(prepared, "STAGE_DIR", str(run / "kexec-prepared"))
    monkeypatch.setattr(prepared, "KEXEC_LOADED", str(run / "kexec_loaded"))
    return run


def loaded(run: Path, value: bool) -> None:
    (run / "kexec_loaded").write_text("1\n" if value else "0\n")


def on_trial(disk: str, capsys: pytest.CaptureFixture[str], tries: int = 2) -> None:
    args = ["--disk", disk, "--booted", "A", "set-active", "B", "--tries", str(tries)]
    assert run_cli(args, capsys)[0] == 0


def test_prepare_loads_and_counts_nothing_then_shutdown_counts_once(
    boot_disk: Path, fakes: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    d = str(boot_disk)
    on_trial(d, capsys)
    code, out, _ = run_cli(["--disk", d, "--booted", "A", "kexec", "--prepare", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["prepared"] is True and doc["slot"] == "USR-B" and doc["partition"] == 4
    assert f"verity.usrhash={HASH_B}" in doc["cmdline"]
    stage = run_dir / "kexec-prepared"
    assert logged(fakes) == [
        ["kexec", "-u"],
        ["kexec", "-s", "-l", f"{stage}/flatcar_vmlinuz-b", f"--initrd={stage}/flatcar_initrd-b",
         f"--append={doc['cmdline']}"],
    ]  # fmt: skip
    assert cgpt_field(boot_disk, 4, "T") == 2  # nothing consumed yet
    assert (run_dir / "kexec-prepared.json").is_file()

    loaded(run_dir, True)
    code, out, _ = run_cli(["--disk", d, "--booted", "A", "kexec", "--consume-prepared",
                            "--json"], capsys)  # fmt: skip
    assert code == 0
    assert json.loads(out) == {"action": "consumed", "reason": None, "slot": "USR-B",
                               "partition": 4, "tries_left": 1}  # fmt: skip
    assert cgpt_field(boot_disk, 4, "T") == 1
    assert not (run_dir / "kexec-prepared.json").exists()
    assert logged(fakes)[2:] == []  # no unload: the jump enters the prepared kernel

    # a second shutdown pass (or another target pulling the unit in) counts nothing more
    code, out, _ = run_cli(["--disk", d, "kexec", "--consume-prepared", "--json"], capsys)
    assert json.loads(out)["action"] == "none"
    assert cgpt_field(boot_disk, 4, "T") == 1


def test_a_state_change_after_prepare_unloads_instead(
    boot_disk: Path, fakes: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    d = str(boot_disk)
    on_trial(d, capsys)
    assert run_cli(["--disk", d, "--booted", "A", "kexec", "--prepare"], capsys)[0] == 0
    on_trial(d, capsys, tries=3)  # e.g. a new release activated in B after the preparation
    loaded(run_dir, True)
    code, out, _ = run_cli(["--disk", d, "kexec", "--consume-prepared", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["action"] == "unloaded" and "changed" in doc["reason"]
    assert logged(fakes)[-1] == ["kexec", "-u"]
    assert cgpt_field(boot_disk, 4, "T") == 3  # GRUB counts it on the firmware reboot
    assert not (run_dir / "kexec-prepared.json").exists()


def test_nothing_loaded_any_more_counts_nothing(
    boot_disk: Path, fakes: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    d = str(boot_disk)
    on_trial(d, capsys)
    assert run_cli(["--disk", d, "--booted", "A", "kexec", "--prepare"], capsys)[0] == 0
    loaded(run_dir, False)  # someone ran kexec -u: the reboot goes through the firmware
    code, out, _ = run_cli(["--disk", d, "kexec", "--consume-prepared", "--json"], capsys)
    assert json.loads(out)["action"] == "not-loaded"
    assert cgpt_field(boot_disk, 4, "T") == 2


def test_a_damaged_record_unloads(
    boot_disk: Path, fakes: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    d = str(boot_disk)
    on_trial(d, capsys)
    (run_dir / "kexec-prepared.json").write_text('{"format": 1, "disk": 3}')
    loaded(run_dir, True)
    code, out, _ = run_cli(["--disk", d, "kexec", "--consume-prepared", "--json"], capsys)
    doc = json.loads(out)
    assert doc["action"] == "unloaded" and "not a prepared-kexec record" in doc["reason"]
    assert logged(fakes) == [["kexec", "-u"]]
    assert cgpt_field(boot_disk, 4, "T") == 2


def test_updater_kexec_after_prepare_counts_once(
    boot_disk: Path, fakes: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    d = str(boot_disk)
    on_trial(d, capsys)
    assert run_cli(["--disk", d, "--booted", "A", "kexec", "--prepare"], capsys)[0] == 0
    assert run_cli(["--disk", d, "--booted", "A", "kexec"], capsys)[0] == 0
    assert cgpt_field(boot_disk, 4, "T") == 1
    assert not (run_dir / "kexec-prepared.json").exists()  # the shutdown unit is skipped
    loaded(run_dir, True)
    code, out, _ = run_cli(["--disk", d, "kexec", "--consume-prepared", "--json"], capsys)
    assert json.loads(out)["action"] == "none" and cgpt_field(boot_disk, 4, "T") == 1


def test_prepare_refuses_dry_run_and_force(
    boot_disk: Path, fakes: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra in ("--dry-run", "--force"):
        code, _, err = run_cli(["--disk", str(boot_disk), "kexec", "--prepare", extra], capsys)
        assert code == 2 and "--prepare" in err
    assert logged(fakes) == []
