"""The GUID partition table as bytes: parse, validate, choose a copy, and plan durable writes.

Pure: this module never opens a file. Reading goes through a ``SectorReader`` the caller
supplies (``updater.gpt`` for real disks, an in-memory disk in tests); writing is returned as a
``WritePlan``, a plain value of sectors to write in order with sync barriers between phases, that
``updater.gpt`` applies. It does not know what slots or attribute bits mean (see ``updater.slots``).

Rules followed (UEFI spec, GRUB's gpt code, cgpt):
- a copy is valid when its header has the signature, revision 1.0, a sane size, a matching header
  CRC32, the expected own LBA, a geometry that fits the disk (usable area inside it, its entry
  array between its header and the usable area, never over either), and its entry array matches
  the header's entries CRC32; a backup whose geometry differs from a valid primary's (entry
  count, entry size, usable area, disk GUID) is invalid too, because writing the primary's
  array where the backup's header says would overrun it;
- the backup is looked for where the primary's alternate LBA says and, when that is not a valid
  backup, at the disk's last sector (where UEFI puts it), so that a wrong alternate LBA cannot
  hide an intact backup;
- the primary copy is preferred; the backup is used when the primary is invalid; only when both
  are invalid is the table unreadable;
- a write rewrites the backup (header after entries) first, syncs, then the primary, syncs, and
  rebuilds an invalid or stale copy from the good one on the way, as GRUB's gptprio does; but the
  copy in use is always written last, so when the primary is the damaged one it is rebuilt first.
  A power cut at any sector therefore leaves the complete old or the complete new table readable.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from functools import cached_property

from updater.errors import GptError
from updater.guid import NIL, Guid
from updater.records import dataclass, replace

SIGNATURE = b"EFI PART"
REVISION = 0x00010000
HEADER_FORMAT = struct.Struct("<8sIIIIQQQQ16sQIII")  # 92 bytes, UEFI 2.x table 5-5
HEADER_CRC_OFFSET = 16
ENTRY_ATTRIBUTES_OFFSET = 48
ENTRY_NAME_OFFSET = 56
ENTRY_NAME_BYTES = 72
MAX_ENTRY_ARRAY_BYTES = 1 << 20  # refuse absurd headers instead of reading gigabytes
UNUSED_TYPE = NIL
_ZERO_GUID = NIL.bytes_le


# An interface for the type checker only: a Protocol at run time imports ``typing``.
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Protocol

    class SectorReader(Protocol):
        @property
        def sector_size(self) -> int: ...

        @property
        def total_sectors(self) -> int: ...

        def read(self, lba: int, count: int) -> bytes: ...


@dataclass(frozen=True)
class GptHeader:
    raw: bytes  # the whole header sector as read, so bytes past the 92 defined ones survive
    header_size: int
    my_lba: int
    alternate_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: Guid
    entries_lba: int
    num_entries: int
    entry_size: int
    entries_crc: int

    @property
    def entries_bytes(self) -> int:
        return self.num_entries * self.entry_size

    def entries_sectors(self, sector_size: int) -> int:
        return -(-self.entries_bytes // sector_size)

    def rebuilt(
        self, *, my_lba: int, alternate_lba: int, entries_lba: int, entries_crc: int
    ) -> bytes:
        """The header sector with new location fields and entries CRC, and a fresh header CRC."""
        fields = list(HEADER_FORMAT.unpack_from(self.raw))
        fields[3] = 0  # header CRC is computed with its own field zeroed
        fields[5], fields[6], fields[10], fields[13] = (
            my_lba,
            alternate_lba,
            entries_lba,
            entries_crc,
        )
        sector = bytearray(self.raw)
        HEADER_FORMAT.pack_into(sector, 0, *fields)
        crc = zlib.crc32(bytes(sector[: self.header_size]))
        struct.pack_into("<I", sector, HEADER_CRC_OFFSET, crc)
        return bytes(sector)


@dataclass(frozen=True)
class GptEntry:
    index: int  # 0-based position in the array; the partition number is index + 1
    type_guid: Guid
    unique_guid: Guid
    first_lba: int
    last_lba: int
    attributes: int
    name: str

    @property
    def number(self) -> int:
        return self.index + 1

    @property
    def used(self) -> bool:
        return self.type_guid != UNUSED_TYPE


@dataclass(frozen=True)
class CopyState:
    """One copy (primary or backup) as found on disk: where it lives, its bytes, what is wrong."""

    header_lba: int
    header_sector: bytes
    entries_lba: int
    entries_raw: bytes  # the sectors at entries_lba covering the whole array
    header: GptHeader | None
    problem: str | None  # None when the copy is valid

    @property
    def valid(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class GptTable:
    sector_size: int
    total_sectors: int
    primary: CopyState
    backup: CopyState
    header: GptHeader  # the header of the copy in use
    entries_raw: bytes  # the entry array in use, exactly num_entries * entry_size bytes

    @property
    def source(self) -> str:
        return "primary" if self.primary.valid else "backup"

    @property
    def backup_stale(self) -> bool:
        """Both copies are valid but disagree (e.g. a write was cut between backup and primary)."""
        return (
            self.primary.valid
            and self.backup.valid
            and self.backup.entries_raw[: len(self.entries_raw)] != self.entries_raw
        )

    @property
    def alternate_wrong(self) -> bool:
        """The primary is valid but its alternate LBA does not point at the backup in use."""
        p = self.primary.header
        return self.primary.valid and p is not None and p.alternate_lba != self.backup.header_lba

    @property
    def needs_repair(self) -> bool:
        return (
            not self.primary.valid
            or not self.backup.valid
            or self.backup_stale
            or self.alternate_wrong
        )

    def entries(self) -> list[GptEntry]:
        return list(self._entries)

    @cached_property
    def _entries(self) -> tuple[GptEntry, ...]:
        # Parsed once per table: resolving a Target, naming the slots and finding the ESP and
        # OEM each ask (128 entries, two GUIDs each; start-up time under emulation).
        header = self.header
        return tuple(parse_entries(self.entries_raw, header.entry_size, header.num_entries))

    def used_entries(self) -> list[GptEntry]:
        return [e for e in self.entries() if e.used]


@dataclass(frozen=True)
class WritePlan:
    """Sectors to write, phase by phase; the writer makes each phase durable before the next."""

    phases: tuple[tuple[tuple[int, bytes], ...], ...]

    @property
    def empty(self) -> bool:
        return not any(self.phases)

    def sectors(self) -> list[tuple[int, bytes]]:
        return [w for phase in self.phases for w in phase]


def parse_header(sector: bytes, expected_lba: int) -> GptHeader:
    """Parse and validate one header sector; raise GptError naming the first problem."""
    if len(sector) < HEADER_FORMAT.size:
        raise GptError("header sector is short")
    (sig, rev, hsize, crc, _res, my_lba, alt, first, last, guid, ent_lba, n, esize, ecrc) = (
        HEADER_FORMAT.unpack_from(sector)
    )
    if sig != SIGNATURE:
        raise GptError("no GPT signature")
    if rev != REVISION:
        raise GptError(f"unsupported GPT revision {rev:#x}")
    if not HEADER_FORMAT.size <= hsize <= len(sector):
        raise GptError(f"bad header size {hsize}")
    check = bytearray(sector[:hsize])
    struct.pack_into("<I", check, HEADER_CRC_OFFSET, 0)
    if zlib.crc32(bytes(check)) != crc:
        raise GptError("header CRC32 mismatch")
    if my_lba != expected_lba:
        raise GptError(f"header says it lives at LBA {my_lba}, found at {expected_lba}")
    if esize < 128 or esize % 8 or n == 0 or n * esize > MAX_ENTRY_ARRAY_BYTES:
        raise GptError(f"bad entry array geometry ({n} entries of {esize} bytes)")
    if first > last:
        raise GptError("first usable LBA is after last usable LBA")
    return GptHeader(
        raw=bytes(sector),
        header_size=hsize,
        my_lba=my_lba,
        alternate_lba=alt,
        first_usable_lba=first,
        last_usable_lba=last,
        disk_guid=Guid(bytes_le=guid),
        entries_lba=ent_lba,
        num_entries=n,
        entry_size=esize,
        entries_crc=ecrc,
    )


def parse_entries(raw: bytes, entry_size: int, count: int) -> list[GptEntry]:
    out = []
    for i in range(count):
        e = raw[i * entry_size : (i + 1) * entry_size]
        type_raw, unique_raw = e[0:16], e[16:32]
        first, last, attrs = struct.unpack_from("<QQQ", e, 32)
        name = e[ENTRY_NAME_OFFSET : ENTRY_NAME_OFFSET + ENTRY_NAME_BYTES].decode(
            "utf-16-le", errors="replace"
        )
        out.append(
            GptEntry(
                index=i,
                # Most entries of an array are unused, all zero: they share NIL instead of
                # making two Guids each (start-up time: an array has 128 entries).
                type_guid=NIL if type_raw == _ZERO_GUID else Guid(bytes_le=type_raw),
                unique_guid=NIL if unique_raw == _ZERO_GUID else Guid(bytes_le=unique_raw),
                first_lba=first,
                last_lba=last,
                attributes=attrs,
                name=name.split("\x00", 1)[0],
            )
        )
    return out


def _read_copy(
    reader: SectorReader, header_lba: int, fallback_entries_lba: int | None, *, primary: bool
) -> CopyState:
    ss, total = reader.sector_size, reader.total_sectors
    sector = reader.read(header_lba, 1)
    try:
        header = parse_header(sector, header_lba)
    except GptError as exc:
        entries_lba = fallback_entries_lba if fallback_entries_lba is not None else header_lba
        return CopyState(header_lba, sector, entries_lba, b"", None, str(exc))
    problem = _geometry_problem(header, total, ss, primary=primary)
    if problem is not None:
        return CopyState(header_lba, sector, header.entries_lba, b"", header, problem)
    raw = reader.read(header.entries_lba, header.entries_sectors(ss))
    if zlib.crc32(raw[: header.entries_bytes]) != header.entries_crc:
        problem = "entry array CRC32 mismatch"
    return CopyState(header_lba, sector, header.entries_lba, raw, header, problem)


def _geometry_problem(h: GptHeader, total: int, ss: int, *, primary: bool) -> str | None:
    """Where the header's own numbers put things that cannot be: outside the disk, over the
    header, over the usable area."""
    n = h.entries_sectors(ss)
    if not 2 <= h.first_usable_lba <= h.last_usable_lba < total - 1:
        return "usable area is outside the disk"
    if primary:
        fits = 2 <= h.entries_lba and h.entries_lba + n <= h.first_usable_lba
    else:
        fits = h.last_usable_lba < h.entries_lba and h.entries_lba + n <= h.my_lba
    return None if fits else "entry array is outside the disk"


def _geometry_differs(a: GptHeader, b: GptHeader) -> str | None:
    for name in ("num_entries", "entry_size", "first_usable_lba", "last_usable_lba", "disk_guid"):
        if getattr(a, name) != getattr(b, name):
            return f"{name.replace('_', ' ')} differs from the primary's"
    return None


def read_table(reader: SectorReader) -> GptTable:
    """Read both copies; return the table in use. GptError only when both copies are invalid."""
    total = reader.total_sectors
    # The smallest GPT disk: the MBR, a header and a one-sector array at each end, and one
    # usable sector between them. A smaller disk is refused before anything else is read.
    if total < 6:
        raise GptError("disk is too small to hold a GPT")
    mbr = reader.read(0, 1)
    if mbr[510:512] != b"\x55\xaa" or not any(mbr[446 + 16 * i + 4] == 0xEE for i in range(4)):
        raise GptError("no protective MBR (not a GPT disk)")
    primary = _read_copy(reader, 1, None, primary=True)
    backup = _find_backup(reader, primary)
    for good in (primary, backup):
        if good.valid and good.header is not None:
            return GptTable(
                sector_size=reader.sector_size,
                total_sectors=total,
                primary=primary,
                backup=backup,
                header=good.header,
                entries_raw=good.entries_raw[: good.header.entries_bytes],
            )
    raise GptError(
        f"both GPT copies are invalid (primary: {primary.problem}; backup: {backup.problem})"
    )


def _find_backup(reader: SectorReader, primary: CopyState) -> CopyState:
    """The backup where the primary says, else at the last sector; when neither is a valid
    backup, the copy at the last sector (where a rebuilt backup goes)."""
    total, ss = reader.total_sectors, reader.sector_size
    p = primary.header
    places = [total - 1]
    if p is not None and p.last_usable_lba < p.alternate_lba < total - 1:
        places.insert(0, p.alternate_lba)  # e.g. a disk grown after partitioning
    found: list[CopyState] = []
    for lba in places:
        fallback = lba - p.entries_sectors(ss) if p is not None else None
        copy = _read_copy(reader, lba, fallback, primary=False)
        if copy.valid and copy.header is not None and primary.valid and p is not None:
            differs = _geometry_differs(p, copy.header)
            if differs is not None:
                copy = replace(copy, problem=differs)
        if copy.valid:
            return copy
        found.append(copy)
    backup = found[-1]
    # A rebuilt backup puts its entries right below its header: read what is there now, so a
    # later plan can tell which sectors really change.
    if p is not None and backup.header is None and backup.entries_lba > 1:
        n = p.entries_sectors(ss)
        backup = replace(backup, entries_raw=reader.read(backup.entries_lba, n))
    elif p is not None and backup.header is not None:
        n = p.entries_sectors(ss)
        lba = backup.header_lba - n
        backup = replace(backup, entries_lba=lba, entries_raw=reader.read(lba, n))
    return backup


def with_attributes(table: GptTable, changes: Mapping[int, int]) -> bytes:
    """The entry array with new 64-bit attribute fields for the given 0-based indexes.

    Only the 8 attribute bytes of each changed entry differ; every other byte is kept.
    """
    raw = bytearray(table.entries_raw)
    esize = table.header.entry_size
    for index, attrs in changes.items():
        if not 0 <= index < table.header.num_entries:
            raise GptError(f"no partition entry {index + 1}")
        if not 0 <= attrs < 1 << 64:
            raise GptError(f"attribute value {attrs:#x} does not fit 64 bits")
        struct.pack_into("<Q", raw, index * esize + ENTRY_ATTRIBUTES_OFFSET, attrs)
    return bytes(raw)


def _copy_writes(
    current: CopyState, header: bytes, entries_lba: int, entries: bytes, ss: int
) -> tuple[tuple[int, bytes], ...]:
    """Sector writes turning ``current`` into (header, entries): entries first, header last."""
    writes: list[tuple[int, bytes]] = []
    padded = entries + bytes(-len(entries) % ss)
    for i in range(len(padded) // ss):
        new = padded[i * ss : (i + 1) * ss]
        same_place = current.entries_lba == entries_lba
        old = current.entries_raw[i * ss : (i + 1) * ss] if same_place else b""
        if new != old:
            writes.append((entries_lba + i, new))
    if header != current.header_sector:
        writes.append((current.header_lba, header))
    return tuple(writes)


def plan_write(table: GptTable, entries: bytes) -> WritePlan:
    """Plan writing ``entries`` (a full array) to both copies, the copy in use last.

    Invalid or stale copies are rebuilt from the header in use. Sectors that already hold the
    wanted bytes are not written, so a plan for an unchanged valid table is empty.
    """
    h, ss = table.header, table.sector_size
    if len(entries) != h.entries_bytes:
        raise GptError("entry array has the wrong size")
    crc = zlib.crc32(entries)
    n_sectors = h.entries_sectors(ss)
    backup_lba = table.backup.header_lba
    # A copy's own entry location is kept only when that copy is valid; a damaged one is
    # rebuilt where UEFI puts it (LBA 2, and right below the backup header).
    p_hdr = table.primary.header
    valid_p = p_hdr is not None and table.primary.valid
    primary_entries_lba = p_hdr.entries_lba if valid_p and p_hdr else 2
    b_hdr = table.backup.header
    valid_b = b_hdr is not None and table.backup.valid
    backup_entries_lba = b_hdr.entries_lba if valid_b and b_hdr else backup_lba - n_sectors
    if (
        primary_entries_lba < 2
        or primary_entries_lba + n_sectors > h.first_usable_lba
        or backup_entries_lba <= h.last_usable_lba
        or backup_entries_lba + n_sectors > backup_lba
        or backup_lba >= table.total_sectors
    ):
        raise GptError("entry arrays would overlap the usable area; repair the table first")
    backup_header = h.rebuilt(
        my_lba=backup_lba, alternate_lba=1, entries_lba=backup_entries_lba, entries_crc=crc
    )
    primary_header = h.rebuilt(
        my_lba=1, alternate_lba=backup_lba, entries_lba=primary_entries_lba, entries_crc=crc
    )
    backup_writes = _copy_writes(table.backup, backup_header, backup_entries_lba, entries, ss)
    primary_writes = _copy_writes(table.primary, primary_header, primary_entries_lba, entries, ss)
    if table.primary.valid:
        return WritePlan(phases=(backup_writes, primary_writes))
    # The backup is the only good copy: rebuild the primary first, so that a cut at any sector
    # still leaves one whole copy. (GRUB writes the backup first even here; we do not.)
    return WritePlan(phases=(primary_writes, backup_writes))


def plan_repair(table: GptTable) -> WritePlan:
    """Rewrite an invalid or stale copy from the one in use (like ``cgpt repair``)."""
    return plan_write(table, table.entries_raw)


def entries_by_number(entries: Sequence[GptEntry]) -> dict[int, GptEntry]:
    return {e.number: e for e in entries}
