"""Where a slot's bytes really live, and the refusal to write where the booted slot lives.

A slot is a ``Region``: a partition node (offset 0), a whole disk, a loop device or a byte range of
an image file. ``resolve`` follows it down to an ``Extent``: a byte range of a whole disk (by
device number, through sysfs: a partition's start and its parent disk) or of a regular file (by
device and inode, also through a loop device's backing file and offset). Two regions overlap when
their extents share a base and bytes; paths and symlinks do not matter.

This module only stats paths and reads sysfs; it never opens a device, and in particular never the
booted slot. Opening and writing is ``updater.slotwrite.blockio``.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from updater.errors import DeviceError, SlotError
from updater.records import dataclass

SECTOR = 512  # sysfs counts start and size in 512-byte units whatever the logical block size


@dataclass(frozen=True)
class Region:
    """A byte range of a block device or file. ``size`` None: up to its end. ``label`` is a name
    the caller vouches for (the slot's PARTUUID), kept in the resume journal's identity."""

    path: str
    offset: int = 0
    size: int | None = None
    label: str = ""


@dataclass(frozen=True)
class Extent:
    base: tuple[str, int, int]  # ("disk", major, minor) or ("file", st_dev, st_ino)
    start: int
    end: int

    def overlaps(self, other: Extent) -> bool:
        return self.base == other.base and self.start < other.end and other.start < self.end


@dataclass(frozen=True)
class Target:
    """A resolved region: what the writer writes, the read-back reads and the journal names."""

    region: Region
    realpath: str
    block: bool
    rdev: tuple[int, int] | None
    size: int  # bytes of the region
    extent: Extent

    @property
    def path(self) -> str:
        return self.region.path

    @property
    def offset(self) -> int:
        return self.region.offset

    def identity(self) -> dict[str, Any]:
        """Stable across reboots as far as the kernel allows: a loop device or a disk renumbered
        after a reboot gives another identity, and the writer then starts from zero."""
        return {
            "path": self.realpath,
            "base": list(self.extent.base),
            "start": self.extent.start,
            "size": self.size,
            "label": self.region.label,
        }


def _read_sysfs(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read(256).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeviceError(f"cannot read {path}: {exc}") from None


def _sysfs_int(path: str) -> int:
    text = _read_sysfs(path)
    if not text.isdigit():
        raise DeviceError(f"{path} holds {text!r}, not a number")
    return int(text)


def block_extent(major: int, minor: int, sysfs: str = "/sys") -> Extent:
    """The extent of a block device: a partition is a range of its parent disk; a loop device (or
    a partition of one) is a range of its backing file when that file still exists."""
    node = os.path.realpath(f"{sysfs}/dev/block/{major}:{minor}")
    if not os.path.isdir(node):
        raise DeviceError(f"block device {major}:{minor} is not in {sysfs}")
    size = _sysfs_int(f"{node}/size") * SECTOR
    start = 0
    disk = node
    if os.path.exists(f"{node}/partition"):
        start = _sysfs_int(f"{node}/start") * SECTOR
        disk = os.path.dirname(node)
    if os.path.isdir(f"{disk}/loop"):
        backing = _read_sysfs(f"{disk}/loop/backing_file")
        try:
            st = os.stat(backing)
        except OSError:
            st = None  # deleted or unreachable backing file: the disk itself is the base
        if st is not None and stat.S_ISREG(st.st_mode):
            start += _sysfs_int(f"{disk}/loop/offset")
            return Extent(("file", st.st_dev, st.st_ino), start, start + size)
    disk_major, _, disk_minor = _read_sysfs(f"{disk}/dev").partition(":")
    if not (disk_major.isdigit() and disk_minor.isdigit()):
        raise DeviceError(f"{disk}/dev is not MAJOR:MINOR")
    return Extent(("disk", int(disk_major), int(disk_minor)), start, start + size)


def resolve(region: Region, sysfs: str = "/sys") -> Target:
    """Stat ``region.path`` and find its extent; refuse ranges outside the device or file."""
    try:
        st = os.stat(region.path)
    except OSError as exc:
        raise DeviceError(f"cannot use {region.path}: {exc.strerror}") from None
    if region.offset < 0 or (region.size is not None and region.size <= 0):
        raise DeviceError(f"{region.path}: offset {region.offset} and size {region.size} is empty")
    rdev: tuple[int, int] | None = None
    if stat.S_ISBLK(st.st_mode):
        rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        whole = block_extent(*rdev, sysfs=sysfs)
        base, first, total = whole.base, whole.start, whole.end - whole.start
    elif stat.S_ISREG(st.st_mode):
        base, first, total = ("file", st.st_dev, st.st_ino), 0, st.st_size
    else:
        raise DeviceError(f"{region.path} is neither a block device nor a regular file")
    size = total - region.offset if region.size is None else region.size
    if size <= 0 or region.offset + size > total:
        raise DeviceError(
            f"{region.path} is {total} bytes, too small for {size} bytes at offset {region.offset}"
        )
    start = first + region.offset
    return Target(
        region, os.path.realpath(region.path), rdev is not None, rdev, size,
        Extent(base, start, start + size),
    )  # fmt: skip


def holders(target: Target, sysfs: str = "/sys") -> list[str]:
    """What the kernel has stacked on a block device (dm-verity, dm-crypt, md); empty for files."""
    if target.rdev is None:
        return []
    directory = f"{sysfs}/dev/block/{target.rdev[0]}:{target.rdev[1]}/holders"
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def refuse_unsafe(dest: Target, booted: Target | None, sysfs: str = "/sys") -> None:
    """Raise SlotError when writing ``dest`` could touch the booted slot or a device in use."""
    if booted is not None and dest.extent.overlaps(booted.extent):
        raise SlotError(
            f"{dest.path} overlaps the booted slot {booted.path}",
            hint="the booted slot is never written; name the other slot",
        )
    stacked = holders(dest, sysfs)
    if stacked:
        raise SlotError(f"{dest.path} is in use by {', '.join(stacked)}")
