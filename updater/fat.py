"""Read files from a FAT12/16/32 filesystem inside a disk, partition or image file, without mtools.

The reboot path reads a few files from the ESP (a kernel, an initrd, the first-boot marker, the
grubenv copies). Through mtools each read is a process start, which costs more than the read
itself on a small or emulated machine; here it is a handful of ``os.pread`` calls. The FAT is
read on demand, only the 4 KiB windows that the chains followed lie in (``FatTable``): a process
start pays for the files it reads, not for the size of the volume.

Everything on the partition is hostile: every boot sector field is checked against the FAT
specification (Microsoft's "FAT: General Overview of On-Disk Format") before use, cluster
numbers are range-checked, cluster chains are bounded by the cluster count and checked for loops,
directories and files are capped in size, and every failure is one ``DataError`` line. Long names
(VFAT LFN entries) are used when their checksum matches their short entry, as Windows and Linux
do; names match case-insensitively, as FAT's do.

This module only reads. Writes keep going through mtools (``updater.bootfs``), which knows how
to allocate clusters and update both FATs; a ``FatVolume`` must be opened again after a write.
"""

from __future__ import annotations

import array
import struct
import sys
from collections.abc import Callable, Iterator

from updater.errors import DataError
from updater.records import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Protocol, overload

Reader = Callable[[int, int], bytes]  # (offset, length) -> exactly length bytes

MAX_FAT_BYTES = 16 << 20  # a FAT32 of 2 TiB with 32 KiB clusters; far beyond any ESP
MAX_DIR_BYTES = 4 << 20  # 65536 entries: the FAT limit for one directory is 65536 entries
ATTR_LFN = 0x0F
ATTR_VOLUME = 0x08
ATTR_DIR = 0x10


@dataclass(frozen=True)
class Geometry:
    """What the boot sector says, validated."""

    sector_size: int
    cluster_size: int  # bytes
    fat_offset: int  # bytes from the start of the filesystem
    fat_bytes: int
    root_offset: int  # FAT12/16: the fixed root directory region
    root_bytes: int  # FAT12/16; 0 on FAT32
    root_cluster: int  # FAT32; 0 on FAT12/16
    data_offset: int
    clusters: int  # count of data clusters (numbered 2 .. clusters + 1)
    bits: int  # 12, 16 or 32


@dataclass(frozen=True)
class Entry:
    name: str  # the long name when there is a valid one, else the 8.3 name
    short: str
    is_dir: bool
    cluster: int
    size: int


def parse_boot_sector(sector: bytes) -> Geometry:
    """The geometry in the first 512 bytes; DataError on any field outside the specification.
    A filesystem larger than its partition is not refused here (mformat without a size makes
    one, and mtools reads it): the reader refuses any read past the partition's end."""
    if len(sector) < 512:
        raise DataError("FAT: the boot sector is shorter than 512 bytes")
    if sector[510:512] != b"\x55\xaa":
        raise DataError("FAT: no boot sector signature (55 AA)")
    (bps, spc, reserved, nfats, root_entries, total16, _media, fat16, _spt, _heads, _hidden,
     total32) = struct.unpack_from("<HBHBHHBHHHII", sector, 11)  # fmt: skip
    if bps not in (512, 1024, 2048, 4096):
        raise DataError(f"FAT: {bps} bytes per sector is not 512, 1024, 2048 or 4096")
    if spc == 0 or spc & (spc - 1) or spc * bps > 64 * 1024:
        raise DataError(f"FAT: {spc} sectors per cluster is not a power of two up to 64 KiB")
    if reserved == 0 or nfats == 0:
        raise DataError("FAT: no reserved sectors or no FAT")
    fat_sectors = fat16 or struct.unpack_from("<I", sector, 36)[0]
    total = total16 or total32
    root_bytes = root_entries * 32
    root_sectors = (root_bytes + bps - 1) // bps
    data_start = reserved + nfats * fat_sectors + root_sectors
    if fat_sectors == 0 or total <= data_start:
        raise DataError("FAT: the FAT or the data region is empty")
    clusters = (total - data_start) // spc
    # The type follows from the cluster count alone (the specification's rule).
    bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
    root_cluster = 0
    if bits == 32:
        if root_entries != 0 or fat16 != 0:
            raise DataError("FAT: a FAT32 volume with a fixed root directory")
        root_cluster = struct.unpack_from("<I", sector, 44)[0]
        if not 2 <= root_cluster < clusters + 2:
            raise DataError(f"FAT: root directory cluster {root_cluster} is out of range")
    elif root_entries == 0:
        raise DataError("FAT: a FAT12/16 volume without root directory entries")
    fat_bytes = fat_sectors * bps
    if fat_bytes > MAX_FAT_BYTES or fat_bytes * 8 < (clusters + 2) * bits:
        raise DataError(f"FAT: a FAT of {fat_bytes} bytes for {clusters} clusters")
    return Geometry(
        sector_size=bps, cluster_size=spc * bps, fat_offset=reserved * bps, fat_bytes=fat_bytes,
        root_offset=(reserved + nfats * fat_sectors) * bps, root_bytes=root_bytes,
        root_cluster=root_cluster, data_offset=data_start * bps, clusters=clusters, bits=bits,
    )  # fmt: skip


def fat_entry(fat: bytes, bits: int, cluster: int) -> int:
    """The FAT's entry for ``cluster`` (the next cluster, or an end/bad marker)."""
    if bits == 12:
        pair = int.from_bytes(fat[cluster * 3 // 2 : cluster * 3 // 2 + 2], "little")
        return pair >> 4 if cluster & 1 else pair & 0xFFF
    if bits == 16:
        return int.from_bytes(fat[cluster * 2 : cluster * 2 + 2], "little")
    return int.from_bytes(fat[cluster * 4 : cluster * 4 + 4], "little") & 0x0FFFFFFF


def _decode(raw: bytes, bits: int, count: int) -> list[int]:
    """``count`` entries from ``raw``, which starts at an entry (FAT12: at entry 0)."""
    if bits == 12:
        return [fat_entry(raw, 12, c) for c in range(count)]
    table = array.array("H" if bits == 16 else "I")
    table.frombytes(raw[: count * table.itemsize])
    if sys.byteorder == "big":
        table.byteswap()
    if bits == 32 and max(table, default=0) > 0x0FFFFFFF:  # the top 4 bits are reserved
        return [entry & 0x0FFFFFFF for entry in table]
    return table.tolist()


def decode_fat(fat: bytes, geo: Geometry) -> list[int]:
    """Every entry of the FAT, decoded at once (what ``FatTable`` gives piece by piece)."""
    return _decode(fat, geo.bits, geo.clusters + 2)


if TYPE_CHECKING:

    class Table(Protocol):
        """What ``chain`` needs: entries by cluster number and runs of them by slice (step 1)."""

        @overload
        def __getitem__(self, index: int) -> int: ...
        @overload
        def __getitem__(self, index: slice) -> list[int]: ...


class FatTable:
    """The FAT's entries, read and decoded on demand in aligned windows of ``window`` bytes, each
    window once. A process that reads a few small files reads a few windows instead of the whole
    FAT (1 MiB for a 128 MiB FAT32 ESP with 512-byte clusters), and a block device's page cache
    does not help: the kernel drops it when the device's last descriptor closes.

    4 KiB: the page size, which the kernel reads in any case, and a multiple of every sector
    size, so each read is whole sectors (windows are aligned to the FAT's first byte). It holds
    1024 FAT32 entries (2048 FAT16 ones), so a small file's chain lies in one window or two; a
    long run costs one read per doubling of ``_run``'s slices, since all the missing windows a
    slice needs are read at once. FAT12, at most 4086 entries of 12 bits that straddle bytes,
    is one window (at most 6 KiB)."""

    def __init__(self, reader: Reader, geo: Geometry, window: int = 4096) -> None:
        if window <= 0 or window % 4:
            raise ValueError(f"a FAT window of {window} bytes is not a multiple of 4")
        self._read = reader
        self._bits = geo.bits
        self._offset = geo.fat_offset
        self.count = geo.clusters + 2
        self._per = self.count if geo.bits == 12 else window // (geo.bits // 8)
        self._windows: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self.count

    if TYPE_CHECKING:

        @overload
        def __getitem__(self, index: int) -> int: ...
        @overload
        def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        per = self._per
        if isinstance(index, slice):
            start, stop, step = index.indices(self.count)
            if step != 1:
                raise ValueError("FatTable slices have step 1")
            if start >= stop:
                return []
            first, last = start // per, (stop - 1) // per
            self._load(first, last)
            if first == last:
                return self._windows[first][start - first * per : stop - first * per]
            entries = self._windows[first][start - first * per :]
            for w in range(first + 1, last):
                entries += self._windows[w]
            entries += self._windows[last][: stop - last * per]
            return entries
        if not 0 <= index < self.count:  # no negative indices: no caller means the end
            raise IndexError(f"FAT entry {index} of {self.count}")
        w = index // per
        if w not in self._windows:
            self._load(w, w)
        return self._windows[w][index - w * per]

    def _load(self, first: int, last: int) -> None:
        """Windows ``first`` to ``last``: each run of missing ones in one read."""
        w = first
        while w <= last:
            if w in self._windows:
                w += 1
                continue
            end = w
            while end < last and end + 1 not in self._windows:
                end += 1
            lo, hi = w * self._per, min((end + 1) * self._per, self.count)
            if self._bits == 12:  # one window, from entry 0
                raw = self._read(self._offset, (hi * 3 + 1) // 2)
            else:
                size = self._bits // 8
                raw = self._read(self._offset + lo * size, (hi - lo) * size)
            entries = _decode(raw, self._bits, hi - lo)
            for k in range(w, end + 1):
                self._windows[k] = entries[(k - w) * self._per : (k - w + 1) * self._per]
            w = end + 1


def _run(table: Table, start: int, most: int) -> int:
    """How many clusters from ``start`` on follow each other (``table[c] == c + 1``), at most
    ``most``: found by comparing ever longer slices, so a contiguous kernel of tens of thousands
    of clusters costs a few list comparisons instead of a Python step per cluster (and, from a
    ``FatTable``, a few reads of only the windows the run lies in)."""
    length, step = 1, 1
    while length < most:
        n = min(step, most - length)
        at = start + length - 1
        if table[at : at + n] == list(range(at + 1, at + n + 1)):
            length += n
            step *= 2
        elif step == 1:
            break
        else:
            step = 1
    return length


def chain(
    table: Table, geo: Geometry, first: int, limit: int, *, prefix: bool = False
) -> list[tuple[int, int]]:
    """The chain starting at ``first`` as runs of contiguous clusters (start, count), at most
    ``limit`` clusters in all (never more than the cluster count, so a loop always ends as a
    chain too long); DataError on a cluster out of range, a bad-cluster mark, or a chain longer
    than ``limit``. With ``prefix``, only the chain's first ``limit`` clusters are wanted: it
    ends there without looking further."""
    end = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}[geo.bits]
    top = geo.clusters + 2
    limit = min(limit, geo.clusters)
    runs: list[tuple[int, int]] = []
    total = 0
    cluster = first
    while True:
        if not 2 <= cluster < top:
            raise DataError(f"FAT: cluster {cluster} is outside the data region")
        count = _run(table, cluster, min(limit - total, top - cluster))
        runs.append((cluster, count))
        total += count
        if prefix and total >= limit:
            return runs
        last = cluster + count - 1
        nxt = table[last]
        if nxt >= end:
            return runs
        if nxt == end - 1:
            raise DataError(f"FAT: cluster {last} is followed by a bad-cluster mark")
        if total >= limit:
            raise DataError(
                f"FAT: the cluster chain from {first} is longer than {limit} (a loop, or a "
                "size that does not match)"
            )
        cluster = nxt


def _lfn_checksum(short: bytes) -> int:
    total = 0
    for byte in short:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def _short_name(raw: bytes, nt_case: int) -> str:
    base = raw[0:8].rstrip(b" ").decode("cp437", errors="replace")
    ext = raw[8:11].rstrip(b" ").decode("cp437", errors="replace")
    if base.startswith("\x05"):  # 0x05 stands for a real 0xE5 first byte
        base = "\u03c3" + base[1:]
    # Windows NT's case bits (byte 12): lower-case base (0x08) and extension (0x10)
    base = base.lower() if nt_case & 0x08 else base
    ext = ext.lower() if nt_case & 0x10 else ext
    return f"{base}.{ext}" if ext else base


def parse_directory(data: bytes) -> Iterator[Entry]:
    """The entries of one directory's bytes (without ``.`` and ``..`` and the volume label)."""
    parts: dict[int, str] = {}
    checksum = -1
    for pos in range(0, len(data) - 31, 32):
        raw = data[pos : pos + 32]
        first, attr = raw[0], raw[11]
        if first == 0x00:
            return
        if first == 0xE5:
            parts, checksum = {}, -1
            continue
        if attr & 0x3F == ATTR_LFN:
            seq = first & 0x1F
            if first & 0x40:  # the last part comes first on disk
                parts, checksum = {}, raw[13]
            if seq == 0 or raw[13] != checksum:
                parts, checksum = {}, -1
                continue
            chars = raw[1:11] + raw[14:26] + raw[28:32]
            parts[seq] = chars.decode("utf-16-le", errors="replace")
            continue
        long_name = None
        if parts and checksum == _lfn_checksum(raw[0:11]) and set(parts) == set(
            range(1, len(parts) + 1)
        ):
            joined = "".join(parts[i] for i in sorted(parts))
            long_name = joined.split("\x00", 1)[0]
        parts, checksum = {}, -1
        if attr & ATTR_VOLUME:
            continue
        short = _short_name(raw[0:11], raw[12])
        if short in (".", ".."):
            continue
        hi, lo = struct.unpack_from("<H", raw, 20)[0], struct.unpack_from("<H", raw, 26)[0]
        size = struct.unpack_from("<I", raw, 28)[0]
        yield Entry(long_name or short, short, bool(attr & ATTR_DIR), (hi << 16) | lo, size)


class FatVolume:
    """One FAT filesystem, read through ``reader`` (offsets relative to its first byte)."""

    def __init__(self, reader: Reader) -> None:
        self._read = reader
        self.geo = parse_boot_sector(reader(0, 512))
        self._table = FatTable(reader, self.geo)
        self._dirs: dict[int | None, list[Entry]] = {}

    def _clusters(self, first: int, max_bytes: int) -> list[tuple[int, int]]:
        return chain(self._table, self.geo, first, max_bytes // self.geo.cluster_size + 1)

    def _first_clusters(self, first: int, length: int) -> list[tuple[int, int]]:
        """The runs holding the first ``length`` bytes of the chain at ``first``."""
        size = self.geo.cluster_size
        return chain(self._table, self.geo, first, -(-length // size), prefix=True)

    def _cluster_bytes(self, runs: list[tuple[int, int]], length: int) -> bytes:
        """``length`` bytes from the runs of clusters, one read per run."""
        geo, parts, got = self.geo, [], 0
        for start, count in runs:
            if got >= length:
                break
            want = min(count * geo.cluster_size, length - got)
            parts.append(self._read(geo.data_offset + (start - 2) * geo.cluster_size, want))
            got += want
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _directory(self, cluster: int | None) -> list[Entry]:
        """The entries of the directory at ``cluster`` (None: the root), each parsed once."""
        if cluster not in self._dirs:
            self._dirs[cluster] = self._parse_directory(cluster)
        return self._dirs[cluster]

    def _parse_directory(self, cluster: int | None) -> list[Entry]:
        geo = self.geo
        if cluster is None and geo.bits != 32:
            data = self._read(geo.root_offset, geo.root_bytes)
        else:
            runs = self._clusters(cluster or geo.root_cluster, MAX_DIR_BYTES)
            data = self._cluster_bytes(runs, sum(n for _, n in runs) * geo.cluster_size)
        return list(parse_directory(data))

    def lookup(self, rel: str) -> Entry | None:
        """The entry at ``rel`` (``flatcar/vmlinuz-a``), or None when a component is missing."""
        names = [n for n in rel.split("/") if n]
        if not names:
            raise DataError("FAT: an empty path")
        cluster: int | None = None
        for depth, name in enumerate(names):
            wanted = name.casefold()
            found = next(
                (e for e in self._directory(cluster)
                 if wanted in (e.name.casefold(), e.short.casefold())),
                None,
            )  # fmt: skip
            if found is None:
                return None
            if depth == len(names) - 1:
                return found
            if not found.is_dir:
                return None
            if found.cluster == 0:  # ".." of a first-level directory points at 0: the root
                raise DataError(f"FAT: directory {name} has no clusters")
            cluster = found.cluster
        return None

    def read(self, rel: str, max_bytes: int, head: int | None = None) -> bytes | None:
        """The file's bytes (its first ``head`` bytes when given: only their clusters are
        followed and read), None when it does not exist; DataError when it is larger than
        ``max_bytes``, is a directory, or its chain does not hold what is read."""
        entry = self.lookup(rel)
        if entry is None:
            return None
        if entry.is_dir:
            raise DataError(f"FAT: {rel} is a directory")
        if entry.size > max_bytes:
            raise DataError(f"FAT: {rel} is {entry.size} bytes, more than {max_bytes}")
        length = entry.size if head is None else min(entry.size, head)
        if length <= 0:
            return b""
        if length < entry.size:
            runs = self._first_clusters(entry.cluster, length)
        else:
            runs = self._clusters(entry.cluster, length)
        if sum(n for _, n in runs) * self.geo.cluster_size < length:
            raise DataError(f"FAT: {rel} is {entry.size} bytes, its clusters hold less")
        return self._cluster_bytes(runs, length)
