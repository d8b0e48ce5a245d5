"""The install as values: the layout it writes, where its partitions go, what it refuses.

Pure: no file, device or tool is touched here. ``probe`` finds the ``DiskFacts``, ``partition``
asks libparted to place the layout (``Placed``), and the flow carries out the ``DiskPlan``.

- The layout is Flatcar's (``updater.layout.flatcar_layout``) with a fresh disk GUID and fresh
  partition GUIDs, except USR-A and USR-B, whose GUIDs Flatcar fixes (the kernel command line
  names them); USR-A starts as the installed, proven slot (priority 1, tries 0, successful).
- Refusals, in this order, each before anything is written: a disk the running system uses
  (never, not even with ``--wipe``), a mounted disk or one another device is stacked on, a
  partition instead of a whole disk, a disk too small for the layout, and a disk that holds a
  partition table, a filesystem or any other signature, unless ``--wipe``.
- Before any partition is written, the regions to clear: the first and last MiB of the disk
  (old partition tables, RAID and LVM labels at either end; the protective MBR first of all) and
  of every new partition (a stale filesystem signature in USR-B would read as an image, a stale
  ``ROOT`` label elsewhere would make ``root=LABEL=ROOT`` ambiguous).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from updater import gptcreate, gptformat, slots
from updater.errors import DeviceError, UpdaterError
from updater.guid import Guid, random_guid
from updater.layout import DiskLayout, MiB, PartitionSpec, flatcar_layout
from updater.records import dataclass, replace

CLEAR = MiB  # bytes cleared at each end of the disk and of every partition


def _fresh_guid() -> Guid:
    return random_guid(os.urandom(16))


def install_layout(new_guid: Callable[[], Guid] = _fresh_guid) -> DiskLayout:
    """Flatcar's layout with this disk's own GUIDs (see the module docstring)."""
    base = flatcar_layout()
    parts = tuple(
        p if p.type_guid == slots.USR_TYPE else replace(p, partuuid=new_guid())
        for p in base.partitions
    )
    return DiskLayout(parts, base.size, new_guid())


@dataclass(frozen=True)
class DiskFacts:
    """What a disk is and holds, as ``probe`` found it."""

    path: str
    model: str
    serial: str
    size: int  # bytes
    sector_size: int
    block: bool  # a block device; False: an image file
    whole_disk: bool  # not a partition of another disk
    table: str | None  # the partition table libparted read ("gpt", "msdos"), if any
    partitions: tuple[str, ...] = ()  # what libparted listed, for the message
    signatures: tuple[str, ...] = ()  # what wipefs found ("gpt at 0x200", "ext4 at 0x438")
    mounts: tuple[str, ...] = ()  # mount points of the disk or of anything on it
    holders: tuple[str, ...] = ()  # devices stacked on the disk or its partitions (dm-0, md0)
    running: bool = False  # the running system's / or /usr is on it

    def describe(self) -> str:
        size = f"{self.size / (1 << 30):.1f} GiB"
        if not self.block:
            return f"{self.path} (image file, {size})"
        model = self.model or "unknown model"
        return f"{self.path} ({model}, serial {self.serial or 'unknown'}, {size})"

    @property
    def contents(self) -> tuple[str, ...]:
        """Everything that says the disk is not empty."""
        found = [f"a {self.table} partition table" if self.table else ""]
        found += [f"partition {p}" for p in self.partitions] + list(self.signatures)
        return tuple(f for f in found if f)


def refusal(facts: DiskFacts, needed: int, *, wipe: bool) -> UpdaterError | None:
    """Why ``facts`` must not be installed on (module docstring), or None."""
    if facts.running:
        return DeviceError(f"{facts.path} holds the running system", hint="name another disk")
    if facts.mounts or facts.holders:
        users = ", ".join([*(f"mounted at {m}" for m in facts.mounts), *facts.holders])
        return DeviceError(f"{facts.path} is in use ({users})", hint="unmount it first")
    if not facts.whole_disk:
        return DeviceError(f"{facts.path} is a partition", hint="name the whole disk")
    if facts.size < needed:
        return DeviceError(
            f"{facts.path} holds {facts.size} bytes, the layout needs at least {needed}"
        )
    if facts.contents and not wipe:
        return DeviceError(
            f"{facts.path} is not empty: it holds {'; '.join(facts.contents[:4])}",
            hint="pass --wipe to erase it",
        )
    return None


@dataclass(frozen=True)
class Placed:
    """A partition of the layout at the sectors libparted chose."""

    spec: PartitionSpec
    first_lba: int
    last_lba: int


@dataclass(frozen=True)
class Region:
    offset: int  # bytes from the start of the disk
    size: int


@dataclass(frozen=True)
class DiskPlan:
    layout: DiskLayout
    sector_size: int
    total_sectors: int
    placed: tuple[Placed, ...]

    def __post_init__(self) -> None:
        check_placement(self.layout, self.placed, self.sector_size)

    def region(self, label: str) -> Region:
        for p in self.placed:
            if p.spec.label == label:
                ss = self.sector_size
                return Region(p.first_lba * ss, (p.last_lba - p.first_lba + 1) * ss)
        raise KeyError(label)

    def clear(self) -> tuple[Region, ...]:
        """The regions to zero before anything is written, the protective MBR's first."""
        size = self.total_sectors * self.sector_size
        ends = [Region(0, min(CLEAR, size)), Region(max(0, size - CLEAR), min(CLEAR, size))]
        for p in self.placed:
            r = self.region(p.spec.label)
            head = min(CLEAR, r.size)
            ends += [Region(r.offset, head), Region(r.offset + r.size - head, head)]
        return tuple(ends)

    def slots(self) -> tuple[slots.Slot, ...]:
        """The usr slots as the new table holds them."""
        return tuple(
            slots.Slot(p.spec.number, p.spec.label, p.spec.partuuid, p.spec.attributes)
            for p in self.placed
            if p.spec.type_guid == slots.USR_TYPE
        )

    @property
    def geometry(self) -> gptcreate.Geometry:
        return gptcreate.Geometry(self.sector_size, self.total_sectors)

    def entries(self) -> tuple[gptcreate.NewPartition, ...]:
        return tuple(
            gptcreate.NewPartition(p.spec.number, p.spec.type_guid, p.spec.partuuid,
                                   p.first_lba, p.last_lba, p.spec.label, p.spec.attributes)
            for p in self.placed
        )  # fmt: skip

    def entry_array(self) -> bytes:
        """The partition entry array exactly as the new table holds it."""
        return gptcreate.entry_array(self.geometry, self.entries())

    def table(self) -> gptformat.WritePlan:
        """The partition table, to be written last (``updater.gptcreate``)."""
        return gptcreate.plan_new_table(self.geometry, self.layout.disk_guid, self.entries())


def check_placement(layout: DiskLayout, placed: Sequence[Placed], sector_size: int) -> None:
    """Each partition of the layout placed once, in order, 1 MiB aligned, at its size (the last
    one, of size 0, at least ``flatcar_layout``'s minimum)."""
    if [p.spec for p in placed] != list(layout.partitions):
        raise DeviceError("the placed partitions are not the layout's")
    root_min = layout.size - 2 * MiB - sum(p.size for p in layout.partitions)
    previous_end = -1
    for p in placed:
        size = (p.last_lba - p.first_lba + 1) * sector_size
        start = p.first_lba * sector_size
        wanted = p.spec.size or root_min
        if start % MiB or size % MiB or p.first_lba <= previous_end:
            raise DeviceError(f"{p.spec.label} is placed at an unaligned or overlapping range")
        if size != p.spec.size and not (p.spec.size == 0 and size >= wanted):
            raise DeviceError(f"{p.spec.label} would get {size} bytes, the layout says {wanted}")
        previous_end = p.last_lba
