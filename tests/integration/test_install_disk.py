"""``updater install`` end to end on image files and loop devices, checked with other tools:
sgdisk and cgpt read the table, fsck.fat and e2fsck the filesystems, veritysetup the slot,
mtools and debugfs the files, grub-editenv the grubenv, wipefs and the kernel's partition scan
the disk after an install was killed. The release is a real squashfs with a veritysetup tree,
published by ``updater repo``; GRUB is a real ``grub-mkimage`` binary."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import Cli, loop_device, need_tools, sgdisk_attributes, tool
from tests.integration.httprepo import Fault, FaultProxy, RepoServer
from tests.integration.test_repo_cli import Payload, make_payload
from updater import gptformat, layout
from updater.gpt import open_disk

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DISK_SIZE = 6 << 30  # the layout needs about 4.6 GiB; sparse
OEM_CFG = 'set oem_id="qemu"\nset linux_append="updater.test=1"\n'


@dataclass(frozen=True)
class Release:
    repo: Path
    payload: Payload
    assets: Path

    def args(self, *extra: str) -> list[str]:
        return ["--repo", str(self.repo), "--trusted-root", str(self.repo / "metadata/1.root.json"),
                "--assets", str(self.assets), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    need_tools("mksquashfs", "veritysetup", "grub-mkimage", "mkfs.fat", "mkfs.ext4", "mcopy",
               "wipefs", "sgdisk")  # fmt: skip
    if not Path("/usr/lib/grub/x86_64-efi/linux.mod").is_file():
        pytest.skip("needs GRUB's EFI modules (Debian package grub-efi-amd64-bin)")
    tmp = tmp_path_factory.mktemp("release")
    payload = make_payload(tmp, "squashfs", 1)
    repo = tmp / "repo"
    cli = Cli()
    cli("repo", "init", str(repo))
    (tmp / "initrd").write_bytes(os.urandom(5000))
    cli("repo", "add", str(repo), "--version", "1", "--usr", str(payload.usr),
        "--kernel", str(payload.kernel), "--initrd", str(tmp / "initrd"))  # fmt: skip
    assets = tmp / "assets"
    (assets / "grub").mkdir(parents=True)
    tool("grub-mkimage", "-O", "x86_64-efi", "-d", "/usr/lib/grub/x86_64-efi", "-p", "/EFI/BOOT",
         "-o", str(assets / "grub/BOOTX64.EFI"), "part_gpt", "fat", "normal")  # fmt: skip
    shutil.copyfile(ROOT / "grub/grub.cfg", assets / "grub/grub.cfg")
    (assets / "root/etc").mkdir(parents=True)
    (assets / "root/etc/hostname").write_text("installed\n")
    os.symlink("usr/bin", assets / "root/bin")
    (assets / "oem/qemu").mkdir(parents=True)
    (assets / "oem/qemu/grub.cfg").write_text(OEM_CFG)
    return Release(repo, payload, assets)


def blank(path: Path, size: int = DISK_SIZE) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def events(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def partition_bytes(disk: Path, number: int) -> tuple[int, int]:
    with open_disk(str(disk)) as d:
        table = gptformat.read_table(d)
        e = gptformat.entries_by_number(table.used_entries())[number]
        return e.first_lba * d.sector_size, (e.last_lba - e.first_lba + 1) * d.sector_size


def check_installed(disk: str, release: Release) -> None:
    """Every part of an installed disk, read by a tool other than the updater."""
    assert "No problems found" in tool("sgdisk", "-v", disk)
    spec = layout.flatcar_layout()
    for p in spec.partitions:
        info = tool("sgdisk", "-i", str(p.number), disk)
        assert f"Partition GUID code: {str(p.type_guid).upper()}" in info
        assert f"Partition name: '{p.label}'" in info
    assert "Partition unique GUID: 7130C94A-213A-4E5A-8E26-6CCE9662F132" in tool(
        "sgdisk", "-i", "3", disk
    )
    assert sgdisk_attributes(Path(disk), 3) == 0x0101000000000000  # P1 T0 S1
    assert sgdisk_attributes(Path(disk), 4) == 0
    if shutil.which("cgpt"):
        assert [tool("cgpt", "show", "-i", "3", f"-{f}", disk).strip() for f in "PTS"] == [
            "1", "0", "1",
        ]  # fmt: skip


def test_install_on_an_image_file(release: Release, fast_tmp: Path, cli: Cli) -> None:
    need_tools("fsck.fat", "e2fsck", "debugfs", "grub-editenv", "mtype")
    disk = blank(fast_tmp / "disk.img")
    out = cli("install", "--disk", str(disk), "--oem", "qemu", "--yes", "--json",
              *release.args())  # fmt: skip
    stream = events(out.stdout)
    assert stream[0]["event"] == "installing" and stream[0]["version"] == "1"
    assert [e["step"] for e in stream if e["event"] == "step"] == [
        "clear", "format", "slot", "boot-files", "partition-table", "verify",
    ]  # fmt: skip
    assert {e["event"] for e in stream} >= {"downloading", "verifying", "boot-files"}
    assert stream[-1]["event"] == "result" and stream[-1]["status"] == "installed"
    assert stream[-1]["slots"][0]["successful"] is True  # type: ignore[index]
    check_installed(str(disk), release)
    # the ESP: FAT that fsck accepts, the files GRUB and the boot path read
    esp_off, esp_size = partition_bytes(disk, 1)
    esp = fast_tmp / "esp.img"
    with disk.open("rb") as src, esp.open("wb") as dst:
        src.seek(esp_off)
        dst.write(src.read(esp_size))
    tool("fsck.fat", "-n", str(esp))
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}

    def esp_file(name: str) -> bytes:
        return subprocess.run(["mtype", "-i", str(esp), f"::/{name}"], capture_output=True,
                              check=True, env=env).stdout  # fmt: skip

    assert esp_file("flatcar/vmlinuz-a") == release.payload.kernel.read_bytes()
    assert esp_file("EFI/BOOT/BOOTX64.EFI") == (release.assets / "grub/BOOTX64.EFI").read_bytes()
    assert esp_file("flatcar/first_boot") == b""
    (fast_tmp / "grubenv").write_bytes(esp_file("flatcar/grubenv"))
    listed = tool("grub-editenv", str(fast_tmp / "grubenv"), "list")
    env_vars = dict(line.split("=", 1) for line in listed.split())
    assert env_vars["usr_a_priority"] == "1" and env_vars["usr_a_successful"] == "1"
    assert env_vars["usr_a_hash"] == release.payload.root_hash and env_vars["usr_b_priority"] == "0"
    # OEM and ROOT: ext4 that e2fsck accepts, with their files
    for number, label in ((6, "OEM"), (9, "ROOT")):
        off, size = partition_bytes(disk, number)
        with loop_device(disk, offset=off, size=size) as dev:
            tool("e2fsck", "-fn", dev)
            assert tool("blkid", "-p", "-s", "LABEL", "-o", "value", dev).strip() == label
    off, _ = partition_bytes(disk, 6)
    assert tool("debugfs", "-R", "cat /grub.cfg", f"{disk}?offset={off}") == OEM_CFG
    off, _ = partition_bytes(disk, 9)
    assert tool("debugfs", "-R", "cat /etc/hostname", f"{disk}?offset={off}") == "installed\n"
    # USR-A: the image, as veritysetup checks it against the signed root hash
    off, size = partition_bytes(disk, 3)
    with loop_device(disk, offset=off, size=size) as dev:
        tool("veritysetup", "verify", dev, dev, release.payload.root_hash,
             f"--hash-offset={release.payload.hash_offset}")  # fmt: skip
    # the slot rules agree: USR-A boots next
    status = json.loads(cli("--disk", str(disk), "status", "--json").stdout)
    assert status["next"] == 3


def test_from_a_tar_of_the_repository_into_both_slots(
    release: Release, fast_tmp: Path, cli: Cli
) -> None:
    archive = fast_tmp / "release.tar"
    with tarfile.open(archive, "w") as tar:
        for top in ("metadata", "targets"):
            tar.add(release.repo / top, arcname=top)
    disk = blank(fast_tmp / "disk.img")
    args = release.args("--both-slots", "--yes")
    args[0:2] = ["--image", str(archive)]
    cli("install", "--disk", str(disk), *args)
    check_installed(str(disk), release)
    for number in (3, 4):
        off, size = partition_bytes(disk, number)
        with loop_device(disk, offset=off, size=size) as dev:
            tool("veritysetup", "verify", dev, dev, release.payload.root_hash,
                 f"--hash-offset={release.payload.hash_offset}")  # fmt: skip
    (fast_tmp / "release.tar.gz").write_bytes(b"\x1f\x8b" + archive.read_bytes())
    packed = cli("install", "--disk", str(disk), "--image", str(fast_tmp / "release.tar.gz"),
                 *args[2:], "--wipe", check=False)  # fmt: skip
    assert packed.returncode == 1 and "is compressed" in packed.stderr


def disk_digest(disk: Path) -> bytes:
    """The bytes that differ between a used and an installed disk: both ends, every MiB boundary
    where the layout puts a partition start."""
    h = hashlib.sha256()
    with disk.open("rb") as f:
        for off in range(0, disk.stat().st_size, 64 << 20):
            f.seek(off)
            h.update(f.read(1 << 20))
        f.seek(-(1 << 20), os.SEEK_END)
        h.update(f.read())
    return h.digest()


def used_disk(path: Path) -> Path:
    blank(path)
    tool("sgdisk", "-n", "1:2048:+64M", "-t", "1:8300", str(path))
    off = 2048 * 512
    tool("mkfs.ext4", "-q", "-F", "-E", f"offset={off}", str(path), "64M")
    return path


def test_refusals_change_nothing(release: Release, fast_tmp: Path, cli: Cli) -> None:
    disk = used_disk(fast_tmp / "used.img")
    before = disk_digest(disk)
    held = cli("install", "--disk", str(disk), "--yes", *release.args(), check=False)
    assert held.returncode == 1
    assert "is not empty: it holds a gpt partition table; partition 1" in held.stderr
    assert "pass --wipe" in held.stderr and held.stderr.count("\n") == 1
    # a repository whose timestamp signature is broken: refused before the disk is touched
    bad = fast_tmp / "bad-repo"
    shutil.copytree(release.repo, bad)
    stamp = json.loads((bad / "metadata/timestamp.json").read_text())
    sig = stamp["signatures"][0]["sig"]
    stamp["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    (bad / "metadata/timestamp.json").write_text(json.dumps(stamp))
    args = release.args("--wipe", "--yes", "--json")
    args[1] = str(bad)
    forged = cli("install", "--disk", str(disk), *args, check=False)
    assert forged.returncode == 1 and "not signed by enough trusted keys" in forged.stderr
    last = events(forged.stdout)[-1]
    assert (last["event"], last["status"], last["step"]) == ("result", "failed", None)
    assert last["disk_changed"] is False and last["exit"] == 1
    assert "not signed by enough trusted keys" in str(last["error"])
    small = blank(fast_tmp / "small.img", 1 << 30)
    tiny = cli("install", "--disk", str(small), "--yes", *release.args(), check=False)
    assert tiny.returncode == 1 and "the layout needs at least" in tiny.stderr
    unasked = cli("install", "--disk", str(disk), "--wipe", *release.args(), check=False)
    assert unasked.returncode == 2 and "without --yes" in unasked.stderr
    assert disk_digest(disk) == before


def test_a_mounted_disk_is_refused_even_with_wipe(
    release: Release, fast_tmp: Path, cli: Cli
) -> None:
    need_tools("mount", "umount", "losetup")
    image = fast_tmp / "mounted.img"
    blank(image, 64 << 20)
    tool("mkfs.ext4", "-q", "-F", str(image))
    where = fast_tmp / "mnt"
    where.mkdir()
    with loop_device(image) as dev:
        if subprocess.run(["mount", dev, str(where)], capture_output=True).returncode != 0:
            pytest.skip("cannot mount a loop device here")
        try:
            refused = cli("install", "--disk", dev, "--wipe", "--yes", *release.args(), check=False)
        finally:
            subprocess.run(["umount", str(where)], check=True)
    assert refused.returncode == 1
    assert f"{dev} is in use (mounted at {where})" in refused.stderr


@pytest.fixture
def stalled(release: Release) -> Iterator[str]:
    """The repository over HTTP, the image download stalling: an install waits in its slot."""
    with RepoServer(release.repo) as server, FaultProxy(
        server.url, [Fault("usr.img.zst", "stall")]
    ) as proxy:
        yield proxy.url


def test_a_killed_install_leaves_a_blank_disk_and_a_rerun_succeeds(
    release: Release, fast_tmp: Path, cli: Cli, stalled: str
) -> None:
    disk = used_disk(fast_tmp / "disk.img")
    args = release.args("--yes", "--json", "--wipe")
    args[1] = stalled
    exe = ROOT / ".venv/bin/updater"
    proc = subprocess.Popen([str(exe), "install", "--disk", str(disk), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(json.loads(line))
        if seen[-1].get("step") == "slot":
            time.sleep(1)  # into the stalled download
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(30)
    assert seen and seen[-1]["step"] == "slot", seen
    # no partition table, no signature anywhere a disk is probed: "blank" to every reader
    with open_disk(str(disk)) as d, pytest.raises(Exception, match="protective MBR"):
        gptformat.read_table(d)
    assert tool("wipefs", "--no-act", str(disk)).strip() == ""
    # the same command without --wipe now finds an empty disk
    again = release.args("--yes")
    cli("install", "--disk", str(disk), *again)
    check_installed(str(disk), release)


def test_on_a_loop_device_with_4096_byte_sectors(
    release: Release, fast_tmp: Path, cli: Cli
) -> None:
    """A block device with 4096-byte logical sectors: libparted's alignment in 4 KiB sectors,
    a FAT16 ESP (FAT32 needs 65525 clusters, more than 128 MiB holds in 4 KiB clusters)."""
    need_tools("losetup", "blkid", "fsck.fat", "e2fsck")
    image = blank(fast_tmp / "4k.img")
    with loop_device(image, sector_size=4096) as dev:
        cli("install", "--disk", dev, "--oem", "qemu", "--yes", *release.args())
        check_installed(dev, release)
        assert int(tool("blockdev", "--getss", dev)) == 4096
        st = json.loads(cli("--disk", dev, "status", "--json").stdout)
        assert st["gpt"]["sector_size"] == 4096 and st["next"] == 3
        checks = {1: ["fsck.fat", "-n"], 6: ["e2fsck", "-fn"], 9: ["e2fsck", "-fn"]}
        for number, argv in checks.items():
            off, size = partition_bytes(Path(dev), number)
            with loop_device(Path(dev), sector_size=4096, offset=off, size=size) as part:
                tool(*argv, part)
        off, _ = partition_bytes(Path(dev), 1)
        assert "TYPE=\"vfat\"" in tool("blkid", "-p", "-O", str(off), dev)
        off, size = partition_bytes(Path(dev), 3)
        with loop_device(Path(dev), sector_size=4096, offset=off, size=size) as usr:
            tool("veritysetup", "verify", usr, usr, release.payload.root_hash,
                 f"--hash-offset={release.payload.hash_offset}")  # fmt: skip
