"""Hooks and the pin on the test disk, booted through OVMF and GRUB, with releases from a signed
repository on the host (10.0.2.100 through QEMU's guestfwd, nothing else):

1. cold boot into USR-A, version 1; the host publishes version 2;
2. ``updater pin 1``: ``updater update`` has nothing to do, and ``--version 2`` is refused;
   ``updater unpin``;
3. ``updater update --reboot kexec``: the pre-install hook sees the documented environment, the
   post-install hook reads version 2's os-release from the new slot mounted read-only (the real
   partition), the pre-reboot hook runs, and the machine kexecs into version 2;
4. ``updater agent verify`` (what updater-mark-good.service runs) runs the first-boot-of-slot
   hook, which fails for version 2: the health check fails, USR-B is marked bad and the agent
   kexecs back into version 1; the hook ran exactly once.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.integration.httprepo import RepoServer
from tests.vm import harness
from tests.vm.conftest import MachineFactory
from tests.vm.test_kexec import GRUB_MARK, USR_A, USR_B, ready, shell, slot, status
from tests.vm.test_update import agent_state, files_tar, publish

pytestmark = pytest.mark.vm

CONFIG = """\
[update]
repo = "http://10.0.2.100"

[health]
deadline = 60
interval = 5
"""

HOOKS = {
    "etc/updater/hooks/pre-install.d/10-record": "env | grep ^UPDATER_ | sort > /root/pre.env\n",
    "etc/updater/hooks/post-install.d/10-look":
        'grep VERSION_ID "$UPDATER_SLOT_MOUNT/lib/os-release" > /root/post.txt\n'
        'touch "$UPDATER_SLOT_MOUNT/written" 2>/dev/null && echo writable >> /root/post.txt\n'
        "exit 0\n",
    "etc/updater/hooks/pre-reboot.d/10-record":
        'echo "$UPDATER_SLOT $UPDATER_VERSION" > /root/pre-reboot.txt\n',
    "etc/updater/hooks/first-boot-of-slot.d/10-driver":
        '. /usr/lib/os-release; echo "first boot of $VERSION_ID" >> /root/first-boot.log\n'
        'test "$VERSION_ID" != 2\n',
}  # fmt: skip
FILES = {"etc/updater/updater.toml": CONFIG,
         **{name: "#!/bin/sh\n" + text for name, text in HOOKS.items()}}  # fmt: skip


def test_hooks_and_pin(machines: MachineFactory, ovmf: harness.Firmware, built_image: Any,
                       tmp_path: Path) -> None:  # fmt: skip
    repo = tmp_path / "repo"
    shutil.copytree(built_image.repo, repo)
    with RepoServer(repo) as server:
        forwards = (harness.Forward(server.server_address[1], 80, "10.0.2.100"),)
        m = machines(harness.VmConfig(ovmf, disk=Path(built_image.disk),
                                      extra_disks=(files_tar(FILES, tmp_path / "files.tar"),),
                                      forwards=forwards))  # fmt: skip

        # 1. cold boot into version 1; version 2 published
        m.start()
        assert ready(m, 0)[:2] == ("1", USR_A)
        shell(m)
        m.run("tar -xf /dev/vdb -C / && chmod 755 /etc/updater/hooks/*.d/* && updater sync").check()
        publish(built_image, repo, 2)

        # 2. the pin holds the machine at 1
        assert m.run("updater pin 1").check().output.strip() == "pinned to release 1"
        held = m.run("updater update; echo exit=$?", timeout=300)
        assert "already running release 1" in held.output and "exit=3" in held.output
        refused = m.run("updater update --version 2; echo exit=$?", timeout=300)
        assert "pinned to release 1: --version 2 refused" in refused.output
        assert "exit=1" in refused.output
        assert slot(status(m), 4)[:3] == (0, 0, False)
        m.run("updater unpin").check()

        # 3. the update's hooks, then the kexec into version 2
        since = m.console.position()
        m.console.write("updater update --reboot kexec\n")
        assert ready(m, since)[:2] == ("2", USR_B)
        assert not re.search(GRUB_MARK, m.console.text[since:]), "the firmware path ran"
        shell(m)
        env = m.run("cat /root/pre.env").check().output.splitlines()
        assert "UPDATER_STAGE=pre-install" in env and "UPDATER_VERSION=2" in env
        assert "UPDATER_SLOT=B" in env and "UPDATER_BOOTED_VERSION=1" in env
        assert m.run("cat /root/post.txt").check().output.strip() == "VERSION_ID=2"
        assert m.run("cat /root/pre-reboot.txt").check().output.strip() == "B 2"
        assert slot(status(m), 4)[2:] == (False, True)

        # 4. the first-boot-of-slot hook fails: the agent goes back to version 1
        since = m.console.position()
        m.console.write("updater agent verify\n")
        assert ready(m, since)[:2] == ("1", USR_A)
        shell(m)
        assert m.run("cat /root/first-boot.log").check().output.strip() == "first boot of 2"
        doc = agent_state(m)
        assert doc["state"] == "rolled-back", doc
        assert "first-boot-of-slot hook 10-driver exited 1" in (doc["last_error"] or ""), doc
        assert [b["version"] for b in doc["blocked"]] == ["2"]
        assert slot(status(m), 4)[:3] == (0, 0, False)
        print("vm: hooks ran at every stage; a failing first-boot hook rolled version 2 back")
