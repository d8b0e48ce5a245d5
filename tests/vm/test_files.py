"""The file backend in the VM: the OS as image files on ROOT, promoted and reverted by the initrd.

One scenario on one disk, in order (each step needs the state the previous one left); the
repository is served from the host's 127.0.0.1 and reached through QEMU's guestfwd at
10.0.2.100 (restricted user networking, nothing else):

1. cold boot into USR-A, version 1 (the GPT path, as built); the guest is switched to the file
   backend: USR-A's image copied into ``root.img`` with its trailer, its kernel and initrd kept
   by root hash, ``[boot] backend = "files"``;
2. ``updater update`` writes and verifies version 2 into ``root-new.img``;
3. ``updater kexec --prepare`` (nothing counted), then ``systemctl kexec``: the shutdown keeps
   the prepared kernel (the directory still boots root-new.img), the initrd promotes it and
   mounts ``root.img`` through dm-verity on a loop device; version 2 is up, on trial (tries
   3 -> 2: counted once, by the initrd);
4. ``updater rollback --reboot kexec``: the initrd reverts (``root.img`` -> ``root-broken.img``,
   ``root-old.img`` -> ``root.img``); version 1 is up again;
5. version 2 staged again, the first rename of the promotion done, then a power cut: the cold
   boot (GRUB, the GPT path) leaves the directory as the cut left it; ``updater kexec`` from there
   boots the file the rules predict (version 2), the initrd finishing the promotion;
6. the file backend's own GRUB menu (grub/grub-files.cfg) on the ESP, version 5 (a release whose
   /usr carries its kernel and initrd) staged by ``updater update``, then a reboot through the
   firmware: GRUB picks root-new.img, reads the kernel and initrd out of it through
   ``loopback``, and the initrd promotes it and counts the try.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.httprepo import RepoServer
from tests.vm import harness
from tests.vm.conftest import MachineFactory
from tests.vm.test_kexec import BOOT_TIMEOUT, GRUB_MARK, USR_A, ready, shell
from tests.vm.test_update import files_tar, publish

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parent.parent.parent
IMAGES = "/var/lib/updater/images"
READY_ANY = r"UPDATER-READY version=(\d+) usr=([^\r\n]*)\r?\n"
CONFIG = f"""\
[boot]
backend = "files"
images_dir = "{IMAGES}"

[update]
repo = "http://10.0.2.100"
"""

# Copies the booted USR-A (version 1) into root.img with its trailer; its kernel and initrd
# beside it by root hash. Runs in the guest with the image's own updater package.
SEED = f"""\
import json, os
from updater import filebackend as fb
m = json.load(open("/root/files/manifest-v1.json"))
os.makedirs("{IMAGES}", exist_ok=True)
with open("/dev/disk/by-partlabel/USR-A", "rb") as src, open("{IMAGES}/root.img", "wb") as dst:
    left = m["size"]
    while left:
        block = src.read(min(left, 1 << 20))
        dst.write(block)
        left -= len(block)
    dst.write(fb.Trailer(m["root_hash"], m["hash_offset"], m["size"], "1").encode())
    dst.flush()
    os.fsync(dst.fileno())
fb.write_boot_files("{IMAGES}", m["root_hash"], open("/root/files/vmlinuz-v1", "rb").read(),
                    open("/root/files/initrd", "rb").read())
fb.fsync_dir("{IMAGES}")
"""


def files_status(m: harness.Machine) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(m.run("updater status --json", timeout=120).check().output)
    assert doc["backend"] == "files", doc
    return doc


def versions(doc: dict[str, Any]) -> dict[str, str | None]:
    return {s["image"]: s["version"] for s in doc["slots"]}


def booted_file(m: harness.Machine, since: int, start: float) -> tuple[str, float]:
    match = m.wait_for(READY_ANY, BOOT_TIMEOUT, since)
    text = m.console.text[since:]
    assert "UPDATER-FILES: root.img verified" in text, "the initrd did not open root.img"
    assert not re.search(GRUB_MARK, text), "the firmware path ran"
    return match.group(1), time.monotonic() - start


def test_file_backend_update_kexec_revert_and_a_cut_between_renames(
    machines: MachineFactory, ovmf: harness.Firmware, built_image: Any, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(built_image.repo, repo)
    drive = files_tar({
        "etc/updater/updater.toml": CONFIG.encode(),
        "root/files/seed.py": SEED.encode(),
        "root/files/manifest-v1.json": Path(built_image.manifest_v1).read_bytes(),
        "root/files/vmlinuz-v1": Path(built_image.kernel_v1).read_bytes(),
        "root/files/initrd": Path(built_image.initrd).read_bytes(),
        "root/files/grub-files.cfg": (REPO / "grub/grub-files.cfg").read_bytes(),
    }, tmp_path / "files.tar")  # fmt: skip
    with RepoServer(repo) as server:
        forwards = (harness.Forward(server.server_address[1], 80, "10.0.2.100"),)
        m = machines(harness.VmConfig(ovmf, disk=Path(built_image.disk), extra_disks=(drive,),
                                      forwards=forwards))  # fmt: skip

        # 1. cold boot into USR-A, version 1; switch to the file backend
        m.start()
        assert ready(m, 0)[:2] == ("1", USR_A)
        shell(m)
        m.run("tar -xf /dev/vdb -C / && python3 /root/files/seed.py", timeout=600).check()
        doc = files_status(m)
        assert versions(doc) == {"root.img": "1"} and doc["next"] == "root.img"
        assert doc["slots"][0]["booted"] is False  # booted from USR-A, not from the directory

        # 2. version 2 into root-new.img, verified
        publish(built_image, repo, 2)
        out = m.run("updater update --json", timeout=900)
        assert out.status == 0, out.output
        assert '"status":"updated"' in out.output
        doc = files_status(m)
        assert versions(doc) == {"root.img": "1", "root-new.img": "2"}
        assert doc["next"] == "root-new.img" and doc["tries"] == 3

        # 3. a prepared kexec: the initrd promotes and mounts root.img through dm-verity
        text = m.run("updater kexec --prepare --json 2>/dev/null", timeout=300).check().output
        prepared = json.loads(text[text.index("{"):])
        assert (prepared["image"], prepared["version"]) == ("root-new.img", "2"), prepared
        assert m.run("cat /sys/kernel/kexec_loaded").check().output.strip() == "1"
        assert files_status(m)["tries"] == 3, "the preparation counts nothing"
        since, start = m.console.position(), time.monotonic()
        m.console.write("systemctl kexec\n")
        version, seconds = booted_file(m, since, start)
        assert version == "2"
        shell(m)
        print(f"vm: file backend: prepared kexec into version 2 in {seconds:.1f} s")
        doc = files_status(m)
        assert versions(doc) == {"root.img": "2", "root-old.img": "1"} and doc["tries"] == 2
        assert doc["slots"][0] == {**doc["slots"][0], "image": "root.img", "booted": True}
        mounted = m.run("findmnt -n -o SOURCE /usr && ls /sys/class/block/dm-0/slaves").check()
        assert "/dev/mapper/usr" in mounted.output and "loop" in mounted.output

        # 4. rollback: the initrd reverts to version 1
        since, start = m.console.position(), time.monotonic()
        m.console.write("updater rollback --reboot kexec\n")
        version, _ = booted_file(m, since, start)
        assert version == "1"
        shell(m)
        doc = files_status(m)
        assert versions(doc) == {"root.img": "1", "root-broken.img": "2"}
        assert doc["tries"] is None and doc["revert"] is False

        # 5. staged again; a power cut right after the promotion's first rename
        out = m.run("updater update --json", timeout=900)
        assert out.status == 0 and '"status":"updated"' in out.output, out.output
        m.run(f"mv {IMAGES}/root.img {IMAGES}/root-old.img && sync").check()
        m.kill()
        m.start()
        m.wait_for(r"Booting USR-a", BOOT_TIMEOUT)
        assert ready(m, 0)[:2] == ("1", USR_A)  # the GPT path, as built: the directory untouched
        shell(m)
        doc = files_status(m)
        assert doc["next"] == "root-new.img"
        assert doc["plan"] == ["rename root-new.img root.img", "set-tries 2"]
        since, start = m.console.position(), time.monotonic()
        m.console.write("updater kexec\n")
        version, _ = booted_file(m, since, start)
        assert version == "2"
        shell(m)
        doc = files_status(m)
        assert versions(doc) == {"root.img": "2", "root-old.img": "1", "root-broken.img": "2"}
        assert doc["tries"] == 2
        m.run("updater mark-good").check()
        assert files_status(m)["tries"] is None

        # 6. the file backend's GRUB menu: a cold boot reads the kernel out of root-new.img
        from images.build import FILES_MENU_VERSION  # the builder is loaded by conftest

        publish(built_image, repo, FILES_MENU_VERSION)
        out = m.run("updater update --json", timeout=900)
        assert out.status == 0 and '"status":"updated"' in out.output, out.output
        m.run("mcopy -o -i /dev/disk/by-partlabel/EFI-SYSTEM /root/files/grub-files.cfg "
              "::/EFI/BOOT/grub.cfg && sync").check()  # fmt: skip
        since, start = m.console.position(), time.monotonic()
        m.console.write("systemctl reboot\n")
        match = m.wait_for(READY_ANY, BOOT_TIMEOUT, since)
        text = m.console.text[since:]
        assert match.group(1) == str(FILES_MENU_VERSION)
        assert f"updater: booting root-new.img from {IMAGES} (file backend)" in text
        assert "UPDATER-FILES: root.img verified" in text
        assert not re.search(GRUB_MARK, text), "the GPT menu ran"
        print(f"vm: file backend: cold boot through the loopback menu in "
              f"{time.monotonic() - start:.1f} s")  # fmt: skip
        shell(m)
        cmdline = m.run("cat /proc/cmdline").check().output
        assert f"updater.images={IMAGES}" in cmdline and "verity.usrhash" not in cmdline
        doc = files_status(m)
        assert versions(doc)["root.img"] == str(FILES_MENU_VERSION)
        assert versions(doc)["root-old.img"] == "2" and doc["tries"] == 2
