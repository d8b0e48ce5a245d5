"""A clean quiesce without systemd, and a process that keeps its state across ``updater kexec``.

One machine on the A/B disk, booted into USR-A through OVMF and GRUB (systemd):

1. kexec by hand into the same kernel with ``init=`` a small shell script on ROOT, so that PID 1
   is not systemd (no units, no journal: the machine an operator of busybox or sysvinit systems
   has); there ``updater kexec`` quiesces by itself (stops every other process, syncs, unmounts
   or remounts read-only) and executes ``kexec -e``, each step timed on the console; the new boot
   is the slot's own (GRUB's command line, systemd again);
2. on that systemd machine a counter (a shell loop that adds one every second and writes the
   sum to a file) is selected in ``[checkpoint]``; ``updater kexec`` dumps it with CRIU before
   the jump, and the next boot's ``updater-restore.service`` restores it with its pid and its
   count and reports the downtime.

Prints the time of each quiesce step and the downtime. Needs the image (``images/``, with
Debian's ``criu``) and ``criu check`` passing in the guest's kernel; skips naming what is
missing.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.vm import harness
from tests.vm.conftest import MachineFactory

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 420
READY = r"UPDATER-READY version=(\d+) usr=([0-9a-fA-F-]+)\r?\n"
PLAIN_READY = r"PLAIN-INIT-READY pid1=(\S+)\r?\n"

# PID 1 without systemd. dracut's initrd has moved /dev, /proc, /sys and /run into the new root
# already; this mounts what is left, says so, and keeps a root shell on the serial console.
PLAIN_INIT = r"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mountpoint -q /run || mount -t tmpfs tmpfs /run
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
hostname plain
echo "PLAIN-INIT-READY pid1=$(cat /proc/1/comm)" > /dev/ttyS0
while true; do
    setsid -c sh -i < /dev/ttyS0 > /dev/ttyS0 2>&1
done
"""

# Counts seconds in a shell variable (the state CRIU must carry) and writes it out: a daemon of
# its own, as a workload is (a session leader, no terminal; its pid file written by itself). The
# pid is pushed high first: CRIU restores the same pids, and a low one may be taken in the new
# boot.
COUNTER = (
    "mkdir -p /var/lib/counter && echo 30000 > /proc/sys/kernel/ns_last_pid && "
    "setsid -f sh -c 'echo $$ > /var/lib/counter/pid; i=0; while :; do i=$((i+1)); "
    "echo $i > /var/lib/counter/count; sleep 1; done' < /dev/null > /dev/null 2>&1 && "
    "sleep 1 && test -s /var/lib/counter/pid"
)

QUIESCE_CONFIG = """\
[quiesce]
grace = 1
"""

CHECKPOINT_CONFIG = """\
[checkpoint]
pidfiles = ["/var/lib/counter/pid"]
shell_job = false
"""

STEP = re.compile(r"updater: quiesce: (\w+) (.+?) (\d+\.\d+) s\b")


def shell(m: harness.Machine) -> None:
    m.wait_shell(180)
    m.run("dmesg -n 1").check()


def put_file(m: harness.Machine, path: str, text: str) -> None:
    """Write ``text`` to ``path`` in the guest, line by line (the console takes single lines)."""
    m.run(f": > {path}").check()
    for line in text.splitlines():
        quoted = line.replace("'", "'\\''")
        m.run(f"printf '%s\\n' '{quoted}' >> {path}").check()


def test_counter_survives_updater_kexec_without_systemd(
    machines: MachineFactory, ovmf: harness.Firmware, built_image: Any, tmp_path: Path
) -> None:
    m = machines(harness.VmConfig(ovmf, disk=Path(built_image.disk)))
    m.start()
    m.wait_for(READY, BOOT_TIMEOUT)
    shell(m)
    why = m.run("criu check 2>&1 | tail -n 1", timeout=120)
    if m.run("criu check >/dev/null 2>&1").status != 0:
        pytest.skip(f"criu check fails in the guest's kernel: {why.output.strip()}")

    # 1. Into a machine without systemd: the same kernel, init= a shell script on ROOT.
    put_file(m, "/root/plain-init", PLAIN_INIT)
    m.run("chmod 755 /root/plain-init").check()
    m.run(
        "export MTOOLS_SKIP_CHECK=1; mcopy -o -n -i /dev/disk/by-partlabel/EFI-SYSTEM "
        "::/flatcar/vmlinuz-a ::/flatcar/initrd-a /run/ && "
        "kexec -s -l /run/vmlinuz-a --initrd=/run/initrd-a "
        # The first boot's marker is gone from the ESP by now: drop it from the words too.
        "--append=\"$(sed 's/flatcar.first_boot=[^ ]*//' /proc/cmdline) init=/root/plain-init\""
    ).check()
    since = m.console.position()
    m.console.write("systemctl kexec\n")
    pid1 = m.wait_for(PLAIN_READY, BOOT_TIMEOUT, since)
    assert pid1.group(1) != "systemd"
    shell(m)
    assert m.run("cat /proc/1/comm").check().output.strip() != "systemd"

    # 2. updater kexec without systemd: quiesce and jump; the slot's own boot brings systemd back.
    m.run("mkdir -p /etc/updater").check()
    put_file(m, "/etc/updater/updater.toml", QUIESCE_CONFIG)
    plan = m.run("updater kexec --dry-run", timeout=120).check().output
    assert "kexec -e" in plan and "killall5 -15" in plan and "systemctl" not in plan
    since = m.console.position()
    m.console.write("updater kexec\n")
    m.wait_for(READY, BOOT_TIMEOUT, since)
    steps = STEP.findall(m.console.text[since:])
    assert [s[0] for s in steps][:1] == ["stop"] and steps[-1][0] == "unmount", steps
    shell(m)
    assert m.run("cat /proc/1/comm").check().output.strip() == "systemd"

    # 3. A workload, selected for the checkpoint; it counts for a while.
    m.run(COUNTER).check()
    put_file(m, "/etc/updater/updater.toml", CHECKPOINT_CONFIG)
    pid = int(m.run("cat /var/lib/counter/pid").check().output)
    time.sleep(5)
    before = int(m.run("cat /var/lib/counter/count").check().output)
    assert before >= 1

    # 4. updater kexec: dump, jump (systemctl kexec); the next boot restores the counter.
    since = m.console.position()
    m.console.write("updater kexec\n")
    m.wait_for(READY, BOOT_TIMEOUT, since)
    log = m.console.text[since:]
    assert "checkpoint: dumped pidfile:/var/lib/counter/pid" in log, log[-3000:]
    shell(m)
    restored = m.run("journalctl -b -o cat -u updater-restore.service").check().output
    found = re.search(r"restored 1 of 1 process tree\(s\) .*; downtime (\d+\.\d) s", restored)
    assert found, restored
    assert m.run(f"cat /proc/{pid}/cmdline | tr '\\0' ' '").check().output.startswith("sh -c")
    m.run("sleep 2").check()
    after = int(m.run("cat /var/lib/counter/count").check().output)
    assert after > before  # the count went on from where it was, in the same process

    print("\nquiesce without systemd (TCG), seconds per step:")
    for phase, what, seconds in steps:
        print(f"  {phase:8} {seconds:>6}  {what}")
    total = sum(float(s[2]) for s in steps)
    print(f"  total before kexec -e: {total:.2f} s")
    print(f"counter: {before} before the kexec, {after} after; downtime {found.group(1)} s "
          "(CRIU freeze to restored, wall clock)")  # fmt: skip
