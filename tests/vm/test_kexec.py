"""kexec into the other slot on a machine that really boots, and every way back.

One scenario on one disk, in order (each step needs the state the previous one left):
boot USR-A (v1) through OVMF and GRUB; write v2 into USR-B with one corrupted block and
``set-active B``; ``updater kexec`` into it: the initrd's dm-verity check fails, the machine
reboots by itself and GRUB boots A, with B's try spent (the same fallback a kexec'd slot that
never marks itself good gets on its next cold boot); repair B, verify it, ``set-active B``;
``updater kexec`` lands in B without the firmware (verity on, v2, try consumed); B marks itself
good and sticks across a cold boot; with ``kernel.kexec_load_disabled=1`` a reboot into A
falls back to the firmware path and lands in A, on trial; with DELIVERY=initrd the boot facts
travel in an appended cpio, the command line names no slot, and the booted slot is still found
and committed. Boot times of both paths are printed.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.vm import harness
from tests.vm.conftest import MachineFactory
from updater import layout

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 420
READY = r"UPDATER-READY version=(\d+) usr=([0-9a-fA-F-]+)\r?\n"
GRUB_MARK = r"Booting USR-"  # printed by grub/grub.cfg on every firmware boot
USR_A = str(layout.USR_A_UUID)
USR_B = str(layout.USR_B_UUID)
# Invert one byte of USR-B at the offset given after it (run twice: back as it was).
FLIP = (
    "python3 -c 'import os, sys; fd = os.open(\"/dev/disk/by-partlabel/USR-B\", os.O_RDWR); "
    "n = int(sys.argv[1]); b = os.pread(fd, 1, n); os.pwrite(fd, bytes([b[0] ^ 255]), n); "
    "os.fsync(fd)'"
)


def payload_tar(kernel: Path, manifest: Path, dest: Path) -> Path:
    """The small files of an update (kernel, manifest) as a tar the guest reads from a drive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(kernel, arcname="vmlinuz")
        tar.add(manifest, arcname="manifest.json")
    data = buf.getvalue()
    dest.write_bytes(data + bytes(-len(data) % 4096))
    return dest


def ready(m: harness.Machine, since: int, start: float | None = None) -> tuple[str, str, float]:
    """Version and USR partuuid of the next UPDATER-READY, and seconds since ``start``."""
    start = time.monotonic() if start is None else start
    match = m.wait_for(READY, BOOT_TIMEOUT, since)
    return match.group(1), match.group(2).lower(), time.monotonic() - start


def shell(m: harness.Machine) -> None:
    m.wait_shell(180)
    m.run("dmesg -n 1").check()


def status(m: harness.Machine) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(m.run("updater status --json", timeout=120).check().output)
    return doc


def slot(doc: dict[str, Any], part: int) -> tuple[int, int, bool, bool]:
    s = next(s for s in doc["slots"] if s["partition"] == part)
    return s["priority"], s["tries"], s["successful"], s["booted"]


def test_kexec_update_cycle_and_fallbacks(
    machines: MachineFactory, ovmf: harness.Firmware, built_image: Any, tmp_path: Path
) -> None:
    manifest = json.loads(Path(built_image.manifest_v2).read_text())
    files = payload_tar(
        Path(built_image.kernel_v2), Path(built_image.manifest_v2), tmp_path / "p.tar"
    )
    payload = (Path(built_image.usr_v2), files)  # /dev/vdb, /dev/vdc, read-only
    m = machines(harness.VmConfig(ovmf, disk=Path(built_image.disk), extra_disks=payload))

    # 1. cold boot into USR-A, version 1
    m.start()
    version, usr, _ = ready(m, 0)
    assert (version, usr) == ("1", USR_A)
    shell(m)
    m.run("updater sync").check()
    assert "panic=10" in m.run("cat /proc/cmdline").check().output.split()

    # 2. v2 into USR-B with one block flipped (the kernel and its root hash are right), then a
    # kexec into it: dm-verity refuses it in the initrd, which reboots through the firmware by
    # itself; GRUB finds B's try spent and boots A. No manual reset.
    m.run("dd if=/dev/vdb of=/dev/disk/by-partlabel/USR-B bs=1M conv=fsync status=none",
          timeout=600).check()  # fmt: skip
    flip = manifest["hash_offset"] // 2
    m.run(f"{FLIP} {flip}").check()
    m.run("mkdir -p /run/p && tar -xf /dev/vdc -C /run/p").check()
    m.run("MTOOLS_SKIP_CHECK=1 mcopy -o -i /dev/disk/by-partlabel/EFI-SYSTEM /run/p/vmlinuz "
          "::/flatcar/vmlinuz-b && sync").check()  # fmt: skip
    m.run("updater set-active B").check()
    assert slot(status(m), 4) == (2, 1, False, False)
    since = m.console.position()
    m.console.write("updater kexec\n")
    failed = m.wait_for(r"UPDATER-BOOT-FAILED: ([^\r\n]*)\r?\n", BOOT_TIMEOUT, since)
    assert "verity" in failed.group(1)
    m.wait_for(r"Booting USR-a", BOOT_TIMEOUT, failed.end())
    version, usr, _ = ready(m, since)
    assert (version, usr) == ("1", USR_A)
    shell(m)
    doc = status(m)
    assert slot(doc, 4) == (2, 0, False, False) and slot(doc, 3)[3]  # B's try spent, A booted

    # 3. repair B (flip the block back), verify it against the manifest's root hash, activate
    m.run(f"{FLIP} {flip}").check()
    verify = m.run(
        f"updater verity verify /dev/disk/by-partlabel/USR-B {manifest['root_hash']} "
        f"--hash-offset {manifest['hash_offset']}",
        timeout=900,
    )
    assert verify.status == 0, verify.output
    m.run("updater set-active B").check()
    assert slot(status(m), 4) == (2, 1, False, False)

    # 4. kexec into B: no firmware, no GRUB, the try consumed before the jump
    plan = json.loads(m.run("updater kexec --dry-run --json", timeout=120).check().output)
    assert plan["slot"] == "B" and plan["method"] == "kexec_file_load"
    assert f"verity.usrhash={manifest['root_hash']}" in plan["cmdline"]
    since, start = m.console.position(), time.monotonic()
    m.console.write("updater kexec\n")
    version, usr, kexec_seconds = ready(m, since, start)
    assert (version, usr) == ("2", USR_B)
    assert not re.search(GRUB_MARK, m.console.text[since:]), "the firmware path ran"
    shell(m)
    assert slot(status(m), 4) == (2, 0, False, True)
    assert m.run("findmnt -n -o SOURCE /usr").check().output.strip() == "/dev/mapper/usr"
    assert "verity" in m.run("dmsetup table usr").check().output
    cmdline = m.run("cat /proc/cmdline").check().output
    assert f"verity.usrhash={manifest['root_hash']}" in cmdline and USR_B in cmdline

    # 5. B proves itself and sticks across a cold boot
    m.run("updater mark-good").check()
    assert slot(status(m), 4) == (2, 0, True, True)
    since, start = m.console.position(), time.monotonic()
    m.reset()
    m.wait_for(r"Booting USR-b", BOOT_TIMEOUT, since)
    version, usr, fw_seconds = ready(m, since, start)
    assert (version, usr) == ("2", USR_B)
    shell(m)

    print(f"vm: to userspace via kexec {kexec_seconds:.1f} s, via firmware {fw_seconds:.1f} s")

    # 6. kexec disabled: the reboot into A takes the firmware path and lands in A, on trial
    # (two tries: GRUB takes one, the kexec of step 7 the other)
    m.run("echo 1 > /proc/sys/kernel/kexec_load_disabled").check()  # sysctl, without procps
    m.run("updater set-active A --tries 2").check()
    since = m.console.position()
    m.console.write("updater reboot\n")
    m.wait_for(r"rebooting through the firmware into USR-A: kexec is not possible: "
               r"kernel.kexec_load_disabled=1", 120, since)  # fmt: skip
    m.wait_for(r"Booting USR-a", BOOT_TIMEOUT, since)
    version, usr, _ = ready(m, since)
    assert (version, usr) == ("1", USR_A)

    # 7. DELIVERY=initrd: slot, hash and first-boot facts travel in an appended cpio, and the
    # command line names no slot at all; the booted slot is found from the mounted /usr and
    # the trial is committed
    shell(m)
    assert slot(status(m), 3) == (2, 1, False, True)
    m.run("mkdir -p /etc/updater && printf '[boot]\\ndelivery = \"initrd\"\\n' "
          "> /etc/updater/updater.toml").check()  # fmt: skip
    since = m.console.position()
    m.console.write("updater kexec\n")
    m.wait_for(r"boot facts from the initrd: slot A", BOOT_TIMEOUT, since)
    assert ready(m, since)[:2] == ("1", USR_A)
    shell(m)
    cmdline = m.run("cat /proc/cmdline").check().output
    assert (
        "verity.usrhash" not in cmdline
        and "PARTUUID" not in cmdline
        and "BOOT_IMAGE" not in cmdline
    )
    assert "mount.usr=/dev/mapper/usr" in cmdline
    assert m.run("findmnt -n -o SOURCE /usr").check().output.strip() == "/dev/mapper/usr"
    assert slot(status(m), 3) == (2, 0, False, True)  # found though the cmdline names none
    m.run("updater mark-good").check()
    assert slot(status(m), 3) == (2, 0, True, True)
    ratio = kexec_seconds / fw_seconds
    print(f"vm: to userspace via kexec {kexec_seconds:.1f} s, via firmware {fw_seconds:.1f} s, "
          f"ratio {ratio:.2f} (TCG)")  # fmt: skip
