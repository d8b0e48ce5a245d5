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
