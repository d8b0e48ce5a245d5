"""A new GPT (``updater.gptcreate``): read back by the project's reader, fields as the UEFI
specification gives them, the order of the writes (the protective MBR last, nothing recognisable
before it), and the tables it refuses to make. sgdisk and libparted read the same tables in
``tests/integration/test_install_disk.py``."""

from __future__ import annotations

import struct

import pytest

from tests.unit.memdisk import MemDisk
from updater import gptcreate, gptformat, slots
from updater.errors import GptError
from updater.guid import Guid
from updater.records import replace

ESP = Guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
ROOT = Guid("3884dd41-8582-4404-b9a8-e9b84f2df50e")
DISK = Guid("11111111-2222-4333-8444-555555555555")
A_GOOD = 0x0101000000000000  # REFERENCE section 1: priority 1, tries 0, successful 1


def numbered(n: int) -> Guid:
    """The GUID whose 128-bit value is ``n``, as ``uuid.UUID(int=n)``."""
    return Guid(f"{n:032x}")


def parts(ss: int) -> list[gptcreate.NewPartition]:
    mib = (1 << 20) // ss
    return [
        gptcreate.NewPartition(1, ESP, numbered(1), mib, 2 * mib - 1, "EFI-SYSTEM"),
        gptcreate.NewPartition(3, slots.USR_TYPE, numbered(3), 2 * mib, 4 * mib - 1,
                               "USR-A", A_GOOD),  # fmt: skip
        gptcreate.NewPartition(9, ROOT, numbered(9), 4 * mib, 6 * mib - 1, "ROOT"),
    ]


def blank(ss: int, mib: int = 8) -> MemDisk:
    return MemDisk(bytearray(mib << 20), ss)


@pytest.mark.parametrize("ss", [512, 4096])
def test_the_table_reads_back_with_gaps_in_the_numbers(ss: int) -> None:
    disk = blank(ss)
    geo = gptcreate.Geometry(ss, disk.total_sectors)
    disk.apply(gptcreate.plan_new_table(geo, DISK, parts(ss)))
    table = gptformat.read_table(disk)
    assert table.primary.valid and table.backup.valid and not table.backup_stale
    assert table.header.disk_guid == DISK
    # UEFI 2.x 5.3.2: 128 entries of 128 bytes right after the header; first usable after them
    entry_sectors = 16384 // ss
    assert table.header.first_usable_lba == 2 + entry_sectors
    assert table.header.last_usable_lba == disk.total_sectors - 2 - entry_sectors
    assert table.backup.header_lba == disk.total_sectors - 1
    assert table.backup.entries_lba == disk.total_sectors - 1 - entry_sectors
    entries = gptformat.entries_by_number(table.used_entries())
    assert sorted(entries) == [1, 3, 9]
    assert entries[3].name == "USR-A" and entries[3].attributes == A_GOOD
    assert entries[3].unique_guid == numbered(3) and entries[1].type_guid == ESP
    assert not table.entries()[1].used and not table.entries()[4].used  # 2 and 5 stay empty


def test_protective_mbr_as_the_specification_gives_it() -> None:
    geo = gptcreate.Geometry(512, 16)
    mbr = gptcreate.protective_mbr(geo)
    # UEFI 2.x table 5-4: boot indicator 0, start CHS 0x000200, type 0xEE, end CHS 0xFFFFFF,
    # starting LBA 1, size in LBAs of the disk minus one (capped at 0xFFFFFFFF)
    assert mbr[446:462] == bytes.fromhex("00 000200 ee ffffff 01000000 0f000000")
    assert mbr[510:512] == b"\x55\xaa" and not any(mbr[:446]) and not any(mbr[462:510])
    huge = gptcreate.protective_mbr(gptcreate.Geometry(512, 1 << 33))
    assert struct.unpack_from("<I", huge, 458)[0] == 0xFFFFFFFF


@pytest.mark.parametrize("ss", [512, 4096])
def test_nothing_is_a_table_until_the_protective_mbr_is_written_last(ss: int) -> None:
    disk = blank(ss)
    plan = gptcreate.plan_new_table(gptcreate.Geometry(ss, disk.total_sectors), DISK, parts(ss))
    assert [lba for lba, _ in plan.phases[-1]] == [0]
    writes = plan.sectors()
    for cut in range(len(writes)):  # a power cut after `cut` sectors
        partial = disk.copy()
        for lba, data in writes[:cut]:
            partial.write(lba, data)
        with pytest.raises(GptError, match="protective MBR"):
            gptformat.read_table(partial)
    # and before the headers nothing carries a GPT signature at all
    first_header = next(i for i, (lba, _) in enumerate(writes) if lba == 1)
    entries_only = disk.copy()
    for lba, data in writes[:first_header]:
        entries_only.write(lba, data)
    assert gptformat.SIGNATURE not in bytes(entries_only.data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"number": 0}, "out of range"),
        ({"number": 129}, "out of range"),
        ({"first_lba": 1}, "outside the usable"),
        ({"last_lba": 10**9}, "outside the usable"),
        ({"type_guid": numbered(0)}, "unused type"),
        ({"name": "x" * 37}, "longer than 36"),
        ({"attributes": 1 << 64}, "does not fit"),
    ],
)
def test_refuses_entries_no_reader_would_accept(change: dict[str, object], message: str) -> None:
    bad = parts(512)
    bad[0] = replace(bad[0], **change)
    with pytest.raises(GptError, match=message):
        gptcreate.plan_new_table(gptcreate.Geometry(512, 16384), DISK, bad)


def test_refuses_overlaps_and_numbers_used_twice() -> None:
    p = parts(512)
    overlapping = [p[0], replace(p[1], first_lba=p[0].last_lba)]
    with pytest.raises(GptError, match="overlap"):
        gptcreate.plan_new_table(gptcreate.Geometry(512, 16384), DISK, overlapping)
    twice = [p[0], replace(p[1], number=1)]
    with pytest.raises(GptError, match="used twice"):
        gptcreate.plan_new_table(gptcreate.Geometry(512, 16384), DISK, twice)
    with pytest.raises(GptError, match="cannot put a GPT"):
        gptcreate.plan_new_table(gptcreate.Geometry(512, 60), DISK, [])
