"""libparted, through pyparted, for what it knows best: the device's sector sizes and preferred
alignment, whether a disk holds a partition table or a filesystem, aligned partitions for the
layout, and reading the finished table back.

libparted never writes here. Its commit writes the whole table at once, the primary copy first
and the protective MBR with it, and tells the kernel to re-read it: a half-installed disk would
be visible as partitioned from the first step on, and partition numbers with gaps (Flatcar's
6, 7, 9) and the type GUIDs, unique GUIDs and attribute bits are beyond pyparted 3.12 on
libparted 3.5 (Debian 12). So libparted places the partitions on a table it keeps in memory,
and ``updater.gptcreate`` writes that table, as the install's last step.

pyparted is the ``installer`` extra (Debian's ``python3-parted``): imported only when an
install runs. libparted reports problems through a process-wide exception handler; while this
module calls into it, every report is declined, so libparted never waits for an answer and the
call fails with the report as its message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from updater.errors import DeviceError, ToolMissing
from updater.install.plan import DiskPlan, Placed
from updater.layout import DiskLayout, MiB
from updater.records import dataclass


def _parted() -> ModuleType:
    try:
        import parted as module
    except ImportError:
        raise ToolMissing(
            "pyparted is not installed",
            hint="install the Debian package python3-parted, or pip install 'updater[installer]'",
        ) from None
    found: ModuleType = module  # untyped C extension: Any to mypy
    return found


@contextlib.contextmanager
def _declining() -> Iterator[ModuleType]:
    parted = _parted()

    def decline(kind: int, options: int, message: str) -> int:
        return int(parted.EXCEPTION_RESOLVE_UNHANDLED)

    parted.register_exn_handler(decline)
    try:
        yield parted
    except errors(parted) as exc:
        raise DeviceError(f"libparted: {_text(exc)}") from None
    finally:
        parted.clear_exn_handler()


def errors(parted: ModuleType) -> tuple[type[Exception], ...]:
    """Every exception class pyparted raises: they share no base class, and they are defined
    in its C module ``_ped`` (``parted`` itself is wrapped in a proxy with no ``vars``)."""
    import _ped

    found = (getattr(_ped, name) for name in dir(_ped) if name.endswith("Exception"))
    return tuple(c for c in found if isinstance(c, type) and issubclass(c, Exception))


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True)
class DeviceView:
    """What libparted sees on a disk."""

    model: str
    sector_size: int
    physical_sector_size: int
    sectors: int
    table: str | None  # "gpt", "msdos", ... or None
    partitions: tuple[str, ...]  # "1 (1048576-135266303)"
    filesystem: str | None  # a filesystem on the whole disk, as libparted's probes find it


def inspect(path: str) -> DeviceView:
    """Read the disk as libparted does; nothing is written."""
    with _declining() as parted:
        dev = parted.getDevice(path)
        table, partitions = _table(parted, dev)
        whole = parted.Geometry(device=dev, start=0, length=dev.length)
        try:
            filesystem: str | None = str(parted.probeFileSystem(whole))
        except errors(parted):
            filesystem = None  # "Failed to find any filesystem in given geometry"
        return DeviceView(
            str(dev.model), int(dev.sectorSize), int(dev.physicalSectorSize), int(dev.length),
            table, partitions, filesystem,
        )  # fmt: skip


def _table(parted: ModuleType, dev: Any) -> tuple[str | None, tuple[str, ...]]:
    """The partition table and its partitions; None when libparted recognises no label. A
    label libparted recognises but cannot read is reported by wipefs (``probe``) anyway."""
    try:
        disk = parted.newDisk(dev)
    except errors(parted):
        return None, ()
    ss = int(dev.sectorSize)
    parts = tuple(
        f"{p.number} (bytes {p.geometry.start * ss}-{(p.geometry.end + 1) * ss - 1})"
        for p in disk.partitions
    )
    return str(disk.type), parts


def place(path: str, layout: DiskLayout) -> DiskPlan:
    """The layout's partitions, in order, each at the first sector libparted's alignment for
    this device allows (at least 1 MiB); the partition of size 0 takes the rest, ending aligned.
    The table libparted builds stays in memory."""
    with _declining() as parted:
        dev = parted.getDevice(path)
        ss = int(dev.sectorSize)
        mib = parted.Alignment(offset=0, grainSize=MiB // ss)
        start_align = dev.optimumAlignment.intersect(mib) or mib
        end_align = parted.Alignment(
            offset=start_align.offset - 1, grainSize=start_align.grainSize
        )
        disk = parted.freshDisk(dev, "gpt")
        placed: list[Placed] = []
        cursor = 0
        for spec in layout.partitions:
            region = _free_after(disk, cursor)
            start = start_align.alignUp(region, max(cursor, region.start))
            if spec.size:
                end = start + spec.size // ss - 1
            else:
                end = end_align.alignDown(region, region.end)
            if start is None or end is None or end > region.end or end < start:
                raise DeviceError(f"{path}: no room for {spec.label}")
            geometry = parted.Geometry(device=dev, start=start, end=end)
            part = parted.Partition(disk=disk, type=parted.PARTITION_NORMAL, geometry=geometry)
            disk.addPartition(part, constraint=parted.Constraint(exactGeom=geometry))
            part.set_name(spec.label)
            placed.append(Placed(spec, int(part.geometry.start), int(part.geometry.end)))
            cursor = int(part.geometry.end) + 1
        return DiskPlan(layout, ss, int(dev.length), tuple(placed))


def _free_after(disk: Any, sector: int) -> Any:
    for region in disk.getFreeSpaceRegions():
        if region.end >= sector:
            return region
    raise DeviceError("no free space left on the disk for the layout")


def read_back(path: str) -> tuple[tuple[int, int, int, str], ...]:
    """The table on the disk as libparted reads it: (number, first, last sector, name)."""
    with _declining() as parted:
        disk = parted.newDisk(parted.getDevice(path))
        if str(disk.type) != "gpt":
            raise DeviceError(f"{path}: libparted reads a {disk.type} table, not gpt")
        return tuple(
            (int(p.number), int(p.geometry.start), int(p.geometry.end), str(p.name))
            for p in disk.partitions
        )
