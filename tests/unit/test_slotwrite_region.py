"""Where a slot's bytes live, from a fake sysfs laid out as the kernel lays out the real one
(``/sys/dev/block/MAJ:MIN`` links into ``/sys/devices``; partitions are subdirectories of their
disk with ``partition``, ``start`` and ``size`` in 512-byte units; loop devices carry ``loop/``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from updater.errors import DeviceError, SlotError
from updater.slotwrite.region import Extent, Region, Target, block_extent, refuse_unsafe, resolve

MiB = 1 << 20


def device(sysfs: Path, devpath: str, dev: str, size: int, **files: str) -> Path:
    node = sysfs / "devices" / devpath
    node.mkdir(parents=True)
    (node / "dev").write_text(dev + "\n")
    (node / "size").write_text(f"{size // 512}\n")
    for name, value in files.items():
        path = node / name.replace("__", "/")
        path.parent.mkdir(exist_ok=True)
        path.write_text(value + "\n")
    link = sysfs / "dev" / "block" / dev
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(node, link.parent))
    return node


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    device(root, "pci0/block/sda", "8:0", 100 * MiB)
    device(root, "pci0/block/sda/sda3", "8:3", 10 * MiB, partition="3", start=str(2 * MiB // 512))
    device(root, "pci0/block/sda/sda4", "8:4", 10 * MiB, partition="4", start=str(12 * MiB // 512))
    return root


def test_partition_is_a_range_of_its_disk(sysfs: Path) -> None:
    assert block_extent(8, 3, str(sysfs)) == Extent(("disk", 8, 0), 2 * MiB, 12 * MiB)
    assert block_extent(8, 0, str(sysfs)) == Extent(("disk", 8, 0), 0, 100 * MiB)
    assert not block_extent(8, 3, str(sysfs)).overlaps(block_extent(8, 4, str(sysfs)))
    assert block_extent(8, 0, str(sysfs)).overlaps(block_extent(8, 4, str(sysfs)))


def test_loop_partition_is_a_range_of_the_backing_file(sysfs: Path, tmp_path: Path) -> None:
    backing = tmp_path / "disk.img"
    with backing.open("wb") as f:
        f.truncate(60 * MiB)
    loop = {"loop__backing_file": str(backing), "loop__offset": str(MiB)}
    device(sysfs, "virtual/block/loop0", "7:0", 50 * MiB, **loop)
    device(sysfs, "virtual/block/loop0/loop0p2", "259:1", 5 * MiB, partition="2", start="8192")
    st = backing.stat()
    extent = block_extent(259, 1, str(sysfs))
    assert extent == Extent(("file", st.st_dev, st.st_ino), MiB + 4 * MiB, MiB + 9 * MiB)
    # The same bytes named through the file: what the booted slot of an image file looks like.
    assert resolve(Region(str(backing), offset=9 * MiB, size=MiB)).extent.overlaps(extent)
    assert not resolve(Region(str(backing), offset=10 * MiB, size=MiB)).extent.overlaps(extent)


def test_loop_device_whose_backing_file_is_gone(sysfs: Path) -> None:
    loop = {"loop__backing_file": "/nonexistent/disk.img (deleted)", "loop__offset": "0"}
    device(sysfs, "virtual/block/loop1", "7:1", 50 * MiB, **loop)
    assert block_extent(7, 1, str(sysfs)) == Extent(("disk", 7, 1), 0, 50 * MiB)


def test_unknown_block_device(sysfs: Path) -> None:
    with pytest.raises(DeviceError, match="block device 9:9 is not in"):
        block_extent(9, 9, str(sysfs))


def test_file_regions_resolve_by_inode(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(10 * MiB))
    (tmp_path / "alias").symlink_to(disk)
    a = resolve(Region(str(disk), offset=MiB, size=2 * MiB))
    b = resolve(Region(str(tmp_path / "alias"), offset=3 * MiB))
    assert (a.size, b.size, a.realpath) == (2 * MiB, 7 * MiB, str(disk))
    assert a.extent.base == b.extent.base and not a.extent.overlaps(b.extent)
    assert a.identity() != b.identity()
    with pytest.raises(DeviceError, match="too small for"):
        resolve(Region(str(disk), offset=9 * MiB, size=2 * MiB))
    with pytest.raises(DeviceError, match="No such file"):
        resolve(Region(str(tmp_path / "missing")))
    with pytest.raises(DeviceError, match="neither a block device nor a regular file"):
        resolve(Region(str(tmp_path)))


def test_held_block_device_is_refused(sysfs: Path, tmp_path: Path) -> None:
    holders = sysfs / "devices/pci0/block/sda/sda4/holders"
    holders.mkdir()
    (holders / "dm-0").mkdir()
    extent = block_extent(8, 4, str(sysfs))
    target = Target(Region("/dev/sda4"), "/dev/sda4", True, (8, 4), 10 * MiB, extent)
    with pytest.raises(SlotError, match="/dev/sda4 is in use by dm-0"):
        refuse_unsafe(target, None, str(sysfs))
    other = Target(
        Region("/dev/sda3"), "/dev/sda3", True, (8, 3), 10 * MiB, block_extent(8, 3, str(sysfs))
    )
    refuse_unsafe(other, target, str(sysfs))
    whole = Target(
        Region("/dev/sda"), "/dev/sda", True, (8, 0), 100 * MiB, block_extent(8, 0, str(sysfs))
    )
    with pytest.raises(SlotError, match="/dev/sda overlaps the booted slot /dev/sda3"):
        refuse_unsafe(whole, other, str(sysfs))
