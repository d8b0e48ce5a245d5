"""Releases reach a machine from a signed repository on the host, by hand and through the fleet
agent, and every boot into them is a kexec.

One scenario on one disk, in order (each step needs the state the previous one left); the
repository is served from the host's 127.0.0.1 and reached through QEMU's guestfwd at
10.0.2.100, etcd on the host at 10.0.2.101:2379 (restricted user networking, nothing else):

1. cold boot into USR-A, version 1;
2. the host publishes version 2 with ``updater repo add``; ``updater update`` in the guest is cut
   by a power failure in the middle of the write: the cold boot lands in version 1 again, USR-B
   unbootable;
3. ``updater update --reboot kexec`` resumes the write where it stopped, activates USR-B and
   kexecs into version 2 (no firmware, no GRUB);
4. the agent, enabled with an etcd reboot lock and a health check, picks up version 3 unattended:
   stages it into USR-A, takes the lock, kexecs, passes the health check, commits, releases;
5. version 4 fails the health check: the agent marks it bad, kexecs back into version 3 by
   itself, releases the lock, and never offers version 4 again.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.integration.fleet import RawEtcd, etcd_server
from tests.integration.httprepo import RepoServer
from tests.vm import harness
from tests.vm.conftest import MachineFactory
from tests.vm.test_kexec import BOOT_TIMEOUT, GRUB_MARK, USR_A, USR_B, ready, shell, slot, status

pytestmark = pytest.mark.vm

GUEST_CONFIG = """\
[update]
repo = "http://10.0.2.100"

[agent]
interval = 15
jitter = 0
reboot = "kexec"
metrics_file = "/run/updater.prom"

[lock]
backend = "etcd"
endpoints = ["http://10.0.2.101:2379"]
retry = 5

[health]
# Version 4 is the bad release of this test: its health check fails.
commands = ["sh -c '. /usr/lib/os-release; test \\"$VERSION_ID\\" != 4'"]
deadline = 40
interval = 5
"""


def files_tar(files: Mapping[str, str | bytes], dest: Path) -> Path:
    """Files for the guest as a tar on a read-only drive (``tar -xf /dev/vdb -C /``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode() if isinstance(text, str) else text
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    dest.write_bytes(raw + bytes(-len(raw) % 4096))
    return dest


def publish(built: Any, repo: Path, version: int) -> None:
    from images.build import payload, publish_release  # the builder is loaded by conftest

    publish_release(repo, payload(Path(built.directory), version), Path(built.initrd))


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def agent_state(m: harness.Machine) -> dict[str, Any]:
    out = m.run("updater agent status --json", timeout=120).check().output
    doc: dict[str, Any] = json.loads(out)
    return doc


def settled(doc: dict[str, Any], state: str) -> bool:
    """In ``state`` with the reboot lock given back (the agent reaches a final state first and
    releases the lock in its next step). A final state stays visible only until the agent's
    next check (15 s here), so it is also recognised after it, back in ``idle``: a commit by
    the committed version it left, a rollback by its count and the blocked release (the callers
    check which version)."""
    if doc.get("lock") is not None:
        return False
    if doc.get("state") == "idle":
        if state == "committed":
            return doc.get("committed_version") is not None
        if state == "rolled-back":
            return bool(doc.get("rollbacks")) and bool(doc.get("blocked"))
    return doc.get("state") == state


def wait_agent(m: harness.Machine, state: str, timeout: float = 300) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        doc = agent_state(m)
        if settled(doc, state) or time.monotonic() > end:
            assert settled(doc, state), doc
            return doc
        time.sleep(5)


def test_update_by_hand_and_by_the_agent(
    machines: MachineFactory, ovmf: harness.Firmware, built_image: Any, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(built_image.repo, repo)
    config = files_tar({"etc/updater/updater.toml": GUEST_CONFIG}, tmp_path / "config.tar")
    with RepoServer(repo) as server, etcd_server(tmp_path) as etcd:
        forwards = (harness.Forward(server.server_address[1], 80, "10.0.2.100"),
                    harness.Forward(etcd.port, 2379, "10.0.2.101"))  # fmt: skip
        m = machines(harness.VmConfig(ovmf, disk=Path(built_image.disk), extra_disks=(config,),
                                      forwards=forwards))  # fmt: skip

        # 1. cold boot into version 1
        m.start()
        assert ready(m, 0)[:2] == ("1", USR_A)
        shell(m)
        m.run("tar -xf /dev/vdb -C / && updater sync").check()

        # 2. version 2 published; the write into USR-B is cut by a power failure
        publish(built_image, repo, 2)
        m.run("nohup updater update --json > /root/update.log 2>&1 < /dev/null & true").check()
        end = time.monotonic() + 600
        while True:
            log = m.run("cat /root/update.log", timeout=60).output
            done = [e for e in events(log) if e["event"] == "downloading"]
            if done and done[-1]["bytes"] >= done[-1]["total"] // 3:
                break
            assert time.monotonic() < end and "result" not in log, log
            time.sleep(2)
        m.kill()  # the power cut
        m.start()  # a new console: its text starts with this boot
        m.wait_for(r"Booting USR-a", BOOT_TIMEOUT)
        assert ready(m, 0)[:2] == ("1", USR_A)
        shell(m)
        assert slot(status(m), 4)[:3] == (0, 0, False)

        # 3. the rerun resumes, activates USR-B and kexecs into version 2
        since, start = m.console.position(), time.monotonic()
        m.console.write("updater update --reboot kexec --json\n")
        version, usr, seconds = ready(m, since, start)
        assert (version, usr) == ("2", USR_B)
        text = m.console.text[since:]
        assert not re.search(GRUB_MARK, text), "the firmware path ran"
        assert '"resumed":true' in text and '"status":"updated"' in text
        shell(m)
        print(f"vm: update resumed, activated and kexec'd into version 2 in {seconds:.1f} s")
        m.run("updater mark-good").check()

        # 4. the agent takes version 3 unattended, under the etcd lock
        publish(built_image, repo, 3)
        since = m.console.position()
        m.run("systemctl enable --now updater-mark-good.service updater-agent.service",
              timeout=120).check()  # fmt: skip
        assert ready(m, since)[:2] == ("3", USR_A)
        assert not re.search(GRUB_MARK, m.console.text[since:]), "the firmware path ran"
        shell(m)
        doc = wait_agent(m, "committed")
        assert doc["committed_version"] == "3" and doc["lock"] is None
        assert slot(status(m), 3) == (2, 0, True, True)
        holders = RawEtcd(etcd.url)
        assert holders.holders("default") == [] and holders.most_holders("default") == 1

        # 5. version 4 fails its health check: marked bad, back on version 3 by itself
        publish(built_image, repo, 4)
        since = m.console.position()
        assert ready(m, since)[:2] == ("4", USR_B)
        version, usr, _ = ready(m, m.console.position())
        assert (version, usr) == ("3", USR_A)
        assert not re.search(GRUB_MARK, m.console.text[since:]), "the firmware path ran"
        shell(m)
        doc = wait_agent(m, "rolled-back")
        assert doc["lock"] is None and doc["rollbacks"] == 1
        assert [b["version"] for b in doc["blocked"]] == ["4"]
        assert slot(status(m), 4)[:3] == (0, 0, False)
        assert holders.holders("default") == [] and holders.most_holders("default") == 1
