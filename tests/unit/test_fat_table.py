"""The FAT read on demand (``fat.FatTable``) against the whole FAT decoded at once, on tables
encoded here by the specification's layout (FAT12: cluster n's 12 bits at byte n * 3 / 2, the
low ones for even n; FAT16/32: little-endian words, the top 4 bits of FAT32 reserved); and how
much of the FAT a read costs on a large FAT32 volume."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from updater import fat
from updater.errors import DataError

END = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}  # end-of-chain marks from here up; bad: END - 1
MASK = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}


def encode(entries: list[int], bits: int, reserved: dict[int, int]) -> bytes:
    """The FAT bytes for ``entries``; ``reserved``: FAT32 top 4 bits by cluster."""
    if bits == 12:
        out = bytearray((len(entries) * 3 + 1) // 2)
        for n, value in enumerate(entries):
            at = n * 3 // 2
            if n & 1:
                out[at] |= (value & 0xF) << 4
                out[at + 1] = value >> 4
            else:
                out[at] = value & 0xFF
                out[at + 1] |= value >> 8
        return bytes(out)
    if bits == 16:
        return struct.pack(f"<{len(entries)}H", *entries)
    words = [value | reserved.get(n, 0) << 28 for n, value in enumerate(entries)]
    return struct.pack(f"<{len(words)}I", *words)


def geometry(bits: int, clusters: int, fat_offset: int, fat_bytes: int) -> fat.Geometry:
    # Only the table's fields matter here; the boot sector's rules are tested in test_fat.py.
    return fat.Geometry(
        sector_size=512, cluster_size=512, fat_offset=fat_offset, fat_bytes=fat_bytes,
        root_offset=0, root_bytes=0, root_cluster=0, data_offset=0, clusters=clusters, bits=bits,
    )  # fmt: skip


@st.composite
def tables(draw: st.DrawFn) -> tuple[int, int, list[int], bytes, list[int]]:
    """(bits, clusters, entries, their bytes, chain starts): chains of contiguous runs and
    fragments, long enough to cross many windows, ending in an end mark, a bad-cluster mark, a
    free entry, a link out of the data region or a loop; then overwritten here and there."""
    bits = draw(st.sampled_from((12, 16, 32)))
    clusters = draw(st.integers(1, 3000))
    top = clusters + 2
    entries = [0] * top
    starts = []
    for _ in range(draw(st.integers(0, 6))):
        pieces = draw(st.lists(st.tuples(st.integers(2, top - 1), st.integers(1, 1500)),
                               min_size=1, max_size=4))  # fmt: skip
        runs = [(start, min(count, top - start)) for start, count in pieces]
        visited: list[int] = []
        for i, (start, count) in enumerate(runs):
            entries[start : start + count - 1] = range(start + 1, start + count)
            visited += range(start, start + count)
            if i + 1 < len(runs):
                entries[start + count - 1] = runs[i + 1][0]
        kind = draw(st.sampled_from(("end", "bad", "free", "out", "loop")))
        if kind == "end":
            last = draw(st.integers(END[bits], MASK[bits]))
        elif kind == "bad":
            last = END[bits] - 1
        elif kind == "free":
            last = 0
        elif kind == "out":
            last = draw(st.sampled_from((1, top, END[bits] - 2)))
        else:
            last = draw(st.sampled_from(visited))
        entries[visited[-1]] = last
        starts.append(runs[0][0])
    for at, value in draw(st.lists(st.tuples(st.integers(0, top - 1), st.integers(0, MASK[bits])),
                                   max_size=10)):  # fmt: skip
        entries[at] = value
    reserved = {}
    if bits == 32:
        reserved = draw(st.dictionaries(st.integers(0, top - 1), st.integers(1, 15), max_size=5))
    return bits, clusters, entries, encode(entries, bits, reserved), starts


@settings(max_examples=300, deadline=None)
@given(
    table=tables(),
    window=st.sampled_from((4, 8, 12, 64, 4096)),
    extra_starts=st.lists(st.integers(0, 3100), max_size=4),
    limits=st.lists(st.integers(1, 3100), min_size=1, max_size=3),
    slices=st.lists(st.tuples(st.integers(0, 3100), st.integers(0, 3100)), max_size=5),
    fat_offset=st.sampled_from((0, 512, 16384)),
)
def test_the_table_read_on_demand_is_the_table_decoded_whole(
    table: tuple[int, int, list[int], bytes, list[int]], window: int, extra_starts: list[int],
    limits: list[int], slices: list[tuple[int, int]], fat_offset: int,
) -> None:  # fmt: skip
    bits, clusters, entries, raw, starts = table
    image = bytes(range(256)) * (fat_offset // 256) + raw + b"\xa5" * 4096
    geo = geometry(bits, clusters, fat_offset, len(raw))
    reads: list[tuple[int, int]] = []

    def reader(offset: int, length: int) -> bytes:
        assert fat_offset <= offset and offset + length <= fat_offset + len(raw), "not the FAT"
        assert all(offset + length <= o or o + n <= offset for o, n in reads), "read twice"
        reads.append((offset, length))
        return image[offset : offset + length]

    whole = fat.decode_fat(raw, geo)
    assert whole == entries  # the oracle itself, against the encoding
    lazy = fat.FatTable(reader, geo, window)  # one table for every query: windows are kept

    def outcome(t: fat.Table, first: int, limit: int) -> list[tuple[int, int]] | str:
        try:
            return fat.chain(t, geo, first, limit)
        except DataError as exc:
            return exc.message

    for first in starts + extra_starts:
        for limit in limits:
            assert outcome(lazy, first, limit) == outcome(whole, first, limit), (first, limit)
    for lo, hi in slices:
        assert lazy[lo:hi] == whole[lo:hi], (lo, hi)
    assert [lazy[n] for n in range(len(whole))] == whole
    assert lazy[0 : len(whole)] == whole


def fat32_boot_sector(total: int, fat_sectors: int, root_cluster: int = 2) -> bytes:
    """512-byte sectors, one per cluster, 32 reserved sectors, two FATs (as mkfs.fat makes a
    128 MiB ESP)."""
    s = bytearray(512)
    struct.pack_into("<HBHBHHBHHHII", s, 11, 512, 1, 32, 2, 0, 0, 0xF8, 0, 32, 2, 0, total)
    struct.pack_into("<IHHI", s, 36, fat_sectors, 0, 0, root_cluster)
    s[510:512] = b"\x55\xaa"
    return bytes(s)


def dir_entry(name: bytes, cluster: int, size: int) -> bytes:
    e = bytearray(32)
    e[0:11], e[11] = name, 0x20
    struct.pack_into("<HHHI", e, 20, cluster >> 16, 0, 0, 0)
    struct.pack_into("<HI", e, 26, cluster & 0xFFFF, size)
    return bytes(e)


def test_a_read_costs_only_the_windows_of_its_chain() -> None:
    """A 128 MiB FAT32 volume: 258078 clusters, a FAT of 2017 sectors (1 MiB; 128 entries a
    sector, for clusters 0 .. 258079). A 1 KiB file needs one 4 KiB window of it; a contiguous
    13 MB one the windows its 25391 entries lie in, not the volume's."""
    total, fat_sectors = 128 << 11, 2017
    sector = fat32_boot_sector(total, fat_sectors)
    fat_offset, data_offset = 32 * 512, (32 + 2 * fat_sectors) * 512
    table = bytearray(fat_sectors * 512)

    def link(a: int, b: int) -> None:
        struct.pack_into("<I", table, a * 4, b)

    small, big, big_size = 3, 100_000, 13_000_000
    big_clusters = -(-big_size // 512)
    assert big_clusters == 25391
    for a, b in ((0, 0x0FFFFFF8), (1, 0x0FFFFFFF), (2, 0x0FFFFFFF), (3, 4), (4, 0x0FFFFFFF)):
        link(a, b)
    for c in range(big, big + big_clusters - 1):
        link(c, c + 1)
    link(big + big_clusters - 1, 0x0FFFFFFF)
    root = dir_entry(b"GRUBENV    ", small, 1024) + dir_entry(b"INITRD     ", big, big_size)
    regions = {0: sector, fat_offset: bytes(table), data_offset: root,
               data_offset + (small - 2) * 512: b"g" * 1024,
               data_offset + (big - 2) * 512: b"first",
               data_offset + (big + big_clusters - 3) * 512: b"last"}  # fmt: skip
    fat_reads: list[tuple[int, int]] = []

    def reader(offset: int, length: int) -> bytes:
        assert offset + length <= total * 512
        if offset < fat_offset + len(table) and fat_offset < offset + length:
            fat_reads.append((offset - fat_offset, length))
        out = bytearray(length)
        for at, data in regions.items():
            lo, hi = max(at, offset), min(at + len(data), offset + length)
            if lo < hi:
                out[lo - offset : hi - offset] = data[lo - at : hi - at]
        return bytes(out)

    volume = fat.FatVolume(reader)
    assert (volume.geo.clusters, volume.geo.fat_bytes) == (258078, 2017 * 512)
    assert fat_reads == []  # opening reads the boot sector only
    assert volume.read("grubenv", 4096) == b"g" * 1024
    # the root directory (cluster 2) and the file (3, 4): entries 0 .. 1023 are window 0
    assert fat_reads == [(0, 4096)]

    fat_reads.clear()
    data = fat.FatVolume(reader).read("initrd", 16 << 20)
    assert data is not None and len(data) == big_size
    assert data.startswith(b"first") and data[(big_clusters - 1) * 512 :].startswith(b"last")
    # Entries big .. big + 25391 (the last one read to see the run end) lie in windows 97 ..
    # 122 of 1024 entries each, plus window 0 for the root directory: 27 windows, 108 KiB of
    # the 1 MiB, in a few reads (one per doubling of the run's slices), none of them twice.
    windows = {0} | set(range(big // 1024, (big + big_clusters) // 1024 + 1))
    assert len(windows) == 27
    assert sum(n for _, n in fat_reads) == len(windows) * 4096
    read = [at // 4096 for offset, n in fat_reads for at in range(offset, offset + n, 4096)]
    assert sorted(read) == sorted(windows)
    assert len(fat_reads) <= 10  # one per doubling of the slices: 1 + 7 here
