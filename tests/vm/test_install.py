"""The network-boot installer on a VM that has a disk and a NIC, nothing else: one scenario in
order, each step on the disk the previous one left.

1. The disk holds a partition table and a filesystem. OVMF finds nothing to boot on it and
   boots the NIC: iPXE (Debian's ipxe-qemu ROM) gets its script from QEMU's TFTP server, loads
   the installer's kernel and initramfs, and ``updater install`` runs from the kernel
   parameters; it refuses the disk (no ``wipe``) and leaves a shell. The disk is unchanged.
2. In that shell: a repository whose timestamp signature is forged is refused, disk unchanged.
3. An install with ``--wipe`` is cut off (QEMU killed) while it writes USR-A.
4. Power on: the disk boots nothing (it has no partition table), so OVMF boots the NIC again,
   and the same installer parameters now find an empty disk: the install runs and kexecs into
   the installed OS (no firmware, no GRUB between): release 2 in USR-A, first boot detected.
5. Power off, power on: OVMF and GRUB boot the disk into the same slot, no first boot again.

The network is QEMU's user network with ``restrict=on``: DHCP and TFTP from QEMU, and one
``guestfwd`` address (10.0.2.100:80) to the release repository served on the host's loopback.
Times printed: firmware to installer, the install, its start to the installed OS's ready line
through kexec, and the shutdown and cold boot a firmware reboot would cost instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.httprepo import RepoServer
from tests.vm import harness
from tests.vm.conftest import MachineFactory
from updater import gptformat, layout
from updater.errors import GptError
from updater.gpt import open_disk

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 420
READY = r"UPDATER-READY version=(\d+) usr=([0-9a-fA-F-]+)\r?\n"
START = "UPDATER-INSTALLER-START"
USR_A = str(layout.USR_A_UUID)
DISK_SIZE = 8 << 30
BAD = "10.0.2.101"  # where the guest finds the forged repository
PARAMS = ("updater.install.disk=/dev/vda updater.install.repo=http://10.0.2.100 "
          "updater.install.oem=qemu updater.install.then=kexec")  # fmt: skip


def boot_script(tftp: Path, built: Any) -> None:
    for name in ("installer_kernel", "installer_initrd"):
        src = Path(getattr(built, name))
        try:
            os.link(src, tftp / src.name)
        except OSError:
            shutil.copyfile(src, tftp / src.name)
    # iPXE asks for `initrd=NAME` on the command line: the kernel's EFI stub loads it by name.
    (tftp / "boot.ipxe").write_text(
        "#!ipxe\n"
        f"kernel installer-vmlinuz initrd=installer-initrd.img console=ttyS0,115200n8 {PARAMS}\n"
        "initrd installer-initrd.img\nboot\n"
    )


def used_disk(path: Path) -> Path:
    """A disk that holds data: a GPT with one Linux partition and an ext4 filesystem in it."""
    with path.open("wb") as f:
        f.truncate(DISK_SIZE)
    for argv in (
        ["sgdisk", "-n", "1:2048:+64M", "-t", "1:8300", str(path)],
        ["mkfs.ext4", "-q", "-F", "-E", f"offset={1 << 20}", str(path), "64M"],
    ):
        subprocess.run(argv, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return path


def forged_copy(repo: Path, dest: Path) -> None:
    """The repository's metadata with one byte of the timestamp's signature changed."""
    shutil.copytree(repo / "metadata", dest / "metadata")
    (dest / "targets").mkdir()
    stamp = json.loads((dest / "metadata/timestamp.json").read_text())
    sig = stamp["signatures"][0]["sig"]
    stamp["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    (dest / "metadata/timestamp.json").write_text(json.dumps(stamp))


def port(server: RepoServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def first_mib(m: harness.Machine) -> str:
    out = m.run("dd if=/dev/vda bs=1M count=1 status=none | sha256sum", timeout=60).check()
    return out.output.split()[0]


def test_network_install_kexec_then_cold_boot(
    machines: MachineFactory, ovmf: harness.Firmware, built_image: Any, tmp_path: Path
) -> None:
    missing = harness.missing_tools(["sgdisk", "mkfs.ext4", "wipefs"])
    if missing or not Path("/usr/lib/ipxe/qemu/efi-virtio.rom").is_file():
        pytest.skip(f"missing {', '.join(missing) or 'efi-virtio.rom (Debian package ipxe-qemu)'}")
    repo = tmp_path / "repo"
    shutil.copytree(built_image.repo, repo)
    from images.build import payload, publish_release  # the builder is loaded by conftest

    # the installer runs version 1 (its own image); it installs the repository's newest, 2
    publish_release(repo, payload(Path(built_image.directory), 2), Path(built_image.initrd))
    forged = tmp_path / "forged"
    forged_copy(repo, forged)
    tftp = tmp_path / "tftp"
    tftp.mkdir()
    boot_script(tftp, built_image)
    disk = used_disk(tmp_path / "disk.img")
    with disk.open("rb") as f:
        original = hashlib.sha256(f.read(1 << 20)).hexdigest()

    with RepoServer(repo) as good, RepoServer(forged) as bad:
        forwards = (harness.Forward(port(good)), harness.Forward(port(bad), guest_addr=BAD))
        m = machines(harness.VmConfig(
            ovmf, disk=disk, forwards=forwards, net_boot=harness.NetBoot(tftp, "boot.ipxe"),
        ))  # fmt: skip

        # 1. network boot; the installer refuses a disk with data and leaves a shell
        started = time.monotonic()
        m.start()
        m.wait_for(START, BOOT_TIMEOUT)
        to_installer = time.monotonic() - started
        m.wait_for(r"updater: error: /dev/vda is not empty: it holds a gpt partition table", 300)
        assert "Booting USR-" not in m.console.text  # no GRUB: nothing on the disk booted
        m.wait_shell(180)
        m.run("dmesg -n 1").check()
        assert first_mib(m) == original

        # 2. a forged repository: refused before the disk is touched
        refused = m.run(f"updater install --disk /dev/vda --repo http://{BAD} --wipe --yes",
                        timeout=300)  # fmt: skip
        assert refused.status == 1 and "not signed by enough trusted keys" in refused.output
        assert first_mib(m) == original

        # 3. a power cut while USR-A is written
        since = m.console.position()
        m.console.write("updater install --disk /dev/vda --repo http://10.0.2.100 --wipe --yes "
                        "--json\n")  # fmt: skip
        m.wait_for(r'"bytes":\d{8,},"event":"downloading"', 300, since)
        m.kill()
        cut = harness.to_raw(m.overlay or disk, tmp_path / "cut.img")
        with open_disk(str(cut)) as d, pytest.raises(GptError, match="protective MBR"):
            gptformat.read_table(d)
        assert subprocess.run(["wipefs", "--no-act", str(cut)], capture_output=True,
                              text=True, check=True).stdout.strip() == ""  # fmt: skip
        cut.unlink()

        # 4. power on: the firmware finds nothing to boot on the disk and boots the installer,
        # which now installs and kexecs into the installed OS
        # (each QEMU run has a console of its own: positions count from its start)
        m.start()
        began = m.wait_for(START, BOOT_TIMEOUT)
        installer_up = time.monotonic()
        assert "Booting USR-" not in m.console.text[: began.start()]  # no GRUB ran first
        done = m.wait_for(r"installed release (\d+) onto /dev/vda in ([\d.]+) s", 600, began.end())
        installed_at = time.monotonic()
        ready = m.wait_for(READY, BOOT_TIMEOUT, done.end())
        ready_at = time.monotonic()
        assert (done.group(1), ready.group(1), ready.group(2).lower()) == ("2", "2", USR_A)
        after_install = m.console.text[done.end() : ready.start()]
        assert "Booting USR-" not in after_install and "UPDATER-FIRST-BOOT" in after_install
        m.wait_shell(180)
        m.run("dmesg -n 1").check()
        status = m.run("updater status --json", timeout=120).check().output
        a = next(s for s in json.loads(status)["slots"] if s["partition"] == 3)
        assert (a["priority"], a["tries"], a["successful"], a["booted"]) == (1, 0, True, True)
        assert "rebooting into the installed USR-A (kexec_file_load)" in m.console.text
        cmdline = m.run("cat /proc/cmdline").check().output
        assert "flatcar.first_boot=detected" in cmdline and "flatcar.oem.id=qemu" in cmdline
        v2 = json.loads(Path(built_image.manifest_v2).read_text())["root_hash"]
        assert f"verity.usrhash={v2}" in cmdline and f"verity.usr=PARTUUID={USR_A}" in cmdline
        assert m.run("test -f /var/lib/updater/first-boot").status == 0

        # 5. power off and on: OVMF and GRUB boot the same slot, not a first boot any more
        halt = time.monotonic()
        m.poweroff("systemctl poweroff")
        shutdown = time.monotonic() - halt
        cold = time.monotonic()
        m.start()
        m.wait_for(r"Booting USR-a", BOOT_TIMEOUT)
        again = m.wait_for(READY, BOOT_TIMEOUT)
        cold_boot = time.monotonic() - cold
        assert (again.group(1), again.group(2).lower()) == ("2", USR_A)
        assert "UPDATER-FIRST-BOOT" not in m.console.text
        m.wait_shell(180)
        assert "first_boot" not in m.run("cat /proc/cmdline").check().output

    install = installed_at - installer_up
    via_kexec = ready_at - installer_up
    via_firmware = install + shutdown + cold_boot
    print(f"vm: power-on to installer {to_installer:.1f} s (OVMF, iPXE, TFTP, systemd); "
          f"install {install:.1f} s (the installer says {done.group(2)} s); "
          f"installer start to the installed OS ready: kexec {via_kexec:.1f} s, firmware "
          f"{via_firmware:.1f} s (install + shutdown {shutdown:.1f} s + cold boot "
          f"{cold_boot:.1f} s), ratio {via_kexec / via_firmware:.2f} (TCG)")  # fmt: skip
