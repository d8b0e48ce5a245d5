"""Read a small file from an ext2/3/4 filesystem inside a disk, partition or image file, without
debugfs.

The reboot path reads one small file from the OEM partition (``grub.cfg``). Through debugfs that
is a process start and a full library open of the filesystem, which costs more than the read on
a small or emulated machine; here it is a handful of ``os.pread`` calls.

Only what that read needs: the superblock, the group descriptor of an inode, the inode, extent
trees (and the classic direct and single-indirect block map), and linear directory scans (an
htree directory reads correctly as a linear one, by design of the format). Everything is
bounded and checked: the magic and every geometry field, block numbers against the block count,
extent headers, depth, entry counts, file sizes. A filesystem that uses what this reader does
not implement (``meta_bg`` group descriptors, inline data, encryption, double-indirect blocks)
raises ``Unsupported``, and the caller reads it another way (debugfs); anything malformed is one
``DataError`` line. This module never writes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from updater.errors import DataError
from updater.records import dataclass

Reader = Callable[[int, int], bytes]  # (offset, length) -> exactly length bytes

MAGIC = 0xEF53
EXTENT_MAGIC = 0xF30A
ROOT_INODE = 2
INCOMPAT_META_BG = 0x10
INCOMPAT_64BIT = 0x80
INCOMPAT_ENCRYPT = 0x10000
INCOMPAT_COMPRESSION = 0x1
FLAG_EXTENTS = 0x80000
FLAG_INLINE_DATA = 0x10000000
FLAG_ENCRYPT = 0x800
MAX_DEPTH = 5
MAX_DIR_BYTES = 4 << 20
S_IFMT, S_IFDIR, S_IFREG = 0o170000, 0o040000, 0o100000


class Unsupported(DataError):
    """A valid filesystem feature this reader does not implement."""


@dataclass(frozen=True)
class Geometry:
    block_size: int
    blocks: int
    inodes: int
    inodes_per_group: int
    inode_size: int
    desc_size: int
    gdt_block: int  # the first block of the group descriptor table


def parse_superblock(sb: bytes) -> Geometry:
    if len(sb) < 1024:
        raise DataError("ext4: the superblock is shorter than 1024 bytes")
    if struct.unpack_from("<H", sb, 56)[0] != MAGIC:
        raise DataError("ext4: no superblock magic (53 EF)")
    inodes, blocks_lo, _, _, _, first_data, log_bs = struct.unpack_from("<7I", sb, 0)
    blocks_per_group, _, inodes_per_group = struct.unpack_from("<3I", sb, 32)
    rev = struct.unpack_from("<I", sb, 76)[0]
    incompat = struct.unpack_from("<I", sb, 96)[0]
    if log_bs > 6:
        raise DataError(f"ext4: block size 1024 << {log_bs} is beyond 64 KiB")
    block_size = 1024 << log_bs
    inode_size = struct.unpack_from("<H", sb, 88)[0] if rev >= 1 else 128
    blocks = blocks_lo
    desc_size = 32
    if incompat & INCOMPAT_64BIT:
        blocks |= struct.unpack_from("<I", sb, 336)[0] << 32
        desc_size = struct.unpack_from("<H", sb, 254)[0]
        if desc_size < 32 or desc_size > 1024 or desc_size & (desc_size - 1):
            raise DataError(f"ext4: group descriptor size {desc_size}")
    if incompat & (INCOMPAT_META_BG | INCOMPAT_ENCRYPT | INCOMPAT_COMPRESSION):
        raise Unsupported(f"ext4: incompatible features {incompat:#x} (meta_bg, encryption)")
    if inode_size < 128 or inode_size > block_size or inode_size & (inode_size - 1):
        raise DataError(f"ext4: inode size {inode_size}")
    if inodes_per_group == 0 or blocks_per_group == 0 or inodes < ROOT_INODE or blocks == 0:
        raise DataError("ext4: an empty inode or block count")
    if first_data != (1 if block_size == 1024 else 0):
        raise DataError(f"ext4: first data block {first_data} for {block_size}-byte blocks")
    return Geometry(block_size, blocks, inodes, inodes_per_group, inode_size, desc_size,
                    first_data + 1)  # fmt: skip


@dataclass(frozen=True)
class Inode:
    mode: int
    size: int
    flags: int
    block: bytes  # the 60-byte i_block area: an extent tree root or the block map


class Ext4Volume:
    """One ext2/3/4 filesystem, read through ``reader`` (offsets relative to its first byte)."""

    def __init__(self, reader: Reader) -> None:
        self._read = reader
        self.geo = parse_superblock(reader(1024, 1024))

    def _block(self, number: int) -> bytes:
        if not 0 < number < self.geo.blocks:
            raise DataError(f"ext4: block {number} is outside the filesystem")
        return self._read(number * self.geo.block_size, self.geo.block_size)

    def inode(self, number: int) -> Inode:
        geo = self.geo
        if not 0 < number <= geo.inodes:
            raise DataError(f"ext4: inode {number} is out of range")
        group, index = divmod(number - 1, geo.inodes_per_group)
        desc_offset = geo.gdt_block * geo.block_size + group * geo.desc_size
        desc = self._read(desc_offset, geo.desc_size)
        table = struct.unpack_from("<I", desc, 8)[0]
        if geo.desc_size >= 64:
            table |= struct.unpack_from("<I", desc, 0x28)[0] << 32
        if not 0 < table < geo.blocks:
            raise DataError(f"ext4: inode table of group {group} at block {table}")
        raw = self._read(table * geo.block_size + index * geo.inode_size, 128)
        mode, _, size_lo = struct.unpack_from("<HHI", raw, 0)
        flags = struct.unpack_from("<I", raw, 32)[0]
        size = size_lo | struct.unpack_from("<I", raw, 108)[0] << 32
        return Inode(mode, size, flags, raw[40:100])

    def _extents(
        self, node: bytes, depth_left: int, budget: list[int]
    ) -> Iterator[tuple[int, int, int]]:
        """(logical block, physical block, length) of each leaf extent under ``node``; at most
        ``budget[0]`` tree blocks are read in all (a hostile tree could fan out enormously)."""
        magic, entries, capacity, depth = struct.unpack_from("<HHHH", node, 0)
        if magic != EXTENT_MAGIC or entries > capacity or 12 + 12 * entries > len(node):
            raise DataError("ext4: a damaged extent header")
        if depth > depth_left:
            raise DataError(f"ext4: an extent tree deeper than {MAX_DEPTH}")
        for i in range(entries):
            at = 12 + 12 * i
            if depth == 0:
                logical, length, hi, lo = struct.unpack_from("<IHHI", node, at)
                if length > 32768:  # an uninitialized extent: reads as zeros
                    length -= 32768
                    yield logical, 0, length
                else:
                    yield logical, (hi << 32) | lo, length
            else:
                budget[0] -= 1
                if budget[0] < 0:
                    raise DataError("ext4: an extent tree of more blocks than the file needs")
                _, lo, hi = struct.unpack_from("<IIH", node, at)
                yield from self._extents(self._block((hi << 32) | lo), depth - 1, budget)

    def _blocks(self, inode: Inode, count: int) -> dict[int, int]:
        """Logical -> physical block for the first ``count`` blocks (0: a hole)."""
        if inode.flags & (FLAG_INLINE_DATA | FLAG_ENCRYPT):
            raise Unsupported("ext4: inline or encrypted data")
        out: dict[int, int] = {}
        if inode.flags & FLAG_EXTENTS:
            for logical, physical, length in self._extents(inode.block, MAX_DEPTH, [count + 8]):
                for k in range(min(length, max(count - logical, 0))):
                    out[logical + k] = physical + k if physical else 0
            return out
        pointers = struct.unpack_from("<15I", inode.block, 0)
        out.update((i, p) for i, p in enumerate(pointers[:12]) if i < count)
        if count > 12 and pointers[12]:
            per = self.geo.block_size // 4
            table = struct.unpack_from(f"<{per}I", self._block(pointers[12]), 0)
            out.update((12 + i, p) for i, p in enumerate(table) if 12 + i < count)
        if count > 12 + self.geo.block_size // 4:
            raise Unsupported("ext4: a file beyond the single-indirect blocks")
        return out

    def _data(self, inode: Inode, max_bytes: int, what: str) -> bytes:
        if inode.size > max_bytes:
            raise DataError(f"ext4: {what} is {inode.size} bytes, more than {max_bytes}")
        bs = self.geo.block_size
        count = (inode.size + bs - 1) // bs
        mapping = self._blocks(inode, count)
        data = bytearray()
        for logical in range(count):
            physical = mapping.get(logical, 0)
            data += self._block(physical) if physical else bytes(bs)
        return bytes(data[: inode.size])

    def _lookup_in(self, directory: Inode, name: bytes) -> int | None:
        data = self._data(directory, MAX_DIR_BYTES, "a directory")
        pos = 0
        while pos + 8 <= len(data):
            ino, rec_len, name_len = struct.unpack_from("<IHB", data, pos)
            if rec_len < 8 or pos + rec_len > len(data) or 8 + name_len > rec_len:
                raise DataError(f"ext4: a damaged directory entry at byte {pos}")
            if ino and data[pos + 8 : pos + 8 + name_len] == name:
                return int(ino)
            pos += rec_len
        return None

    def read(self, rel: str, max_bytes: int) -> bytes | None:
        """The file at ``rel``, None when it does not exist; DataError when it is larger than
        ``max_bytes`` or not a regular file."""
        names = [n for n in rel.split("/") if n]
        if not names:
            raise DataError("ext4: an empty path")
        inode = self.inode(ROOT_INODE)
        for name in names:
            if inode.mode & S_IFMT != S_IFDIR:
                return None
            found = self._lookup_in(inode, name.encode())
            if found is None:
                return None
            inode = self.inode(found)
        if inode.mode & S_IFMT != S_IFREG:
            raise DataError(f"ext4: {rel} is not a regular file")
        return self._data(inode, max_bytes, rel)
