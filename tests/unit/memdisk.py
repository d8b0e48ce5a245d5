"""An in-memory GPT disk for unit tests: builds valid tables in pure Python and records writes."""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from updater import gptformat
from updater.layout import USR_A_UUID, USR_B_UUID
from updater.slots import USR_TYPE

ESP = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")


@dataclass
class Part:
    type_guid: uuid.UUID
    name: str
    attributes: int = 0
    size_sectors: int = 64
    guid: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass
class MemDisk:
    """A disk as a bytearray; satisfies gptformat.SectorReader."""

    data: bytearray
    sector_size: int

    @property
    def total_sectors(self) -> int:
        return len(self.data) // self.sector_size

    def read(self, lba: int, count: int) -> bytes:
        ss = self.sector_size
        return bytes(self.data[lba * ss : (lba + count) * ss])

    def write(self, lba: int, payload: bytes) -> None:
        ss = self.sector_size
        self.data[lba * ss : lba * ss + len(payload)] = payload

    def apply(self, plan: gptformat.WritePlan) -> None:
        for lba, payload in plan.sectors():
            self.write(lba, payload)

    def copy(self) -> MemDisk:
        return MemDisk(bytearray(self.data), self.sector_size)


def build(parts: list[Part], sector_size: int = 512, num_entries: int = 128) -> MemDisk:
    ss = sector_size
    esize = 128
    entry_sectors = -(-num_entries * esize // ss)
    first_usable = 2 + entry_sectors
    data_sectors = sum(p.size_sectors for p in parts)
    total = first_usable + data_sectors + entry_sectors + 1 + 8
    last_usable = total - 2 - entry_sectors
    disk = bytearray(total * ss)
    # protective MBR
    mbr = bytearray(512)
    struct.pack_into("<B3sB3sII", mbr, 446, 0, b"\0\x02\0", 0xEE, b"\xff\xff\xff", 1, total - 1)
    mbr[510:512] = b"\x55\xaa"
    disk[0:512] = mbr
    entries = bytearray(num_entries * esize)
    lba = first_usable
    for i, p in enumerate(parts):
        name = p.name.encode("utf-16-le").ljust(72, b"\0")
        struct.pack_into(
            "<16s16sQQQ72s",
            entries,
            i * esize,
            p.type_guid.bytes_le,
            p.guid.bytes_le,
            lba,
            lba + p.size_sectors - 1,
            p.attributes,
            name,
        )
        lba += p.size_sectors
    ecrc = zlib.crc32(entries)
    disk_guid = uuid.uuid4().bytes_le

    def header(my: int, alt: int, ent: int) -> bytes:
        h = bytearray(ss)
        gptformat.HEADER_FORMAT.pack_into(
            h,
            0,
            gptformat.SIGNATURE,
            gptformat.REVISION,
            92,
            0,
            0,
            my,
            alt,
            first_usable,
            last_usable,
            disk_guid,
            ent,
            num_entries,
            esize,
            ecrc,
        )
        struct.pack_into("<I", h, 16, zlib.crc32(bytes(h[:92])))
        return bytes(h)

    backup_lba = total - 1
    backup_entries = backup_lba - entry_sectors
    disk[ss : 2 * ss] = header(1, backup_lba, 2)
    disk[2 * ss : 2 * ss + len(entries)] = entries
    disk[backup_entries * ss : backup_entries * ss + len(entries)] = entries
    disk[backup_lba * ss : (backup_lba + 1) * ss] = header(backup_lba, 1, backup_entries)
    return MemDisk(disk, ss)


REGIONS = ("primary-header", "primary-entries", "backup-header", "backup-entries")


def region_lba(table: gptformat.GptTable, where: str) -> int:
    """The first LBA of one of the four GPT regions (``REGIONS``), for damaging it in tests."""
    return {
        "primary-header": 1,
        "primary-entries": table.primary.entries_lba,
        "backup-header": table.backup.header_lba,
        "backup-entries": table.backup.entries_lba,
    }[where]


def flatcar_parts(a_attrs: int, b_attrs: int = 0) -> list[Part]:
    return [
        Part(ESP, "EFI-SYSTEM"),
        Part(uuid.UUID("21686148-6449-6e6f-744e-656564454649"), "BIOS-BOOT", size_sectors=4),
        Part(USR_TYPE, "USR-A", a_attrs),
        Part(USR_TYPE, "USR-B", b_attrs),
    ]


def image_file(path: Path, a_attrs: int, b_attrs: int = 0, sector_size: int = 512) -> Path:
    """A Flatcar-style disk image file (ESP, BIOS-BOOT, USR-A, USR-B) with the fixed USR GUIDs,
    for tests that go through the file-based code paths."""
    parts = flatcar_parts(a_attrs, b_attrs)
    parts[2].guid, parts[3].guid = USR_A_UUID, USR_B_UUID
    path.write_bytes(bytes(build(parts, sector_size).data))
    return path


def kernel_with_hash(root_hash: str, offset: int = 0x40, size: int = 8192) -> bytes:
    data = bytearray(size)
    data[offset : offset + 64] = root_hash.encode()
    return bytes(data)


def rewrite_header(disk: MemDisk, lba: int, **fields: int) -> None:
    """Change fields of the header at ``lba`` and give it a correct CRC32 again (what a buggy
    or hostile tool could write: every check but the geometry passes)."""
    ss = disk.sector_size
    sector = bytearray(disk.read(lba, 1))
    values = list(gptformat.HEADER_FORMAT.unpack_from(sector))
    index = {"alternate_lba": 6, "entries_lba": 10, "num_entries": 11, "entries_crc": 13}
    for name, value in fields.items():
        values[index[name]] = value
    values[3] = 0
    gptformat.HEADER_FORMAT.pack_into(sector, 0, *values)
    struct.pack_into("<I", sector, 16, zlib.crc32(bytes(sector[:92])))
    disk.data[lba * ss : (lba + 1) * ss] = sector


def shrink_backup(disk: MemDisk, entries: int = 4) -> None:
    """A CRC-valid backup that declares only ``entries`` entries, in one sector right below
    its header."""
    t = gptformat.read_table(disk)
    ss, backup_lba = disk.sector_size, t.backup.header_lba
    small = t.entries_raw[: entries * t.header.entry_size]
    disk.write(backup_lba - 1, small + bytes(ss - len(small)))
    rewrite_header(disk, backup_lba, entries_lba=backup_lba - 1, num_entries=entries,
                   entries_crc=zlib.crc32(small))  # fmt: skip
