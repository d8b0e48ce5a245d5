"""A new GUID partition table as bytes, for a disk that has none: the installer's last write.

Pure: partitions in, a ``gptformat.WritePlan`` out; ``updater.gpt.apply_plan`` carries it out.
It does not choose where partitions go (the installer asks libparted for aligned geometry), and
it does not change an existing table (``updater.gptformat`` does).

The table is the standard one (UEFI 2.x section 5.3): a protective MBR in LBA 0, the primary
header in LBA 1 with 128 entries of 128 bytes right after it, the backup entries and header at
the end of the disk. Partition numbers may have gaps (Flatcar's layout uses 1-4, 6, 7, 9): an
entry's place in the array is its number, and unused entries are all zero.

The order of the writes is the point of this module. Everything a reader recognises a table by
is written last: the entry arrays first (they carry no signature), then the primary header, the
backup header, and the protective MBR last of all. Linux (block/partitions/efi.c) and OVMF's
partition driver take a disk for a GPT disk only with a protective MBR, so until that final
sector the disk shows no partitions to the kernel or the firmware, and a power cut at any
earlier point leaves a disk that boots nothing. ``wipefs`` and ``sgdisk`` do see a lone header,
so a cut within the last three writes leaves a disk the installer calls non-empty.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from updater import gptformat
from updater.errors import GptError
from updater.guid import Guid
from updater.records import dataclass

ENTRY_COUNT = 128
ENTRY_SIZE = 128
PMBR_TYPE = 0xEE  # "GPT protective" in the MBR partition record


@dataclass(frozen=True)
class NewPartition:
    number: int  # 1-based: the entry at index number - 1
    type_guid: Guid
    unique_guid: Guid
    first_lba: int
    last_lba: int
    name: str
    attributes: int = 0


@dataclass(frozen=True)
class Geometry:
    """Where the table's parts go on a disk of ``total_sectors`` sectors of ``sector_size``."""

    sector_size: int
    total_sectors: int

    @property
    def entry_sectors(self) -> int:
        return -(-ENTRY_COUNT * ENTRY_SIZE // self.sector_size)

    @property
    def last_lba(self) -> int:
        return self.total_sectors - 1

    @property
    def first_usable(self) -> int:
        return 2 + self.entry_sectors

    @property
    def last_usable(self) -> int:
        return self.last_lba - 1 - self.entry_sectors

    @property
    def backup_entries_lba(self) -> int:
        return self.last_lba - self.entry_sectors


def entry_bytes(p: NewPartition) -> bytes:
    name = p.name.encode("utf-16-le")
    if len(name) > gptformat.ENTRY_NAME_BYTES:
        raise GptError(f"partition name {p.name!r} is longer than 36 UTF-16 code units")
    if not 0 <= p.attributes < 1 << 64:
        raise GptError(f"attribute value {p.attributes:#x} does not fit 64 bits")
    head = struct.pack(
        "<16s16sQQQ", p.type_guid.bytes_le, p.unique_guid.bytes_le, p.first_lba, p.last_lba,
        p.attributes,
    )  # fmt: skip
    return head + name.ljust(gptformat.ENTRY_NAME_BYTES, b"\0")


def entry_array(geo: Geometry, partitions: Sequence[NewPartition]) -> bytes:
    """The 128-entry array, each partition at its number; refuses overlaps and ranges outside
    the usable area, so that no reader ever sees a table it would reject."""
    raw = bytearray(ENTRY_COUNT * ENTRY_SIZE)
    used: set[int] = set()
    ordered = sorted(partitions, key=lambda p: p.first_lba)
    for p in ordered:
        if not 1 <= p.number <= ENTRY_COUNT or p.number in used:
            raise GptError(f"partition number {p.number} is out of range or used twice")
        if p.type_guid == gptformat.UNUSED_TYPE:
            raise GptError(f"partition {p.number} has the unused type GUID")
        if not geo.first_usable <= p.first_lba <= p.last_lba <= geo.last_usable:
            raise GptError(
                f"partition {p.number} ({p.first_lba}-{p.last_lba}) is outside the usable "
                f"sectors {geo.first_usable}-{geo.last_usable}"
            )
        used.add(p.number)
        start = (p.number - 1) * ENTRY_SIZE
        raw[start : start + ENTRY_SIZE] = entry_bytes(p)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if after.first_lba <= before.last_lba:
            raise GptError(f"partitions {before.number} and {after.number} overlap")
    return bytes(raw)


def header(geo: Geometry, disk_guid: Guid, entries_crc: int, *, backup: bool) -> bytes:
    my_lba, alternate = (geo.last_lba, 1) if backup else (1, geo.last_lba)
    entries_lba = geo.backup_entries_lba if backup else 2
    fields = [
        gptformat.SIGNATURE, gptformat.REVISION, gptformat.HEADER_FORMAT.size, 0, 0,
        my_lba, alternate, geo.first_usable, geo.last_usable, disk_guid.bytes_le,
        entries_lba, ENTRY_COUNT, ENTRY_SIZE, entries_crc,
    ]  # fmt: skip
    sector = bytearray(geo.sector_size)
    gptformat.HEADER_FORMAT.pack_into(sector, 0, *fields)
    crc = zlib.crc32(bytes(sector[: gptformat.HEADER_FORMAT.size]))
    struct.pack_into("<I", sector, gptformat.HEADER_CRC_OFFSET, crc)
    return bytes(sector)


def protective_mbr(geo: Geometry) -> bytes:
    """LBA 0: one partition record of type 0xEE from LBA 1 over the disk (capped at 32 bits),
    CHS fields as the UEFI specification gives them, boot signature 0x55AA."""
    size = min(geo.total_sectors - 1, 0xFFFFFFFF)
    record = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", PMBR_TYPE, b"\xff\xff\xff", 1, size)
    sector = bytearray(geo.sector_size)
    sector[446:462] = record
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def plan_new_table(
    geo: Geometry, disk_guid: Guid, partitions: Sequence[NewPartition]
) -> gptformat.WritePlan:
    """The sector writes that create the table, in the order of the module docstring."""
    if geo.sector_size not in (512, 4096) or geo.first_usable >= geo.last_usable:
        raise GptError(f"cannot put a GPT on {geo.total_sectors} sectors of {geo.sector_size}")
    array = entry_array(geo, partitions)
    crc = zlib.crc32(array)
    ss = geo.sector_size

    def sectors(lba: int, data: bytes) -> tuple[tuple[int, bytes], ...]:
        return tuple((lba + i, data[i * ss : (i + 1) * ss]) for i in range(len(data) // ss))

    padded = array.ljust(geo.entry_sectors * ss, b"\0")
    return gptformat.WritePlan(
        phases=(
            sectors(2, padded) + sectors(geo.backup_entries_lba, padded),
            ((1, header(geo, disk_guid, crc, backup=False)),),
            ((geo.last_lba, header(geo, disk_guid, crc, backup=True)),),
            ((0, protective_mbr(geo)),),
        )
    )
