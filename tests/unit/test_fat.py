"""The FAT reader's pure parts on hand-made bytes: boot sector checks, chains, directory entries
and long names (the specification's layout; mkfs.fat-made filesystems are in the integration
tier, read back by mtools)."""

from __future__ import annotations

import struct

import pytest

from updater import fat
from updater.errors import DataError


def boot_sector(
    bps: int = 512, spc: int = 1, reserved: int = 1, nfats: int = 2, root_entries: int = 512,
    total: int = 20000, fat_sectors: int = 80,
) -> bytes:  # fmt: skip
    s = bytearray(512)
    struct.pack_into("<HBHBHHBHHHII", s, 11, bps, spc, reserved, nfats, root_entries,
                     total if total < 65536 else 0, 0xF8, fat_sectors, 32, 2, 0,
                     total if total >= 65536 else 0)  # fmt: skip
    s[510:512] = b"\x55\xaa"
    return bytes(s)


def test_geometry_follows_the_specification() -> None:
    geo = fat.parse_boot_sector(boot_sector())
    # 1 reserved + 2 * 80 FAT sectors + 32 root sectors = data from sector 193
    assert (geo.fat_offset, geo.root_offset, geo.data_offset) == (512, 161 * 512, 193 * 512)
    assert geo.clusters == 20000 - 193 and geo.bits == 16  # 4085 <= clusters < 65525
    assert fat.parse_boot_sector(boot_sector(total=4000, fat_sectors=12)).bits == 12


@pytest.mark.parametrize(
    ("sector", "message"),
    [
        (boot_sector()[:510] + b"\0\0", "signature"),
        (boot_sector(bps=500), "bytes per sector"),
        (boot_sector(spc=3), "sectors per cluster"),
        (boot_sector(spc=128, bps=4096), "sectors per cluster"),
        (boot_sector(nfats=0), "no FAT"),
        (boot_sector(total=100), "data region is empty"),
        (boot_sector(root_entries=0), "without root directory"),
        (boot_sector(fat_sectors=1), "a FAT of 512 bytes"),
    ],
)
def test_boot_sector_fields_are_checked(sector: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        fat.parse_boot_sector(sector)


def test_chains_end_and_fail_cleanly() -> None:
    geo = fat.parse_boot_sector(boot_sector())
    table = bytearray(80 * 512)

    def link(a: int, b: int) -> None:
        struct.pack_into("<H", table, a * 2, b)

    for a, b in ((2, 3), (3, 7), (7, 0xFFFF)):
        link(a, b)

    def chain(limit: int) -> list[tuple[int, int]]:
        return fat.chain(fat.decode_fat(bytes(table), geo), geo, 2, limit)

    assert chain(10) == [(2, 2), (7, 1)]  # clusters 2, 3 (one run), then 7
    # only the first clusters wanted: the chain ends there, however it goes on
    prefix = fat.chain(fat.decode_fat(bytes(table), geo), geo, 2, 1, prefix=True)
    assert prefix == [(2, 1)]
    assert fat.chain(fat.decode_fat(bytes(table), geo), geo, 2, 2, prefix=True) == [(2, 2)]
    assert fat.chain(fat.decode_fat(bytes(table), geo), geo, 2, 3, prefix=True) == [(2, 2), (7, 1)]
    assert fat.chain(fat.decode_fat(bytes(table), geo), geo, 2, 9, prefix=True) == [(2, 2), (7, 1)]
    with pytest.raises(DataError, match="longer than 2"):
        chain(2)
    for c in range(7, 1007):  # a long contiguous run, found in a few comparisons
        link(c, c + 1)
    link(1007, 0xFFF8)
    assert chain(2000) == [(2, 2), (7, 1001)]
    with pytest.raises(DataError, match="longer than 1000"):
        chain(1000)
    link(7, 0xFFFF)
    link(7, 3)
    with pytest.raises(DataError, match="a loop"):  # even with no limit but the cluster count
        chain(10**9)
    link(7, 0xFFF7)
    with pytest.raises(DataError, match="bad-cluster"):
        chain(100)
    link(7, 1)
    with pytest.raises(DataError, match="outside the data region"):
        chain(100)


def test_fat32_reserved_bits_are_ignored() -> None:
    # Microsoft's FAT specification: the high 4 bits of a FAT32 entry are reserved, and a
    # driver ignores them. Cluster 2 -> 3 with a reserved bit set, 3 ends its chain (likewise).
    geo = fat.Geometry(sector_size=512, cluster_size=512, fat_offset=512, fat_bytes=512,
                       root_offset=0, root_bytes=0, root_cluster=2, data_offset=1024,
                       clusters=6, bits=32)  # fmt: skip
    table = bytearray(8 * 4)
    struct.pack_into("<II", table, 8, 0xF0000003, 0x1FFFFFFF)
    assert list(fat.decode_fat(bytes(table), geo))[2:4] == [3, 0x0FFFFFFF]
    assert fat.chain(fat.decode_fat(bytes(table), geo), geo, 2, 10) == [(2, 2)]
    clean = bytearray(8 * 4)
    struct.pack_into("<II", clean, 8, 3, 0x0FFFFFFF)
    assert fat.chain(fat.decode_fat(bytes(clean), geo), geo, 2, 10) == [(2, 2)]


def test_fat12_entries_share_bytes() -> None:
    # clusters 2 and 3 in the three bytes at 3..5: 0x345 and 0x678 -> 45 83 67
    table = bytes([0, 0, 0, 0x45, 0x83, 0x67])
    assert fat.fat_entry(table, 12, 2) == 0x345 and fat.fat_entry(table, 12, 3) == 0x678


def short(name: bytes, attr: int = 0x20, cluster: int = 5, size: int = 10, case: int = 0) -> bytes:
    e = bytearray(32)
    e[0:11] = name
    e[11], e[12] = attr, case
    struct.pack_into("<H", e, 26, cluster)
    struct.pack_into("<I", e, 28, size)
    return bytes(e)


def lfn(text: str, seq: int, last: bool, checksum: int) -> bytes:
    chars = (text.encode("utf-16-le") + b"\0\0").ljust(26, b"\xff")[:26]
    e = bytearray(32)
    e[0] = seq | (0x40 if last else 0)
    e[1:11], e[14:26], e[28:32] = chars[0:10], chars[10:22], chars[22:26]
    e[11], e[13] = 0x0F, checksum
    return bytes(e)


def checksum(name: bytes) -> int:
    total = 0
    for byte in name:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def test_directory_entries_with_long_names() -> None:
    name83 = b"VMLINU~1   "
    good = checksum(name83)
    data = (
        short(b"EFI-SYSTEM ", attr=0x08)  # the volume label
        + lfn("vmlinuz-a", 1, True, good) + short(name83, size=1234)
        + b"\xe5" + short(b"DELETED TXT")[1:]
        + lfn("forged-name", 1, True, good ^ 1) + short(b"README  TXT", case=0x18)
        + short(b"FLATCAR    ", attr=0x10, cluster=9, size=0)
        + bytes(32) + short(b"AFTEREND   ")
    )  # fmt: skip
    entries = list(fat.parse_directory(data))
    assert [(e.name, e.short, e.is_dir, e.cluster, e.size) for e in entries] == [
        ("vmlinuz-a", "VMLINU~1", False, 5, 1234),
        ("readme.txt", "readme.txt", False, 5, 10),  # a long name with a wrong checksum is ignored
        ("FLATCAR", "FLATCAR", True, 9, 0),
    ]
