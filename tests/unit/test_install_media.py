"""The parts of the installer's disk writing that need no tool: the FAT geometry of the ESP
(Microsoft's FAT32 cluster table; FAT32's minimum of 65525 clusters) and clearing regions of a
disk image while keeping every other byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from updater.install import media
from updater.install.plan import Region

MiB = 1 << 20


@pytest.mark.parametrize(
    ("size", "sector", "expected"),
    [
        (128 * MiB, 512, (32, 1)),  # up to 260 MiB: 512-byte clusters, 262144 of them
        (260 * MiB, 512, (32, 1)),
        (512 * MiB, 512, (32, 8)),  # up to 8 GiB: 4 KiB clusters
        (128 * MiB, 4096, (16, 1)),  # 4 KiB sectors: 32768 clusters, too few for FAT32
        (512 * MiB, 4096, (32, 1)),  # 131072 clusters of one 4 KiB sector
        (16 << 30, 512, (32, 16)),  # beyond 8 GiB: 8 KiB clusters
    ],
)
def test_fat_geometry(size: int, sector: int, expected: tuple[int, int]) -> None:
    bits, per_cluster = media.fat_geometry(size, sector)
    assert (bits, per_cluster) == expected
    if bits == 32:
        assert size // (per_cluster * sector) >= 65525


def test_clear_zeroes_the_regions_and_nothing_else(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xaa" * (8 * MiB))
    media.clear(str(disk), (Region(0, MiB), Region(3 * MiB, 512), Region(8 * MiB - MiB, MiB)))
    data = disk.read_bytes()
    assert data[:MiB] == bytes(MiB) and data[7 * MiB :] == bytes(MiB)
    assert data[3 * MiB : 3 * MiB + 512] == bytes(512)
    assert data[MiB : 3 * MiB] == b"\xaa" * (2 * MiB)
    assert data[3 * MiB + 512 : 7 * MiB] == b"\xaa" * (4 * MiB - 512)
    media.reread(str(disk))  # an image file has no partitions for a kernel to re-read
