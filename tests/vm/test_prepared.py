"""A kernel prepared ahead of time (``updater kexec --prepare``) is never entered uncounted.

One machine, booted from USR-A through OVMF and GRUB, A put on trial with three tries (forced:
the test disk's USR-B holds no image), then three reboots, each after a preparation:

1. ``reboot`` (systemctl under that name turns a reboot with a kernel loaded into kexec.target,
   as a plain ``systemctl reboot`` does since systemd 255): the machine comes back without the
   firmware, and updater-kexec-prepared.service counted the try during the shutdown (3 -> 2);
2. a plain ``systemctl reboot``: whichever way this systemd takes (a firmware reboot in which
   GRUB counts, or kexec.target in which the service counts), the try is counted exactly once
   (2 -> 1);
3. the A/B state changes after the preparation (A set on trial again, 3 tries), then ``reboot``:
   the service unloads the stale kernel instead, the machine reboots through the firmware, and
   GRUB counts the try of the state as it is now (3 -> 2).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.vm import harness
from tests.vm.conftest import MachineFactory

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 420
READY = r"UPDATER-READY version=(\d+) usr=([0-9a-fA-F-]+)\r?\n"
GRUB_MARK = r"Booting USR-"  # printed by grub/grub.cfg on every firmware boot


def shell(m: harness.Machine) -> None:
    m.wait_shell(180)
    m.run("dmesg -n 1").check()


def tries_of_a(m: harness.Machine) -> tuple[int, bool, bool]:
    doc: dict[str, Any] = json.loads(m.run("updater status --json", timeout=120).check().output)
    a = next(s for s in doc["slots"] if s["partition"] == 3)
    return a["tries"], a["successful"], a["booted"]


def prepare(m: harness.Machine) -> None:
    doc = json.loads(m.run("updater kexec --prepare --json", timeout=300).check().output)
    assert doc["prepared"] is True and doc["slot"] == "USR-A", doc
    assert m.run("cat /sys/kernel/kexec_loaded").check().output.strip() == "1"


def reboot(m: harness.Machine, command: str) -> bool:
    """Type ``command``; wait for the next ready line; whether the firmware path ran."""
    since = m.console.position()
    m.console.write(command + "\n")
    m.wait_for(READY, BOOT_TIMEOUT, since)
    shell(m)
    return re.search(GRUB_MARK, m.console.text[since:]) is not None


def test_a_prepared_kernel_is_never_entered_uncounted(
    machines: MachineFactory, ovmf: harness.Firmware, built_image: Any
) -> None:
    m = machines(harness.VmConfig(ovmf, disk=Path(built_image.disk)))
    m.start()
    m.wait_for(READY, BOOT_TIMEOUT, 0)
    shell(m)
    m.run("updater set-active A --tries 3 --force").check()
    assert tries_of_a(m) == (3, False, True)

    # 1. prepared, then `reboot`: kexec.target, the service counts, no firmware
    prepare(m)
    assert tries_of_a(m) == (3, False, True)  # the preparation counts nothing
    assert not reboot(m, "reboot"), "the prepared kernel was not entered"
    assert tries_of_a(m) == (2, False, True)
    assert "verity.usr=PARTUUID=" in m.run("cat /proc/cmdline").check().output

    # 2. prepared, then a plain `systemctl reboot`: counted exactly once either way
    prepare(m)
    firmware = reboot(m, "systemctl reboot")
    print(f"vm: systemctl reboot with a prepared kernel took the "
          f"{'firmware' if firmware else 'kexec'} path")  # fmt: skip
    assert tries_of_a(m) == (1, False, True)

    # 3. prepared, then the state changes: the stale kernel is unloaded, GRUB counts
    prepare(m)
    m.run("updater set-active A --tries 3 --force").check()
    assert reboot(m, "reboot"), "a stale prepared kernel was entered"
    assert tries_of_a(m) == (2, False, True)
    journal = m.run("journalctl -b -1 -u updater-kexec-prepared.service --no-pager", 120)
    print(journal.output)
