"""Every validation rule of the GPT reader, one damaged field at a time, on disks written by the
spec-offset builder of ``memdisk`` (not by the code under test). Each case checks that the copy is
refused for the reason meant (the problem text), and that the boundary value next to it is not.
"""

from __future__ import annotations

import struct
import zlib

import pytest

from updater import gptformat
from updater.errors import GptError
from updater.records import replace

from .memdisk import MemDisk, build, flatcar_parts, rewrite_header

A_GOOD = 0x0101_0000_0000_0000  # priority 1, tries 0, successful


def disk(ss: int = 512, num_entries: int = 128) -> MemDisk:
    return build(flatcar_parts(A_GOOD), sector_size=ss, num_entries=num_entries)


def geometry(d: MemDisk) -> tuple[int, int, int, int]:
    """total sectors, first usable, last usable, entry array sectors; read with plain struct
    from the primary header at the UEFI offsets."""
    h = d.read(1, 1)
    first, last = struct.unpack_from("<QQ", h, 40)
    n, size = struct.unpack_from("<II", h, 80)
    return d.total_sectors, first, last, -(-n * size // d.sector_size)


def primary_problem(d: MemDisk) -> str | None:
    t = gptformat.read_table(d)
    assert t.backup.valid, t.backup.problem
    return t.primary.problem


def backup_problem(d: MemDisk) -> str | None:
    t = gptformat.read_table(d)
    assert t.primary.valid, t.primary.problem
    return t.backup.problem


# --- the header itself -----------------------------------------------------------------------


def test_short_header_sector() -> None:
    with pytest.raises(GptError, match="^header sector is short$"):
        gptformat.parse_header(disk().read(1, 1)[:91], 1)


def test_signature() -> None:
    d = disk()
    d.data[512] = ord("e")  # "eFI PART"
    assert primary_problem(d) == "no GPT signature"


@pytest.mark.parametrize("revision", [0x00010001, 0x00020000, 0])
def test_revision(revision: int) -> None:
    d = disk()
    rewrite_header(d, 1, revision=revision)
    assert primary_problem(d) == f"unsupported GPT revision {revision:#x}"


@pytest.mark.parametrize(("size", "ok"), [(91, False), (92, True), (96, True), (512, True),
                                          (513, False), (0, False)])  # fmt: skip
def test_header_size_bounds(size: int, ok: bool) -> None:
    """At least the 92 defined bytes, at most the sector; the CRC32 covers exactly that size."""
    d = disk()
    d.data[512 + 92 : 512 + 96] = b"\x01\x02\x03\x04"  # reserved bytes inside a 96-byte header
    rewrite_header(d, 1, header_size=size)
    assert primary_problem(d) == (None if ok else f"bad header size {size}")


def test_header_crc_covers_exactly_the_header_size() -> None:
    d = disk()
    rewrite_header(d, 1, header_size=96)
    d.data[512 + 100] ^= 1  # past the header: not covered
    assert primary_problem(d) is None
    d.data[512 + 93] ^= 1  # inside the 96 bytes: covered
    assert primary_problem(d) == "header CRC32 mismatch"


@pytest.mark.parametrize("my_lba", [0, 2, 3])
def test_primary_must_say_it_lives_at_lba_1(my_lba: int) -> None:
    d = disk()
    rewrite_header(d, 1, my_lba=my_lba)
    assert primary_problem(d) == f"header says it lives at LBA {my_lba}, found at 1"


def test_backup_must_say_where_it_lives() -> None:
    d = disk()
    last = d.total_sectors - 1
    rewrite_header(d, last, my_lba=last - 1)
    assert backup_problem(d) == f"header says it lives at LBA {last - 1}, found at {last}"


@pytest.mark.parametrize(
    ("num_entries", "entry_size"),
    [(128, 64), (128, 120), (128, 132), (0, 128), (8193, 128), (4097, 256)],
)
def test_entry_array_geometry(num_entries: int, entry_size: int) -> None:
    """Entries of at least 128 bytes, a multiple of 8, at least one, at most 1 MiB in all."""
    d = disk()
    rewrite_header(d, 1, num_entries=num_entries, entry_size=entry_size)
    assert primary_problem(d) == (
        f"bad entry array geometry ({num_entries} entries of {entry_size} bytes)"
    )


@pytest.mark.parametrize(("num_entries", "entry_size"), [(8192, 128), (4096, 256), (1, 128)])
def test_entry_array_geometry_limits_themselves_parse(num_entries: int, entry_size: int) -> None:
    sector = bytearray(disk().read(1, 1))
    struct.pack_into("<II", sector, 80, num_entries, entry_size)
    struct.pack_into("<I", sector, 16, 0)
    struct.pack_into("<I", sector, 16, zlib.crc32(bytes(sector[:92])))
    header = gptformat.parse_header(bytes(sector), 1)
    assert (header.num_entries, header.entry_size) == (num_entries, entry_size)
    assert header.entries_bytes == num_entries * entry_size


def test_first_usable_after_last_usable() -> None:
    d = disk()
    _, first, last, _ = geometry(d)
    rewrite_header(d, 1, first_usable_lba=last + 1)
    assert primary_problem(d) == "first usable LBA is after last usable LBA"


# --- geometry against the disk ----------------------------------------------------------------


def test_a_single_usable_sector_is_valid() -> None:
    d = disk()
    _, first, _, _ = geometry(d)
    for lba in (1, d.total_sectors - 1):
        rewrite_header(d, lba, last_usable_lba=first)
    t = gptformat.read_table(d)
    assert t.primary.valid and t.backup.valid


@pytest.mark.parametrize("field", ["first", "last"])
def test_usable_area_must_be_inside_the_disk(field: str) -> None:
    d = disk()
    total, first, last, n = geometry(d)
    if field == "first":
        rewrite_header(d, 1, first_usable_lba=1, entries_lba=2)
    else:
        rewrite_header(d, 1, last_usable_lba=total - 1)
    assert primary_problem(d) == "usable area is outside the disk"


def test_usable_area_may_end_right_before_the_last_sector() -> None:
    """last usable = total - 2 is inside the disk for the primary (the backup's own array then
    has no room, so only the primary is changed)."""
    d = disk()
    total, _, _, _ = geometry(d)
    rewrite_header(d, 1, last_usable_lba=total - 2)
    t = gptformat.read_table(d)
    assert t.primary.valid
    assert t.backup.problem == "last usable lba differs from the primary's"


@pytest.mark.parametrize(("entries_lba", "ok"), [(0, False), (1, False), (2, True), (3, False)])
def test_primary_entry_array_between_header_and_usable_area(entries_lba: int, ok: bool) -> None:
    """The array must start at LBA 2 or later and end before the first usable LBA (this disk
    has exactly the room from 2)."""
    d = disk()
    rewrite_header(d, 1, entries_lba=entries_lba)
    problem = primary_problem(d)
    assert problem == (None if ok else "entry array is outside the disk")


@pytest.mark.parametrize("delta", [-1, 1])
def test_backup_entry_array_between_usable_area_and_header(delta: int) -> None:
    """The backup's array must start after the last usable LBA and end before its header."""
    d = disk()
    total, _, last, n = geometry(d)
    lba = total - 1
    rewrite_header(d, lba, entries_lba=last if delta < 0 else lba - n + 1)
    assert backup_problem(d) == "entry array is outside the disk"


def test_backup_entry_array_right_after_the_usable_area() -> None:
    d = disk()
    total, _, last, n = geometry(d)
    moved = bytearray(d.read(total - 1 - n, n))
    d.write(last + 1, bytes(moved))
    rewrite_header(d, total - 1, entries_lba=last + 1)
    t = gptformat.read_table(d)
    assert t.backup.valid and t.backup.header is not None
    assert t.backup.header.entries_lba == last + 1


@pytest.mark.parametrize("num_entries", [5, 33, 128])
@pytest.mark.parametrize("ss", [512, 4096])
def test_entry_arrays_that_end_inside_a_sector(num_entries: int, ss: int) -> None:
    """An array of 5 or 33 entries ends inside a sector: it takes whole sectors, rounded up,
    and its CRC32 covers only its bytes."""
    d = disk(ss, num_entries)
    t = gptformat.read_table(d)
    assert not t.needs_repair
    assert t.header.entries_sectors(ss) == -(-num_entries * 128 // ss)
    assert len(t.entries_raw) == num_entries * 128
    plan = gptformat.plan_write(t, gptformat.with_attributes(t, {3: 0x0012_0000_0000_0000}))
    d.apply(plan)
    after = gptformat.read_table(d)
    assert not after.needs_repair
    assert after.used_entries()[3].attributes == 0x0012_0000_0000_0000


# --- the protective MBR and the disk -----------------------------------------------------------


@pytest.mark.parametrize("slot", [0, 1, 3])
def test_protective_mbr_entry_in_any_of_the_four_slots(slot: int) -> None:
    d = disk()
    entry = bytes(d.data[446:462])
    d.data[446:510] = bytes(64)
    d.data[446 + 16 * slot : 462 + 16 * slot] = entry
    assert gptformat.read_table(d).primary.valid


@pytest.mark.parametrize("mbr_type", [0x83, 0xEF, 0x00, 0xED])
def test_mbr_without_a_protective_entry_is_no_gpt_disk(mbr_type: int) -> None:
    d = disk()
    d.data[446 + 4] = mbr_type
    with pytest.raises(GptError, match=r"^no protective MBR \(not a GPT disk\)$"):
        gptformat.read_table(d)


@pytest.mark.parametrize("boot_signature", [b"\x55\x00", b"\x00\xaa", b"\xaa\x55"])
def test_mbr_boot_signature(boot_signature: bytes) -> None:
    d = disk()
    d.data[510:512] = boot_signature
    with pytest.raises(GptError, match="no protective MBR"):
        gptformat.read_table(d)


@pytest.mark.parametrize("sectors", [0, 1, 2, 3, 4, 5])
def test_disk_too_small(sectors: int) -> None:
    with pytest.raises(GptError, match="^disk is too small to hold a GPT$"):
        gptformat.read_table(MemDisk(bytearray(512 * sectors), 512))


def test_both_copies_invalid_names_both_problems() -> None:
    d = disk()
    rewrite_header(d, 1, revision=2)
    rewrite_header(d, d.total_sectors - 1, my_lba=7)
    with pytest.raises(
        GptError,
        match=r"^both GPT copies are invalid \(primary: unsupported GPT revision 0x2; "
        r"backup: header says it lives at LBA 7, found at \d+\)$",
    ):
        gptformat.read_table(d)


# --- where the backup is looked for -----------------------------------------------------------


def grown(d: MemDisk, extra: int) -> MemDisk:
    """The same disk with ``extra`` sectors appended (a disk image grown after partitioning):
    the backup stays where the primary's alternate LBA says, no longer at the last sector."""
    return MemDisk(d.data + bytearray(extra * d.sector_size), d.sector_size)


def test_backup_where_the_alternate_lba_points() -> None:
    d = disk()
    old_last = d.total_sectors - 1
    g = grown(d, 16)
    t = gptformat.read_table(g)
    assert t.backup.valid and t.backup.header_lba == old_last
    assert not t.alternate_wrong and not t.needs_repair


def test_alternate_lba_at_the_last_sector_or_inside_the_usable_area_is_not_followed() -> None:
    d = disk()
    total, _, last, _ = geometry(d)
    rewrite_header(d, 1, alternate_lba=last)  # in the usable area: never a header there
    t = gptformat.read_table(d)
    assert t.backup.valid and t.backup.header_lba == total - 1 and t.alternate_wrong


def test_a_grown_disk_whose_old_backup_is_damaged_gets_a_backup_at_the_end() -> None:
    d = disk()
    old_last = d.total_sectors - 1
    d.data[old_last * 512 + 20] ^= 0xFF
    g = grown(d, 16)
    t = gptformat.read_table(g)
    assert not t.backup.valid and t.backup.header_lba == g.total_sectors - 1
    g.apply(gptformat.plan_repair(t))
    fixed = gptformat.read_table(g)
    assert not fixed.needs_repair and fixed.backup.header_lba == g.total_sectors - 1
    assert fixed.primary.header is not None
    assert fixed.primary.header.alternate_lba == g.total_sectors - 1


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("num_entries", 64, "num entries differs from the primary's"),
        ("first_usable_lba", 40, "first usable lba differs from the primary's"),
    ],
)
def test_backup_geometry_must_match_the_primary(field: str, value: int, problem: str) -> None:
    """A CRC-valid backup whose entries CRC matches its own (smaller) array is still refused
    when it describes another geometry than the primary."""
    d = disk()
    lba = d.total_sectors - 1
    t = gptformat.read_table(d)
    fields = {field: value}
    if field in ("num_entries", "entry_size"):
        count = value if field == "num_entries" else 128 * 128 // value
        size = 128 if field == "num_entries" else value
        fields = {"num_entries": count, "entry_size": size}
        data = t.entries_raw[: count * size]
        fields["entries_crc"] = zlib.crc32(data)
    rewrite_header(d, lba, **fields)
    assert backup_problem(d) == problem


def test_backup_entry_size_must_match_the_primary() -> None:
    """128 entries of 136 bytes (34 sectors) below the backup header, the usable area ending
    before them: valid on its own, refused for its entry size."""
    d = disk()
    total, _, last, _ = geometry(d)
    lba = total - 1
    array = bytes(range(256)) * 68  # 128 * 136 bytes
    d.write(lba - 34, array)
    rewrite_header(d, lba, entry_size=136, entries_lba=lba - 34, last_usable_lba=last - 8,
                   entries_crc=zlib.crc32(array))  # fmt: skip
    assert backup_problem(d) == "entry size differs from the primary's"


def test_backup_disk_guid_must_match_the_primary() -> None:
    d = disk()
    lba = d.total_sectors - 1
    d.data[lba * 512 + 56] ^= 0xFF
    rewrite_header(d, lba)  # CRC32 again
    assert backup_problem(d) == "disk guid differs from the primary's"


# --- writing ----------------------------------------------------------------------------------


def test_plan_write_refuses_an_array_of_another_size() -> None:
    t = gptformat.read_table(disk())
    for size in (128 * 127, 128 * 129, 0):
        with pytest.raises(GptError, match="^entry array has the wrong size$"):
            gptformat.plan_write(t, bytes(size))


@pytest.mark.parametrize(
    ("index", "attrs", "message"),
    [
        (128, 0, "^no partition entry 129$"),
        (-1, 0, "^no partition entry 0$"),
        (3, 1 << 64, "^attribute value 0x10000000000000000 does not fit 64 bits$"),
        (3, -1, "does not fit 64 bits"),
    ],
)
def test_with_attributes_bounds(index: int, attrs: int, message: str) -> None:
    t = gptformat.read_table(disk())
    with pytest.raises(GptError, match=message):
        gptformat.with_attributes(t, {index: attrs})


def test_with_attributes_writes_the_attribute_field_of_the_entry() -> None:
    """Bytes 48..55 of entry ``index`` (UEFI table 5-6), little-endian; nothing else."""
    t = gptformat.read_table(disk())
    out = gptformat.with_attributes(t, {127: (1 << 64) - 1, 0: 0x0102030405060708})
    assert out[127 * 128 + 48 : 127 * 128 + 56] == b"\xff" * 8
    assert out[48:56] == bytes.fromhex("0807060504030201")
    changed = {i for i, (a, b) in enumerate(zip(out, t.entries_raw, strict=True)) if a != b}
    assert changed <= set(range(48, 56)) | set(range(127 * 128 + 48, 127 * 128 + 56))


def test_rebuilt_headers_are_valid_by_an_independent_check() -> None:
    """After a write, each header's CRC32 (over its 92 bytes with the CRC field zeroed), its
    own LBA, its alternate and its entries CRC32 are right, as computed here with zlib."""
    d = disk()
    t = gptformat.read_table(d)
    entries = gptformat.with_attributes(t, {3: 0x0012_0000_0000_0000})
    d.apply(gptformat.plan_write(t, entries))
    total = d.total_sectors
    for lba, alt in ((1, total - 1), (total - 1, 1)):
        h = bytearray(d.read(lba, 1))
        stored = struct.unpack_from("<I", h, 16)[0]
        struct.pack_into("<I", h, 16, 0)
        assert zlib.crc32(bytes(h[:92])) == stored
        assert struct.unpack_from("<QQ", h, 24) == (lba, alt)
        assert struct.unpack_from("<I", h, 88)[0] == zlib.crc32(entries)


def test_a_rebuilt_primary_keeps_bytes_past_the_defined_fields() -> None:
    """A 96-byte header (its reserved bytes 92..95 set): the rewrite keeps them and covers them
    with its CRC32."""
    d = disk()
    d.data[512 + 92 : 512 + 96] = b"ABCD"
    rewrite_header(d, 1, header_size=96)
    t = gptformat.read_table(d)
    d.apply(gptformat.plan_write(t, gptformat.with_attributes(t, {3: 0x0012_0000_0000_0000})))
    h = d.read(1, 1)
    assert h[92:96] == b"ABCD" and struct.unpack_from("<I", h, 12)[0] == 96
    assert not gptformat.read_table(d).needs_repair


def test_a_write_that_would_put_an_array_over_the_usable_area_is_refused() -> None:
    """A valid backup that says the usable area starts at LBA 10, with the primary damaged:
    rebuilding the primary's 32-sector array at LBA 2 would overwrite partitions."""
    d = disk()
    lba = d.total_sectors - 1
    rewrite_header(d, lba, first_usable_lba=10)
    d.data[512 + 20] ^= 0xFF  # primary header damaged
    t = gptformat.read_table(d)
    assert t.source == "backup"
    with pytest.raises(GptError, match="^entry arrays would overlap the usable area; repair"):
        gptformat.plan_write(t, t.entries_raw)


def test_a_backup_rebuilt_over_the_usable_area_is_refused() -> None:
    """The primary says the usable area ends at the last sector but one; the damaged backup
    would be rebuilt right below its header, inside that area."""
    d = disk()
    total, _, _, _ = geometry(d)
    rewrite_header(d, 1, last_usable_lba=total - 2)
    t = gptformat.read_table(d)
    assert t.primary.valid and not t.backup.valid
    with pytest.raises(GptError, match="overlap the usable area"):
        gptformat.plan_write(t, t.entries_raw)


def test_unchanged_sectors_of_a_rebuilt_copy_are_not_written() -> None:
    """A backup header damaged: only that sector is rewritten, the array right below it holds
    the wanted bytes already."""
    d = disk()
    lba = d.total_sectors - 1
    d.data[lba * 512 + 20] ^= 0xFF
    plan = gptformat.plan_repair(gptformat.read_table(d))
    assert [w for w, _ in plan.sectors()] == [lba]
    assert plan.phases[1] == () and not plan.empty  # the primary: nothing to write


# --- entries ------------------------------------------------------------------------------------

# The EFI system partition's type GUID as the UEFI specification stores it (mixed endian).
ESP_TYPE_BYTES = bytes.fromhex("28732AC11FF8D211BA4B00A0C93EC93B")


def entry_bytes(
    name: bytes, first: int = 34, last: int = 97, attrs: int = 0, size: int = 128
) -> bytes:
    e = bytearray(size)
    e[0:16] = ESP_TYPE_BYTES
    e[16:32] = bytes(range(16))
    struct.pack_into("<QQQ", e, 32, first, last, attrs)
    e[56 : 56 + len(name)] = name
    return bytes(e)


def test_entry_fields_at_their_spec_offsets() -> None:
    raw = entry_bytes("EFI-SYSTEM".encode("utf-16-le"), 2048, 4095, 1 << 63)
    (e,) = gptformat.parse_entries(raw, 128, 1)
    assert str(e.type_guid) == "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    assert e.unique_guid.bytes_le == bytes(range(16))
    assert (e.index, e.number, e.first_lba, e.last_lba) == (0, 1, 2048, 4095)
    assert (e.attributes, e.name, e.used) == (1 << 63, "EFI-SYSTEM", True)


def test_entry_names() -> None:
    full = ("N" * 36).encode("utf-16-le")  # 72 bytes, no terminator
    after_nul = "A".encode("utf-16-le") + b"\0\0" + "B".encode("utf-16-le")
    lone_surrogate = b"\x00\xd8"
    raws = [entry_bytes(n) for n in (full, after_nul, lone_surrogate, b"")]
    names = [e.name for e in gptformat.parse_entries(b"".join(raws), 128, 4)]
    assert names == ["N" * 36, "A", "\ufffd", ""]


def test_entries_of_a_larger_entry_size_and_unused_ones() -> None:
    raw = entry_bytes(b"X\0", size=256) + bytes(256)
    first, second = gptformat.parse_entries(raw, 256, 2)
    assert first.name == "X" and first.used and first.number == 1
    assert not second.used and second.number == 2 and second.type_guid.bytes_le == bytes(16)
    # all-zero GUIDs are the one shared value, not made anew per entry (start-up time)
    assert second.type_guid is second.unique_guid is gptformat.UNUSED_TYPE
    d = disk()
    t = gptformat.read_table(d)
    assert [e.number for e in t.used_entries()] == [1, 2, 3, 4] and len(t.entries()) == 128
    assert gptformat.entries_by_number(t.used_entries())[4].name == "USR-B"


def test_a_damaged_copy_says_where_its_entries_would_go() -> None:
    """An unreadable primary header: its entries are assumed where UEFI puts them (LBA 2 is
    where a rebuild writes them); an unreadable backup's right below its header."""
    d = disk()
    total, _, _, n = geometry(d)
    d.data[512] ^= 0xFF
    t = gptformat.read_table(d)
    assert (t.primary.header, t.primary.entries_lba, t.primary.entries_raw) == (None, 1, b"")
    d = disk()
    d.data[(total - 1) * 512] ^= 0xFF
    t = gptformat.read_table(d)
    assert t.backup.header is None and t.backup.entries_lba == total - 1 - n
    assert t.backup.entries_raw == d.read(total - 1 - n, n)
    assert t.backup.problem == "no GPT signature"


# --- the smallest disk, damaged copies as found, plans that keep or move arrays ---------------


def smallest_disk() -> MemDisk:
    """Six sectors, the least a GPT fits in (UEFI 5.3): MBR, primary header, a one-sector
    array of four entries, one usable sector, the backup array and the backup header."""
    big = disk(num_entries=4)
    d = MemDisk(bytearray(6 * 512), 512)
    d.data[0:1536] = big.data[0:1536]  # MBR, primary header, its array at LBA 2
    d.data[4 * 512 : 5 * 512] = big.data[2 * 512 : 3 * 512]  # the backup array at LBA 4
    d.data[5 * 512 : 6 * 512] = big.data[512:1024]
    rewrite_header(d, 1, alternate_lba=5, first_usable_lba=3, last_usable_lba=3)
    rewrite_header(d, 5, my_lba=5, alternate_lba=1, entries_lba=4, first_usable_lba=3,
                   last_usable_lba=3)  # fmt: skip
    return d


def test_the_smallest_gpt_disk_is_read() -> None:
    t = gptformat.read_table(smallest_disk())
    assert t.primary.valid and t.backup.valid and not t.needs_repair
    assert (t.header.first_usable_lba, t.header.last_usable_lba) == (3, 3)


def test_a_header_sector_of_exactly_92_bytes_parses() -> None:
    header = gptformat.parse_header(disk().read(1, 1)[:92], 1)
    assert header.header_size == 92 and header.my_lba == 1


def test_attributes_may_be_cleared_to_zero() -> None:
    """All 64 bits clear (priority 0, tries 0, not successful) is a value like any other."""
    d = disk()
    t = gptformat.read_table(d)
    d.apply(gptformat.plan_write(t, gptformat.with_attributes(t, {2: 0})))
    raw = gptformat.read_table(d).entries_raw
    assert struct.unpack_from("<Q", raw, 2 * 128 + 48)[0] == 0


def test_entry_array_crc_mismatch_is_named() -> None:
    d = disk()
    d.data[2 * 512 + 56] ^= 1  # the first entry's name, in the primary's array
    assert primary_problem(d) == "entry array CRC32 mismatch"


def test_a_damaged_copy_is_kept_as_found() -> None:
    """A copy refused for its geometry keeps its header sector, its parsed header and the array
    location that header names; one whose header does not parse keeps its sector."""
    d = disk()
    rewrite_header(d, 1, entries_lba=1)
    t = gptformat.read_table(d)
    assert t.primary.problem == "entry array is outside the disk"
    assert t.primary.header_sector == d.read(1, 1)
    assert t.primary.header is not None and t.primary.header.entries_lba == 1
    assert (t.primary.entries_lba, t.primary.entries_raw) == (1, b"")
    d.data[512] ^= 0xFF  # the signature
    t = gptformat.read_table(d)
    assert t.primary.problem == "no GPT signature" and t.primary.header is None
    assert t.primary.header_sector == d.read(1, 1)


def test_a_backup_header_with_a_bad_geometry_is_rebuilt_over_its_intact_array() -> None:
    """The backup's array right below its header still holds the right bytes: a repair
    rewrites the header only."""
    d = disk()
    total = d.total_sectors
    rewrite_header(d, total - 1, entries_lba=1)
    t = gptformat.read_table(d)
    assert t.backup.problem == "entry array is outside the disk"
    plan = gptformat.plan_repair(t)
    assert [lba for lba, _ in plan.sectors()] == [total - 1]
    d.apply(plan)
    assert not gptformat.read_table(d).needs_repair


def test_a_backup_alone_may_start_its_usable_area_at_lba_2_but_is_not_repairable() -> None:
    """LBA 2 is inside the disk, so the backup is read; a primary array has no room before it,
    so the primary cannot be rebuilt."""
    d = disk()
    d.data[512:1024] = bytes(512)
    last = d.total_sectors - 1
    rewrite_header(d, last, first_usable_lba=2)
    t = gptformat.read_table(d)
    assert t.source == "backup" and t.header.first_usable_lba == 2
    with pytest.raises(GptError, match="^entry arrays would overlap the usable area"):
        gptformat.plan_repair(t)
    rewrite_header(d, last, first_usable_lba=1)
    with pytest.raises(GptError, match=r"backup: usable area is outside the disk\)$"):
        gptformat.read_table(d)


def test_a_usable_area_over_the_backup_array_is_not_written() -> None:
    """The primary's usable area reaching the sector where the backup's array goes: a write
    would put the array over data, so it is refused; one sector less is fine."""
    d = disk()
    total, _, _, n = geometry(d)
    rewrite_header(d, 1, last_usable_lba=total - 1 - n)
    t = gptformat.read_table(d)
    assert t.primary.valid
    with pytest.raises(GptError, match="^entry arrays would overlap the usable area"):
        gptformat.plan_repair(t)
    rewrite_header(d, 1, last_usable_lba=total - 2 - n)
    assert not gptformat.read_table(d).needs_repair


def relocated(d: MemDisk, entries: int = 64, primary_at: int = 4, gap: int = 2) -> int:
    """Both arrays moved, as sgdisk --move-main-table can (UEFI allows any place between
    header and usable area): the primary's to ``primary_at``, the backup's ``gap`` sectors below
    its header's neighbour. Returns the backup array's LBA."""
    t = gptformat.read_table(d)
    small = t.entries_raw[: entries * 128]
    n = -(-len(small) // d.sector_size)
    crc = zlib.crc32(small)
    backup = d.total_sectors - 1
    backup_entries = backup - n - gap
    d.write(primary_at, small)
    d.write(backup_entries, small)
    rewrite_header(d, 1, entries_lba=primary_at, num_entries=entries, entries_crc=crc)
    rewrite_header(d, backup, entries_lba=backup_entries, num_entries=entries, entries_crc=crc)
    return backup_entries


def test_a_write_keeps_each_valid_copy_where_it_is() -> None:
    d = disk()
    backup_entries = relocated(d)
    t = gptformat.read_table(d)
    assert not t.needs_repair
    plan = gptformat.plan_write(t, gptformat.with_attributes(t, {2: 0x0003_0000_0000_0000}))
    total = d.total_sectors
    assert [lba for lba, _ in plan.sectors()] == [backup_entries, total - 1, 4, 1]
    d.apply(plan)
    after = gptformat.read_table(d)
    assert not after.needs_repair
    assert after.primary.entries_lba == 4 and after.backup.entries_lba == backup_entries
    assert after.used_entries()[2].attributes == 0x0003_0000_0000_0000


def test_a_primary_rebuilt_at_lba_2_is_written_whole() -> None:
    """The primary's array was elsewhere and is damaged: LBA 2 onwards holds unknown bytes, so
    every sector of the rebuilt array is written there, whatever the old place held."""
    d = disk()
    relocated(d)
    d.data[2 * 512 : 18 * 512] = b"\xaa" * (16 * 512)
    d.data[4 * 512 + 56] ^= 1  # the primary's array, first entry's name
    t = gptformat.read_table(d)
    assert t.primary.problem == "entry array CRC32 mismatch" and t.backup.valid
    d.apply(gptformat.plan_repair(t))
    fixed = gptformat.read_table(d)
    assert not fixed.needs_repair and fixed.primary.entries_lba == 2


def test_a_table_whose_copies_leave_their_place_is_not_written() -> None:
    """plan_write takes any table value: a backup header past the disk's end, or a backup array
    running into its header, is refused however the table was made."""
    t = gptformat.read_table(disk())
    assert t.backup.header is not None
    n = t.header.entries_sectors(512)
    past = replace(t, backup=replace(t.backup, header_lba=t.total_sectors))
    over = replace(
        t,
        backup=replace(
            t.backup,
            header=replace(t.backup.header, entries_lba=t.backup.header_lba - n + 1),
        ),
    )
    for bad in (past, over):
        with pytest.raises(GptError, match="^entry arrays would overlap the usable area"):
            gptformat.plan_write(bad, t.entries_raw)


def test_a_backup_one_sector_before_the_last_is_found() -> None:
    """A disk grown by one sector: the backup is where the alternate LBA says, total - 2."""
    g = grown(disk(), 1)
    t = gptformat.read_table(g)
    assert t.backup.valid and t.backup.header_lba == g.total_sectors - 2
    assert not t.needs_repair


def test_an_alternate_lba_one_past_the_end_is_not_read() -> None:
    """LBA total is past the disk (a device refuses the read): the backup at the last sector
    is used and the primary's alternate LBA is marked for repair."""
    d = disk()
    total = d.total_sectors
    rewrite_header(d, 1, alternate_lba=total)
    t = gptformat.read_table(d)
    assert t.backup.valid and t.backup.header_lba == total - 1 and t.alternate_wrong
