"""The FAT reader against filesystems made by mkfs.fat and filled by mtools, which reads the
same files back as the oracle (and mshowfat's cluster lists bound how much of the FAT a read
may cost); and against damaged filesystems: one DataError line, no hang."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import need_tools
from updater import bootfs, fat
from updater.errors import DataError, DeviceError

pytestmark = pytest.mark.integration

ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def _sh(*argv: str, data: bytes | None = None) -> bytes:
    return subprocess.run(argv, input=data, env=ENV, check=True, capture_output=True).stdout


def make_fs(path: Path, bits: int, size_mib: int, cluster_sectors: int = 1) -> Path:
    need_tools("mkfs.fat", "mcopy", "mmd", "mdel")
    with path.open("wb") as f:
        f.truncate(size_mib << 20)
    _sh("mkfs.fat", "-F", str(bits), "-s", str(cluster_sectors), "-n", "EFI-SYSTEM", str(path))
    return path


def put(image: Path, rel: str, data: bytes) -> None:
    _sh("mcopy", "-o", "-i", str(image), "-", f"::/{rel}", data=data)


def mtools_read(image: Path, rel: str) -> bytes:
    return _sh("mcopy", "-n", "-i", str(image), f"::/{rel}", "-")


def open_volume(image: Path) -> tuple[fat.FatVolume, int]:
    fd = os.open(image, os.O_RDONLY)
    return fat.FatVolume(lambda offset, length: os.pread(fd, length, offset)), fd


def fill(image: Path) -> dict[str, bytes]:
    """Short and long names, nested directories, an empty file, and a fragmented file (written
    between two others, one of which is then deleted and the file grown into the gap)."""
    _sh("mmd", "-i", str(image), "::/flatcar", "::/EFI", "::/EFI/boot", "::/a long directory name")
    files = {
        "flatcar/vmlinuz-a": os.urandom(300_000),
        "flatcar/grubenv": b"# GRUB Environment Block\n".ljust(1024, b"#"),
        "EFI/boot/bootx64.efi": os.urandom(5000),
        "a long directory name/Mixed Case Name.conf": b"set x=1\n",
        "empty": b"",
        "UPPER.TXT": b"upper",
    }
    for rel, data in files.items():
        put(image, rel, data)
    put(image, "gap", os.urandom(20_000))
    put(image, "after", os.urandom(3000))
    _sh("mdel", "-i", str(image), "::/gap")
    files["flatcar/vmlinuz-b"] = os.urandom(60_000)  # fills the gap, then continues after
    put(image, "flatcar/vmlinuz-b", files["flatcar/vmlinuz-b"])
    return files


@pytest.mark.parametrize(("bits", "size_mib", "spc"), [(12, 2, 1), (16, 32, 4), (32, 40, 1)])
def test_reads_what_mtools_reads(tmp_path: Path, bits: int, size_mib: int, spc: int) -> None:
    image = make_fs(tmp_path / "esp.img", bits, size_mib, spc)
    files = fill(image)
    volume, fd = open_volume(image)
    try:
        assert volume.geo.bits == bits
        for rel in files:
            assert volume.read(rel, 1 << 20) == mtools_read(image, rel), rel
        # FAT names are case-insensitive
        assert volume.read("FLATCAR/VMLINUZ-A", 1 << 20) == mtools_read(image, "flatcar/vmlinuz-a")
        assert volume.read("upper.txt", 100) == b"upper"
        assert volume.read("flatcar/missing", 100) is None
        assert volume.read("nowhere/vmlinuz-a", 100) is None
        with pytest.raises(DataError, match="more than"):
            volume.read("flatcar/vmlinuz-a", 1000)
        with pytest.raises(DataError, match="is a directory"):
            volume.read("flatcar", 1000)
    finally:
        os.close(fd)


def shown_clusters(image: Path, rel: str) -> list[int]:
    """The file's clusters as mshowfat lists them (``::/flatcar/grubenv <41020-41021>``)."""
    need_tools("mshowfat")
    shown = _sh("mshowfat", "-i", str(image), f"::/{rel}").decode().split("<", 1)[1]
    clusters: list[int] = []
    for part in shown.split(">", 1)[0].split():
        lo, _, hi = part.partition("-")
        clusters += range(int(lo), int(hi or lo) + 1)
    return clusters


def counting_reader(fd: int, reads: list[tuple[int, int]]) -> fat.Reader:
    """A reader of ``fd`` that notes each (offset, length) it is asked for in ``reads``."""

    def reader(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return os.pread(fd, length, offset)

    return reader


def test_reads_only_the_fat_windows_of_the_chains(tmp_path: Path) -> None:
    """The test VM's ESP: 128 MiB of FAT32 with 512-byte clusters, a FAT of about 1 MiB. A file
    costs the 4 KiB windows holding its chain's entries and its directories' (each entry and
    the next: the last comparison of a run looks one past it), whatever the volume's size."""
    image = make_fs(tmp_path / "esp.img", 32, 128)
    _sh("mmd", "-i", str(image), "::/flatcar")
    files = {"flatcar/vmlinuz-a": os.urandom(8_000_000), "flatcar/initrd-a": os.urandom(13_000_000),
             "flatcar/grubenv": b"# GRUB Environment Block\n".ljust(1024, b"#")}  # fmt: skip
    for rel, data in files.items():
        put(image, rel, data)
    fd = os.open(image, os.O_RDONLY)
    reads: list[tuple[int, int]] = []
    reader = counting_reader(fd, reads)
    try:
        for rel, data in files.items():
            reads.clear()
            volume = fat.FatVolume(reader)
            geo = volume.geo
            assert geo.bits == 32 and geo.clusters > 250_000
            assert volume.read(rel, 16 << 20) == data, rel
            fat_reads = [
                (o - geo.fat_offset, n) for o, n in reads
                if geo.fat_offset <= o < geo.fat_offset + geo.fat_bytes
            ]  # fmt: skip
            chains = [geo.root_cluster, *shown_clusters(image, "flatcar")]
            chains += shown_clusters(image, rel)
            windows = {c * 4 // 4096 for c in chains} | {(c + 1) * 4 // 4096 for c in chains}
            read = [w for o, n in fat_reads for w in range(o // 4096, (o + n) // 4096)]
            assert len(read) == len(set(read)), f"{rel}: a FAT window read twice"
            assert set(read) <= windows, rel
            assert sum(n for _, n in fat_reads) <= 4096 * len(windows) < geo.fat_bytes // 8, rel
    finally:
        os.close(fd)


def test_partition_files_at_an_offset(tmp_path: Path) -> None:
    esp = make_fs(tmp_path / "esp.img", 16, 20)
    files = fill(esp)
    disk = tmp_path / "disk.img"
    offset = 1 << 20
    with disk.open("wb") as out:
        out.write(os.urandom(offset))  # whatever precedes the partition must not matter
        out.write(esp.read_bytes())
        out.write(os.urandom(4096))
    part = bootfs.FatPartitionFiles(str(disk), offset, esp.stat().st_size)
    assert part.read("flatcar/vmlinuz-b") == files["flatcar/vmlinuz-b"]
    assert part.read("flatcar/nothing") is None
    # writes still go through mtools; a later read sees them
    part.write("flatcar/grubenv", b"new contents")
    fresh = bootfs.FatPartitionFiles(str(disk), offset, esp.stat().st_size)
    assert fresh.read("flatcar/grubenv") == b"new contents"
    assert _sh("mcopy", "-n", "-i", f"{disk}@@{offset}", "::/flatcar/grubenv", "-") == (
        b"new contents"
    )


def _patch(image: Path, offset: int, data: bytes) -> None:
    with image.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def _fat16_first_cluster(image: Path, volume: fat.FatVolume, rel: str) -> int:
    entry = volume.lookup(rel)
    assert entry is not None
    return entry.cluster


def test_damaged_filesystems_fail_with_one_line(tmp_path: Path) -> None:
    base = make_fs(tmp_path / "base.img", 16, 20)
    put(base, "kernel", os.urandom(10_000))  # 20 clusters of 512 bytes
    volume, fd = open_volume(base)
    geo = volume.geo
    first = _fat16_first_cluster(base, volume, "kernel")
    os.close(fd)

    def damaged(name: str, offset: int, data: bytes) -> Path:
        image = tmp_path / f"{name}.img"
        image.write_bytes(base.read_bytes())
        _patch(image, offset, data)
        return image

    cases = {
        "signature": damaged("sig", 510, b"\0\0"),
        "sector size": damaged("bps", 11, struct.pack("<H", 3000)),
        "cluster size": damaged("spc", 13, b"\x03"),
        "no FAT": damaged("nfats", 16, b"\0"),
        "size": damaged("total", 19, struct.pack("<H", 0)),  # then total32 = 0 too (<32 MiB)
        # a loop: the file's second cluster points back at its first
        "loop": damaged("loop", geo.fat_offset + (first + 1) * 2, struct.pack("<H", first)),
        # a cluster number beyond the data region
        "range": damaged("range", geo.fat_offset + first * 2, struct.pack("<H", 0xFFF0)),
        # the chain ends after one cluster, the size says twenty
        "short": damaged("short", geo.fat_offset + first * 2, struct.pack("<H", 0xFFFF)),
    }
    for what, image in cases.items():
        files = bootfs.FatPartitionFiles(str(image), 0)
        with pytest.raises(DataError) as caught:
            files.read("kernel")
        message = caught.value.message
        assert "\n" not in message and str(image) in message, (what, message)
    # a directory entry claiming far more than the partition holds
    huge = damaged("huge", 0, b"")
    entry_offset = geo.root_offset + 32  # after the volume label
    raw = huge.read_bytes()[entry_offset : entry_offset + 32]
    assert raw[0:6] == b"KERNEL"
    _patch(huge, entry_offset + 28, struct.pack("<I", 0xFFFFFFF0))
    with pytest.raises(DataError, match="more than"):
        bootfs.FatPartitionFiles(str(huge), 0).read("kernel")


def test_truncated_partition(tmp_path: Path) -> None:
    image = make_fs(tmp_path / "esp.img", 16, 20)
    put(image, "early", os.urandom(6 << 20))
    put(image, "late", os.urandom(1000))  # beyond the first 4 MiB
    with pytest.raises(DataError, match="leaves the"):
        bootfs.FatPartitionFiles(str(image), 0, 4 << 20).read("late")
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        bootfs.FatPartitionFiles(str(empty), 0).read("late")


@pytest.mark.parametrize(("bits", "size_mib", "spc"), [(12, 2, 1), (16, 32, 4), (32, 40, 1)])
def test_heads_are_prefixes_of_what_mtools_reads(
    tmp_path: Path, bits: int, size_mib: int, spc: int
) -> None:
    """A head read (a dry run's kernel) gives the first bytes of what mtools reads, for every
    length around cluster edges, across the fragmented file's gap, and past the file's end."""
    image = make_fs(tmp_path / "esp.img", bits, size_mib, spc)
    files = fill(image)
    volume, fd = open_volume(image)
    cluster = volume.geo.cluster_size
    try:
        for rel in files:
            whole = mtools_read(image, rel)
            lengths = {0, 1, 63, 64 + 512, cluster - 1, cluster, cluster + 1, 20_000, 20_481,
                       len(whole) - 1, len(whole), len(whole) + 1, 10 * len(whole) + 7}  # fmt: skip
            for n in sorted(x for x in lengths if x >= 0):
                assert volume.read(rel, 1 << 20, n) == whole[:n], (rel, n)
        assert volume.read("flatcar/missing", 100, 10) is None
        with pytest.raises(DataError, match="more than"):  # the size bound holds for heads too
            volume.read("flatcar/vmlinuz-a", 1000, 10)
        with pytest.raises(DataError, match="is a directory"):
            volume.read("flatcar", 1000, 10)
    finally:
        os.close(fd)


def test_a_head_reads_only_its_clusters(tmp_path: Path) -> None:
    """The head of an 8 MB kernel costs its first cluster or two, not the kernel: at most the
    boot sector, the FAT windows and the directories besides the bytes asked for."""
    image = make_fs(tmp_path / "esp.img", 32, 128)
    _sh("mmd", "-i", str(image), "::/flatcar")
    kernel = os.urandom(8_000_000)
    put(image, "flatcar/vmlinuz-a", kernel)
    fd = os.open(image, os.O_RDONLY)
    reads: list[tuple[int, int]] = []
    reader = counting_reader(fd, reads)
    try:
        volume = fat.FatVolume(reader)
        geo = volume.geo
        reads.clear()
        assert volume.read("flatcar/vmlinuz-a", 16 << 20, 576) == kernel[:576]
        data = [(o, n) for o, n in reads if o >= geo.data_offset]
        assert sum(n for _, n in reads) < 64 * 1024, reads
        kernel_cluster = shown_clusters(image, "flatcar/vmlinuz-a")[0]
        start = geo.data_offset + (kernel_cluster - 2) * geo.cluster_size
        assert (start, 576) in data
    finally:
        os.close(fd)


def test_partition_heads_and_existence(tmp_path: Path) -> None:
    """``head`` on the ESP in place: a prefix, the cached whole file's prefix once it was read,
    None for a missing file; ``Heads`` reads only heads and writes nothing."""
    esp = make_fs(tmp_path / "esp.img", 16, 20)
    files = fill(esp)
    part = bootfs.FatPartitionFiles(str(esp), 0)
    assert part.head("flatcar/vmlinuz-a", 100) == files["flatcar/vmlinuz-a"][:100]
    assert part.head("flatcar/none", 100) is None
    assert part.head("empty", 0) == b"" and part.head("flatcar/vmlinuz-b", 0) == b""
    assert part.read("flatcar/vmlinuz-b") == files["flatcar/vmlinuz-b"]
    _patch(esp, 0, b"\0" * 512)  # the volume is parsed and the file cached: no reread
    assert part.head("flatcar/vmlinuz-b", 5000) == files["flatcar/vmlinuz-b"][:5000]
    heads = bootfs.Heads(part, 10)
    assert heads.description == part.description
    assert heads.read("flatcar/vmlinuz-b") == files["flatcar/vmlinuz-b"][:10]
    assert heads.head("flatcar/vmlinuz-b", 4) == files["flatcar/vmlinuz-b"][:4]
    assert heads.head("flatcar/vmlinuz-b", 99) == files["flatcar/vmlinuz-b"][:10]
    assert heads.read("flatcar/none") is None
    with pytest.raises(DeviceError, match="first bytes of files only"):
        heads.write("flatcar/grubenv", b"x")
