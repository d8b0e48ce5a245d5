"""Smoke test of the harness itself: the host's kernel and a busybox initramfs under QEMU TCG.

Needs nothing from the project: it proves that QEMU starts, the console is captured from the first
byte, commands run over the serial console with their status, and the guest powers off.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm import harness, initramfs
from tests.vm.conftest import MachineFactory

pytestmark = pytest.mark.vm

INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "SMOKE-INIT kernel=$(uname -r)"
# cttyhack gives the shell the serial port as its controlling terminal.
exec setsid cttyhack sh -i
"""


@pytest.fixture(scope="module")
def busybox_initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if harness.missing_tools(["busybox"]) or not initramfs.BUSYBOX.is_file():
        pytest.skip("busybox missing (Debian package busybox-static)")
    path = tmp_path_factory.mktemp("initrd") / "initrd.cpio"
    path.write_bytes(initramfs.busybox_initramfs(INIT))
    return path


def test_direct_kernel_boot_runs_commands(
    machines: MachineFactory, host_kernel: Path, busybox_initrd: Path
) -> None:
    release = host_kernel.name.removeprefix("vmlinuz-")
    m = machines(
        harness.VmConfig(
            harness.DirectKernel(
                host_kernel, busybox_initrd, "console=ttyS0 quiet panic=-1 smoke.token=tcg-42"
            ),
            # A kernel panic ends QEMU instead of rebooting into the same panic.
            extra_args=("-no-reboot",),
        )
    )
    m.start()
    booted = m.wait_for(r"SMOKE-INIT kernel=(\S+)\r?\n", timeout=120)
    assert booted.group(1) == release

    m.wait_shell(timeout=60)
    result = m.run("echo $((6 * 7)); cat /proc/cmdline")
    assert result.status == 0
    lines = result.output.splitlines()
    assert lines[0] == "42"
    assert "smoke.token=tcg-42" in lines[1]

    failed = m.run("ls /does-not-exist")
    assert failed.status != 0
    assert "does-not-exist" in failed.output

    assert m.poweroff("poweroff -f", timeout=60) == 0
    assert "SMOKE-INIT" in m.runs[0].read_text(errors="replace")


# virtio-pci for the device and virtio-blk for the disk; they are modules in Debian's kernel.
VIRTIO_MODULES = ("kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/block/virtio_blk.ko")


def load_order(moddir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Modules to insmod, dependencies first: modules.dep lists a module's dependencies so that
    the last one must be loaded first."""
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        name, _, rest = line.partition(":")
        deps[name] = rest.split()
    order: list[str] = []
    for module in wanted:
        for m in [*reversed(deps[module]), module]:
            if m not in order:
                order.append(m)
    return order


DISK_INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {modules}; do insmod /lib/modules/$m; done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
if [ -b /dev/vda ]; then echo "SMOKE-DISK-READY"; else echo "SMOKE-DISK-MISSING"; fi
exec setsid cttyhack sh -i
"""


@pytest.fixture(scope="module")
def disk_initrd(tmp_path_factory: pytest.TempPathFactory, host_kernel: Path) -> Path:
    """A busybox initramfs with the host kernel's virtio-blk modules (they are not built in)."""
    if not initramfs.BUSYBOX.is_file():
        pytest.skip("busybox missing (Debian package busybox-static)")
    moddir = Path("/lib/modules") / host_kernel.name.removeprefix("vmlinuz-")
    try:
        modules = load_order(moddir, VIRTIO_MODULES)
    except (OSError, KeyError) as e:
        pytest.skip(f"virtio modules of {host_kernel.name} not found in {moddir}: {e}")
    missing = [m for m in modules if not (moddir / m).is_file()]
    if missing:
        pytest.skip(f"uncompressed modules missing under {moddir}: {', '.join(missing)}")
    names = [Path(m).name for m in modules]
    extra = [initramfs.directory("lib"), initramfs.directory("lib/modules")]
    extra += [initramfs.file(f"lib/modules/{Path(m).name}", moddir / m) for m in modules]
    path = tmp_path_factory.mktemp("initrd-disk") / "initrd.cpio"
    path.write_bytes(
        initramfs.busybox_initramfs(DISK_INIT.format(modules=" ".join(names)), extra=extra)
    )
    return path


def test_overlay_survives_hard_kill_and_base_stays_untouched(
    machines: MachineFactory, host_kernel: Path, disk_initrd: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"BASE-CONTENT".ljust(1 << 20, b"\0"))
    payload = tmp_path / "payload.raw"
    payload.write_bytes(b"PAYLOAD".ljust(1 << 16, b"\0"))
    m = machines(
        harness.VmConfig(
            harness.DirectKernel(host_kernel, disk_initrd, "console=ttyS0 quiet panic=-1"),
            disk=base,  # no -no-reboot here: it would turn the reset below into an exit
            extra_disks=(payload,),
        )
    )
    m.start()
    m.wait_for(r"SMOKE-DISK-READY\r?\n", timeout=60)
    m.wait_shell(timeout=60)
    assert m.run("head -c 12 /dev/vda; echo").check().output == "BASE-CONTENT\n"
    m.run("printf OVERLAY-WRITE | dd of=/dev/vda bs=512 seek=1 conv=fsync 2>/dev/null").check()
    assert m.run("head -c 7 /dev/vdb; echo").check().output == "PAYLOAD\n"
    assert m.run("cat /sys/block/vdb/ro").check().output == "1\n"

    # Cut the power right after the guest's flush: the write must be in the overlay.
    m.kill()
    m.start()
    m.wait_for(r"SMOKE-DISK-READY\r?\n", timeout=60)
    m.wait_shell(timeout=60)
    assert m.run(
        "dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | head -c 13; echo"
    ).check().output == ("OVERLAY-WRITE\n")

    # The reset button reboots the same QEMU process: the console shows a second boot.
    after = m.console.position()
    m.reset()
    m.wait_for(r"SMOKE-DISK-READY\r?\n", timeout=60, since=after)
    m.quit()

    assert base.read_bytes()[:1024] == b"BASE-CONTENT".ljust(1024, b"\0")
    assert len(m.runs) == 2
