"""The project's A/B disk under QEMU TCG: OVMF -> GRUB -> kernel -> initrd (dm-verity) -> systemd.

Boots the disk that ``images/build.py`` builds, always through a qcow2 overlay (or a private raw
copy when a test corrupts it), and checks what the console and the guest's own tools report.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.vm import harness
from tests.vm.conftest import MachineFactory
from updater import gptformat, grubenv, layout, state, target
from updater.espenv import COPIES

pytestmark = pytest.mark.vm

# TCG through OVMF takes 30-90 s to a shell; these are bounds, not expectations.
BOOT_TIMEOUT = 420
SHELL_TIMEOUT = 120
READY = r"UPDATER-READY version=(\d+) usr=([0-9a-fA-F-]+)\r?\n"
FIRST_BOOT = "UPDATER-FIRST-BOOT"
USR_A = 3


def usr_a(disk: Path) -> tuple[gptformat.GptEntry, int]:
    """USR-A's partition entry and the disk's sector size, read with the project's GPT reader."""
    st = state.load(target.resolve(str(disk), "A"))
    entry = gptformat.entries_by_number(st.table.entries())[USR_A]
    return entry, st.table.sector_size


def esp_offset(disk: Path) -> int:
    st = state.load(target.resolve(str(disk), "A"))
    entries = st.table.entries()
    esp = next(e for e in entries if e.type_guid == layout.ESP_TYPE)
    return esp.first_lba * st.table.sector_size


def esp_listing(disk: Path, directory: str) -> list[str]:
    """File names in an ESP directory of a raw disk, read on the host with mtools."""
    listed = subprocess.run(
        ["mdir", "-b", "-i", f"{disk}@@{esp_offset(disk)}", f"::/{directory}"],
        check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )  # fmt: skip
    return [line.rsplit("/", 1)[-1] for line in listed.stdout.split()]


def firmware_machine(
    machines: MachineFactory, firmware: harness.Firmware, disk: Path, name: str = "vm"
) -> harness.Machine:
    return machines(harness.VmConfig(firmware, disk=disk), name)


def boot_to_ready(m: harness.Machine, started: float, since: int = 0) -> re.Match[str]:
    """Wait for UPDATER-READY after console position ``since``; report the time since
    ``started`` (a time.monotonic() value: QEMU's start, or the reboot request)."""
    ready = m.wait_for(READY, BOOT_TIMEOUT, since)
    print(f"vm: UPDATER-READY after {time.monotonic() - started:.1f} s (TCG)")
    return ready


def guest_shell(m: harness.Machine) -> None:
    m.wait_shell(SHELL_TIMEOUT)
    # Kernel messages on the serial console would land in the middle of command output.
    m.run("dmesg -n 1").check()


def test_boots_usr_a_with_verity(
    machines: MachineFactory, ovmf: harness.Firmware, built_image: Any
) -> None:
    disk = Path(built_image.disk)
    manifest = json.loads(Path(built_image.manifest_v1).read_text())
    entry, _ = usr_a(disk)

    m = firmware_machine(machines, ovmf, disk)
    started = time.monotonic()
    m.start()
    ready = boot_to_ready(m, started)
    assert ready.group(1) == "1"
    assert ready.group(2).lower() == str(entry.unique_guid)

    guest_shell(m)
    status = json.loads(m.run("updater status --json").check().output)
    booted = [s["partition"] for s in status["slots"] if s["booted"]]
    assert booted == [USR_A]
    assert status["next"] == USR_A

    assert m.run("findmnt -n -o SOURCE /usr").check().output.strip() == "/dev/mapper/usr"
    verity = m.run("veritysetup status usr").check().output
    assert re.search(r"type:\s+VERITY", verity), verity
    assert re.search(r"status:\s+verified", verity), verity
    assert re.search(rf"root hash:\s+{manifest['root_hash']}", verity), verity
    assert m.run("grep -c '^VERSION_ID=1$' /usr/lib/os-release").check().output.strip() == "1"

    assert m.poweroff(timeout=180) == 0


def test_corrupted_usr_stops_the_boot_and_reboots(
    machines: MachineFactory, ovmf: harness.Firmware, built_image: Any, tmp_path: Path
) -> None:
    manifest = json.loads(Path(built_image.manifest_v1).read_text())
    disk = harness.sparse_copy(Path(built_image.disk), tmp_path / "corrupt.raw")
    entry, sector_size = usr_a(disk)
    # The middle of the filesystem, well below the hash tree: data dm-verity must refuse.
    offset = entry.first_lba * sector_size + manifest["hash_offset"] // 2
    with disk.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    # Both grubenv copies cut short as well (their closing number differs): GRUB must not halt
    # but boot the slot that booted successfully before, A (whose USR is what fails here).
    image, env = f"{disk}@@{esp_offset(disk)}", {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for copy in COPIES:
        block = subprocess.run(["mcopy", "-n", "-i", image, f"::/{copy}", "-"], check=True,
                               capture_output=True, env=env).stdout  # fmt: skip
        damaged = block.replace(b"usr_end=1\n", b"usr_end=9\n")
        assert damaged != block and grubenv.EnvCopy.of(damaged).seq is None
        subprocess.run(["mcopy", "-o", "-i", image, "-", f"::/{copy}"], input=damaged,
                       check=True, capture_output=True, env=env)  # fmt: skip

    # -no-reboot: the guest's reboot ends QEMU, so this one boot is all the test waits for.
    m = machines(harness.VmConfig(ovmf, disk=disk, extra_args=("-no-reboot",)))
    m.start()
    m.wait_for(r"UPDATER-GRUBENV-DAMAGED", BOOT_TIMEOUT)
    m.wait_for(r"Booting USR-a", BOOT_TIMEOUT)
    failed = m.wait_for(r"UPDATER-BOOT-FAILED: ([^\r\n]*)\r?\n", BOOT_TIMEOUT)
    print(f"vm: boot stopped with: {failed.group(0).strip()}")
    assert "verity" in failed.group(1)
    # The initrd reboots through the firmware after a failure (GRUB then picks the slot; here
    # the only one, whose every boot fails the same way, a pause apart); nothing from USR ran.
    m.wait_for(r"UPDATER-REBOOTING", 60, failed.end())
    m.wait_exit(180)
    assert not re.search(READY, m.console.text)


def test_first_boot_runs_once(
    machines: MachineFactory, ovmf: harness.Firmware, built_image: Any, tmp_path: Path
) -> None:
    base = Path(built_image.disk)
    assert "first_boot" in esp_listing(base, "flatcar"), "the built disk lacks the marker"

    m = firmware_machine(machines, ovmf, base)
    started = time.monotonic()
    m.start()
    first = m.wait_for(FIRST_BOOT, BOOT_TIMEOUT)
    boot_to_ready(m, started, since=first.end())
    guest_shell(m)
    assert m.run("test -s /var/lib/updater/first-boot").status == 0

    second = m.console.position()
    started = time.monotonic()
    m.console.write("systemctl reboot\n")
    m.wait_for(r"Booting USR-a", BOOT_TIMEOUT, since=second)  # GRUB ran again: a real reboot
    ready = boot_to_ready(m, started, since=second)
    assert ready.group(1) == "1"
    assert FIRST_BOOT not in m.console.text[second:]
    guest_shell(m)
    assert m.poweroff(timeout=180) == 0

    assert m.overlay is not None
    after = harness.to_raw(m.overlay, tmp_path / "after.raw")
    listing = esp_listing(after, "flatcar")
    assert "first_boot" not in listing
    assert "vmlinuz-a" in listing  # the ESP itself is intact


def test_first_boot_marker_removal_survives_power_cut(
    machines: MachineFactory, ovmf: harness.Firmware, built_image: Any
) -> None:
    """The initrd syncs before it announces first boot: cut the power right at the
    announcement, and the next boot on the same disk must not be a first boot again."""
    m = firmware_machine(machines, ovmf, Path(built_image.disk))
    m.start()
    m.wait_for(FIRST_BOOT, BOOT_TIMEOUT)
    m.kill()

    started = time.monotonic()
    m.start()
    ready = boot_to_ready(m, started)
    assert ready.group(1) == "1"
    assert FIRST_BOOT not in m.console.text
    assert len(m.runs) == 2
