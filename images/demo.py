#!/usr/bin/env python3
"""The main demo: an A/B update on the built-in test image, rebooted with kexec, under QEMU.

    .venv/bin/python images/demo.py [--json] [--workdir DIR]

Builds (or reuses) the test disk, boots it through OVMF and GRUB into USR-A (version 1), writes
version 2 into USR-B from a payload drive and verifies it against its dm-verity root hash,
activates it, and ``updater kexec``s into it; then marks it good and reboots once through the
firmware for comparison. Prints every step with the A/B state, and the time from the reboot
command to the new system's ready line for both paths.

Not a test: tests/vm/test_kexec.py checks the same path and its failure cases.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from images.build import build_all  # noqa: E402
from tests.vm import harness  # noqa: E402

READY = r"UPDATER-READY version=(\d+) usr=([0-9a-fA-F-]+)\r?\n"
TIMEOUT = 600


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def step(text: str) -> None:
    say(f"\n\033[1m== {text}\033[0m")


def payload_tar(kernel: Path, dest: Path) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(kernel, arcname="vmlinuz")
    data = buf.getvalue()
    dest.write_bytes(data + bytes(-len(data) % 4096))
    return dest


def guest(m: harness.Machine, command: str, timeout: float = 300, show: bool = True) -> str:
    if show:
        say(f"$ {command}")
    out = m.run(command, timeout).check().output
    if show and out.strip():
        say(out.rstrip())
    return out


def reboot_and_time(m: harness.Machine, command: str) -> tuple[str, float]:
    """Type ``command`` (which reboots) and time it until the next ready line."""
    say(f"$ {command}")
    since, start = m.console.position(), time.monotonic()
    m.console.write(command + "\n")
    match = m.wait_for(READY, TIMEOUT, since)
    seconds = time.monotonic() - start
    say(f"... up again in {seconds:.1f} s: {match.group(0).strip()}")
    m.wait_shell(180)
    m.run("dmesg -n 1").check()
    return match.group(1), seconds


def run_demo(workdir: Path, show: Callable[[str], None] = step) -> dict[str, Any]:
    show("1. Build (or reuse) the test image: Flatcar layout, USR-A = version 1, USR-B empty")
    built = build_all()
    manifest = json.loads(Path(built.manifest_v2).read_text())
    say(f"disk {built.disk}\nupdate payload {built.usr_v2} (root hash {manifest['root_hash']})")
    files = payload_tar(Path(built.kernel_v2), workdir / "kernel.tar")
    config = harness.VmConfig(
        harness.Firmware(), disk=Path(built.disk), extra_disks=(Path(built.usr_v2), files)
    )
    with harness.machine(config, workdir / "vm") as m:
        show("2. Cold boot through the firmware (OVMF -> GRUB -> kernel -> verity /usr)")
        start = time.monotonic()
        m.start()
        m.wait_for(READY, TIMEOUT)
        cold = time.monotonic() - start
        say(f"booted in {cold:.1f} s")
        m.wait_shell(180)
        m.run("dmesg -n 1").check()
        guest(m, "updater status")

        show("3. Write version 2 into USR-B, verify it, install its kernel, activate it")
        guest(m, "dd if=/dev/vdb of=/dev/disk/by-partlabel/USR-B bs=1M conv=fsync status=none")
        guest(m, f"updater verity verify /dev/disk/by-partlabel/USR-B {manifest['root_hash']} "
                 f"--hash-offset {manifest['hash_offset']} && echo verified", 900)  # fmt: skip
        guest(m, "mkdir -p /run/p && tar -xf /dev/vdc -C /run/p")
        guest(m, "MTOOLS_SKIP_CHECK=1 mcopy -o -i /dev/disk/by-partlabel/EFI-SYSTEM "
                 "/run/p/vmlinuz ::/flatcar/vmlinuz-b")  # fmt: skip
        guest(m, "updater set-active B")

        show("4. Reboot with kexec: GRUB's choice and try counting in userspace, no firmware")
        guest(m, "updater kexec --dry-run")
        version, kexec_s = reboot_and_time(m, "updater kexec")
        guest(m, "updater status")

        show("5. The new slot is healthy: mark it good")
        guest(m, "updater mark-good")

        show("6. For comparison: the same reboot through the firmware")
        version2, firmware_s = reboot_and_time(m, "updater reboot --via firmware")
        guest(m, "updater status")
        m.poweroff()

    result = {
        "cold_boot_seconds": round(cold, 1),
        "kexec_reboot_seconds": round(kexec_s, 1),
        "firmware_reboot_seconds": round(firmware_s, 1),
        "kexec_to_firmware_ratio": round(kexec_s / firmware_s, 2),
        "versions": [version, version2],
    }
    show("Summary")
    say(f"reboot to userspace: kexec {kexec_s:.1f} s, firmware {firmware_s:.1f} s "
        f"(kexec takes {result['kexec_to_firmware_ratio']:.2f}x the firmware path; "
        "QEMU TCG, where the firmware is quick; real servers spend minutes in POST)")  # fmt: skip
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="also print the timings as JSON")
    parser.add_argument("--workdir", type=Path, help="keep the VM files here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="updater-demo-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = run_demo(workdir)
    if args.json:
        say(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
