#!/usr/bin/env python3
"""The main demo: releases reach a machine from a signed repository and boot by kexec, in QEMU.

    .venv/bin/python images/demo.py [--json] [--workdir DIR]

Builds (or reuses) the test disk and boots it through OVMF and GRUB into USR-A (version 1). The
host publishes version 2 with ``updater repo add`` and serves the repository on 127.0.0.1; the
guest reaches it through QEMU's guestfwd (restricted user networking, nothing else).
``updater update --reboot kexec`` streams, verifies and activates version 2 in USR-B and kexecs
into it; it is marked good, and the machine reboots once through the firmware for comparison.
Then the fleet agent takes over: with an etcd reboot lock on the host and a health check, it
picks up version 3 unattended and commits it, and rolls back version 4, whose health check
fails, by itself. Every step prints the A/B state, the agent's state and the lock.

Not a test: tests/vm/test_update.py and tests/vm/test_kexec.py check these paths and their
failure cases.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from images.build import build_all, payload, publish_release  # noqa: E402
from tests.integration.fleet import RawEtcd, etcd_server  # noqa: E402
from tests.integration.httprepo import RepoServer  # noqa: E402
from tests.vm import harness  # noqa: E402
from tests.vm.test_update import GUEST_CONFIG, files_tar, settled  # noqa: E402

READY = r"UPDATER-READY version=(\d+) usr=([0-9a-fA-F-]+)\r?\n"
TIMEOUT = 900


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def step(text: str) -> None:
    say(f"\n\033[1m== {text}\033[0m")


def guest(m: harness.Machine, command: str, timeout: float = 300, show: bool = True) -> str:
    if show:
        say(f"$ {command}")
    out = m.run(command, timeout).check().output
    if show and out.strip():
        say(out.rstrip())
    return out


def until_ready(m: harness.Machine, since: int, start: float) -> tuple[str, float]:
    match = m.wait_for(READY, TIMEOUT, since)
    seconds = time.monotonic() - start
    say(f"... up in {seconds:.1f} s: {match.group(0).strip()}")
    m.wait_shell(180)
    m.run("dmesg -n 1").check()
    return match.group(1), seconds


def reboot_and_time(m: harness.Machine, command: str) -> tuple[str, float]:
    """Type ``command`` (which reboots) and time it until the next ready line."""
    say(f"$ {command}")
    since, start = m.console.position(), time.monotonic()
    m.console.write(command + "\n")
    return until_ready(m, since, start)


def agent_until(m: harness.Machine, states: tuple[str, ...], timeout: float = TIMEOUT) -> None:
    """Print the agent's state whenever it changes, until it is one of ``states`` with the lock
    given back."""
    end, last = time.monotonic() + timeout, None
    while time.monotonic() < end:
        doc = json.loads(m.run("updater agent status --json", 120).check().output)
        line = f"agent: {doc.get('state')} ({doc.get('description')}) version {doc.get('version')}"
        if line != last:
            say(line)
            last = line
        if any(settled(doc, state) for state in states):
            return
        time.sleep(5)
    raise harness.VmError(f"the agent did not reach {states} in {timeout} s")


def run_demo(workdir: Path, show: Callable[[str], None] = step) -> dict[str, Any]:
    show("1. Build (or reuse) the test image: Flatcar layout, USR-A = version 1, USR-B empty")
    built = build_all()
    repo = workdir / "repo"
    shutil.copytree(built.repo, repo)
    say(f"disk {built.disk}\nrelease repository {repo} (version 1 published; keys in keys/)")
    config = files_tar({"etc/updater/updater.toml": GUEST_CONFIG}, workdir / "config.tar")
    with RepoServer(repo) as server, etcd_server(workdir) as etcd:
        forwards = (harness.Forward(server.server_address[1], 80, "10.0.2.100"),
                    harness.Forward(etcd.port, 2379, "10.0.2.101"))  # fmt: skip
        vm = harness.VmConfig(harness.Firmware(), disk=Path(built.disk), extra_disks=(config,),
                              forwards=forwards)  # fmt: skip
        say(f"repository served at {server.url} (guest: http://10.0.2.100), etcd at {etcd.url} "
            "(guest: http://10.0.2.101:2379)")  # fmt: skip
        with harness.machine(vm, workdir / "vm") as m:
            show("2. Cold boot through the firmware (OVMF -> GRUB -> kernel -> verity /usr)")
            start = time.monotonic()
            m.start()
            _, cold = until_ready(m, 0, start)
            guest(m, "tar -xf /dev/vdb -C / && cat /etc/updater/updater.toml", show=False)
            guest(m, "updater status")

            show("3. The host publishes version 2 (updater repo add)")
            publish_release(repo, payload(Path(built.directory), 2), Path(built.initrd))
            say("published stable/x86_64/2: usr.img.zst (zstd frames), vmlinuz, initrd, index")
            guest(m, "updater update --check")

            show("4. updater update: stream, verify, activate version 2, then kexec into it")
            version, update_s = reboot_and_time(m, "updater update --reboot kexec")
            guest(m, "updater status")

            show("5. The new slot is healthy: mark it good")
            guest(m, "updater mark-good")

            show("6. The same reboot with kexec and through the firmware, timed")
            _, kexec_s = reboot_and_time(m, "updater kexec")
            version2, firmware_s = reboot_and_time(m, "updater reboot --via firmware")

            show("7. The fleet agent (etcd reboot lock, health check) takes version 3 unattended")
            publish_release(repo, payload(Path(built.directory), 3), Path(built.initrd))
            say("published stable/x86_64/3")
            guest(m, "systemctl enable --now updater-mark-good.service updater-agent.service",
                  120)  # fmt: skip
            since, start = m.console.position(), time.monotonic()
            agent_until(m, ("rebooting",))
            say(f"lock holders in etcd: {RawEtcd(etcd.url).holders('default')}")
            until_ready(m, since, start)
            agent_until(m, ("committed",))
            say(f"lock holders in etcd: {RawEtcd(etcd.url).holders('default')}")
            guest(m, "updater status")

            show("8. Version 4 fails its health check: the agent rolls it back by itself")
            publish_release(repo, payload(Path(built.directory), 4), Path(built.initrd))
            say("published stable/x86_64/4 (its health check fails)")
            since, start = m.console.position(), time.monotonic()
            m.wait_for(r"UPDATER-READY version=4", TIMEOUT, since)
            say("... booted version 4 (on trial)")
            until_ready(m, m.console.position(), start)
            agent_until(m, ("rolled-back",))
            say(f"lock holders in etcd: {RawEtcd(etcd.url).holders('default')}, most at once: "
                f"{RawEtcd(etcd.url).most_holders('default')}")  # fmt: skip
            guest(m, "updater status")
            m.poweroff()

    result = {
        "cold_boot_seconds": round(cold, 1),
        "update_and_kexec_seconds": round(update_s, 1),
        "kexec_reboot_seconds": round(kexec_s, 1),
        "firmware_reboot_seconds": round(firmware_s, 1),
        "kexec_to_firmware_ratio": round(kexec_s / firmware_s, 2),
        "versions": [version, version2],
    }
    show("Summary")
    say(f"update to version 2 and kexec into it: {update_s:.1f} s (download, verification and "
        "activation included)")
    say(f"reboot to userspace: kexec {kexec_s:.1f} s, firmware {firmware_s:.1f} s "
        f"(kexec takes {result['kexec_to_firmware_ratio']:.2f}x the firmware path; QEMU TCG, "
        "where the firmware is quick; real servers spend minutes in POST)")  # fmt: skip
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
