"""Writing a disk that has no partition table yet: clearing old signatures, filesystems made at
their byte offsets, the ESP's directories and files, the table itself, and telling the kernel.

Until the installer's last write the disk has no partition table, so there are no partition
nodes: every tool is pointed at the whole disk (or image file) and an offset, as the image
builder does: ``mkfs.fat --offset``, ``mke2fs -E offset=``, mtools' ``DISK@@OFFSET``. The
filesystems are the ones formatting the partition would make: ``mkfs.fat -h`` records the
partition's start as hidden sectors, as it would read it from sysfs.

Every write here goes through the whole disk's page cache and is made durable (``fsync`` on
the disk) before the partition table appears; the partition nodes created after that have
page caches of their own, which then read what is on the disk.

This module decides nothing: what to clear, where the partitions are and in which order things
happen come from ``plan`` and ``flow``; the slots are written by ``updater.deploy``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from updater import gpt, gptformat
from updater.bootfs import FatPartitionFiles
from updater.errors import DeviceError
from updater.install.bootfiles import DIRECTORIES
from updater.install.plan import Region
from updater.run import child_env, require_tool, run, which

BLKRRPART = 0x125F  # re-read the partition table (linux/fs.h)
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}  # mtools doubts the geometry of partitions in images


def clear(disk: str, regions: Sequence[Region]) -> None:
    """Zero ``regions`` in order; the first is made durable on its own before the rest (it holds
    the protective MBR: once it is gone, nobody takes the disk for a GPT disk any more)."""
    zeros = bytes(1 << 20)
    fd = _open(disk)
    try:
        for i, r in enumerate(regions):
            done = 0
            while done < r.size:
                done += os.pwrite(fd, zeros[: min(len(zeros), r.size - done)], r.offset + done)
            if i == 0:
                os.fsync(fd)
        os.fsync(fd)
    except OSError as exc:
        raise DeviceError(f"cannot clear {disk}: {exc.strerror}") from None
    finally:
        os.close(fd)


def reread(disk: str) -> None:
    """Make the kernel read the disk's partition table again (a block device only), then wait
    for udev to create the nodes and links. EBUSY means something holds a partition; EINVAL
    that the device takes no partitions (a loop device without partition scanning)."""
    if os.path.isfile(disk):
        return
    fd = _open(disk)
    try:
        fcntl.ioctl(fd, BLKRRPART)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise DeviceError(
                f"the kernel cannot re-read the partitions of {disk}: {exc.strerror}"
            ) from None
    finally:
        os.close(fd)
    if which("udevadm", child_env()["PATH"]):  # no udev: no links to wait for
        run(["udevadm", "settle", "--timeout=30"], check=False)


def write_table(disk: str, plan: gptformat.WritePlan) -> int:
    """Carry out ``plan`` (``updater.gptcreate``), each phase durable before the next."""
    with gpt.locked(disk, writable=True) as d:
        return gpt.apply_plan(d, plan)


def fat_geometry(size: int, sector_size: int) -> tuple[int, int]:
    """(FAT bits, sectors per cluster) for an ESP of ``size`` bytes: the cluster sizes of
    Microsoft's FAT32 table, and FAT16 where FAT32 would get fewer than its minimum of 65525
    clusters (an ESP of less than 260 MiB on a disk with 4096-byte sectors). mkfs.fat would
    choose by the size of the whole disk, which it sees when given an offset."""
    cluster = 512 if size <= 260 << 20 else 4096 if size <= 8 << 30 else 8192
    cluster = max(cluster, sector_size)
    return (32 if size // cluster >= 65525 else 16), cluster // sector_size


def make_fat(disk: str, region: Region, sector_size: int, label: str) -> FatPartitionFiles:
    require_tool("mkfs.fat", "dosfstools")
    require_tool("mmd", "mtools")
    bits, per_cluster = fat_geometry(region.size, sector_size)
    start = region.offset // sector_size
    run(["mkfs.fat", "-F", str(bits), "-s", str(per_cluster), "-S", str(sector_size),
         "-n", label, "-h", str(start), f"--offset={start}", disk,
         str(region.size // 1024)])  # fmt: skip
    image = f"{disk}@@{region.offset}"
    run(["mmd", "-i", image, *(f"::/{d}" for d in DIRECTORIES)], env=MTOOLS_ENV)
    return FatPartitionFiles(disk, region.offset)


def make_ext4(disk: str, region: Region, label: str, content: str | None) -> None:
    """ext4 at ``region``, filled from ``content`` (a directory) when given. Inode tables and
    the journal are initialised lazily by the kernel on first mount: a fresh 4 TB ROOT would
    otherwise mean writing gigabytes of zeros here. No discard: with an offset, mke2fs would
    not limit it to the region on every version."""
    require_tool("mkfs.ext4", "e2fsprogs")
    options = f"offset={region.offset},lazy_itable_init=1,lazy_journal_init=1,nodiscard"
    argv = ["mkfs.ext4", "-q", "-F", "-L", label, "-E", options + ",root_owner=0:0"]
    if content is not None:
        argv += ["-d", content]
    run([*argv, disk, f"{region.size // 1024}k"])


def make_ext4_from_files(
    disk: str, region: Region, label: str, files: Iterable[tuple[str, bytes]]
) -> None:
    """ext4 holding ``files`` (relative path, contents), for the OEM partition."""
    with tempfile.TemporaryDirectory(prefix="updater-oem.") as tmp:
        for rel, data in files:
            path = Path(tmp, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        make_ext4(disk, region, label, tmp)


def sync(disk: str) -> None:
    fd = _open(disk)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open(disk: str) -> int:
    try:
        return os.open(disk, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceError(f"cannot open {disk}: {exc.strerror}") from None
