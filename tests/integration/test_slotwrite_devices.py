"""The slot writer on real block devices and full filesystems, as root.

The image's hash tree and root hash come from ``veritysetup format`` (the oracle), and the
written slot must pass ``veritysetup verify``. Slots are loop devices over ranges of one disk
image, as partitions are ranges of a disk (this kernel may create no partition nodes for loop
devices): the booted slot must be refused under every name that reaches its bytes. A tmpfs
mounted with a small size gives ENOSPC; a loop device whose backing file lives on it gives an
I/O error from the block layer. Nothing may be activated, so each failure must leave the journal
counting only frames that are on the device.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from updater import frames
from updater.errors import DeviceError, SlotError
from updater.slotwrite import FileSource, ImageFacts, Region, write_image
from updater.slotwrite import journal as journal_file

from .conftest import loop_device, need_tools, tool

pytestmark = pytest.mark.integration

MiB = 1 << 20
DATA = 3 * MiB + 4096 * 37  # data blocks, then the hash area at this offset
SLOT = 8 * MiB
UUID = "00000000-0000-4000-8000-000000000001"


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounts)")


@dataclass(frozen=True)
class Image:
    raw: bytes
    compressed: Path
    facts: ImageFacts


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    need_tools("veritysetup")
    directory = tmp_path_factory.mktemp("image")
    path = directory / "usr.img"
    path.write_bytes((os.urandom(2048) + bytes(2048)) * (DATA // 4096))
    out = tool(
        "veritysetup", "format", str(path), str(path), f"--hash-offset={DATA}",
        f"--data-blocks={DATA // 4096}", "--salt=5a5a", f"--uuid={UUID}",
    )  # fmt: skip
    match = re.search(r"^Root hash:\s+([0-9a-f]{64})$", out, re.M)
    assert match, out
    raw = path.read_bytes()
    chunks = [raw[i : i + MiB] for i in range(0, len(raw), MiB)]
    table, compressed = frames.table_of(frames.compress_frames(chunks, MiB, level=3), MiB)
    (directory / "usr.img.zst").write_bytes(compressed)
    facts = ImageFacts(
        len(compressed), hashlib.sha256(compressed).hexdigest(), table,
        bytes.fromhex(match.group(1)), DATA,
    )  # fmt: skip
    return Image(raw, directory / "usr.img.zst", facts)


def write(image: Image, dest: str, booted: str | None, state: Path) -> None:
    write_image(
        FileSource(str(image.compressed)), image.facts, Region(dest),
        booted=Region(booted) if booted else None, state_dir=str(state),
    )  # fmt: skip


@pytest.fixture
def disk(fast_tmp: Path) -> Path:
    """A disk image: 1 MiB, slot A at 1 MiB, slot B at 9 MiB, 1 MiB: filled, so that any write
    to the wrong place shows."""
    need_root()
    path = fast_tmp / "disk.img"
    path.write_bytes(b"\x5a" * (2 * SLOT + 2 * MiB))
    return path


def slot_of(disk: Path, index: int) -> contextlib.AbstractContextManager[str]:
    return loop_device(disk, offset=MiB + index * SLOT, size=SLOT)


def test_written_slot_passes_veritysetup_verify(image: Image, disk: Path, fast_tmp: Path) -> None:
    with slot_of(disk, 0) as booted, slot_of(disk, 1) as dest:
        write(image, dest, booted, fast_tmp / "state")
        tool(
            "veritysetup", "verify", dest, dest, image.facts.root_hash.hex(),
            f"--hash-offset={DATA}", f"--data-blocks={DATA // 4096}",
        )  # fmt: skip
    content = disk.read_bytes()
    start = MiB + SLOT
    assert content[start : start + len(image.raw)] == image.raw
    assert content[:start] == b"\x5a" * start  # the booted slot and everything before it
    assert content[start + len(image.raw) :] == b"\x5a" * (len(content) - start - len(image.raw))


def test_booted_slot_is_refused_under_every_name(image: Image, disk: Path, fast_tmp: Path) -> None:
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    with slot_of(disk, 0) as booted, loop_device(disk) as whole:
        for dest in (
            Region(booted),  # the node itself
            Region(whole, offset=MiB + SLOT - 4096, size=2 * 4096),  # its last block, via the disk
            Region(str(disk), offset=MiB, size=SLOT),  # its bytes in the disk image file
        ):
            with pytest.raises(SlotError, match="overlaps the booted slot"):
                write_image(
                    FileSource(str(image.compressed)), image.facts, dest,
                    booted=Region(booted), state_dir=str(fast_tmp / "state"),
                )  # fmt: skip
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before
    assert journal_file.load(str(fast_tmp / "state")) is None


def test_mounted_destination_is_refused(image: Image, disk: Path, fast_tmp: Path) -> None:
    need_tools("mkfs.ext4", "mount", "umount")
    mountpoint = fast_tmp / "mnt"
    mountpoint.mkdir()
    with slot_of(disk, 1) as dest:
        tool("mkfs.ext4", "-q", dest)
        tool("mount", dest, str(mountpoint))
        try:
            with pytest.raises(DeviceError, match=f"{dest} is in use"):
                write(image, dest, None, fast_tmp / "state")
        finally:
            tool("umount", str(mountpoint))


@contextlib.contextmanager
def small_tmpfs(where: Path, size: int) -> Iterator[Path]:
    need_tools("mount", "umount")
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def frames_done(state: Path) -> int:
    found = journal_file.load(str(state))
    assert found is not None
    return found.frames_done


def test_disk_full_while_writing(image: Image, fast_tmp: Path) -> None:
    need_root()
    with small_tmpfs(fast_tmp / "full", 2 * MiB + 512 * 1024) as full:
        slot = full / "slot.img"
        with slot.open("wb") as f:
            f.truncate(SLOT)  # sparse: the filesystem runs out while the image is written
        with pytest.raises(DeviceError, match=f"{slot} at byte \\d+: No space left on device"):
            write(image, str(slot), None, fast_tmp / "state")
        done = frames_done(fast_tmp / "state")
        assert done == 2
        assert slot.read_bytes()[: done * MiB] == image.raw[: done * MiB]


def test_io_error_while_writing(image: Image, fast_tmp: Path) -> None:
    need_root()
    with small_tmpfs(fast_tmp / "full", 2 * MiB + 512 * 1024) as full:
        backing = full / "backing.img"
        with backing.open("wb") as f:
            f.truncate(SLOT)
        # The loop driver's writes into the full tmpfs fail: the block layer reports an error
        # for the request, which reaches the writer as EIO or ENOSPC from pwrite or fdatasync.
        with loop_device(backing) as dest:
            with pytest.raises(DeviceError, match=f"cannot (write|sync) {dest}") as failure:
                write(image, dest, None, fast_tmp / "state")
            done = frames_done(fast_tmp / "state")
            with open(dest, "rb") as f:
                assert f.read(done * MiB) == image.raw[: done * MiB]
    assert done < len(image.facts.table.frames)
    assert re.search("Input/output error|No space left", failure.value.message)


def test_io_error_from_a_device_mapper_error_target(
    image: Image, disk: Path, fast_tmp: Path
) -> None:
    """dm's ``error`` target fails every request: the slot's first 2 MiB are a linear mapping
    of a loop device, the rest is an error target."""
    need_tools("dmsetup")
    if subprocess.run(["dmsetup", "targets"], capture_output=True).returncode != 0:
        pytest.skip("device-mapper is not available in this kernel")
    name = f"updater-test-{os.getpid()}"
    good = 2 * MiB // 512
    with slot_of(disk, 1) as loop:
        table = f"0 {good} linear {loop} 0\n{good} {SLOT // 512 - good} error\n"
        # Without udev (containers, initramfs) dmsetup must make the node itself.
        tool("dmsetup", "create", name, "--noudevsync", "--table", table)
        try:
            tool("dmsetup", "mknodes", name)
            dest = f"/dev/mapper/{name}"
            with pytest.raises(DeviceError, match=f"{dest} at byte {2 * MiB}: Input/output error"):
                write(image, dest, None, fast_tmp / "state")
            assert frames_done(fast_tmp / "state") == 2
        finally:
            subprocess.run(["dmsetup", "remove", name], check=False)
