"""An in-memory GPT disk for unit tests: builds valid tables in pure Python and records writes.

The builder writes every field at the offset the UEFI specification gives, without the layout
constants of ``updater.gptformat``: a wrong layout in the code fails against it."""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from updater import gptformat

# From the specifications, not from the code under test: the UEFI 2.10 GPT header (table 5-5)
# and Flatcar's disk layout (build_library/disk_layout.json).
HEADER_FIELDS = {
    "revision": (8, "<I"),
    "header_size": (12, "<I"),
    "my_lba": (24, "<Q"),
    "alternate_lba": (32, "<Q"),
    "first_usable_lba": (40, "<Q"),
    "last_usable_lba": (48, "<Q"),
    "entries_lba": (72, "<Q"),
    "num_entries": (80, "<I"),
    "entry_size": (84, "<I"),
    "entries_crc": (88, "<I"),
}
ENTRY_ATTRIBUTES_OFFSET = 48
ESP = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
BIOS_BOOT = uuid.UUID("21686148-6449-6e6f-744e-656564454649")
USR_TYPE = uuid.UUID("5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6")
USR_A_UUID = uuid.UUID("7130c94a-213a-4e5a-8e26-6cce9662f132")
USR_B_UUID = uuid.UUID("e03dd35c-7c2d-4a47-b3fe-27f15780a57c")


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
        """Sectors ``lba`` to ``lba + count - 1``; a read outside the disk fails, as the
        device's short read does (``updater.gpt``)."""
        if lba < 0 or count < 1 or lba + count > self.total_sectors:
            raise OSError(f"read of {count} sectors at LBA {lba} is outside the disk")
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
        e = i * esize  # UEFI table 5-6: type GUID, unique GUID, first, last, attributes, name
        entries[e : e + 16] = p.type_guid.bytes_le
        entries[e + 16 : e + 32] = p.guid.bytes_le
        struct.pack_into("<QQQ", entries, e + 32, lba, lba + p.size_sectors - 1, p.attributes)
        entries[e + 56 : e + 128] = p.name.encode("utf-16-le").ljust(72, b"\0")
        lba += p.size_sectors
    ecrc = zlib.crc32(entries)
    disk_guid = uuid.uuid4().bytes_le

    def header(my: int, alt: int, ent: int) -> bytes:
        h = bytearray(ss)
        h[0:8] = b"EFI PART"
        for name, value in (
            ("revision", 0x00010000), ("header_size", 92), ("my_lba", my), ("alternate_lba", alt),
            ("first_usable_lba", first_usable), ("last_usable_lba", last_usable),
            ("entries_lba", ent), ("num_entries", num_entries), ("entry_size", esize),
            ("entries_crc", ecrc),
        ):  # fmt: skip
            offset, fmt = HEADER_FIELDS[name]
            struct.pack_into(fmt, h, offset, value)
        h[56:72] = disk_guid
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
        Part(BIOS_BOOT, "BIOS-BOOT", size_sectors=4),
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
    """Change fields of the header at ``lba`` (names as in ``HEADER_FIELDS``) and give it a
    correct CRC32 again, over its own header size (what a buggy or hostile tool could write:
    every check but the one on the changed field passes)."""
    ss = disk.sector_size
    sector = bytearray(disk.read(lba, 1))
    for name, value in fields.items():
        offset, fmt = HEADER_FIELDS[name]
        struct.pack_into(fmt, sector, offset, value)
    size = min(struct.unpack_from("<I", sector, 12)[0], ss)
    struct.pack_into("<I", sector, 16, 0)
    struct.pack_into("<I", sector, 16, zlib.crc32(bytes(sector[:size])))
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
